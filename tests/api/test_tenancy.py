"""Identities, separated administrators, VDC isolation, fail-closed audit (in-process API, both backends)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select, text, update

from shanzhi.domain.errors import Unauthorized
from shanzhi.store.tables import AuditOutbox, AuditRecord, Token, utcnow
from tests.api.conftest import PASSWORD, Tenants, app_spec, bearer, delivered

V1 = "/api/v1"


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["detail"]
    return body


def login(api: TestClient, user: str, password: str) -> Any:
    return TestClient(api.app).post(f"{V1}/auth/login", json={"user": user, "password": password})


# ------------------------------------------------------------------ identities
def test_login_whoami_logout(tenants: Tenants) -> None:
    r = login(tenants.api, "hmember", PASSWORD)
    assert r.status_code == 201 and r.json()["token"].startswith("szt_") and r.json()["expires_at"]
    me = TestClient(tenants.api.app, headers=bearer(r.json()["token"]))
    who = me.get(f"{V1}/auth/whoami").json()
    assert who["user"] == "hmember" and who["vdc_roles"] == [{"vdc": "gz/health", "role": "member"}]
    assert me.post(f"{V1}/auth/logout").status_code == 200
    assert "revoked" in problem(me.get(f"{V1}/auth/whoami"), 401)["detail"]


def test_wrong_password_and_unknown_user_look_the_same_and_lock_out(tenants: Tenants) -> None:
    unknown = problem(login(tenants.api, "no-such-user", "whatever-password"), 401)
    wrong = problem(login(tenants.api, "hviewer", "wrong-password!"), 401)
    assert unknown["detail"] == wrong["detail"] == "wrong user name or password"
    for _ in range(4):  # five failures in all
        problem(login(tenants.api, "hviewer", "wrong-password!"), 401)
    locked = problem(login(tenants.api, "hviewer", PASSWORD), 423)  # even the right password
    assert "locked after 5 failed logins" in locked["detail"]
    # a security administrator unlocks it
    assert tenants.as_("security").post(f"{V1}/users/hviewer/unlock").status_code == 200
    assert login(tenants.api, "hviewer", PASSWORD).status_code == 201
    user = tenants.as_("security").get(f"{V1}/users/hviewer").json()
    assert user["failed_logins"] == 0 and user["roles"][0]["role"] == "viewer"
    # the audit trail tells failures from successes (a failure is committed, then refused)
    with tenants.api.app.state.db.session() as s:  # type: ignore[attr-defined]
        rows = s.execute(
            select(AuditRecord.actor, AuditRecord.status, AuditRecord.outcome)
            .where(AuditRecord.path == f"{V1}/auth/login", AuditRecord.actor.in_(["hviewer", "no-such-user"]))
            .order_by(AuditRecord.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("hviewer", 201, "success"),  # the fixture's login
        ("no-such-user", 401, "denied"),
        *[("hviewer", 401, "denied")] * 5,
        ("hviewer", 423, "denied"),
        ("hviewer", 201, "success"),
    ]


def test_lock_out_does_not_tell_who_exists(tenants: Tenants) -> None:
    """Five wrong passwords lock a real user and a made-up name alike: the same statuses and words."""

    def attempts(user: str) -> list[tuple[int, str]]:
        out = []
        for _ in range(7):
            r = login(tenants.api, user, "wrong-password!")
            out.append((r.status_code, r.json()["detail"].replace(user, "NAME").split(" until ")[0]))
        return out

    real, phantom = attempts("hviewer"), attempts("no-such-user")
    assert real == phantom
    assert [status for status, _ in real] == [401] * 5 + [423] * 2
    # a user locked by an administrator is not revealed to someone without the password
    assert tenants.as_("security").post(f"{V1}/users/hmember/lock").status_code == 200
    assert problem(login(tenants.api, "hmember", "wrong-password!"), 401)["detail"] == "wrong user name or password"
    assert "locked by an administrator" in problem(login(tenants.api, "hmember", PASSWORD), 423)["detail"]


def test_dead_tokens_are_pruned_after_a_month_live_ones_never(tenants: Tenants) -> None:
    from shanzhi.controllers.housekeeping import prune_credentials

    me = tenants.as_("tmember")
    ids = {
        name: me.post(f"{V1}/tokens", json={"name": name}).json()["id"]
        for name in ("old-rev", "new-rev", "old-exp", "live")
    }
    now = utcnow()
    db = tenants.api.app.state.db
    with db.session() as s, s.begin():
        s.execute(update(Token).where(Token.id == ids["old-rev"]).values(revoked_at=now - timedelta(days=31)))
        s.execute(update(Token).where(Token.id == ids["new-rev"]).values(revoked_at=now - timedelta(days=1)))
        s.execute(update(Token).where(Token.id == ids["old-exp"]).values(expires_at=now - timedelta(days=31)))
    with db.session() as s, s.begin():
        assert prune_credentials(s) == 2
    names = {t["name"] for t in me.get(f"{V1}/tokens").json()}
    assert {"new-rev", "live"} <= names and not {"old-rev", "old-exp"} & names
    with db.session() as s, s.begin():
        assert prune_credentials(s) == 0  # nothing more to do


def test_an_expired_password_must_be_replaced_at_login(tenants: Tenants) -> None:
    from shanzhi.store.tables import User

    db = tenants.api.app.state.db
    with db.session() as s, s.begin():
        s.execute(update(User).where(User.name == "hviewer").values(password_changed_at=utcnow() - timedelta(days=91)))
    expired = problem(login(tenants.api, "hviewer", PASSWORD), 403)
    assert "more than 90 days old and has expired" in expired["detail"]

    def relogin(new: str) -> Any:
        body = {"user": "hviewer", "password": PASSWORD, "new_password": new}
        return tenants.api.post(f"{V1}/auth/login", json=body, headers={"Authorization": ""})

    assert "differ" in problem(relogin(PASSWORD), 422)["detail"]
    assert "at least 3 of" in problem(relogin("weakweakweak"), 422)["detail"]
    assert problem(login(tenants.api, "hviewer", PASSWORD), 403)  # nothing changed by the refusals
    bad = tenants.api.post(
        f"{V1}/auth/login", json={"user": "hviewer", "password": "Wrong-pass-1", "new_password": "Fresh-pass-2026"}
    )
    assert bad.status_code == 401  # the new password needs the right old one
    assert relogin("Fresh-pass-2026").status_code == 201
    assert problem(login(tenants.api, "hviewer", PASSWORD), 401)  # the old one is gone
    assert login(tenants.api, "hviewer", "Fresh-pass-2026").status_code == 201  # and the new one is not expired
    with db.session() as s:
        refused = s.scalars(
            select(AuditRecord.status).where(AuditRecord.actor == "hviewer", AuditRecord.path == f"{V1}/auth/login")
        ).all()
    assert 403 in refused  # the expired login is in the audit trail


def test_login_sessions_end_when_idle_api_tokens_do_not(tenants: Tenants) -> None:
    from shanzhi.services.identity import caller

    session = login(tenants.api, "hviewer", PASSWORD).json()
    api_token = tenants.as_("hviewer").post(f"{V1}/tokens", json={"name": "script"}).json()
    assert session["name"].startswith("login from")
    db = tenants.api.app.state.db
    long_ago = utcnow() - timedelta(minutes=31)  # the default idle limit is 30 minutes
    with db.session() as s, s.begin():
        s.execute(update(Token).where(Token.id.in_([session["id"], api_token["id"]])).values(last_used_at=long_ago))
    idle = problem(TestClient(tenants.api.app).get(f"{V1}/auth/whoami", headers=bearer(session["token"])), 401)
    assert "ended after 30 minutes without use" in idle["detail"]
    assert TestClient(tenants.api.app).get(f"{V1}/auth/whoami", headers=bearer(api_token["token"])).status_code == 200
    with db.session() as s:  # a session never used since it began ends the same way
        s.execute(update(Token).where(Token.id == session["id"]).values(last_used_at=None, created_at=long_ago))
        with pytest.raises(Unauthorized):
            caller(s, session["token"], timedelta(minutes=30))
        assert caller(s, session["token"], None).principal.user == "hviewer"  # idle limit off


def test_locked_user_tokens_stop_working(tenants: Tenants) -> None:
    assert tenants.as_("hmember").get(f"{V1}/apps").status_code == 200
    assert tenants.as_("security").post(f"{V1}/users/hmember/lock").status_code == 200
    assert "revoked" in problem(tenants.as_("hmember").get(f"{V1}/apps"), 401)["detail"]
    assert problem(login(tenants.api, "hmember", PASSWORD), 423)


def test_a_reset_lock_or_delete_ends_every_session_and_token(tenants: Tenants) -> None:
    sec = tenants.as_("security")

    def credentials(user: str) -> list[TestClient]:
        session = login(tenants.api, user, PASSWORD).json()["token"]
        api_token = TestClient(tenants.api.app, headers=bearer(session)).post(f"{V1}/tokens", json={"name": "ci"})
        return [TestClient(tenants.api.app, headers=bearer(t)) for t in (session, api_token.json()["token"])]

    def ended(clients: list[TestClient]) -> bool:
        return all(c.get(f"{V1}/auth/whoami").status_code == 401 for c in clients)

    held = credentials("hmember")
    assert sec.put(f"{V1}/users/hmember/password", json={"password": "Reset-by-security-1"}).status_code == 200
    assert ended(held) and ended([tenants.as_("hmember")])
    held = credentials("hviewer")
    assert sec.post(f"{V1}/users/hviewer/lock").status_code == 200
    assert sec.post(f"{V1}/users/hviewer/unlock").status_code == 200
    assert ended(held)  # unlocking does not bring them back
    held = credentials("itmember")
    assert sec.delete(f"{V1}/users/itmember").status_code == 200
    assert ended(held)
    # changing one's own password ends the other sessions, not the one that changed it
    held = credentials("tmember")
    me = held[0]
    r = me.put(f"{V1}/auth/password", json={"password": "Changed-by-me-22", "old_password": PASSWORD})
    assert r.status_code == 200
    assert me.get(f"{V1}/auth/whoami").status_code == 200 and ended(held[1:]) and ended([tenants.as_("tmember")])


def test_every_token_expires(tenants: Tenants) -> None:
    me = tenants.as_("tmember")
    never = problem(me.post(f"{V1}/tokens", json={"name": "forever", "expires_in_days": None}), 422)
    assert "expires_in_days" in never["detail"]
    long = problem(me.post(f"{V1}/tokens", json={"name": "long", "expires_in_days": 366}), 422)
    assert "longer than the 365 days" in long["detail"]
    made = me.post(f"{V1}/tokens", json={"name": "year", "expires_in_days": 365}).json()
    assert made["expires_at"]
    with tenants.api.app.state.db.session() as s:
        assert s.scalar(select(Token.id).where(Token.expires_at.is_(None))) is None  # bootstrap tokens too


def test_tokens_are_created_listed_revoked_and_expire(tenants: Tenants) -> None:
    me = tenants.as_("tmember")
    made = me.post(f"{V1}/tokens", json={"name": "ci", "expires_in_days": 30})
    assert made.status_code == 201
    secret, tid = made.json()["token"], made.json()["id"]
    ci = TestClient(tenants.api.app, headers=bearer(secret))
    assert ci.get(f"{V1}/auth/whoami").json()["user"] == "tmember"
    listed = me.get(f"{V1}/tokens").json()
    assert {t["name"] for t in listed} >= {"ci"} and all("token" not in t for t in listed)
    assert all(t["user"] == "tmember" for t in listed)
    # nobody else's tokens for a plain user; a security administrator sees all
    problem(me.get(f"{V1}/tokens", params={"all": True}), 403)
    assert {t["user"] for t in tenants.as_("security").get(f"{V1}/tokens", params={"all": True}).json()} >= {
        "tmember",
        "hmember",
        "admin",
    }
    # someone else's token id is as good as unknown
    problem(tenants.as_("hmember").delete(f"{V1}/tokens/{tid}"), 404)
    assert me.delete(f"{V1}/tokens/{tid}").json()["revoked_at"]
    assert "revoked" in problem(ci.get(f"{V1}/auth/whoami"), 401)["detail"]
    # expiry
    other = me.post(f"{V1}/tokens", json={"name": "short"}).json()
    with tenants.api.app.state.db.session() as s, s.begin():
        s.execute(update(Token).where(Token.id == other["id"]).values(expires_at=utcnow() - timedelta(seconds=1)))
    short = TestClient(tenants.api.app, headers=bearer(other["token"]))
    assert "expired" in problem(short.get(f"{V1}/auth/whoami"), 401)["detail"]
    problem(me.post(f"{V1}/tokens", json={"name": "forever", "expires_in_days": 4000}), 422)


def test_bad_user_input_is_refused(tenants: Tenants) -> None:
    sec = tenants.as_("security")
    assert "too short" in problem(sec.post(f"{V1}/users", json={"name": "zed", "password": "short"}), 422)["detail"]
    weak = problem(sec.post(f"{V1}/users", json={"name": "zed", "password": "onlylowercaseletters"}), 422)
    assert "at least 3 of" in weak["detail"] and "(it has 1)" in weak["detail"]
    named = problem(sec.post(f"{V1}/users", json={"name": "zed", "password": "Zed-is-me-2026"}), 422)
    assert "user name" in named["detail"]
    assert sec.post(f"{V1}/users", json={"name": "zed", "password": "Three-kinds-ok"}).status_code == 201
    me = tenants.as_("hviewer")  # the same rules when changing one's own password
    weak = problem(me.put(f"{V1}/auth/password", json={"password": "lowercase-only", "old_password": PASSWORD}), 422)
    assert "(it has 2)" in weak["detail"]
    problem(sec.post(f"{V1}/users", json={"name": "Bad Name", "password": PASSWORD}), 422)
    problem(sec.post(f"{V1}/users", json={"name": "hmember", "password": PASSWORD}), 409)
    problem(sec.post(f"{V1}/grants", json={"user": "nobody", "role": "overlord"}), 422)
    problem(sec.post(f"{V1}/grants", json={"user": "nobody", "role": "member"}), 422)  # VDC role needs a VDC
    problem(sec.post(f"{V1}/grants", json={"user": "ghost", "role": "member", "vdc": "gz"}), 404)
    assert sec.get(f"{V1}/users/nobody").json()["roles"] == []


def test_passwords_are_argon2_hashes(tenants: Tenants) -> None:
    from shanzhi.store.tables import User

    with tenants.api.app.state.db.session() as s:
        h = s.scalar(select(User.password_hash).where(User.name == "hmember"))
    assert h is not None and h.startswith("$argon2id$") and PASSWORD not in h


def test_change_own_password_needs_the_old_one(tenants: Tenants) -> None:
    me = tenants.as_("tmember")
    problem(me.put(f"{V1}/auth/password", json={"password": "a-new-password-1", "old_password": "nope"}), 401)
    assert me.put(f"{V1}/auth/password", json={"password": "a-new-password-1", "old_password": PASSWORD}).is_success
    assert login(tenants.api, "tmember", "a-new-password-1").status_code == 201
    problem(login(tenants.api, "tmember", PASSWORD), 401)


# ------------------------------------------------------------------ separated administrators
def test_platform_roles_do_not_cross(tenants: Tenants) -> None:
    sys_, sec, aud = tenants.as_("admin"), tenants.as_("security"), tenants.as_("audit")
    # the system administrator runs the platform but cannot read or erase audit, nor manage people
    assert sys_.get(f"{V1}/apps").status_code == 200
    problem(sys_.get(f"{V1}/audit"), 403)
    problem(sys_.post(f"{V1}/audit/prune", json={}), 403)
    problem(sys_.post(f"{V1}/users", json={"name": "eve", "password": PASSWORD}), 403)
    problem(sys_.post(f"{V1}/grants", json={"user": "nobody", "role": "system-admin"}), 403)
    # the security administrator manages people, not resources or audit
    problem(sec.post(f"{V1}/apps", json=app_spec("x", "gz")), 403)
    problem(sec.get(f"{V1}/apps"), 403)
    problem(sec.get(f"{V1}/audit"), 403)
    # the audit administrator reads audit and the ledger, and changes nothing
    assert aud.get(f"{V1}/audit").status_code == 200
    assert aud.get(f"{V1}/audit/verify").json()["ok"] is True
    assert aud.get(f"{V1}/ledger/status").status_code == 200
    problem(aud.post(f"{V1}/vdcs", json={"path": "audit-made"}), 403)
    problem(aud.delete(f"{V1}/apps/records", params={"vdc": "gz/health"}), 403)
    problem(aud.get(f"{V1}/apps"), 403)
    # nobody gets two platform roles
    assert sec.post(f"{V1}/grants", json={"user": "nobody", "role": "audit-admin"}).status_code == 201
    held = problem(sec.post(f"{V1}/grants", json={"user": "nobody", "role": "system-admin"}), 409)
    assert "separated" in held["detail"]


def test_platform_administrators_hold_no_vdc_role(tenants: Tenants) -> None:
    """The review's two detours around the three-way separation, and the reverse."""
    sec, hadmin = tenants.as_("security"), tenants.as_("hadmin")
    whoami = {who: tenants.as_(who).get(f"{V1}/auth/whoami").json()["user"] for who in ("security", "audit")}
    # the security administrator grants itself vdc-admin on gz
    selfie = problem(sec.post(f"{V1}/grants", json={"user": whoami["security"], "role": "vdc-admin", "vdc": "gz"}), 409)
    assert "may hold no VDC role" in selfie["detail"]
    # a VDC administrator makes the auditor a vdc-admin of its department
    aud = problem(
        hadmin.post(f"{V1}/grants", json={"user": whoami["audit"], "role": "vdc-admin", "vdc": "gz/health"}), 409
    )
    assert "may hold no VDC role" in aud["detail"]
    # and a department member is never made a platform administrator while holding VDC roles
    up = problem(sec.post(f"{V1}/grants", json={"user": "hmember", "role": "audit-admin"}), 409)
    assert "holds VDC roles" in up["detail"]
    # nothing changed: the auditor still cannot touch apps, the member is still only a member
    problem(tenants.as_("audit").post(f"{V1}/apps", json=app_spec("x", "gz/health")), 403)
    assert [(g["role"], g["vdc"]) for g in sec.get(f"{V1}/grants", params={"user": "hmember"}).json()] == [
        ("member", "gz/health")
    ]
    assert sec.get(f"{V1}/grants", params={"user": whoami["security"]}).json()[0]["role"] == "security-admin"


