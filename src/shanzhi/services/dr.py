"""Disaster recovery's use cases: site roles, the topology view, the apply-time tier check, a
managed database's secrets and status, and the reports of what happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.controllers.dr_members import site_roles
from shanzhi.domain.dr import MEMBERS, ROLES, links, missing_for, quorum_sites
from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.domain.spec import AppSpec
from shanzhi.dr.patroni import SUPERUSER, connection_string
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, Cloud, DrCluster, DrEtcdMember, DrReport, Instance, Site, utcnow


def healthy_sites(s: Session) -> dict[str, bool]:
    """site -> whether it has a healthy cloud that takes new placements."""
    out: dict[str, bool] = {}
    for c in s.scalars(select(Cloud)):
        ok = c.health == "healthy" and not c.draining
        out[c.site.name] = out.get(c.site.name, False) or ok
    return out


def set_role(s: Session, site: str, role: str | None) -> Site:
    """Give a site a DR role (or take it away). One site per role; a role that a protected app
    relies on is not taken away."""
    row = s.scalar(select(Site).where(Site.name == site))
    if row is None:
        known = ", ".join(s.scalars(select(Site.name).order_by(Site.name))) or "none yet (add a cloud first)"
        raise NotFound(f"site {site} does not exist (sites: {known})", field="site")
    if role is not None and role not in ROLES:
        raise InvalidInput(f"unknown DR role {role!r}; one of: {', '.join(ROLES)} (or 'none')", field="role")
    if row.dr_role == role:
        return row
    holder = s.scalar(select(Site).where(Site.dr_role == role)) if role else None
    if holder is not None:
        raise Conflict(f"site {holder.name} is already the {role} centre; take it away first", field="role")
    if row.dr_role is not None:
        users = [a for a in protected_apps(s) if row.dr_role in _needs(a)]
        if users:
            names = ", ".join(f"{a.vdc.path}/{a.name}" for a in users[:5])
            raise Conflict(
                f"site {site} is the {row.dr_role} centre of protected apps ({names}); change their dr.tier first",
                field="role",
            )
    if s.scalar(select(DrEtcdMember.id).where(DrEtcdMember.site_id == row.id)) is not None:
        raise Conflict(f"site {site} holds a member of the DR quorum; the quorum's centres cannot change", field="role")
    old = row.dr_role
    row.dr_role = role
    s.flush()
    record_event(s, "SiteRoleChanged", "site", site, f"site {site}: DR role {old or 'none'} -> {role or 'none'}")
    return row


def protected_apps(s: Session) -> list[App]:
    return [a for a in s.scalars(select(App)) if AppSpec.model_validate(a.spec).spec.dr.tier != "none"]


def _needs(app: App) -> set[str]:
    tier = AppSpec.model_validate(app.spec).spec.dr.tier
    need = set(MEMBERS[tier])
    if tier == "same-city":
        need.add("arbiter")
    return need


def check_tier(s: Session, spec: AppSpec, previous: AppSpec | None) -> None:
    """Refuse a tier the topology cannot give, naming what is missing (apply and dry-run). A
    centre without a healthy cloud refuses a new protection, not an update of one in place (an
    outage must not stop a department changing its app)."""
    tier = spec.spec.dr.tier
    if tier == "none":
        return  # nothing to give: no query (the common apply)
    same = previous is not None and previous.spec.dr.tier == tier
    why = missing_for(tier, site_roles(s), None if same else healthy_sites(s))
    if why:
        raise InvalidInput(why, field="spec.dr.tier")


def ensure_clusters(s: Session, app: App, spec: AppSpec) -> None:
    """A row for each managed database of the app (kept across applies). Its passwords are made
    and sealed by the DR controller before any member starts (`DrCluster.keys`)."""
    databases = spec.spec.databases()
    if not databases:
        return
    have = {c.component for c in s.scalars(select(DrCluster).where(DrCluster.app_id == app.id))}
    for comp in databases:
        if comp.name not in have:
            s.add(
                DrCluster(
                    app_id=app.id,
                    component=comp.name,
                    secrets={},
                    status={},
                )
            )
    s.flush()


def topology(s: Session) -> dict[str, Any]:
    """Every site with its role, clouds and quorum members; the links between the centres."""
    r = site_roles(s)
    members: dict[str, list[dict[str, Any]]] = {}
    for m in s.scalars(select(DrEtcdMember).order_by(DrEtcdMember.cluster, DrEtcdMember.name)):
        members.setdefault(m.site.name, []).append(
            {"cluster": m.cluster, "name": m.name, "url": m.client_url, "cloud": m.cloud.name if m.cloud else None,
             "health": m.health or "not checked yet"}
        )  # fmt: skip
    sites = []
    for site in s.scalars(select(Site).order_by(Site.name)):
        clouds = [
            {"name": c.name, "kind": c.kind, "health": c.health}
            for c in s.scalars(select(Cloud).where(Cloud.site_id == site.id).order_by(Cloud.name))
        ]
        sites.append({"name": site.name, "role": site.dr_role, "clouds": clouds, "etcd": members.get(site.name, [])})
    tiers = {t: missing_for(t, r, healthy_sites(s)) for t in ("same-city", "two-sites-three-centres", "remote-backup")}
    return {"sites": sites, "links": links(r), "quorum": quorum_sites(r), "tiers": tiers}


def cluster_of(s: Session, app: App, component: str | None = None) -> DrCluster:
    q = select(DrCluster).where(DrCluster.app_id == app.id)
    if component is not None:
        q = q.where(DrCluster.component == component)
    found = list(s.scalars(q.order_by(DrCluster.component)))
    if not found:
        what = f"component {component}" if component else "a kind: postgres component"
        raise Conflict(f"app {app.name} has no managed database ({what}); see `dr status`", field="component")
    return found[0]


def status(s: Session, app: App, *, reveal: Path | None = None) -> dict[str, Any]:
    """Each managed database: members (role, state, timeline, lag), leader, the connection string
    (its password shown only when `reveal`: the data directory whose key opens it)."""
    spec = AppSpec.model_validate(app.spec)
    out = []
    for c in s.scalars(select(DrCluster).where(DrCluster.app_id == app.id).order_by(DrCluster.component)):
        comp = next((x for x in spec.spec.databases() if x.name == c.component), None)
        database = comp.postgres.database if comp and comp.postgres else "app"
        order = {r.name: r.ordinal for r in s.scalars(select(Instance).where(Instance.app_id == app.id))}
        serving = "remote" if c.remote_leads else "main"  # after an activation, the remote centre
        main = [m for m in c.status.get("members", []) if m.get("host") and m.get("cluster") == serving]
        hosts = [m["host"] for m in sorted(main, key=lambda m: order.get(m["name"], 99))]  # production first
        password = c.keys(reveal).get("app") if reveal is not None else None
        out.append(
            {
                "component": c.component,
                "prepared": c.prepared,
                "leader": c.leader,
                "timeline": c.timeline,
                "members": c.status.get("members", []),
                "connection": connection_string(hosts, "app", password, database) if hosts else None,
                "superuser": SUPERUSER,
                "activation": c.activation,
                "restore": c.restore,  # the last restore in place (its state while under way)
                "updated_at": c.updated_at.isoformat(),
            }
        )
    return {"app": app.name, "vdc": app.vdc.path, "tier": spec.spec.dr.model_dump(), "databases": out}


#: an activation in these states is under way or done: it is not asked for again
ACTIVE = ("approved", "running", "succeeded")


def activation_conflict(c: DrCluster) -> str | None:
    """Why the remote centre of `c` cannot be activated again, or None."""
    act = c.activation or {}
    if act.get("state") in ("succeeded", "rebuilding", "standby"):
        return f"the remote centre of database {c.component} was already activated (approval {act.get('request')})"
    if act.get("state") in ACTIVE:
        return f"activating the remote centre of database {c.component} is under way (approval {act.get('request')})"
    return None


def approve_activation(s: Session, vdc_id: int, app_name: str, document: dict[str, Any], request: int, by: str) -> str:
    """The last approval of an activation: hand it to the DR controller (which checks again that
    no old primary accepts writes, fences the main cluster and promotes the remote one)."""
    app = s.scalar(select(App).where(App.vdc_id == vdc_id, App.name == app_name))
    if app is None:
        raise NotFound(f"app {app_name} no longer exists", field="app")
    c = cluster_of(s, app, document.get("component"))
    why = activation_conflict(c)
    if why:
        raise Conflict(why)
    c.activation = {"request": request, "state": "approved", "by": by, "at": utcnow().isoformat(),
                    "note": document.get("note", ""), "generation": c.generation}  # fmt: skip
    record_event(s, "RemoteActivationApproved", "app", app.name,
                 f"database {c.component}: activating the remote centre approved by {by} (approval {request})",
                 warning=True, vdc=app.vdc.path, app=app.name)  # fmt: skip
    return f"approved: the DR controller activates the remote centre of database {c.component} (see `dr reports`)"


def restore_conflict(s: Session, c: DrCluster) -> str | None:
    """Why database `c` cannot be restored in place now, or None."""
    if c.restoring:
        request = (c.restore or {}).get("request")
        return f"a restore in place of database {c.component} is under way (approval {request})"
    act = (c.activation or {}).get("state")
    if c.remote_leads or act in ACTIVE:
        return (
            f"the remote centre of database {c.component} was activated: a restore in place needs the main "
            "cluster leading (`dr reprotect`, then `dr failback`)"
        )
    lost = s.scalars(
        select(Instance.name).where(
            Instance.app_id == c.app_id, Instance.component == c.component, Instance.state == "lost"
        )
    ).all()
    if lost:
        return (
            f"member {', '.join(lost)} of database {c.component} is lost (its cloud does not answer): a restore in "
            "place stops every member first, so it waits until they can be reached or replaced"
        )
    return None


def approve_restore(s: Session, vdc_id: int, app_name: str, document: dict[str, Any], request: int, by: str) -> str:
    """The last approval of a restore in place: hand it to the DR controller."""
    app = s.scalar(select(App).where(App.vdc_id == vdc_id, App.name == app_name))
    if app is None:
        raise NotFound(f"app {app_name} no longer exists", field="app")
    c = cluster_of(s, app, document.get("component"))
    why = restore_conflict(s, c)
    if why:
        raise Conflict(why)
    c.restore = {"request": request, "state": "approved", "to": document["to"], "by": by,
                 "at": utcnow().isoformat(), "note": document.get("note", ""),
                 "count": int((c.restore or {}).get("count", 0))}  # fmt: skip
    record_event(s, "RestoreInPlaceApproved", "app", app.name,
                 f"database {c.component}: restoring it in place to {document['to']} approved by {by} "
                 f"(approval {request})", warning=True, vdc=app.vdc.path, app=app.name)  # fmt: skip
    return f"approved: the DR controller restores database {c.component} in place (see `dr reports`)"


def reports(s: Session, app: App | None = None, limit: int = 50) -> list[DrReport]:
    q = select(DrReport)
    if app is not None:
        q = q.where(DrReport.vdc == app.vdc.path, DrReport.app == app.name)
    return list(reversed(list(s.scalars(q.order_by(DrReport.id.desc()).limit(limit)))))
