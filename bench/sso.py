"""Single sign-on benchmark: what an OpenID Connect login costs, step by step, side by side with
its floors in one run (SQLite, in-process API, a real oidc-provider on loopback):

- a whole login: start, the provider's login and consent forms, the callback, the exchange;
- the callback alone: Shanzhi trading the code at the provider's token endpoint, checking the
  ID token and fetching userinfo (the relying party's work, network included);
- raw RS256 ID-token verification with joserfc (the cryptographic floor of the callback);
- a password login (argon2id: the other way in, slow by design).

    python bench/sso.py [--quick] [-o results.json]

Needs Node.js and `npm ci` in tests/oidc_provider (as `make test` does).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import secrets
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from fastapi.testclient import TestClient
from joserfc import jwt
from joserfc.jwk import KeySet
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.oidc import CLIENT_ID, CLIENT_SECRET, Browser, OidcProvider

from shanzhi.api import create_app
from shanzhi.config import Settings

BASE = "http://testserver"
PASSWORD = "bench-password-1"


def pair() -> tuple[str, str]:
    v = secrets.token_urlsafe(48)
    return v, base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-o", "--output", default="bench/results/sso.json")
    args = ap.parse_args()
    n = 20 if args.quick else 100
    tmp = Path(tempfile.mkdtemp(prefix="shanzhi-bench-sso-"))
    provider = OidcProvider(tmp / "oidc")
    provider.start([f"{BASE}/api/v1/auth/oidc/callback"])
    settings = Settings.build(tmp / "data", None, controller=False, ledger=False)
    settings = replace(
        settings,
        public_url=BASE,
        oidc_issuer=provider.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_auto_create=True,
    )
    results: dict[str, float] = {}
    try:
        with TestClient(create_app(settings)) as api:
            api.headers["Authorization"] = f"Bearer {(settings.data_dir / 'security.token').read_text().strip()}"
            assert api.post("/api/v1/users", json={"name": "bench.user", "password": PASSWORD}).status_code == 201
            callback_s = 0.0
            t0 = time.perf_counter()
            for i in range(n):
                verifier, challenge = pair()
                body = {"challenge": challenge, "return_to": "http://127.0.0.1:9/callback"}
                flow = api.post("/api/v1/auth/oidc/start", json=body, headers={"Authorization": ""}).json()
                browser = Browser(api, BASE)
                callback = browser.authorize(flow["authorization_url"], f"user-{i}", BASE)
                c0 = time.perf_counter()
                answer = browser.get(callback)
                callback_s += time.perf_counter() - c0
                code = answer.headers["location"].split("code=")[1]
                r = api.post(
                    "/api/v1/auth/oidc/exchange",
                    json={"code": code, "verifier": verifier},
                    headers={"Authorization": ""},
                )
                assert r.status_code == 201, r.text
                browser.close()
            results["whole SSO login (forms, callback, exchange)"] = n / (time.perf_counter() - t0)
            results["callback: code exchange + ID token check + userinfo"] = n / callback_s

            t0 = time.perf_counter()
            for _ in range(n):
                r = api.post("/api/v1/auth/login", json={"user": "bench.user", "password": PASSWORD})
                assert r.status_code == 201
            results["password login (argon2id)"] = n / (time.perf_counter() - t0)

        keys = KeySet.import_key_set({"keys": [provider.key]})
        token = provider.sign({"sub": "u", "nonce": "n"})
        m = n * 20
        t0 = time.perf_counter()
        for _ in range(m):
            jwt.decode(token, keys, algorithms=["RS256"])
        results["raw RS256 ID-token verify (joserfc)"] = m / (time.perf_counter() - t0)
    finally:
        provider.stop()

    table = Table(title="single sign-on: a login's cost and its floors (SQLite, in-process, provider on loopback)")
    table.add_column("measure")
    table.add_column("per second", justify="right")
    for k, v in results.items():
        table.add_row(k, f"{v:,.0f}")
    Console(width=160).print(table)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": n, "per_second": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