def test_no_role_means_no_access(tenants: Tenants) -> None:
    nobody = tenants.as_("nobody")
    period = "from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z"
    for path in ("/apps", "/vdcs", "/clouds", "/instances", "/events", "/audit", "/users", f"/bill?{period}"):
        assert nobody.get(V1 + path).status_code == 403, path
    assert nobody.get(f"{V1}/auth/whoami").json()["user"] == "nobody"
    assert nobody.get(f"{V1}/apps").json()["status"] == 403


# ------------------------------------------------------------------ VDC isolation
def test_a_member_cannot_learn_that_another_vdcs_app_exists(tenants: Tenants) -> None:
    t = tenants.as_("tmember")  # member of gz/transport; "records" lives in gz/health
    assert [a["name"] for a in t.get(f"{V1}/apps").json()] == ["buses"]
    assert [v["path"] for v in t.get(f"{V1}/vdcs").json()] == ["gz/transport"]
    assert all(e["vdc"] == "gz/transport" for e in t.get(f"{V1}/events").json())
    assert t.get(f"{V1}/instances", params={"vdc": "gz/health"}).json() == []
    assert t.get(f"{V1}/apps", params={"vdc": "gz/health"}).json() == []

    def same(existing: Any, missing: Any, secret: str, missing_name: str) -> None:
        a, b = existing.json(), missing.json()
        assert existing.status_code == missing.status_code == 404
        assert a["detail"].replace(secret, "?") == b["detail"].replace(missing_name, "?")

    same(t.get(f"{V1}/apps/records"), t.get(f"{V1}/apps/nothere"), "records", "nothere")
    same(
        t.get(f"{V1}/apps/records", params={"vdc": "gz/health"}),
        t.get(f"{V1}/apps/nothere", params={"vdc": "gz/health"}),
        "records",
        "nothere",
    )
    same(t.get(f"{V1}/events", params={"app": "records"}), t.get(f"{V1}/events", params={"app": "zz"}), "records", "zz")
    same(t.get(f"{V1}/vdcs/gz/health"), t.get(f"{V1}/vdcs/gz/nothere"), "gz/health", "gz/nothere")
    same(
        t.delete(f"{V1}/apps/records", params={"vdc": "gz/health"}),
        t.delete(f"{V1}/apps/nothere", params={"vdc": "gz/health"}),
        "records",
        "nothere",
    )
    same(
        t.post(f"{V1}/apps", json=app_spec("records", "gz/health")),
        t.post(f"{V1}/apps", json=app_spec("records", "gz/nothere")),
        "gz/health",
        "gz/nothere",
    )
    # the app is untouched
    assert tenants.api.get(f"{V1}/apps/records").json()["generation"] == 1


