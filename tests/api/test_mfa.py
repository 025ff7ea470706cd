"""The second factor: enrolment, login with a code, replay, lock-out, recovery codes, reset."""

from __future__ import annotations

import time
from typing import Any

import pyotp
from fastapi.testclient import TestClient
from sqlalchemy import select

from shanzhi.config import Settings
from shanzhi.store.tables import AuditRecord, User
from tests.api.conftest import PASSWORD, Tenants, bearer

V1 = "/api/v1"


def login(api: TestClient, user: str, **extra: Any) -> Any:
    return TestClient(api.app).post(f"{V1}/auth/login", json={"user": user, "password": PASSWORD, **extra})


def enrol(api: TestClient, token: str) -> tuple[pyotp.TOTP, list[str]]:
    me = TestClient(api.app, headers=bearer(token))
    r = me.post(f"{V1}/auth/mfa/enroll")
    assert r.status_code == 201, r.text
    assert r.json()["uri"].startswith("otpauth://totp/Shanzhi:")
    totp = pyotp.TOTP(r.json()["secret"])
    r = me.post(f"{V1}/auth/mfa/confirm", json={"code": totp.now()})
    assert r.status_code == 200, r.text
    return totp, r.json()["recovery_codes"]


def next_code(totp: pyotp.TOTP) -> str:
    """A code of the next time step (the current one was used by the enrolment)."""
    return totp.at(time.time() + totp.interval)


def test_a_platform_administrator_must_enrol_before_doing_anything(tenants: Tenants) -> None:
    api, sec = tenants.api, tenants.as_("security")
    assert sec.post(f"{V1}/users", json={"name": "auditor2", "password": PASSWORD}).status_code == 201
    assert sec.post(f"{V1}/grants", json={"user": "auditor2", "role": "audit-admin"}).status_code == 201
    r = login(api, "auditor2")
    assert r.status_code == 201 and r.json()["restricted"] == "mfa-enroll" and "mfa enroll" in r.json()["next"]
    first = TestClient(api.app, headers=bearer(r.json()["token"]))
    assert first.get(f"{V1}/auth/whoami").json()["restricted"] == "mfa-enroll"
    refused = first.get(f"{V1}/audit")
    assert refused.status_code == 403 and "enrol a second factor" in refused.json()["detail"]
    totp, codes = enrol(api, r.json()["token"])
    assert len(codes) == 10 and len(set(codes)) == 10
    assert first.get(f"{V1}/auth/whoami").status_code == 401  # the restricted session ended
    # now a login needs the code
    owed = login(api, "auditor2")
    assert (
        owed.status_code == 401 and owed.json()["field"] == "otp" and owed.json()["title"] == "Second factor required"
    )
    code = next_code(totp)
    ok = login(api, "auditor2", otp=code)
    assert ok.status_code == 201 and "restricted" not in ok.json()
    assert TestClient(api.app, headers=bearer(ok.json()["token"])).get(f"{V1}/audit").status_code == 200
    replay = login(api, "auditor2", otp=code)  # the same code again, within its 30 s
    assert replay.status_code == 401 and "already used" in replay.json()["detail"]
    # a recovery code works once
    assert login(api, "auditor2", otp=codes[0]).status_code == 201
    assert login(api, "auditor2", otp=codes[0]).status_code == 401
    # a platform administrator cannot turn it off
    me = TestClient(api.app, headers=bearer(ok.json()["token"]))
    assert me.post(f"{V1}/auth/mfa/disable", json={"code": codes[1]}).status_code == 409


def test_wrong_codes_count_toward_the_lock_out(tenants: Tenants) -> None:
    api = tenants.api
    r = login(api, "hmember")
    totp, _ = enrol(api, r.json()["token"])
    for _ in range(4):
        assert login(api, "hmember", otp="000000").status_code == 401
    assert login(api, "hmember", otp="999999").status_code == 401  # the fifth wrong code
    locked = login(api, "hmember", otp=next_code(totp))
    assert locked.status_code == 423 and "locked after 5 failed logins" in locked.json()["detail"]


