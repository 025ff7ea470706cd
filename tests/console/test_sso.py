"""Single sign-on in the console: the button, the provider's own pages, back to the console with a
session cookie; a platform user owes the second factor and the console asks for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pyotp
import pytest

from tests.console.conftest import PASSWORD, Page, _require, off_the_browser_thread
from tests.e2e.harness import Server, stop_everything, wait_for
from tests.oidc import CLIENT_ID, CLIENT_SECRET, OidcProvider, require_provider

pytestmark = pytest.mark.e2e


class SsoSite:
    def __init__(self, server: Server, provider: OidcProvider) -> None:
        self.server, self.provider, self.url = server, provider, server.url
        self.secret = ""


@pytest.fixture(scope="module")
def sso(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsoSite]:
    _require()
    require_provider()
    root = tmp_path_factory.mktemp("sso")
    data = root / "data"
    data.mkdir()
    provider = OidcProvider(root / "oidc")
    secret = root / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    args = ("--oidc-issuer", provider.issuer, "--oidc-client-id", CLIENT_ID, "--oidc-client-secret-file", str(secret))
    server = Server(data, None, *args)
    provider.start([f"{server.url}/api/v1/auth/oidc/callback"])
    provider.set_accounts(
        {
            "u-1": {"preferred_username": "li.wei", "groups": ["health-staff"]},
            "u-2": {"preferred_username": "ops.sso"},
        }
    )
    site = SsoSite(server, provider)
    api = f"{server.url}/api/v1"
    admin = {"Authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
    sec = {"Authorization": f"Bearer {(data / 'security.token').read_text().strip()}"}
    try:
        assert httpx.post(f"{api}/vdcs", json={"path": "health", "quota": {}}, headers=admin).status_code == 201
        assert httpx.post(f"{api}/users", json={"name": "li.wei"}, headers=sec).status_code == 201
        body = {"group": "health-staff", "role": "member", "vdc": "health"}
        assert httpx.post(f"{api}/oidc-group-maps", json=body, headers=sec).status_code == 201
        # a platform administrator (second factor required) who also signs in through the provider
        for path, body in (
            ("/users", {"name": "ops.sso", "password": PASSWORD}),
            ("/grants", {"user": "ops.sso", "role": "system-admin"}),
        ):
            assert httpx.post(f"{api}{path}", json=body, headers=sec).status_code == 201
        token = httpx.post(f"{api}/auth/login", json={"user": "ops.sso", "password": PASSWORD}).json()["token"]
        me = {"Authorization": f"Bearer {token}"}
        site.secret = httpx.post(f"{api}/auth/mfa/enroll", headers=me).json()["secret"]
        code = pyotp.TOTP(site.secret).now()
        assert httpx.post(f"{api}/auth/mfa/confirm", json={"code": code}, headers=me).status_code == 200
        yield site
    finally:
        provider.stop()
        off_the_browser_thread(stop_everything, data, server)


def provider_login(p: Any, account: str) -> None:
    """The provider's own pages (its development login form, then consent), as a person fills them."""
    p.wait_for_selector("input[name=login]")
    p.fill("input[name=login]", account)
    p.fill("input[name=password]", "anything")
    p.click("button[type=submit]")
    p.wait_for_selector("button[type=submit]")
    p.click("button[type=submit]")  # consent


def test_a_department_user_signs_in_through_the_provider(browser: Any, sso: SsoSite) -> None:
    page = Page(browser, sso)  # type: ignore[arg-type]
    try:
        p = page.page
        p.wait_for_selector("#sso")
        p.click("#sso")
        provider_login(p, "u-1")
        p.wait_for_selector("#logout", state="visible")
        assert p.inner_text("#who") == "li.wei"
        assert p.evaluate("location.search") == ""  # the one-time code is gone from the address
        assert "Apps" in p.locator("#nav a").all_inner_texts()  # the role came from the provider's group
        cookies = {c["name"]: c for c in page.context.cookies()}
        assert cookies["shanzhi_session"]["httpOnly"] and cookies["shanzhi_session"]["sameSite"] == "Strict"
        page.shot("sso-member")
    finally:
        page.close()
    assert page.errors == []


def test_a_platform_user_gives_the_second_factor_after_the_provider(browser: Any, sso: SsoSite) -> None:
    page = Page(browser, sso)  # type: ignore[arg-type]
    try:
        p = page.page
        p.wait_for_selector("#sso")
        p.click("#sso")
        provider_login(p, "u-2")
        p.wait_for_selector("#otp", state="visible")
        p.fill("#otp", pyotp.TOTP(sso.secret).at(time.time() + 30))
        p.click("form.login button[type=submit]")
        p.wait_for_selector("#logout", state="visible")
        assert p.inner_text("#who") == "ops.sso" and "Overview" in p.locator("#nav a").all_inner_texts()
        wait_for(lambda: p.locator("main h1").count() > 0, 10, "a view")
    finally:
        page.close()
    assert page.errors == []
    outside = [u for u in page.requests if not u.startswith(("http://127.0.0.1:", "data:"))]
    assert outside == []
