"""DR operations on a protected app's database: switchover, failback, reprotect, and asking to
activate the remote centre.

Each is asked of Patroni (its REST API, with the platform's credentials: tenants cannot) and
measured here: the request, the candidate running as primary, the old primary back as a
replica. Each run leaves a report; the API call that started it is in the audit trail, whose
commitments go to the directory ledger.

A switchover is planned: Patroni hands over only to a synchronous standby that has everything
(RPO 0); the writes pause for the seconds it takes. Failback is a switchover back to the
production centre after a failover; reprotect checks that every centre's member runs again
and follows (after a failover, Patroni rewinds the returning old primary by itself).

Activating the remote centre (production and same-city both lost) is never automatic: the
request is held for approval (`services.approvals`), and the DR controller carries it out.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.controllers.dr_activate import is_following, is_primary, wait_member
from shanzhi.controllers.dr_backup import kept_backups
from shanzhi.controllers.dr_members import member_site, site_roles
from shanzhi.domain.dr import MEMBERS
from shanzhi.domain.errors import Conflict, InvalidInput
from shanzhi.domain.spec import AppSpec
from shanzhi.dr.patroni import API_USER, api_base
from shanzhi.services.approvals import hold_activation, hold_restore
from shanzhi.services.dr import activation_conflict, cluster_of, restore_conflict
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, ApprovalRequest, DrCluster, DrEtcdMember, DrReport, utcnow

TIMEOUT = 60.0


@dataclass
class Plan:
    """What an operation will do, checked against the last status the DR controller read."""

    kind: str
    app_id: int
    cluster_id: int
    vdc: str
    app: str
    component: str
    leader: str
    leader_api: str
    candidate: str
    candidate_api: str
    target_site: str
    password: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    leader_host: str = ""
    candidate_host: str = ""
    across: bool = False  # from the activated remote cluster to the rebuilt main one (`dr_return`)


def rest_api(url: str | None) -> str:
    """A member's Patroni REST API base (Conflict while the DR controller has not seen it yet)."""
    if not url:
        raise Conflict("a member's REST API is not known yet; wait for `dr status` to list it")
    return api_base(url)


def plan_switchover(
    s: Session, app: App, component: str | None, to_site: str | None, kind: str, data_dir: Path
) -> Plan:
    """Pick the candidate: the running synchronous replica in `to_site` (failback: production)."""
    c = cluster_of(s, app, component)
    members = [m for m in c.status.get("members", []) if m.get("cluster") == "main"]
    leader = next((m for m in members if m["role"] == "primary" and m["state"] == "running"), None)
    if leader is None:
        raise Conflict(f"database {c.component} has no running primary to hand over from; see `dr status`")
    if kind == "failback":
        prod = {r: site for site, r in site_roles(s).items()}.get("production")
        if to_site is not None and to_site != prod:
            raise InvalidInput(f"failback goes to the production centre ({prod}), not {to_site}", field="site")
        to_site = prod
        if leader.get("site") == prod:
            raise Conflict(
                f"database {c.component} already has its primary in production ({prod}): nothing to fail back"
            )
    replicas = [m for m in members if m["role"] == "replica" and m["state"] == "running"]
    if to_site is not None:
        replicas = [m for m in replicas if m.get("site") == to_site]
    if not replicas:
        where = f" in site {to_site}" if to_site else ""
        raise Conflict(f"database {c.component} has no running replica{where} to hand over to; see `dr status`")
    synced = [m for m in replicas if m.get("sync")]
    if not synced:
        names = ", ".join(m["name"] for m in replicas)
        raise Conflict(
            f"{names} is not yet the synchronous standby (it is catching up): a switchover to it could lose "
            "data, so Patroni refuses it; retry in a few seconds (`dr reprotect` says when it is)"
        )
    cand = synced[0]
    return Plan(
        kind, app.id, c.id, app.vdc.path, app.name, c.component, leader["name"], rest_api(leader.get("api")),
        cand["name"], rest_api(cand.get("api")), str(cand.get("site") or ""), c.keys(data_dir)["superuser"],
    )  # fmt: skip


