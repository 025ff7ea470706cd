"""Single sign-on end to end: a real `shanzhi serve --oidc-issuer`, a real OpenID Connect
provider, the real CLI's `shanzhi login --oidc` (its loopback listener, and --no-browser with
the code pasted), and a browser (httpx) that logs in at the provider as a person would."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Cli, Server, free_port, stop_everything
from tests.oidc import CLIENT_ID, CLIENT_SECRET, Browser, OidcProvider, require_provider

pytestmark = pytest.mark.e2e


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Server, Cli, OidcProvider]]:
    require_provider()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    provider = OidcProvider(tmp_path / "oidc")
    secret = tmp_path / "client-secret"
    secret.write_text(CLIENT_SECRET + "\n")
    args = ("--oidc-issuer", provider.issuer, "--oidc-client-id", CLIENT_ID, "--oidc-client-secret-file", str(secret))
    server = Server(data_dir, None, *args)
    provider.start([f"{server.url}/api/v1/auth/oidc/callback"])
    provider.set_accounts({"u-2001": {"preferred_username": "li.wei", "name": "Li Wei", "groups": ["health-staff"]}})
    cli = Cli(server)
    sec = (data_dir / "security.token").read_text().strip()
    admin = (data_dir / "admin.token").read_text().strip()
    for args_, token in (
        (("vdc", "create", "health"), admin),
        (("user", "create", "li.wei", "--no-password"), sec),
        (("sso", "map", "health-staff", "member", "--vdc", "health"), sec),  # the role comes from the group
    ):
        r = cli.run(*args_, token=token)
        assert r.returncode == 0, r.stderr
    yield server, cli, provider
    provider.stop()
    stop_everything(data_dir, server)


class LoginProcess:
    """`shanzhi login --oidc ...` running. A thread reads its stderr line by line for its whole
    life (communicate() after a partial read would lose what the file object had buffered)."""

    def __init__(self, cli: Cli, *args: str, graphical: bool = True) -> None:
        skip = ("SHANZHI_", "BROWSER", "DISPLAY", "WAYLAND_DISPLAY")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env |= {
            "SHANZHI_URL": cli.server.url,
            "XDG_CONFIG_HOME": str(cli.server.data_dir.parent / "config"),
            "COLUMNS": "400",  # messages on one line each
        }
        if graphical:
            env["BROWSER"] = "true"  # the 'browser' the CLI opens does nothing: the test is the browser
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shanzhi", "login", "--oidc", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.put(line)
        self.lines.put(None)

    def authorization_url(self) -> str:
        while (line := self.lines.get(timeout=60)) is not None:
            self.stderr.append(line)
            if line.strip().startswith("http"):
                return line.strip()
        raise AssertionError(f"the CLI printed no address: {''.join(self.stderr)}")

    def finish(self, stdin: str | None = None) -> tuple[int, str, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if stdin is not None:
            self.proc.stdin.write(stdin)
        self.proc.stdin.close()
        out = self.proc.stdout.read()
        self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        while (line := self.lines.get_nowait()) is not None:
            self.stderr.append(line)
        self.proc.stdout.close()
        self.proc.stderr.close()  # type: ignore[union-attr]
        return self.proc.returncode, out, "".join(self.stderr)


def test_cli_logs_in_through_the_browser_and_loopback(world: tuple[Server, Cli, OidcProvider]) -> None:
    server, cli, provider = world
    login = LoginProcess(cli)
    url = login.authorization_url()
    assert url.startswith(f"{provider.issuer}/auth?") and "code_challenge_method=S256" in url
    browser = Browser()
    answer = browser.login(url, "u-2001", server.url)
    assert answer.status_code == 303 and answer.headers["location"].startswith("http://127.0.0.1:")
    landing = browser.http.get(answer.headers["location"])  # the CLI's loopback listener
    assert landing.status_code == 200 and "You are logged in" in landing.text
    browser.close()
    code, out, err = login.finish()
    assert code == 0, err
    assert f"Logged in to {server.url} as li.wei" in out
    me = json.loads(cli.ok("whoami", "-o", "json"))  # with the saved session, no token given
    assert me["user"] == "li.wei" and me["vdc_roles"] == [{"role": "member", "vdc": "health"}]
    users = json.loads(cli.run("user", "list", "-o", "json", token=_token(server, "security")).stdout)
    assert {u["name"]: u["oidc_subject"] for u in users}["li.wei"] == "u-2001"
    maps = json.loads(cli.run("sso", "list", "-o", "json", token=_token(server, "security")).stdout)
    assert [(m["group"], m["role"], m["vdc"]) for m in maps] == [("health-staff", "member", "health")]
    grants = json.loads(cli.run("grant", "list", "-o", "json", token=_token(server, "security")).stdout)
    assert {(g["user"], g["by"]) for g in grants} >= {("li.wei", "oidc:health-staff")}


def test_cli_logs_in_without_a_browser_by_pasting_the_code(world: tuple[Server, Cli, OidcProvider]) -> None:
    server, cli, _ = world
    login = LoginProcess(cli, "--no-browser", "-o", "json")
    url = login.authorization_url()
    browser = Browser()
    page = browser.login(url, "u-2001", server.url)
    browser.close()
    assert page.status_code == 200 and "Logged in as li.wei" in page.text
    pasted = page.text.split('<code id="code">')[1].split("</code>")[0]
    code, out, err = login.finish(pasted + "\n")
    assert code == 0, err
    assert json.loads(out)["user"] == "li.wei" and "token" not in json.loads(out)


def test_cli_reports_a_refused_login_and_exits_non_zero(world: tuple[Server, Cli, OidcProvider]) -> None:
    server, cli, provider = world
    provider.set_accounts({})  # the provider vouches for 'stranger', whom Shanzhi does not know
    login = LoginProcess(cli)
    browser = Browser()
    answer = browser.login(login.authorization_url(), "stranger", server.url)
    landing = browser.http.get(answer.headers["location"])
    browser.close()
    assert "The login failed" in landing.text
    code, _, err = login.finish()
    assert code == 1 and "there is no Shanzhi user stranger" in err
    assert not (server.data_dir.parent / "config" / "shanzhi" / "credentials.json").exists()


def test_cli_login_times_out_when_the_browser_never_comes_back(world: tuple[Server, Cli, OidcProvider]) -> None:
    _, cli, _ = world
    login = LoginProcess(cli, "--timeout", "1", graphical=False)  # no display: no browser started
    login.authorization_url()
    code, _, err = login.finish()
    assert code == 1 and "no answer from the browser within 1 s" in err
    assert "no graphical browser here" in err


def test_cli_says_when_single_sign_on_is_off(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = Server(data_dir)
    try:
        r = Cli(server).run("login", "--oidc")
        assert r.returncode == 1 and "single sign-on is not configured" in r.stderr
    finally:
        stop_everything(data_dir, server)


def test_serve_refuses_an_insecure_issuer_or_a_missing_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    base = [sys.executable, "-m", "shanzhi", "serve", "--data-dir", str(tmp_path), "--port", str(free_port())]

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], check=False, capture_output=True, text=True, env=env, timeout=60)

    r = serve("--oidc-issuer", "http://sso.example.gov.cn")
    assert r.returncode == 1 and "must be an https URL" in r.stderr
    r = serve("--oidc-issuer", "https://sso.example.gov.cn")
    assert r.returncode == 1 and "needs the client secret" in r.stderr
    assert not (tmp_path / "shanzhi.db").exists()  # refused before anything was created


def _token(server: Server, who: str) -> str:
    return (server.data_dir / f"{who}.token").read_text().strip()
