"""/dr and the DR parts of sites and apps: the topology, site roles, a protected app's
databases (members, roles, timelines, lag, connection) and the reports of what happened."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from pydantic import AwareDatetime

from shanzhi.api import views
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.threads import slow
from shanzhi.controllers import dr_backup
from shanzhi.domain.errors import Conflict
from shanzhi.domain.rbac import Principal
from shanzhi.services import dr as svc
from shanzhi.services import dr_ops, dr_plans, dr_return
from shanzhi.services.apps import find_app
from shanzhi.store.tables import DrReport, utcnow

router = APIRouter(tags=["dr"])


def _report(r: DrReport) -> dict[str, Any]:
    return {
        "id": r.id, "vdc": r.vdc, "app": r.app, "kind": r.kind, "outcome": r.outcome, "summary": r.summary,
        "body": r.body, "started_at": r.started_at.isoformat(),
        "finished_at": r.finished_at.isoformat() if r.finished_at else None,
    }  # fmt: skip


@router.get("/dr/topology")
def topology(rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Sites with their DR roles, clouds and quorum members; the links between the centres; and
    for each tier, what the topology still lacks to give it (null: it can)."""
    with rt.db.read() as s, s.begin():
        return svc.topology(s)


@router.put("/sites/{name}/dr-role")
def set_site_role(
    request: Request,
    name: str,
    role: str | None = Body(..., embed=True, description="production, same-city, remote, arbiter or null"),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    """Give a site its DR role (one site per role), or take it away with null."""
    with transaction(request) as s:
        site = svc.set_role(s, name, None if role in (None, "none") else role)
        out = {"site": site.name, "role": site.dr_role}
    rt.wake()
    return out


@router.get("/apps/{name}/dr")
def app_dr(
    name: str, vdc: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    """A protected app's tier and databases: each member's centre, role, state, timeline and lag
    in bytes; the leader; the connection string (its password masked)."""
    with rt.db.read() as s, s.begin():
        return svc.status(s, find_app(s, name, vdc, p.scope("app.read")))


@router.get("/apps/{name}/dr/plans")
def app_dr_plans(
    name: str, vdc: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    """A protected app's recovery plans: for each operation its tier allows, whether it runs by
    itself, its ordered steps (database, then services, then checks) with this topology's sites
    and approvers, and its last run."""
    with rt.db.read() as s, s.begin():
        return dr_plans.plans(s, find_app(s, name, vdc, p.scope("app.read")))


@router.get("/apps/{name}/dr/credentials")
def app_dr_credentials(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    """The same, with the connection string's password: for those who may change the app."""
    with rt.db.session() as s, s.begin():
        app = find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        request.state.target = f"app {app.vdc.path}/{app.name}"
        return svc.status(s, app, reveal=rt.settings.data_dir)


@router.get("/dr/reports")
def reports(
    app: str | None = Query(None),
    vdc: str | None = Query(None),
    limit: int = Query(50, ge=1, le=1000),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[dict[str, Any]]:
    """Failovers, switchovers and drills, newest last: steps, timings, measured RTO and RPO."""
    scope = p.scope("app.read")
    with rt.db.read() as s, s.begin():
        if app is not None:
            return [_report(r) for r in svc.reports(s, find_app(s, app, vdc, scope), limit)]
        return [_report(r) for r in svc.reports(s, None, limit) if scope.contains(r.vdc)]


def _planned(request: Request, p: Principal, name: str, vdc: str | None, component: str | None, site: str | None,
             kind: str) -> dict[str, Any]:  # fmt: skip
    rt: Runtime = request.app.state.runtime
    with transaction(request) as s:
        app = find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        request.state.target = f"app {app.vdc.path}/{app.name}"
        across = kind == "failback" and svc.cluster_of(s, app, component).remote_leads
        plan = (
            dr_return.plan_failback(s, app, component, rt.settings.data_dir)
            if across
            else dr_ops.plan_switchover(s, app, component, site, kind, rt.settings.data_dir)
        )
    report = dr_ops.begin(rt.db, plan)
    try:
        body = dr_return.execute_failback(plan) if across else dr_ops.execute_switchover(plan)
    except Exception as err:
        dr_ops.finish(rt.db, report, plan, None, str(err))
        raise
    done = dr_ops.finish(rt.db, report, plan, body, None)
    if across:
        dr_return.end_activation(rt.db, plan.cluster_id)
    return _report(done)


@router.post("/apps/{name}/dr/switchover")
@slow
def switchover(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    component: str | None = Body(None, embed=True, description="the database (default: the app's first)"),
    site: str | None = Body(None, embed=True, description="the site to move the primary to (default: any replica)"),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """A planned switchover (no data lost): Patroni hands the primary to a synchronous replica.
    Answers once the new primary runs, with the report (steps and timings)."""
    return _planned(request, p, name, vdc, component, site, "switchover")


@router.post("/apps/{name}/dr/failback")
@slow
def failback(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    component: str | None = Body(None, embed=True),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """After a failover: the primary back to the production centre, as a planned switchover.
    After an activation of the remote centre (and `dr reprotect`): from the remote cluster to the
    rebuilt main one, with nothing lost."""
    return _planned(request, p, name, vdc, component, None, "failback")


def _writable(request: Request, p: Principal, name: str, vdc: str | None, component: str | None) -> tuple[int, str]:
    """The app (one the caller may change) and its database: (app id, component)."""
    rt: Runtime = request.app.state.runtime
    with rt.db.session() as s, s.begin():
        app = find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        request.state.target = f"app {app.vdc.path}/{app.name}"
        return app.id, svc.cluster_of(s, app, component).component


def _done(report: DrReport) -> dict[str, Any]:
    """A finished operation's report; a failed one is a 409 that says why (its report stays)."""
    if report.outcome != "succeeded":
        raise Conflict(report.summary)
    return _report(report)


@router.post("/apps/{name}/dr/activate-remote", status_code=202)
@slow
def activate_remote(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    component: str | None = Body(None, embed=True, description="the database (default: the app's first)"),
    note: str = Body("", embed=True, max_length=500, description="why, for the approvers"),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """Ask to promote the remote centre's standby cluster when production and same-city are both
    lost: refused while the main cluster has a running primary; otherwise held for approval
    (rules that say `activations`, else a system administrator other than you). Once approved,
    the DR controller checks that no old primary accepts writes, fences the main cluster (its
    members are not started again) and promotes the remote one; `dr reports` tells the outcome
    and the data it could not recover."""
    with transaction(request) as s:
        app = find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        request.state.target = f"app {app.vdc.path}/{app.name}"
        held = dr_ops.request_activation(s, app, component, p.user, note)
        request.state.audit_outcome = "held"
        return views.approval(held)


@router.post("/apps/{name}/dr/backups")
@slow
def backup(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    component: str | None = Body(None, embed=True, description="the database (default: the app's first)"),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """A base backup now (`pg_basebackup` from a running member); answers when it is done, with
    its report. The WAL in between is archived all the time."""
    rt: Runtime = request.app.state.runtime
    app_id, comp = _writable(request, p, name, vdc, component)
    return _done(dr_backup.take_backup(rt.db, rt.settings.data_dir, app_id, comp))


@router.get("/apps/{name}/dr/backups")
def backups(
    name: str,
    vdc: str | None = Query(None),
    component: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    """The kept base backups, oldest first, and the window a restore can reach: from the end of
    the oldest to the last archived WAL."""
    with rt.db.read() as s, s.begin():
        app = find_app(s, name, vdc, p.scope("app.read"))
        comp = svc.cluster_of(s, app, component).component
        app_id = app.id
    kept = dr_backup.backups(rt.db, app_id, comp)
    return {
        "component": comp,
        "backups": [_report(r) for r in kept],
        "restorable_from": kept[0].finished_at.isoformat() if kept and kept[0].finished_at else None,
        "archived_until": dr_backup.archived_until(rt.settings.data_dir, app_id, comp),
    }


@router.post("/apps/{name}/dr/restore")
@slow
def restore(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    to: AwareDatetime = Body(..., embed=True, description="the time to restore to, with its zone"),
    component: str | None = Body(None, embed=True),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """A copy of the database as it was at `to` (the newest base backup before it, replayed from
    the WAL archive), running on its own: the running cluster is not touched. Answers once the
    copy is open, with the report (the time it recovered to, how to connect)."""
    rt: Runtime = request.app.state.runtime
    app_id, comp = _writable(request, p, name, vdc, component)
    return _done(dr_backup.restore(rt.db, rt.settings.data_dir, app_id, comp, to))


@router.post("/apps/{name}/dr/restore-in-place", status_code=202)
def restore_in_place(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    to: AwareDatetime = Body(..., embed=True, description="the time to restore to, with its zone"),
    component: str | None = Body(None, embed=True, description="the database (default: the app's first)"),
    note: str = Body("", embed=True, max_length=500, description="why, for the approvers"),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """Ask to restore the database itself to `to`: everything written after it is given up.
    Refused when no base backup reaches back that far, while the remote centre leads, or while a
    member is lost; otherwise held for approval (rules that say `activations`, else a system
    administrator other than you). Once approved, the DR controller recovers a copy to `to`,
    stops every member, and starts the cluster again from the copy; `dr reports` tells how it went."""
    with transaction(request) as s:
        app = find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        request.state.target = f"app {app.vdc.path}/{app.name}"
        held = dr_ops.request_restore(s, app, component, to, p.user, note)
        request.state.audit_outcome = "held"
        return views.approval(held)


@router.post("/apps/{name}/dr/test")
@slow
def drill(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    component: str | None = Body(None, embed=True),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """A recovery drill: the newest backup and the archive brought up to now in a copy of its
    own, checked, and measured (RTO, RPO); production is not touched. `dr cleanup` removes it."""
    rt: Runtime = request.app.state.runtime
    app_id, comp = _writable(request, p, name, vdc, component)
    return _done(dr_backup.restore(rt.db, rt.settings.data_dir, app_id, comp, utcnow(), drill=True))


@router.post("/apps/{name}/dr/cleanup")
@slow
def cleanup(
    request: Request, name: str, vdc: str | None = Query(None), p: Principal = Depends(principal)
) -> dict[str, Any]:
    """Stop and remove the app's restored copies and drills."""
    rt: Runtime = request.app.state.runtime
    app_id, _ = _writable(request, p, name, vdc, None)
    return {"removed": dr_backup.cleanup(rt.db, rt.settings.data_dir, app_id)}


@router.post("/apps/{name}/dr/reprotect")
@slow
def reprotect(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    component: str | None = Body(None, embed=True),
    p: Principal = Depends(principal),
) -> dict[str, Any]:
    """Is every centre protected again after a failover (each member running and following)?
    After an activation of the remote centre: rebuild the main cluster as its standby (the first
    call starts it; later ones say how far it is)."""
    with transaction(request) as s:
        app = find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        if svc.cluster_of(s, app, component).remote_leads:
            return dr_return.reprotect(s, app, component)
        return dr_ops.reprotect(s, app, component)