def test_roles_inherit_down_the_tree_not_up_or_sideways(tenants: Tenants) -> None:
    it = tenants.as_("itmember")  # member of gz/health/it only
    problem(it.get(f"{V1}/apps/records"), 404)  # in gz/health: above
    assert it.post(f"{V1}/apps", json=app_spec("tool", "gz/health/it")).status_code == 201
    member = tenants.as_("hmember")  # member of gz/health sees and changes gz/health/it too
    assert {a["name"] for a in member.get(f"{V1}/apps").json()} == {"records", "tool"}
    assert member.post(f"{V1}/apps", json=app_spec("tool", "gz/health/it", cpu="200m")).status_code == 200


def test_viewer_reads_but_cannot_change(tenants: Tenants) -> None:
    v = tenants.as_("hviewer")
    assert [a["name"] for a in v.get(f"{V1}/apps").json()] == ["records"]
    denied = problem(v.post(f"{V1}/apps", json=app_spec("records", "gz/health", cpu="200m")), 403)
    assert "app.write" in denied["detail"]
    problem(v.delete(f"{V1}/apps/records"), 403)
    assert tenants.api.get(f"{V1}/apps/records").json()["generation"] == 1


def test_vdc_admin_manages_below_not_their_own_quota(tenants: Tenants) -> None:
    h = tenants.as_("hadmin")
    assert h.post(f"{V1}/vdcs", json={"path": "gz/health/lab", "quota": {"cpu": "1"}}).status_code == 201
    assert h.put(f"{V1}/vdcs/gz/health/lab/quota", json={"quota": {"cpu": "2"}}).status_code == 200
    problem(h.put(f"{V1}/vdcs/gz/health/quota", json={"quota": {"cpu": "16"}}), 403)  # their own
    problem(h.post(f"{V1}/vdcs", json={"path": "gz/other"}), 404)  # beside: invisible
    problem(h.put(f"{V1}/vdcs/gz/transport/quota", json={"quota": {"cpu": "1"}}), 404)
    # grants: VDC roles in their subtree only, never platform roles
    assert h.post(f"{V1}/grants", json={"user": "nobody", "role": "viewer", "vdc": "gz/health/lab"}).is_success
    problem(h.post(f"{V1}/grants", json={"user": "nobody", "role": "system-admin"}), 403)
    problem(h.post(f"{V1}/grants", json={"user": "nobody", "role": "member", "vdc": "gz/transport"}), 404)
    grants = h.get(f"{V1}/grants").json()
    assert grants and all(g["vdc"] and g["vdc"].startswith("gz/health") for g in grants)
    assert tenants.as_("nobody").get(f"{V1}/auth/whoami").json()["vdc_roles"] == [
        {"vdc": "gz/health/lab", "role": "viewer"}
    ]
    # deleting the VDC takes its grants with it
    assert h.delete(f"{V1}/vdcs/gz/health/lab").status_code == 200
    assert tenants.as_("nobody").get(f"{V1}/auth/whoami").json()["vdc_roles"] == []


