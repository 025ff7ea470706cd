"""Single sign-on against a real OpenID Connect provider (oidc-provider on Node.js, loopback).

Shanzhi runs in-process; the provider is a real process speaking real HTTP, and Shanzhi's
relying party talks to it over the network (discovery, keys, code exchange, userinfo).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from shanzhi.api import create_app
from shanzhi.config import Settings
from shanzhi.domain.errors import Unauthorized
from shanzhi.services.oidc import OidcConfig, RelyingParty
from shanzhi.store.tables import AuditRecord, OidcFlow, User, utcnow
from tests.api.conftest import CALLBACK, bearer, with_sso
from tests.oidc import CLIENT_ID, CLIENT_SECRET, Browser, OidcProvider, new_key

LOOPBACK = "http://127.0.0.1:48123/callback"  # the CLI's listener: never contacted here


@pytest.fixture
def sso(settings: Settings, provider: OidcProvider) -> Iterator[TestClient]:
    """Shanzhi with single sign-on through the provider; authenticated as the security admin."""
    provider.set_accounts({})
    with TestClient(create_app(with_sso(settings, provider)), raise_server_exceptions=False) as c:
        c.headers.update(bearer((settings.data_dir / "security.token").read_text().strip()))
        yield c


def verifier_pair() -> tuple[str, str]:
    v = secrets.token_urlsafe(48)
    return v, base64.urlsafe_b64encode(hashlib.sha256(v.encode()).digest()).rstrip(b"=").decode()


def anon(c: TestClient) -> dict[str, str]:
    return {"Authorization": ""}


def start(c: TestClient, return_to: str | None = LOOPBACK) -> tuple[str, dict[str, Any]]:
    verifier, challenge = verifier_pair()
    r = c.post("/api/v1/auth/oidc/start", json={"challenge": challenge, "return_to": return_to}, headers=anon(c))
    assert r.status_code == 201, r.text
    return verifier, r.json()


def login(c: TestClient, account: str, **kw: Any) -> tuple[str, Any]:
    """Start, log in at the provider as `account`, follow back to the callback: (verifier, answer)."""
    verifier, flow = start(c, **kw)
    browser = Browser(c)
    try:
        return verifier, browser.login(flow["authorization_url"], account, "http://testserver")
    finally:
        browser.close()


def handoff(answer: Any) -> dict[str, str]:
    assert answer.status_code == 303, answer.text
    loc = urlsplit(answer.headers["location"])
    assert f"{loc.scheme}://{loc.netloc}{loc.path}" == LOOPBACK
    return {k: v[0] for k, v in parse_qs(loc.query).items()}


def exchange(c: TestClient, code: str, verifier: str) -> Any:
    return c.post("/api/v1/auth/oidc/exchange", json={"code": code, "verifier": verifier}, headers=anon(c))


def create_user(c: TestClient, name: str, role: str | None = None, vdc: str | None = None) -> None:
    assert c.post("/api/v1/users", json={"name": name}).status_code == 201
    if role:
        admin = (c.app.state.runtime.settings.data_dir / "admin.token").read_text().strip()  # type: ignore[attr-defined]
        if vdc and c.get(f"/api/v1/vdcs/{vdc}", headers=bearer(admin)).status_code == 404:
            r = c.post("/api/v1/vdcs", json={"path": vdc, "quota": {"cpu": "4"}}, headers=bearer(admin))
            assert r.status_code == 201, r.text
        r = c.post("/api/v1/grants", json={"user": name, "role": role, "vdc": vdc})
        assert r.status_code == 201, r.text


def users(c: TestClient) -> dict[str, Any]:
    return {u["name"]: u for u in c.get("/api/v1/users").json()}


def test_a_user_logs_in_through_the_provider_and_gets_their_roles(sso: TestClient, provider: OidcProvider) -> None:
    provider.set_accounts({"u-1001": {"preferred_username": "li.wei", "name": "Li Wei"}})
    create_user(sso, "li.wei", "member", "health")
    assert sso.get("/api/v1/auth/oidc").json() == {"enabled": True, "issuer": provider.issuer, "name": "single sign-on"}

    verifier, answer = login(sso, "u-1001")
    got = handoff(answer)
    token = exchange(sso, got["code"], verifier)
    assert token.status_code == 201, token.text
    assert token.json()["user"] == "li.wei" and token.json()["name"].startswith("oidc login from")
    me = sso.get("/api/v1/auth/whoami", headers=bearer(token.json()["token"])).json()
    assert me["user"] == "li.wei" and me["vdc_roles"] == [{"role": "member", "vdc": "health"}]
    linked = users(sso)["li.wei"]
    assert linked["oidc_subject"] == "u-1001" and linked["display_name"] == "Li Wei"
    assert linked["last_login_at"] is not None

    # audited: start, the callback (as the user, code and state redacted) and the exchange
    with sso.app.state.db.session() as s:  # type: ignore[attr-defined]
        rows = s.scalars(select(AuditRecord).where(AuditRecord.path.like("/api/v1/auth/oidc%"))).all()
    calls = [(r.method, r.path.split("?")[0], r.status, r.actor) for r in rows]
    assert calls == [
        ("POST", "/api/v1/auth/oidc/start", 201, "anonymous"),
        ("GET", "/api/v1/auth/oidc/callback", 303, "li.wei"),
        ("POST", "/api/v1/auth/oidc/exchange", 201, "li.wei"),
    ]
    assert got["code"] not in rows[1].path and got["state"] not in rows[1].path and "code=REDACTED" in rows[1].path


def test_the_subject_not_the_name_identifies_a_linked_user(sso: TestClient, provider: OidcProvider) -> None:
    provider.set_accounts({"u-7": {"preferred_username": "zhang.min"}})
    create_user(sso, "zhang.min")
    v, answer = login(sso, "u-7")
    assert exchange(sso, handoff(answer)["code"], v).json()["user"] == "zhang.min"
    # renamed at the provider: still the same Shanzhi user
    provider.set_accounts({"u-7": {"preferred_username": "zhang.min2"}})
    v, answer = login(sso, "u-7")
    assert exchange(sso, handoff(answer)["code"], v).json()["user"] == "zhang.min"
    # another subject claiming the linked name is refused
    provider.set_accounts({"u-8": {"preferred_username": "zhang.min"}})
    _, answer = login(sso, "u-8")
    assert "already linked" in parse_qs(urlsplit(answer.headers["location"]).query)["error"][0]
    assert users(sso)["zhang.min"]["oidc_subject"] == "u-7"
    # a security administrator mends a wrong link: the next login links again by name
    assert sso.delete("/api/v1/users/zhang.min/oidc").json()["oidc_subject"] is None
    v, answer = login(sso, "u-8")
    assert exchange(sso, handoff(answer)["code"], v).json()["user"] == "zhang.min"
    assert users(sso)["zhang.min"]["oidc_subject"] == "u-8"
    assert sso.delete("/api/v1/users/no.such/oidc").status_code == 404


def test_unknown_users_are_refused_unless_auto_create(
    sso: TestClient, settings: Settings, provider: OidcProvider
) -> None:
    before = set(users(sso))
    _, page = login(sso, "wang.fang", return_to=None)  # shown in the browser: an HTML page
    assert page.status_code == 403 and "there is no Shanzhi user wang.fang" in page.text
    assert "shanzhi user create wang.fang" in page.text
    assert set(users(sso)) == before
    with sso.app.state.db.session() as s:  # type: ignore[attr-defined]
        refused = s.scalars(select(AuditRecord).where(AuditRecord.status == 403)).all()
    assert refused and refused[-1].path.startswith("/api/v1/auth/oidc/callback")

    # a bootstrap administrator's name never links, whatever the provider says
    _, answer = login(sso, "admin")
    assert "bootstrap administrator" in parse_qs(urlsplit(answer.headers["location"]).query)["error"][0]

    with TestClient(create_app(with_sso(settings, provider, oidc_auto_create=True))) as auto:
        auto.headers.update(sso.headers)
        v, answer = login(auto, "wang.fang")
        t = exchange(auto, handoff(answer)["code"], v).json()
        created = users(auto)["wang.fang"]
        assert created["oidc_subject"] == "wang.fang" and created["password"] is False
        me = auto.get("/api/v1/auth/whoami", headers=bearer(t["token"])).json()
        assert me["platform_roles"] == [] and me["vdc_roles"] == []  # default deny: sees nothing
        assert auto.get("/api/v1/vdcs", headers=bearer(t["token"])).status_code == 403


def test_the_code_can_be_shown_and_pasted(sso: TestClient, provider: OidcProvider) -> None:
    create_user(sso, "chen.jie")
    v, page = login(sso, "chen.jie", return_to=None)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    code = page.text.split('<code id="code">')[1].split("</code>")[0]
    assert exchange(sso, code, v).json()["user"] == "chen.jie"


def test_a_handoff_code_works_once_and_only_with_its_verifier(sso: TestClient, provider: OidcProvider) -> None:
    create_user(sso, "liu.yang")
    v, answer = login(sso, "liu.yang")
    code = handoff(answer)["code"]
    other, _ = verifier_pair()
    wrong = exchange(sso, code, other)
    assert wrong.status_code == 401 and "another client" in wrong.json()["detail"]
    again = exchange(sso, code, v)  # burnt by the wrong try
    assert again.status_code == 401 and "unknown, used or expired" in again.json()["detail"]

    v, answer = login(sso, "liu.yang")
    code = handoff(answer)["code"]
    assert exchange(sso, code, v).status_code == 201
    assert exchange(sso, code, v).status_code == 401  # used
    with sso.app.state.db.session() as s:  # type: ignore[attr-defined]
        statuses = s.scalars(
            select(AuditRecord.status).where(AuditRecord.path == "/api/v1/auth/oidc/exchange").order_by(AuditRecord.id)
        ).all()
    assert statuses == [401, 401, 201, 401]


def test_a_callback_is_finished_once_and_expires(sso: TestClient, provider: OidcProvider) -> None:
    create_user(sso, "zhao.lei")
    _, flow = start(sso)
    browser = Browser(sso)
    answer = browser.login(flow["authorization_url"], "zhao.lei", "http://testserver")
    assert answer.status_code == 303
    # the provider's answer replayed after its first use
    replay = sso.get(str(answer.request.url).removeprefix("http://testserver"), headers=anon(sso))
    assert replay.status_code == 401 and "already finished" in replay.json()["detail"]

    _, flow = start(sso)
    with sso.app.state.db.session() as s, s.begin():  # type: ignore[attr-defined]
        s.execute(update(OidcFlow).where(OidcFlow.state == flow["state"]).values(expires_at=utcnow()))
    late = browser.login(flow["authorization_url"], "zhao.lei", "http://testserver")
    assert late.status_code == 401 and "expired" in late.json()["detail"]
    browser.close()


def test_a_refusal_at_the_provider_reaches_the_client(sso: TestClient, provider: OidcProvider) -> None:
    _, flow = start(sso)
    browser = Browser(sso)
    answer = browser.login(flow["authorization_url"], "x", "http://testserver", cancel=True)
    browser.close()
    error = parse_qs(urlsplit(handoff_location := answer.headers["location"]).query)["error"][0]
    assert handoff_location.startswith(LOOPBACK) and "access_denied" in error
    with sso.app.state.db.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(select(OidcFlow).where(OidcFlow.state == flow["state"])) is None  # cannot be finished later


def test_an_answer_naming_another_issuer_is_refused(sso: TestClient, provider: OidcProvider) -> None:
    create_user(sso, "mixup.user")
    _, flow = start(sso)
    browser = Browser(sso)
    callback = browser.authorize(flow["authorization_url"], "mixup.user", "http://testserver")
    browser.close()
    assert "iss=" in callback  # this provider sends RFC 9207's iss parameter
    forged = callback.replace("iss=http%3A%2F%2F127.0.0.1", "iss=http%3A%2F%2F127.0.0.2")
    answer = sso.get(forged.removeprefix("http://testserver"), headers=anon(sso), follow_redirects=False)
    assert "names issuer http://127.0.0.2" in parse_qs(urlsplit(answer.headers["location"]).query)["error"][0]


def test_a_locked_user_cannot_log_in_through_the_provider(sso: TestClient, provider: OidcProvider) -> None:
    create_user(sso, "locked.one")
    assert sso.post("/api/v1/users/locked.one/lock").status_code == 200
    _, page = login(sso, "locked.one", return_to=None)
    assert page.status_code == 423 and "locked" in page.text


def test_bad_requests_are_refused_and_change_nothing(sso: TestClient, settings: Settings) -> None:
    _, challenge = verifier_pair()
    cases = [
        ({"challenge": "short", "return_to": None}, "challenge"),
        ({"challenge": challenge, "return_to": "http://evil.example/cb"}, "loopback"),
        ({"challenge": challenge, "return_to": "http://127.0.0.1/cb"}, "loopback"),  # no port
        ({"challenge": challenge, "return_to": "https://127.0.0.1:9/cb"}, "loopback"),
        ({"challenge": challenge, "extra": 1}, "extra"),
    ]
    for body, word in cases:
        r = sso.post("/api/v1/auth/oidc/start", json=body, headers=anon(sso))
        assert r.status_code == 422 and word in r.text, (body, r.text)
    with sso.app.state.db.session() as s:  # type: ignore[attr-defined]
        assert s.scalars(select(OidcFlow)).all() == []
    r = sso.get("/api/v1/auth/oidc/callback", params={"state": "nope", "code": "x"}, headers=anon(sso))
    assert r.status_code == 401

    with TestClient(create_app(settings)) as plain:  # no provider configured
        assert plain.get("/api/v1/auth/oidc").json() == {"enabled": False}
        r = plain.post("/api/v1/auth/oidc/start", json={"challenge": challenge})
        assert r.status_code == 404 and "not configured" in r.json()["detail"]
        assert plain.post("/api/v1/auth/oidc/exchange", json={"code": "x", "verifier": "v" * 43}).status_code == 404


def test_an_unreachable_provider_is_a_clear_502(settings: Settings, tmp_path: Path) -> None:
    from tests.e2e.harness import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    s = replace(settings, oidc_issuer=dead, oidc_client_secret="x", public_url="http://testserver")
    with TestClient(create_app(s)) as c:
        r = c.post("/api/v1/auth/oidc/start", json={"challenge": verifier_pair()[1]})
        assert r.status_code == 502 and dead in r.json()["detail"] and "did not answer" in r.json()["detail"]


# ------------------------------------------------------------------ the relying party itself
@pytest.fixture
def rp(provider: OidcProvider) -> Iterator[RelyingParty]:
    party = RelyingParty(OidcConfig(provider.issuer, CLIENT_ID, CLIENT_SECRET, CALLBACK))
    yield party
    party.close()


def test_id_tokens_are_checked(rp: RelyingParty, provider: OidcProvider) -> None:
    good = provider.sign({"sub": "u1", "nonce": "n1"})
    assert rp.verify_id_token(good, "n1")["sub"] == "u1"
    forged_key = new_key(provider.key["kid"])  # same key id, a key the provider never published
    now = int(__import__("time").time())
    bad = {
        "wrong nonce": (provider.sign({"sub": "u1", "nonce": "n2"}), "nonce"),
        "other audience": (provider.sign({"sub": "u1", "nonce": "n1", "aud": "someone-else"}), "aud"),
        "other issuer": (provider.sign({"sub": "u1", "nonce": "n1", "iss": "http://127.0.0.1:1"}), "iss"),
        "expired": (provider.sign({"sub": "u1", "nonce": "n1", "iat": now - 900, "exp": now - 600}), "exp"),
        "no subject": (provider.sign({"nonce": "n1"}), "sub"),
        "forged": (provider.sign({"sub": "u1", "nonce": "n1"}, key=forged_key), "signature"),
        "tampered": (good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB"), ""),
        "unsigned": (_unsigned({"iss": provider.issuer, "aud": CLIENT_ID, "sub": "u1", "nonce": "n1"}), ""),
        "several audiences, other azp": (
            provider.sign({"sub": "u1", "nonce": "n1", "aud": [CLIENT_ID, "x"], "azp": "x"}),
            "audiences",
        ),
    }
    for case, (token, word) in bad.items():
        with pytest.raises(Unauthorized) as e:
            rp.verify_id_token(token, "n1")
        assert word.lower() in e.value.detail.lower(), (case, e.value.detail)


def _unsigned(claims: dict[str, Any]) -> str:
    import json

    def b64(d: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none'})}.{b64(claims | {'exp': 2**40, 'iat': 1})}."


def test_a_rotated_provider_key_is_fetched_again(sso: TestClient, provider: OidcProvider, rp: RelyingParty) -> None:
    create_user(sso, "rot.user")
    v, answer = login(sso, "rot.user")
    assert exchange(sso, handoff(answer)["code"], v).status_code == 201
    old = provider.key
    provider.stop()
    provider.start(key=new_key("key-2"))
    try:
        v, answer = login(sso, "rot.user")  # Shanzhi still caches key-1: it must fetch key-2
        assert exchange(sso, handoff(answer)["code"], v).status_code == 201
        with pytest.raises(Unauthorized):  # and a token signed by the retired key no longer verifies
            rp.verify_id_token(provider.sign({"sub": "u", "nonce": "n"}, key=old), "n")
    finally:
        provider.stop()
        provider.start(key=old)


def test_sessions_from_the_provider_expire_like_password_sessions(sso: TestClient, provider: OidcProvider) -> None:
    create_user(sso, "short.lived")
    v, answer = login(sso, "short.lived")
    t = exchange(sso, handoff(answer)["code"], v).json()
    hours = sso.app.state.runtime.settings.session_hours  # type: ignore[attr-defined]
    with sso.app.state.db.session() as s:  # type: ignore[attr-defined]
        u = s.scalar(select(User).where(User.name == "short.lived"))
        assert u is not None and u.oidc_issuer == provider.issuer
    from datetime import datetime

    expires = datetime.fromisoformat(t["expires_at"])
    assert timedelta(hours=hours) - timedelta(minutes=1) < expires - utcnow() <= timedelta(hours=hours)


def test_roles_follow_the_providers_groups(sso: TestClient, provider: OidcProvider) -> None:
    create_user(sso, "group.user", "viewer", "health")  # a grant by hand: groups never touch it
    maps = {}
    for group, role, vdc in (
        ("health-staff", "member", "health"),
        ("auditors", "audit-admin", None),
        ("ops", "system-admin", None),
    ):
        r = sso.post("/api/v1/oidc-group-maps", json={"group": group, "role": role, "vdc": vdc})
        assert r.status_code == 201, r.text
        maps[group] = r.json()["id"]

    def login_with(groups: list[str]) -> Any:
        provider.set_accounts({"u-3": {"preferred_username": "group.user", "groups": groups}})
        v, answer = login(sso, "u-3")
        if answer.status_code != 303 or "code=" not in answer.headers["location"]:
            return answer
        t = exchange(sso, handoff(answer)["code"], v).json()
        return sso.get("/api/v1/auth/whoami", headers=bearer(t["token"])).json()

    def grants() -> set[tuple[str, str | None, str]]:
        return {(g["role"], g["vdc"], g["by"]) for g in sso.get("/api/v1/grants", params={"user": "group.user"}).json()}

    me = login_with(["health-staff", "unmapped"])
    assert sorted(r["role"] for r in me["vdc_roles"]) == ["member", "viewer"] and me["platform_roles"] == []
    assert ("member", "health", "oidc:health-staff") in grants()
    mixed = login_with(["auditors"])  # left health-staff, joined auditors: but holds viewer by hand
    detail = parse_qs(urlsplit(mixed.headers["location"]).query)["error"][0]
    assert "both the platform role audit-admin and VDC roles" in detail
    assert ("viewer", "health", "security") in grants()  # the grant by hand stayed
    hand = next(g for g in sso.get("/api/v1/grants", params={"user": "group.user"}).json() if g["by"] == "security")
    assert sso.delete(f"/api/v1/grants/{hand['id']}").status_code == 200
    me = login_with(["auditors"])
    assert me["platform_roles"] == ["audit-admin"] and me["vdc_roles"] == []
    refused = login_with(["auditors", "ops"])  # two platform roles: never
    detail = parse_qs(urlsplit(refused.headers["location"]).query)["error"][0]
    assert "platform roles are separated" in detail and "group ops gives system-admin" in detail
    before = grants()
    assert ("audit-admin", None, "oidc:auditors") in before
    # removing a map takes its grants away at once
    assert sso.delete(f"/api/v1/oidc-group-maps/{maps['auditors']}").status_code == 200
    assert grants() == before - {("audit-admin", None, "oidc:auditors")}


def test_bad_group_maps_are_refused(sso: TestClient) -> None:
    cases = [
        ({"group": "g", "role": "overlord", "vdc": None}, 422, "unknown role"),
        ({"group": "g", "role": "audit-admin", "vdc": "health"}, 422, "platform role"),
        ({"group": "g", "role": "member", "vdc": None}, 422, "VDC role"),
        ({"group": "g", "role": "member", "vdc": "no/such"}, 404, "no/such"),
        ({"group": " ", "role": "audit-admin", "vdc": None}, 422, "group"),
    ]
    for body, status, word in cases:
        r = sso.post("/api/v1/oidc-group-maps", json=body)
        assert r.status_code == status and word in r.json()["detail"], (body, r.text)
    assert sso.post("/api/v1/oidc-group-maps", json={"group": "g", "role": "audit-admin"}).status_code == 201
    again = sso.post("/api/v1/oidc-group-maps", json={"group": "g", "role": "audit-admin"})
    assert again.status_code == 409
    assert [m["group"] for m in sso.get("/api/v1/oidc-group-maps").json()] == ["g"]
    assert sso.delete("/api/v1/oidc-group-maps/999").status_code == 404