def execute_switchover(plan: Plan) -> dict[str, Any]:
    """Ask Patroni, then watch the candidate become primary and the old leader follow it."""
    auth = (API_USER, plan.password)
    t0 = time.monotonic()
    with httpx.Client(timeout=30.0, auth=auth) as http:
        r = http.post(f"{plan.leader_api}/switchover", json={"leader": plan.leader, "candidate": plan.candidate})
        plan.steps.append({"step": "request", "seconds": round(time.monotonic() - t0, 3), "answer": r.text[:200]})
        if r.status_code != 200:
            raise Conflict(f"Patroni refused the switchover: {r.status_code} {r.text[:200]}")
        promoted = wait_member(http, plan.candidate_api, is_primary, TIMEOUT)
        plan.steps.append({"step": f"{plan.candidate} is primary", "seconds": round(time.monotonic() - t0, 3)})
        if promoted is None:
            raise Conflict(f"{plan.candidate} did not become primary within {TIMEOUT:.0f}s")
        follows = wait_member(http, plan.leader_api, is_following, TIMEOUT)
        plan.steps.append(
            {"step": f"{plan.leader} follows as a replica" if follows else f"{plan.leader} not back yet",
             "seconds": round(time.monotonic() - t0, 3)}
        )  # fmt: skip
    return {
        "component": plan.component, "from": plan.leader, "to": plan.candidate, "site": plan.target_site,
        "timeline": promoted.get("timeline"), "switch_seconds": plan.steps[1]["seconds"],
        "old_primary_follows": bool(follows), "steps": plan.steps,
    }  # fmt: skip


def begin(db: Database, plan: Plan) -> int:
    """The run's report, `running` from the start: the DR controller, seeing the leader change,
    knows it was planned (no failover report) by it."""
    with db.session() as s, s.begin():
        rep = DrReport(
            app_id=plan.app_id, vdc=plan.vdc, app=plan.app, kind=plan.kind, outcome="running",
            summary=f"{plan.kind} of database {plan.component}: {plan.leader} -> {plan.candidate} ...",
            body={"component": plan.component, "from": plan.leader, "to": plan.candidate}, started_at=utcnow(),
        )  # fmt: skip
        s.add(rep)
        s.flush()
        return rep.id


def finish(db: Database, report_id: int, plan: Plan, body: dict[str, Any] | None, error: str | None) -> DrReport:
    """The run's outcome in its report, and an event (failed runs too, with what went wrong)."""
    with db.session() as s, s.begin():
        rep = s.get(DrReport, report_id)
        assert rep is not None
        if error:
            rep.outcome = "failed"
            rep.summary = f"{plan.kind} of database {plan.component} to {plan.candidate} failed: {error}"
            rep.body = {**rep.body, "steps": plan.steps, "error": error}
        else:
            assert body is not None
            rep.outcome = "succeeded"
            rep.summary = (
                f"{plan.kind} of database {plan.component}: {plan.leader} -> {plan.candidate} ({plan.target_site}) "
                f"in {body['switch_seconds']:.1f}s, no data lost (planned)"
            )
            rep.body = body
        rep.finished_at = utcnow()
        record_event(s, f"Database{plan.kind.capitalize()}", "app", plan.app, rep.summary, warning=bool(error),
                     vdc=plan.vdc, app=plan.app)  # fmt: skip
        s.flush()
        s.expunge(rep)
        return rep