# ------------------------------------------------------------------ audit
def test_audit_records_who_with_what_role_from_where(tenants: Tenants) -> None:
    tenants.as_("hmember").post(f"{V1}/apps", json=app_spec("new", "gz/health"))
    tenants.as_("tmember").get(f"{V1}/apps/records")  # a 404: not recorded (not privileged, not a change)
    tenants.as_("hviewer").post(f"{V1}/apps", json=app_spec("x", "gz/health"))  # refused: recorded
    rows = tenants.as_("audit").get(f"{V1}/audit", params={"limit": 5000}).json()
    applied = [r for r in rows if r["actor"] == "hmember" and r["method"] == "POST" and r["path"] == "/api/v1/apps"]
    assert applied and applied[-1]["role"] == "member@gz/health" and applied[-1]["action"] == "app.write"
    assert applied[-1]["target"] == "app gz/health/new" and applied[-1]["source"] and applied[-1]["status"] == 201
    refused = [r for r in rows if r["actor"] == "hviewer" and r["method"] == "POST"]
    assert refused[-1]["outcome"] == "denied" and refused[-1]["status"] == 403
    assert not [r for r in rows if r["actor"] == "tmember" and r["method"] == "GET"]
    logins = [r for r in rows if r["path"] == "/api/v1/auth/login"]
    assert {r["actor"] for r in logins} >= {"hmember", "tmember"}
    # privileged reads are recorded: the listing above is there now
    again = tenants.as_("audit").get(f"{V1}/audit", params={"since": rows[-1]["id"]}).json()
    assert again[0]["method"] == "GET" and again[0]["actor"] == "auditor" and again[0]["action"] == "audit.read"


