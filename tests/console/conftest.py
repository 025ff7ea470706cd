"""A real `shanzhi serve --demo` and Debian's Chromium driven by Playwright (headless; nothing
downloaded). Skipped, saying why, where either is missing; CI requires them
(SHANZHI_REQUIRE_BROWSER=1). Every request the browser makes is recorded, to check that none
leaves 127.0.0.1; a screenshot of every view is kept under tests/console/artefacts/."""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest

from tests.e2e.harness import Server, stop_everything

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "node_modules" / "axe-core" / "axe.min.js"
ARTEFACTS = Path(__file__).parent / "artefacts"
REQUIRE = os.environ.get("SHANZHI_REQUIRE_BROWSER") == "1"
DEMO_PASSWORD = "shanzhi-demo-2026"
PASSWORD = "console-test-Pass-9"


def _require() -> None:
    why = ""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        why = "Playwright is not installed (pip install -e '.[dev]')"
    if not why and not Path(CHROMIUM).exists():
        why = "Chromium is not installed (apt-get install chromium)"
    if not why and not AXE.exists():
        why = "axe-core is not installed (cd tests/console && npm ci)"
    if why:
        if REQUIRE:
            pytest.fail(f"browser tests required but: {why}")
        pytest.skip(why)


def off_the_browser_thread(fn: Callable[..., object], *args: object) -> None:
    """Run `fn` in a thread of its own: Playwright's sync API keeps an event loop running in this
    one, and pyroute2 (removing a server's network fabric) wants to run its own."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as err:
            failed.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    if failed:
        raise failed[0]


class Site:
    """The demo server and what the tests need of it: the admin's API, people with a second factor."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.url = server.url
        token = (server.data_dir / "admin.token").read_text().strip()
        self.admin = httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token}"})
        sec = (server.data_dir / "security.token").read_text().strip()
        self.security = httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {sec}"})
        aud = (server.data_dir / "audit.token").read_text().strip()
        self.audit = httpx.Client(base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {aud}"})
        self.secrets: dict[str, str] = {}
        self.used: dict[str, int] = {}  # the last time step each person's codes were made for

    def person(self, name: str, role: str) -> str:
        """A user with a platform role and a second factor (platform roles need one): its TOTP secret."""
        if name in self.secrets:
            return self.secrets[name]
        assert self.security.post("/users", json={"name": name, "password": PASSWORD}).status_code == 201
        assert self.security.post("/grants", json={"user": name, "role": role}).status_code == 201
        r = httpx.post(f"{self.url}/api/v1/auth/login", json={"user": name, "password": PASSWORD})
        session = {"Authorization": f"Bearer {r.json()['token']}"}
        with httpx.Client(base_url=f"{self.url}/api/v1", headers=session) as me:
            secret = me.post("/auth/mfa/enroll").json()["secret"]
            step = _step(time.time())
            assert me.post("/auth/mfa/confirm", json={"code": pyotp.TOTP(secret).at(step * 30)}).status_code == 200
        self.secrets[name], self.used[name] = secret, step
        return secret

    def close(self) -> None:
        for client in (self.admin, self.security, self.audit):
            client.close()

    def code(self, name: str) -> Callable[[], str]:
        """A code not used yet: the next time step's (the server takes one step either side), or,
        where that step was used already (a rerun of a test that signed in), the one after it once
        the clock reaches it."""

        def make() -> str:
            while _step(time.time()) + 1 <= self.used.get(name, 0):
                time.sleep(0.5)
            self.used[name] = _step(time.time()) + 1
            return pyotp.TOTP(self.secrets[name]).at(self.used[name] * 30)

        return make


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require()
    data = tmp_path_factory.mktemp("console") / "data"
    data.mkdir()
    server = Server(data, None, "--demo", "--metrics-interval", "1")
    s = None
    try:
        s = Site(server)
        yield s
    finally:
        if s is not None:
            s.close()
        off_the_browser_thread(stop_everything, data, server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A Chromium per module, gone when the module is done: Playwright's sync API keeps an event
    loop running in this thread while it lives, and other tests' pyroute2 wants to run its own."""
    _require()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def _step(t: float) -> int:
    return int(t // 30)


def next_code(secret: str) -> Callable[[], str]:
    return lambda: pyotp.TOTP(secret).at(time.time() + 30)


class Page:
    """One browser context (its own cookies), the requests it made, the errors it logged."""

    def __init__(self, browser: Any, site: Site, locale: str = "en-US", bypass_csp: bool = False) -> None:
        self.context = browser.new_context(
            locale=locale, viewport={"width": 1280, "height": 900}, bypass_csp=bypass_csp
        )
        self.page = self.context.new_page()
        self.site = site
        self.requests: list[str] = []  # asked for by this server's pages
        self.errors: list[str] = []
        self.page.on("request", self._request)
        # nothing leaves this machine: anything else is refused (and, if one of our pages asked, fails the test)
        self.context.route(re.compile(r"^(?!http://127\.0\.0\.1:|data:).*"), lambda route: route.abort())
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(site.url + "/")

    def _request(self, request: Any) -> None:
        try:
            origin = request.frame.url
        except Exception:  # a request of no frame (a worker): count it
            origin = self.site.url
        if origin.startswith(self.site.url) or origin in ("", "about:blank"):
            self.requests.append(request.url)

    def login(self, user: str, password: str = DEMO_PASSWORD, otp: Callable[[], str] | None = None) -> None:
        """Sign in; `otp` gives the second-factor code when the form asks for it (made then, not
        before: a busy machine may take a while to ask)."""
        p = self.page
        p.fill("#user", user)
        p.fill("#password", password)
        p.click("form.login button[type=submit]")
        if otp is not None:
            p.wait_for_selector("#otp", state="visible")
            p.fill("#otp", otp())
            p.click("form.login button[type=submit]")
        # signed in, or the form says why not (then the test fails with what it said)
        p.wait_for_function(
            "() => !document.getElementById('logout').hidden"
            " || (document.querySelector('form.login .error') || {}).textContent"
        )
        if p.locator("#logout").is_hidden():
            raise AssertionError(f"{user} could not sign in: {p.inner_text('form.login .error')}")

    def view(self, route: str, ready: str = "main h1") -> Any:
        self.page.goto(f"{self.site.url}/#/{route}")
        self.page.wait_for_selector(ready)
        return self.page

    def shot(self, name: str) -> None:
        ARTEFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def page(browser: Any, site: Site) -> Iterator[Page]:
    pg = Page(browser, site)
    yield pg
    pg.close()
    assert pg.errors == [], pg.errors
    outside = [u for u in pg.requests if not u.startswith(("http://127.0.0.1:", "data:"))]
    assert outside == [], outside  # nothing leaves this machine