def test_secrets_are_sealed_and_a_reset_starts_over(tenants: Tenants) -> None:
    api, sec = tenants.api, tenants.as_("security")
    totp, _ = enrol(api, login(api, "hviewer").json()["token"])
    with api.app.state.db.session() as s:  # type: ignore[attr-defined]
        stored = s.scalar(select(User.mfa_secret).where(User.name == "hviewer"))
    assert stored and totp.secret not in stored  # encrypted with the data dir's mfa.key
    session = login(api, "hviewer", otp=next_code(totp)).json()["token"]
    assert sec.delete(f"{V1}/users/hviewer/mfa").status_code == 200
    assert TestClient(api.app, headers=bearer(session)).get(f"{V1}/auth/whoami").status_code == 401
    again = login(api, "hviewer")  # a viewer needs no second factor: a plain session again
    assert again.status_code == 201 and "restricted" not in again.json()
    with api.app.state.db.session() as s:  # type: ignore[attr-defined]
        actions = set(s.scalars(select(AuditRecord.path).where(AuditRecord.path.like("%mfa%"))))
    assert {f"{V1}/auth/mfa/enroll", f"{V1}/auth/mfa/confirm", f"{V1}/users/hviewer/mfa"} <= actions


def test_a_member_may_turn_their_second_factor_off_with_a_code(tenants: Tenants) -> None:
    api = tenants.api
    totp, codes = enrol(api, login(api, "tmember").json()["token"])
    me = TestClient(api.app, headers=bearer(login(api, "tmember", otp=next_code(totp)).json()["token"]))
    wrong = me.post(f"{V1}/auth/mfa/disable", json={"code": "123456"})
    assert wrong.status_code == 422 and wrong.json()["field"] == "code"
    assert me.post(f"{V1}/auth/mfa/disable", json={"code": codes[3]}).json() == {"user": "tmember", "mfa": False}
    assert login(api, "tmember").status_code == 201


def test_require_mfa_makes_everyone_enrol(settings: Settings) -> None:
    from dataclasses import replace

    from shanzhi.api import create_app

    with TestClient(create_app(replace(settings, require_mfa=True))) as api:
        security = (settings.data_dir / "security.token").read_text().strip()
        sec = TestClient(api.app, headers=bearer(security))
        assert sec.post(f"{V1}/users", json={"name": "clerk", "password": PASSWORD}).status_code == 201
        r = login(api, "clerk")
        assert r.status_code == 201 and r.json()["restricted"] == "mfa-enroll"


def test_single_sign_on_owes_the_code_unless_the_provider_asked_for_one(tenants: Tenants) -> None:
    """The handoff step of an OIDC login (the provider's part is in test_oidc): `amr` decides."""
    import secrets
    from datetime import timedelta

    from shanzhi.services import oidc as sso
    from shanzhi.services.identity import Policy
    from shanzhi.services.mfa import MfaRequired
    from shanzhi.store.tables import OidcFlow, utcnow

    api = tenants.api
    totp, _ = enrol(api, login(api, "hadmin").json()["token"])
    rt = api.app.state.runtime  # type: ignore[attr-defined]
    cfg = sso.OidcConfig("https://sso.example", "c", "s", "https://x/cb", mfa_amr=("mfa", "otp"))

    def handoff(amr: list[str]) -> tuple[str, str]:
        verifier = secrets.token_urlsafe(43)
        with rt.db.session() as s, s.begin():
            flow = OidcFlow(
                state=secrets.token_hex(8), nonce="n", code_verifier="v", client_challenge=sso.challenge_of(verifier),
                expires_at=utcnow() + timedelta(minutes=5),
            )  # fmt: skip
            s.add(flow)
            s.flush()
            code, _ = sso.finish(s, cfg, flow, {"sub": "s-1", "preferred_username": "hadmin", "amr": amr})
        return code, verifier

    code, verifier = handoff(["pwd"])  # a password at the provider: the code is still owed
    with rt.db.session() as s, s.begin():
        try:
            sso.redeem(s, code, verifier, Policy(), None, rt.vault)
        except MfaRequired:
            pass
        else:
            raise AssertionError("a login without its second factor was let in")
    with rt.db.session() as s, s.begin():  # the same handoff, now with the code
        _, token = sso.redeem(s, code, verifier, Policy(), next_code(totp), rt.vault)
        assert token.restricted is None
    code, verifier = handoff(["pwd", "otp"])  # the provider asked for a second factor itself
    with rt.db.session() as s, s.begin():
        _, token = sso.redeem(s, code, verifier, Policy(), None, rt.vault)
        assert token.restricted is None and token.user.name == "hadmin"