def test_audit_fails_closed(tenants: Tenants) -> None:
    """If the audit record cannot be written, the change is not made and the request fails;
    a privileged read returns no data."""
    db = tenants.api.app.state.db
    sqlite = db.is_sqlite
    with db.engine.begin() as c:
        if sqlite:
            c.exec_driver_sql(
                "CREATE TRIGGER audit_full BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"
            )
        else:
            c.exec_driver_sql(
                "CREATE FUNCTION audit_full() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'audit disk full'; END $$"
                " LANGUAGE plpgsql"
            )
            c.exec_driver_sql(
                "CREATE TRIGGER audit_full BEFORE INSERT ON audit FOR EACH ROW EXECUTE FUNCTION audit_full()"
            )
    try:
        admin = TestClient(tenants.api.app, raise_server_exceptions=False, headers=dict(tenants.api.headers))
        assert admin.post(f"{V1}/vdcs", json={"path": "gz/unaudited"}).status_code == 500
        assert admin.post(f"{V1}/apps", json=app_spec("unaudited", "gz/health")).status_code == 500
        aud = TestClient(tenants.api.app, raise_server_exceptions=False, headers=bearer(tenants.tokens["audit"]))
        withheld = aud.get(f"{V1}/audit")
        assert withheld.status_code == 500 and "withheld" in withheld.json()["detail"]
        assert admin.get(f"{V1}/apps").status_code == 200  # ordinary reads still work
    finally:
        with db.engine.begin() as c:
            c.exec_driver_sql("DROP TRIGGER audit_full" + ("" if sqlite else " ON audit"))
            if not sqlite:
                c.exec_driver_sql("DROP FUNCTION audit_full()")
    problem(tenants.api.get(f"{V1}/vdcs/gz/unaudited"), 404)
    problem(tenants.api.get(f"{V1}/apps/unaudited"), 404)