def reprotect(s: Session, app: App, component: str | None) -> dict[str, Any]:
    """Is every centre protected again? Each member running and following, with its lag."""
    c: DrCluster = cluster_of(s, app, component)
    members = c.status.get("members", [])
    problems = [f"{m['name']} ({m.get('site')}) is {m['state']}" for m in members if m.get("state") != "running"]
    spec = AppSpec.model_validate(app.spec)
    main = [m for m in members if m.get("cluster") == "main" and m.get("role") == "replica"]
    if spec.spec.dr.rpo_seconds == 0 and main and not any(m.get("sync") for m in main):
        problems.append("no synchronous standby yet (RPO 0 waits for one)")
    sites = {m.get("site") for m in members}
    missing = sorted(site for site in site_roles(s) if site not in sites and _needed(s, app, site))
    problems += [f"no member in {site} yet" for site in missing]
    problems += [
        f"etcd member {m.name} ({m.site.name}) is {m.health or 'not checked yet'}"
        for m in s.scalars(select(DrEtcdMember).order_by(DrEtcdMember.name))
        if m.health != "healthy" and (m.cluster == "quorum" or "remote" in MEMBERS[spec.spec.dr.tier])
    ]
    return {"component": c.component, "protected": not problems, "problems": problems, "members": members}


def _needed(s: Session, app: App, site: str) -> bool:
    spec = AppSpec.model_validate(app.spec)
    n = next((x.replicas for x in spec.spec.databases()), 0)
    return any(member_site(s, spec, o) == site for o in range(n))


#: how recent the DR controller's read of the main cluster must be for its primary to count as alive
FRESH_SECONDS = 60


def request_activation(s: Session, app: App, component: str | None, requester: str, note: str) -> ApprovalRequest:
    """Ask to promote the remote centre's standby cluster (production and same-city lost): refused
    while the main cluster has a running primary the controller saw lately; otherwise held for
    approval. The DR controller checks again, by connecting, before it promotes."""
    spec = AppSpec.model_validate(app.spec)
    tier = spec.spec.dr.tier
    if "remote" not in MEMBERS[tier]:
        raise InvalidInput(f"app {app.name}'s tier {tier} has no remote centre to activate", field="spec.dr.tier")
    c = cluster_of(s, app, component)
    why = activation_conflict(c)
    if why:
        raise Conflict(why)
    members = c.status.get("members", [])
    fresh = (utcnow() - c.updated_at).total_seconds() < FRESH_SECONDS
    alive = [
        m for m in members if m.get("cluster") == "main" and m.get("role") == "primary" and m["state"] == "running"
    ]
    if fresh and alive:
        m = alive[0]
        raise Conflict(
            f"database {c.component} still has a running primary, {m['name']} in {m.get('site')}: activating the "
            "remote centre now would make two primaries. Use `dr switchover`, or ask again once production and "
            "same-city are both lost"
        )
    if not any(m.get("cluster") == "remote" and m.get("host") for m in members):
        raise Conflict(f"database {c.component} has no member in the remote centre yet; see `dr status`")
    return hold_activation(s, app, {"component": c.component, "note": note}, requester)


def request_restore(
    s: Session, app: App, component: str | None, to: datetime, requester: str, note: str
) -> ApprovalRequest:
    """Ask to restore the app's database in place to `to`: everything written after it is given
    up, so it is held for approval (as an activation is); refused at once when no base backup
    reaches back to `to`, when one is under way, when the remote centre leads, or when a member
    is lost. Once approved, the DR controller carries it out (`controllers.dr_restore`)."""
    now = utcnow()
    if to > now:
        raise InvalidInput(f"{to.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})", field="to")
    c = cluster_of(s, app, component)
    why = restore_conflict(s, c)
    if why:
        raise Conflict(why)
    kept = [b for b in kept_backups(s, app.id, c.component) if b.finished_at and b.finished_at <= to]
    if not kept:
        raise InvalidInput(f"no base backup of {c.component} finished before {to.isoformat()}: see `dr backups` for "
                           "the window a restore can reach", field="to")  # fmt: skip
    return hold_restore(s, app, {"component": c.component, "to": to.isoformat(), "note": note}, requester)
