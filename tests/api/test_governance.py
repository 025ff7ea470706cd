"""Approvals (multi-stage, reject, expire, comment), strict quotas, metering and chargeback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update

from shanzhi.controllers.housekeeping import expire_approvals, meter
from shanzhi.store.tables import App, ApprovalRequest, Instance, UsageRecord, Vdc
from tests.api.conftest import Tenants, app_spec

V1 = "/api/v1"


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    return dict(r.json())


def _rule(t: Tenants, **body: Any) -> None:
    r = t.api.post(f"{V1}/approval-rules", json=body)
    assert r.status_code == 201, r.text


def _app_count(t: Tenants) -> int:
    with t.api.app.state.db.session() as s:
        return len(list(s.scalars(select(App))))


# ------------------------------------------------------------------ approvals
def test_a_held_apply_changes_nothing_until_every_stage_approves(tenants: Tenants) -> None:
    sec = tenants.as_("security")
    assert sec.post(f"{V1}/users", json={"name": "cio", "password": "correct-horse-battery-9"}).is_success
    tenants.tokens["cio"] = tenants.api.post(
        f"{V1}/auth/login", json={"user": "cio", "password": "correct-horse-battery-9"}
    ).json()["token"]
    _rule(tenants, vdc="gz", name="big", conditions={"cpuOver": "1"}, stages=[["role:vdc-admin"], ["cio"]])
    member = tenants.as_("hmember")
    small = member.post(f"{V1}/apps", json=app_spec("small", "gz/health", cpu="500m"))
    assert small.status_code == 201  # under the threshold: applied at once
    before_usage = tenants.api.get(f"{V1}/vdcs/gz/health").json()["usage"]
    apps_before = _app_count(tenants)
    held = member.post(f"{V1}/apps", json=app_spec("big", "gz/health", cpu="2"))
    assert held.status_code == 202 and held.json()["outcome"] == "held" and held.json()["app"] is None
    req = held.json()["approval"]
    assert req["status"] == "pending" and "more than 1" in req["reasons"][0]["why"]
    assert [st["approvers"] for st in req["stages"]] == [["role:vdc-admin"], ["cio"]]
    # pending changes nothing: no app, no usage
    problem(member.get(f"{V1}/apps/big"), 404)
    assert _app_count(tenants) == apps_before
    assert tenants.api.get(f"{V1}/vdcs/gz/health").json()["usage"] == before_usage
    # applying the same again returns the same request, not a second one
    again = member.post(f"{V1}/apps", json=app_spec("big", "gz/health", cpu="2")).json()["approval"]
    assert again["id"] == req["id"]
    rid = req["id"]
    # wrong people, wrong order
    problem(member.post(f"{V1}/approvals/{rid}/approve", json={}), 403)  # the requester is no approver
    problem(tenants.as_("hviewer").post(f"{V1}/approvals/{rid}/approve", json={}), 403)
    problem(tenants.as_("cio").post(f"{V1}/approvals/{rid}/approve", json={}), 403)  # stage 2 before stage 1
    problem(tenants.as_("tmember").get(f"{V1}/approvals/{rid}"), 404)  # another department: invisible
    # the cio sees it (an approver of a later stage) and can comment
    assert tenants.as_("cio").post(f"{V1}/approvals/{rid}/comment", json={"text": "after the audit"}).is_success
    one = tenants.as_("hadmin").post(f"{V1}/approvals/{rid}/approve", json={"comment": "ok"}).json()
    assert one["status"] == "pending" and one["stage"] == 1 and one["stages"][0]["by"] == "hadmin"
    problem(member.get(f"{V1}/apps/big"), 404)  # still nothing
    done = tenants.as_("cio").post(f"{V1}/approvals/{rid}/approve", json={}).json()
    assert done["status"] == "approved" and "created" in done["outcome"]
    assert member.get(f"{V1}/apps/big").json()["generation"] == 1
    assert done["comments"][0]["by"] == "cio"
    problem(tenants.as_("hadmin").post(f"{V1}/approvals/{rid}/approve", json={}), 409)  # decided
    reasons = [e["reason"] for e in member.get(f"{V1}/events", params={"app": "big"}).json()]
    assert reasons[:1] == ["ApprovalRequested"] and "ApprovalDecided" in reasons and "AppApplied" in reasons


def test_the_approval_list_shows_each_caller_exactly_what_they_may_see(tenants: Tenants) -> None:
    """The list filters in SQL; each caller's list must equal the requests whose single get
    answers them (the visibility rule in Python), for every status filter."""
    from shanzhi.services.approvals import _visible
    from shanzhi.services.identity import caller

    # approvers by user from another department, by platform role, and by VDC role
    _rule(tenants, vdc="gz/health", name="cross", conditions={"cpuOver": "1"}, stages=[["tmember"]])
    _rule(tenants, vdc="gz/transport", name="sec", conditions={"always": True}, stages=[["role:security-admin"]])
    _rule(tenants, vdc="gz/health/it", name="it", conditions={"always": True}, stages=[["role:vdc-admin"]])
    ids = [
        tenants.as_("hmember").post(f"{V1}/apps", json=app_spec("big", "gz/health", cpu="2")),
        tenants.as_("tmember").post(f"{V1}/apps", json=app_spec("bus", "gz/transport")),
        tenants.as_("itmember").post(f"{V1}/apps", json=app_spec("it1", "gz/health/it")),
        tenants.as_("itmember").post(f"{V1}/apps", json=app_spec("it2", "gz/health/it")),
    ]
    assert all(r.status_code == 202 for r in ids), [r.text for r in ids]
    rid = [r.json()["approval"]["id"] for r in ids]
    db = tenants.api.app.state.db
    with db.session() as s, s.begin():  # one of them lapses, not yet marked by housekeeping
        s.execute(update(ApprovalRequest).where(ApprovalRequest.id == rid[3]).values(expires_at=datetime.now(UTC)))
    assert tenants.as_("hadmin").post(f"{V1}/approvals/{rid[2]}/reject", json={}).status_code == 200
    for who in ("admin", "security", "audit", "hadmin", "hmember", "hviewer", "itmember", "tmember", "nobody"):
        with db.session() as s:
            p = caller(s, tenants.tokens[who]).principal
            now = datetime.now(UTC)
            visible = {  # id -> status as a get would show it (a lapsed pending one is expired)
                r.id: "expired" if r.status == "pending" and r.expires_at <= now else r.status
                for r in s.scalars(select(ApprovalRequest))
                if _visible(p, r)
            }
        for status in (None, "pending", "rejected", "expired"):
            params = {"status": status} if status else {}
            listed = [a["id"] for a in tenants.as_(who).get(f"{V1}/approvals", params=params).json()]
            want = [i for i, st in sorted(visible.items()) if status in (None, st)]
            assert listed == want, (who, status, listed, want)
    assert tenants.as_("hviewer").get(f"{V1}/approvals", params={"status": "bogus"}).status_code == 422
    # spot checks of the rule itself
    assert [a["id"] for a in tenants.as_("security").get(f"{V1}/approvals").json()] == [rid[1]]
    assert rid[0] in [a["id"] for a in tenants.as_("tmember").get(f"{V1}/approvals").json()]
    assert tenants.as_("nobody").get(f"{V1}/approvals").json() == []


def test_a_delete_rule_holds_deletes_not_applies(tenants: Tenants) -> None:
    from shanzhi.store.tables import AuditRecord

    _rule(tenants, vdc="gz/health", name="keep", conditions={"deletes": True}, stages=[["role:vdc-admin"]])
    member, vadmin = tenants.as_("hmember"), tenants.as_("hadmin")
    assert member.post(f"{V1}/apps", json=app_spec("fresh", "gz/health")).status_code == 201  # applies pass
    held = member.delete(f"{V1}/apps/records")
    assert held.status_code == 202 and held.json()["outcome"] == "held", held.text
    req = held.json()["approval"]
    assert req["action"] == "delete" and req["reasons"][0]["why"] == "deleting an app needs approval"
    assert member.get(f"{V1}/apps/records").json()["deleting"] is False  # nothing changed
    assert member.delete(f"{V1}/apps/records").json()["approval"]["id"] == req["id"]  # the same request
    # a rejected delete changes nothing; an approved one deletes
    fresh = member.delete(f"{V1}/apps/fresh").json()["approval"]["id"]
    assert vadmin.post(f"{V1}/approvals/{fresh}/reject", json={}).json()["status"] == "rejected"
    assert member.get(f"{V1}/apps/fresh").json()["status"] != "Deleting"
    done = vadmin.post(f"{V1}/approvals/{req['id']}/approve", json={}).json()
    assert done["status"] == "approved" and "deleted" in done["outcome"]
    assert member.get(f"{V1}/apps/records").json()["status"] == "Deleting"
    # another department, no rule: deleted at once
    plain = tenants.as_("tmember").delete(f"{V1}/apps/buses")
    assert plain.status_code == 202 and plain.json()["outcome"] == "deleting"
    with tenants.api.app.state.db.session() as s:
        outcomes = {
            (r.actor, r.path): r.outcome for r in s.scalars(select(AuditRecord).where(AuditRecord.method == "DELETE"))
        }
    assert outcomes[("hmember", f"{V1}/apps/records")] == "held"
    assert outcomes[("tmember", f"{V1}/apps/buses")] == "success"
    r = tenants.api.post(
        f"{V1}/approval-rules", json={"vdc": "gz", "name": "x", "conditions": {"deletes": "yes"}, "stages": [["a"]]}
    )
    assert r.status_code == 422 and "deletes must be true or false" in r.text


def test_reject_and_expiry_apply_nothing(tenants: Tenants) -> None:
    _rule(tenants, vdc="gz/health", name="all", conditions={"always": True}, stages=[["role:vdc-admin"]])
    member = tenants.as_("hmember")
    r1 = member.post(f"{V1}/apps", json=app_spec("one", "gz/health")).json()["approval"]["id"]
    rejected = tenants.as_("hadmin").post(f"{V1}/approvals/{r1}/reject", json={"comment": "no"}).json()
    assert rejected["status"] == "rejected"
    problem(member.get(f"{V1}/apps/one"), 404)
    r2 = member.post(f"{V1}/apps", json=app_spec("two", "gz/health")).json()["approval"]["id"]
    db = tenants.api.app.state.db
    with db.session() as s, s.begin():
        s.execute(
            update(ApprovalRequest)
            .where(ApprovalRequest.id == r2)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        assert expire_approvals(s) == 1
    assert member.get(f"{V1}/approvals/{r2}").json()["status"] == "expired"
    problem(tenants.as_("hadmin").post(f"{V1}/approvals/{r2}/approve", json={}), 409)
    problem(member.get(f"{V1}/apps/two"), 404)
    # the transport department is not covered by a gz/health rule
    assert tenants.as_("tmember").post(f"{V1}/apps", json=app_spec("three", "gz/transport")).status_code == 201


def test_site_rule_holds_only_apps_that_may_land_there(tenants: Tenants) -> None:
    _rule(tenants, vdc="gz", name="remote", conditions={"sites": ["site-b"]}, stages=[["role:system-admin"]])
    member = tenants.as_("hmember")
    pinned_a = member.post(f"{V1}/apps", json=app_spec("a", "gz/health", clouds={"names": ["city-a"]}))
    assert pinned_a.status_code == 201
    anywhere = member.post(f"{V1}/apps", json=app_spec("b", "gz/health"))
    assert anywhere.status_code == 202 and "site-b" in anywhere.json()["approval"]["reasons"][0]["why"]
    rid = anywhere.json()["approval"]["id"]
    assert tenants.api.post(f"{V1}/approvals/{rid}/approve", json={}).json()["status"] == "approved"


def test_approval_that_no_longer_fits_the_quota_fails_and_changes_nothing(tenants: Tenants) -> None:
    _rule(tenants, vdc="gz/health", name="all", conditions={"always": True}, stages=[["role:vdc-admin"]])
    rid = tenants.as_("hmember").post(f"{V1}/apps", json=app_spec("x", "gz/health", cpu="6")).json()
    rid = rid["approval"]["id"]
    tenants.api.put(f"{V1}/vdcs/gz/health/quota", json={"quota": {"cpu": "4"}})
    out = tenants.as_("hadmin").post(f"{V1}/approvals/{rid}/approve", json={}).json()
    assert out["status"] == "failed" and "quota exceeded" in out["outcome"]
    problem(tenants.api.get(f"{V1}/apps/x"), 404)


def test_bad_rules_are_refused(tenants: Tenants) -> None:
    h = tenants.as_("hadmin")
    base = {"vdc": "gz/health", "name": "r", "stages": [["role:vdc-admin"]]}
    assert (
        "unknown condition"
        in problem(h.post(f"{V1}/approval-rules", json={**base, "conditions": {"x": 1}}), 422)["detail"]
    )
    problem(h.post(f"{V1}/approval-rules", json={**base, "conditions": {}}), 422)
    problem(h.post(f"{V1}/approval-rules", json={**base, "conditions": {"cpuOver": "lots"}}), 422)
    bad_role = {**base, "conditions": {"always": True}, "stages": [["role:king"]]}
    problem(h.post(f"{V1}/approval-rules", json=bad_role), 422)
    problem(h.post(f"{V1}/approval-rules", json={**base, "vdc": "gz/transport", "conditions": {"always": True}}), 404)
    problem(tenants.as_("hmember").post(f"{V1}/approval-rules", json={**base, "conditions": {"always": True}}), 403)
    assert h.get(f"{V1}/approval-rules").json() == []


# ------------------------------------------------------------------ strict quotas
def test_strict_parent_refuses_children_that_add_up_to_more(tenants: Tenants) -> None:
    api = tenants.api
    assert api.post(f"{V1}/vdcs", json={"path": "city", "quota": {"cpu": "10"}, "strict": True}).status_code == 201
    assert api.post(f"{V1}/vdcs", json={"path": "city/a", "quota": {"cpu": "6"}}).status_code == 201
    assert api.post(f"{V1}/vdcs", json={"path": "city/b", "quota": {"cpu": "4"}}).status_code == 201
    over = problem(api.post(f"{V1}/vdcs", json={"path": "city/c", "quota": {"cpu": "1"}}), 422)
    assert "city is strict" in over["detail"] and over["field"] == "quota.cpu"
    problem(api.put(f"{V1}/vdcs/city/a/quota", json={"quota": {"cpu": "7"}}), 422)
    problem(api.put(f"{V1}/vdcs/city/quota", json={"quota": {"cpu": "9"}}), 422)  # below what it gave out
    assert api.post(f"{V1}/vdcs", json={"path": "city/c"}).status_code == 201  # no limit of its own: fine
    # without strict mode children may be promised more than the parent has (usage still rolls up)
    assert api.put(f"{V1}/vdcs/city/quota", json={"strict": False}).json()["strict"] is False
    assert api.put(f"{V1}/vdcs/city/a/quota", json={"quota": {"cpu": "7"}}).status_code == 200
    # turning strict on again is refused while the children do not fit
    problem(api.put(f"{V1}/vdcs/city/quota", json={"strict": True}), 422)
    assert api.get(f"{V1}/vdcs/city").json()["strict"] is False


def test_storage_is_a_quota_resource(tenants: Tenants) -> None:
    api = tenants.api
    assert api.put(f"{V1}/vdcs/gz/transport/quota", json={"quota": {"storage": "10Gi"}}).status_code == 200
    spec = app_spec("disk", "gz/transport", replicas=3)
    spec["spec"]["components"][0]["resources"]["storage"] = "4Gi"
    over = problem(tenants.as_("tmember").post(f"{V1}/apps", json=spec), 403)
    assert over["vdc"] == "gz/transport" and over["resource"] == "storage" and over["limit"] == 10 * 2**30
    spec["spec"]["components"][0]["replicas"] = 2
    assert tenants.as_("tmember").post(f"{V1}/apps", json=spec).status_code == 201
    assert api.get(f"{V1}/vdcs/gz").json()["usage"]["storage"] == 8 * 2**30


# ------------------------------------------------------------------ metering and chargeback
def test_metering_splits_at_hours_and_bills_per_subtree(tenants: Tenants) -> None:
    db = tenants.api.app.state.db
    t0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    with db.session() as s, s.begin():
        from shanzhi.store.tables import Cloud

        clouds = {c.name: c for c in s.scalars(select(Cloud))}
        for app_name, vdc, cloud, cpu in (
            ("records", "gz/health", "city-a", 500),
            ("buses", "gz/transport", "city-b", 2000),
        ):
            app = s.scalar(select(App).join(Vdc).where(App.name == app_name, Vdc.path == vdc))
            assert app is not None
            s.add(
                Instance(
                    name=f"{app_name}-0",
                    app=app,
                    component="main",
                    spec_hash="x",
                    cloud=clouds[cloud],
                    host="h0",
                    cpu=cpu,
                    memory=2**30,
                    storage=10 * 2**30,
                    state="running",
                )
            )
        assert meter(s, t0) == 0  # the first call sets the mark
        assert meter(s, t0 + timedelta(minutes=90)) == 5400
        stopped = s.scalar(select(Instance).where(Instance.name == "buses-0"))
        assert stopped is not None
        stopped.state = "exited"
        assert meter(s, t0 + timedelta(minutes=100)) == 600  # only records runs for these 10 minutes
    with db.session() as s:
        rows = {(u.instance, u.hour.hour): u.seconds for u in s.scalars(select(UsageRecord))}
    assert rows == {
        ("records-0", 9): 1800,
        ("records-0", 10): 3600,
        ("records-0", 11): 600,
        ("buses-0", 9): 1800,
        ("buses-0", 10): 3600,
    }
    admin = tenants.api
    assert admin.put(f"{V1}/rates/city-a", json={"cpu": "0.10", "memory": "0.02", "storage": "0.001"}).is_success
    problem(admin.put(f"{V1}/rates/nowhere", json={"cpu": "1"}), 404)
    problem(admin.put(f"{V1}/rates/city-a", json={"cpu": "-1"}), 422)
    period = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-01T00:00:00Z"}
    bill = admin.get(f"{V1}/bill", params=period).json()
    lines = {(ln["vdc"], ln["cloud"]): ln for ln in bill["lines"]}
    health = lines[("gz/health", "city-a")]
    # records: 0.5 core x 100 min = 0.8333 core-h; 1 GiB x 100 min; 10 GiB x 100 min
    hours = Decimal(100) / 60
    assert Decimal(health["cpu_core_hours"]) == (Decimal("0.5") * hours).quantize(Decimal("0.0001"))
    expected_cost = Decimal("0.5") * hours * Decimal("0.10") + hours * Decimal("0.02") + 10 * hours * Decimal("0.001")
    assert Decimal(health["cost"]) == expected_cost.quantize(Decimal("0.0001"))
    assert Decimal(lines[("gz/transport", "city-b")]["cpu_core_hours"]) == Decimal("3.0000")
    assert bill["unpriced_clouds"] == ["city-b"]
    # a department admin gets only their subtree; another department's is invisible
    mine = tenants.as_("hadmin").get(f"{V1}/bill", params=period).json()
    assert {ln["vdc"] for ln in mine["lines"]} == {"gz/health"}
    problem(tenants.as_("hadmin").get(f"{V1}/bill", params={**period, "vdc": "gz/transport"}), 404)
    problem(tenants.as_("hmember").get(f"{V1}/bill", params=period), 403)
    problem(admin.get(f"{V1}/bill", params={"from": "2026-11-01T00:00:00", "to": "2026-12-01T00:00:00Z"}), 422)
    problem(admin.get(f"{V1}/bill", params={"from": period["to"], "to": period["from"]}), 422)
    usage = admin.get(f"{V1}/usage", params={**period, "vdc": "gz/health"}).json()
    assert [(u["instance"], u["seconds"]) for u in usage] == [("records-0", s) for s in (1800, 3600, 600)]