def test_retention_prunes_only_old_records_and_the_chain_still_verifies(tenants: Tenants) -> None:
    from shanzhi.controllers.housekeeping import prune_audit

    aud = tenants.as_("audit")
    problem(aud.post(f"{V1}/audit/prune", json={"before": utcnow().isoformat()}), 422)  # younger than 180 days
    assert aud.post(f"{V1}/audit/prune", json={}).json()["pruned"] == 0
    db = tenants.api.app.state.db
    delivered(tenants.api)  # a record the ledger still owes is never pruned
    with db.session() as s, s.begin():
        before = s.scalar(select(text("count(*)")).select_from(AuditRecord))
        n = prune_audit(s, 180, now=utcnow() + timedelta(days=181))  # as if half a year had passed
    assert n == before
    tenants.api.post(f"{V1}/vdcs", json={"path": "gz/after"})
    report = aud.get(f"{V1}/audit/verify").json()
    assert report["ok"] and report["pruned"] == n and report["records"] >= 2
    # tampering with a kept record is still caught
    with db.session() as s, s.begin():
        first = s.scalar(select(AuditRecord).order_by(AuditRecord.id).limit(1))
        assert first is not None
        first.actor = "someone-else"
    assert "changed" in aud.get(f"{V1}/audit/verify").json()["problem"]


