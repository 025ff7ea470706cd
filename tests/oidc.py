"""A real OpenID Connect provider for the single sign-on tests, and a browser that logs in.

The provider is panva's oidc-provider (OpenID Certified) on Node.js, in tests/oidc_provider,
run on a loopback port with signing keys this module generates (so a test can rotate them, or
sign a forged token with a key the provider never published). The browser is an httpx client
that follows redirects and submits the provider's login and consent forms as a person would.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from tests.e2e.harness import free_port

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc_provider"
CLIENT_ID = "shanzhi"
CLIENT_SECRET = "shanzhi-test-client-secret-0123456789"
REQUIRE = bool(os.environ.get("SHANZHI_REQUIRE_OIDC"))
_TLS = ssl.create_default_context()  # built once: a new httpx client per browser costs tens of ms otherwise


def require_provider() -> None:
    """Skip (or fail, where CI requires it) when Node.js or the provider's packages are missing."""
    why = ""
    if shutil.which("node") is None:
        why = "Node.js is not installed (apt-get install nodejs npm)"
    elif not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        why = "the test OIDC provider is not installed (cd tests/oidc_provider && npm ci)"
    if why:
        if REQUIRE:
            pytest.fail(f"single sign-on tests required but: {why}")
        pytest.skip(why)


def new_key(kid: str) -> dict[str, Any]:
    key = RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"}, private=True)
    return dict(key.as_dict(private=True))


class OidcProvider:
    """One provider process. `start` may be called again (after `stop`) with another key."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.accounts = workdir / "accounts.json"
        self.key = new_key("key-1")
        self.redirect_uris: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self, redirect_uris: list[str] | None = None, key: dict[str, Any] | None = None) -> None:
        self.redirect_uris = redirect_uris or self.redirect_uris
        self.key = key or self.key
        config = {
            "port": self.port,
            "accounts": str(self.accounts),
            "jwks": {"keys": [self.key]},
            "clients": [
                {
                    "client_id": CLIENT_ID,
                    "client_secret": CLIENT_SECRET,
                    "redirect_uris": self.redirect_uris,
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                }
            ],
        }
        path = self.workdir / "provider.json"
        path.write_text(json.dumps(config))
        with open(self.workdir / "provider.log", "a") as log:
            self.proc = subprocess.Popen(
                ["node", str(PROVIDER_DIR / "provider.mjs"), str(path)],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=PROVIDER_DIR,
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.stop()
            raise AssertionError(f"the OIDC provider did not start: {(self.workdir / 'provider.log').read_text()}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                self.proc.wait(timeout=10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        self.proc = None

    def set_accounts(self, accounts: dict[str, dict[str, Any]]) -> None:
        """Claims per account id (the login name typed at the provider); others get only their id."""
        self.accounts.write_text(json.dumps(accounts))

    def sign(self, claims: dict[str, Any], key: dict[str, Any] | None = None, alg: str = "RS256") -> str:
        """An ID token signed with the provider's key (or `key`): for tokens the provider would not issue."""
        now = int(time.time())
        base = {"iss": self.issuer, "aud": CLIENT_ID, "iat": now, "exp": now + 300}
        k = key or self.key
        return jwt.encode({"alg": alg, "kid": k["kid"]}, base | claims, RSAKey.import_key(k))


class Browser:
    """Follows redirects and fills the provider's forms. `local` answers URLs under `local_base`
    (an in-process TestClient for the API tests); everything else goes over real HTTP."""

    def __init__(self, local: Any = None, local_base: str = "http://testserver") -> None:
        self.http = httpx.Client(timeout=10, verify=_TLS)
        self.local = local
        self.local_base = local_base

    def get(self, url: str) -> httpx.Response:
        if self.local is not None and url.startswith(self.local_base):
            return self.local.get(url[len(self.local_base) :], follow_redirects=False)  # type: ignore[no-any-return]
        return self.http.get(url)

    def _follow(self, r: httpx.Response, stop_at: str) -> httpx.Response:
        while r.status_code in (302, 303) and not r.headers["location"].startswith(stop_at):
            r = self.get(str(httpx.URL(str(r.request.url)).join(r.headers["location"])))
        return r

    def _submit(self, page: httpx.Response, stop_at: str, **fields: str) -> httpx.Response:
        form = re.search(r"<form.*?</form>", page.text, re.S)
        assert form is not None, f"no form on the provider's page: {page.text[:500]}"
        data = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', form.group(0))) | fields
        action = re.search(r'action="([^"]+)"', form.group(0))
        assert action is not None
        return self._follow(self.http.post(action.group(1), data=data), stop_at)

    def authorize(self, authorization_url: str, account: str, shanzhi: str, *, cancel: bool = False) -> str:
        """Log in at the provider as `account` (or cancel): where it sends the browser back."""
        page = self._follow(self.http.get(authorization_url), shanzhi)
        if cancel:
            abort = re.search(r'href="([^"]*/abort)"', page.text)
            assert abort is not None, "no cancel link on the provider's login page"
            page = self._follow(self.http.get(str(httpx.URL(str(page.request.url)).join(abort.group(1)))), shanzhi)
        while page.status_code == 200 and "<form" in page.text:  # login, then consent
            fields = {"login": account, "password": "any"} if 'name="login"' in page.text else {}
            page = self._submit(page, shanzhi, **fields)
        assert page.status_code in (302, 303), f"the provider did not send the browser back: {page.text[:500]}"
        return str(page.headers["location"])

    def login(self, authorization_url: str, account: str, shanzhi: str, *, cancel: bool = False) -> httpx.Response:
        """Log in at the provider as `account`; Shanzhi's answer at its callback (not followed)."""
        return self.get(self.authorize(authorization_url, account, shanzhi, cancel=cancel))

    def close(self) -> None:
        self.http.close()