def test_audit_verify_finds_records_without_their_ledger_commitment(tenants: Tenants) -> None:
    from shanzhi.store import audit as chain

    aud = tenants.as_("audit")
    delivered(tenants.api)
    report = aud.get(f"{V1}/audit/verify").json()
    copies = report["ledger_copies"]
    assert report["ok"] and copies["checked"] == report["records"] and copies["pending"] == 0, report
    # the system administrator reads the ledger, but an audit entry there tells nothing of the record
    admin = tenants.as_("admin")
    size = admin.get(f"{V1}/ledger/status").json()["size"]
    entries = [admin.get(f"{V1}/ledger/entries/{i}").json()["entry"] for i in range(size)]
    assert entries and all('"commitment"' in e and "hmember" not in e and "/api/v1" not in e for e in entries)
    # a record whose copy was lost (as the review's kill -9 left 26) is named
    db = tenants.api.app.state.db
    with db.session() as s, s.begin():  # its outbox row gone before delivery
        rec = AuditRecord(actor="x", method="POST", path="/p", status=201, outcome="success")
        lost = chain.append(s, rec, to_ledger=True).id
        s.execute(delete(AuditOutbox).where(AuditOutbox.audit_id == lost))
    report = aud.get(f"{V1}/audit/verify").json()
    assert not report["ok"] and report["ledger_copies"]["missing"] == [lost]
    assert "no ledger copy" in report["problem"]
    with db.session() as s, s.begin():
        s.execute(delete(AuditRecord).where(AuditRecord.id == lost))
    # a copy that is not the record's own commitment is named too
    with db.session() as s, s.begin():
        a, b = s.scalars(select(AuditRecord).where(AuditRecord.ledger_index.is_not(None)).limit(2)).all()
        a.ledger_index, b.ledger_index = b.ledger_index, a.ledger_index
    report = aud.get(f"{V1}/audit/verify").json()
    assert sorted(report["ledger_copies"]["wrong"]) == sorted([a.id, b.id])
