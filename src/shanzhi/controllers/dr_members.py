"""Where a protected app's replicas go, and what a managed database's member runs.

For the reconciler: a `kind: postgres` component has one member per centre of its app's DR
tier (member 0 in production, 1 in same-city, then remote), each pinned to its centre's site;
a stateless component of a protected app runs in production and same-city (`active-active`),
or in production alone and in same-city once production has no healthy cloud (`cold`). A
member runs Patroni with the configuration `shanzhi.dr.patroni` builds, against the quorum's
etcd (the remote centre's standby cluster against the remote centre's own etcd, fed from the
same-city member, so it can never be ahead of it).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.controllers.dr_backup import archive_dir
from shanzhi.domain.dr import MEMBERS, sites_by_role
from shanzhi.domain.spec import AppSpec, Component
from shanzhi.dr.patroni import CLONE_PASSWORD, PATRONI_ARGV, Secrets, member_config, scope
from shanzhi.store.tables import App, Cloud, DrCluster, DrEtcdMember, Instance, Site


def site_roles(s: Session) -> dict[str, str]:
    """site -> DR role, for the sites that have one."""
    return {n: r for n, r in s.execute(select(Site.name, Site.dr_role).where(Site.dr_role.is_not(None))) if r}


def member_role(spec: AppSpec, ordinal: int) -> str:
    members = MEMBERS[spec.spec.dr.tier]
    return members[ordinal] if ordinal < len(members) else members[-1]


def member_site(s: Session, spec: AppSpec, ordinal: int) -> str | None:
    """The site of a managed database's member `ordinal` (None: its centre has no site)."""
    return sites_by_role(site_roles(s)).get(member_role(spec, ordinal))


def stateless_sites(s: Session, spec: AppSpec, app_id: int | None = None) -> list[str] | None:
    """The sites a protected app's stateless replicas may use (None: not protected): the remote
    centre alone once it was activated for the app's database."""
    if spec.spec.dr.tier in ("none", "remote-backup"):
        return None
    by_role = sites_by_role(site_roles(s))
    if app_id is not None and _activated(s, app_id):
        return [x for x in (by_role.get("remote"),) if x]
    prod, same = by_role.get("production"), by_role.get("same-city")
    if spec.spec.dr.stateless == "active-active":
        return [x for x in (prod, same) if x]
    up = {
        c.site.name
        for c in s.scalars(select(Cloud).where(Cloud.health == "healthy", Cloud.draining.is_(False)))
        if c.site.name == prod
    }
    return [prod] if prod in up else [x for x in (same,) if x]


def left_site(s: Session, spec: AppSpec, app_id: int) -> str | None:
    """The remote centre while it does not lead (after a failback to the city): a protected app's
    stateless replicas still there roll over to the city centres (a new one first, as for a new
    version), or None."""
    if spec.spec.dr.tier in ("none", "remote-backup") or _activated(s, app_id):
        return None
    return sites_by_role(site_roles(s)).get("remote")


def _activated(s: Session, app_id: int) -> bool:
    return any(c.remote_leads for c in s.scalars(select(DrCluster).where(DrCluster.app_id == app_id)))


def standby_sites(s: Session, spec: AppSpec, app_id: int | None = None) -> list[str]:
    """Where a protected app's cold stateless replicas would start if production were lost: the
    same-city site while they run in production (its capacity is held for them there), else none."""
    if spec.spec.dr.tier in ("none", "remote-backup") or spec.spec.dr.stateless != "cold":
        return []
    by_role = sites_by_role(site_roles(s))
    prod, same = by_role.get("production"), by_role.get("same-city")
    return [same] if same and prod and stateless_sites(s, spec, app_id) == [prod] else []


def replaceable(s: Session, r: Instance) -> bool:
    """A member lost with its cloud whose centre has another healthy, open cloud: a new member can
    start there now (Patroni clones it from the cluster), its ordinal free for it. The lost one's
    disk stays on its cloud, and the member is removed when that cloud is back."""
    if r.state != "lost" or r.cloud is None:
        return False
    others = s.scalars(select(Cloud).where(Cloud.site_id == r.cloud.site_id, Cloud.id != r.cloud_id))
    return any(c.health == "healthy" and not c.draining and c.fenced_by_plan is None for c in others)


def clouds_in(s: Session, sites: list[str]) -> list[str]:
    return [c.name for c in s.scalars(select(Cloud).order_by(Cloud.name)) if c.site.name in sites]


def waiting_for(s: Session, app: App, spec: AppSpec, comp: Component, ordinal: int) -> str | None:
    """Why member `ordinal` cannot be created yet, or None."""
    cluster = cluster_of(s, app, comp)
    if cluster is None or not cluster.prepared:
        return "waiting for the DR quorum to admit the database (its etcd user)"
    role = member_role(spec, ordinal)
    if why := restore_fence(cluster):
        return why
    if role != "remote" and (why := fence_reason(cluster)):
        return why
    if not etcd_hosts(s, "remote" if role == "remote" else "quorum"):
        return f"waiting for the {'remote centre' if role == 'remote' else 'quorum'}'s etcd"
    if role == "remote" and standby_source(s, app, spec, comp) is None:
        return "waiting for its source member to run (the remote standby cluster is fed from it)"
    if role != "remote" and cluster.remote_leads and remote_primary(cluster) is None:
        return "waiting for the remote centre's primary (the main cluster is rebuilt as its standby)"
    if ordinal > 0 and cluster.restoring == "starting":
        # the status may still show the old members for a moment: none starts before the restore's primary
        return "waiting for the production member to start the restored cluster (it clones the restored copy)"
    if ordinal > 0 and role != "remote" and not _primary_runs(cluster):
        return "waiting for the production member to bootstrap the cluster (it starts as the primary)"
    return None


def fence_reason(cluster: DrCluster | None) -> str | None:
    """Why the main cluster's members may not run (its remote centre was activated), or None."""
    if cluster is None or not cluster.fenced:
        return None
    return (
        f"fenced: the remote centre was activated (approval {(cluster.activation or {}).get('request')}); "
        "this member stays stopped, its data kept, so that no second primary comes back"
    )


def restore_fence(cluster: DrCluster | None) -> str | None:
    """Why every member (both clusters) must be stopped now: a restore in place stops them all
    before the quorum's record of the database is cleared, or None."""
    if cluster is None or cluster.restoring != "stopping":
        return None
    return (
        f"stopped for a restore in place to {(cluster.restore or {}).get('to')} (approval "
        f"{(cluster.restore or {}).get('request')}): every member starts again on the restored data"
    )


def restored_copy(cluster: DrCluster) -> tuple[str, int] | None:
    """The restored copy production's member clones the database from, while a restore in place
    starts the cluster again (host, port), or None."""
    copy = (cluster.restore or {}).get("copy")
    if cluster.restoring != "starting" or not copy:
        return None
    return str(copy["host"]), int(copy["port"])


def cluster_of(s: Session, app: App, comp: Component) -> DrCluster | None:
    """The record of the managed database `comp` of `app` (None: not made yet)."""
    return s.scalar(select(DrCluster).where(DrCluster.app_id == app.id, DrCluster.component == comp.name))


def member_fence(cluster: DrCluster | None, spec: AppSpec, ordinal: int) -> str | None:
    """Why member `ordinal` of a managed database must be stopped now, or None: the main cluster's
    after an activation of the remote centre, every member during a restore in place."""
    if why := restore_fence(cluster):
        return why
    return fence_reason(cluster) if member_role(spec, ordinal) != "remote" else None


def _primary_runs(cluster: DrCluster) -> bool:
    """The main cluster's leader runs (a standby leader, while it is rebuilt beside the remote one)."""
    return any(
        m.get("cluster") == "main" and m.get("role") in ("primary", "standby_leader") and m.get("state") == "running"
        for m in cluster.status.get("members", [])
    )


def remote_primary(cluster: DrCluster) -> tuple[str, int] | None:
    """The activated remote cluster's running primary (host, port), or None."""
    for m in cluster.status.get("members", []):
        if (
            m.get("cluster") == "remote"
            and m.get("role") == "primary"
            and m.get("state") == "running"
            and m.get("host")
        ):
            host, _, port = str(m["host"]).rpartition(":")
            return host, int(port)
    return None


def etcd_hosts(s: Session, cluster: str) -> list[str]:
    q = select(DrEtcdMember).where(DrEtcdMember.cluster == cluster).order_by(DrEtcdMember.name)
    return [f"{m.address}:{m.client_port}" for m in s.scalars(q)]


def standby_source(s: Session, app: App, spec: AppSpec, comp: Component) -> tuple[str, int] | None:
    """The member the remote standby cluster replicates from: same-city's (production's when the
    tier has no same-city member), once Patroni reports its PostgreSQL running."""
    members = MEMBERS[spec.spec.dr.tier]
    ordinal = members.index("same-city") if "same-city" in members else 0
    q = select(Instance.name).where(
        Instance.app_id == app.id, Instance.component == comp.name, Instance.ordinal == ordinal
    )
    names = set(s.scalars(q))
    cluster = cluster_of(s, app, comp)
    for m in cluster.status.get("members", []) if cluster else []:
        if m.get("cluster") == "main" and m.get("name") in names and m.get("state") == "running" and m.get("host"):
            host, _, port = str(m["host"]).rpartition(":")
            return host, int(port)
    return None


def main_members(spec: AppSpec) -> int:
    """How many members the main cluster has (the remote centre's is a cluster of its own)."""
    return sum(1 for role in MEMBERS[spec.spec.dr.tier] if role != "remote")


def member_command(
    s: Session, app: App, spec: AppSpec, comp: Component, r: Instance, data_dir: Path
) -> tuple[tuple[str, ...], dict[str, str]]:
    """The command and environment of a managed database's member (a main cluster's member
    archives its WAL when primary)."""
    cluster = cluster_of(s, app, comp)
    assert cluster is not None
    remote = member_role(spec, r.ordinal) == "remote"
    sec = cluster.keys(data_dir)
    # a main cluster rebuilt after an activation: a standby cluster of the remote primary (at its
    # bootstrap), its data afresh beside the old
    rebuilt = not remote and cluster.remote_leads and not cluster.fenced
    standby_of = standby_source(s, app, spec, comp) if remote else remote_primary(cluster) if rebuilt else None
    clone_from = None if remote else restored_copy(cluster)
    config = member_config(
        cluster_scope=scope(app.id, comp.name, remote),
        member=r.name,
        etcd_hosts=etcd_hosts(s, "remote" if remote else "quorum"),
        secrets=Secrets(sec["superuser"], sec["replication"], sec["app"], sec["etcd"]),
        synchronous=not remote and spec.spec.dr.rpo_seconds == 0 and main_members(spec) > 1,
        # strict where a standby is left after losing a centre: the remote centre's standby cluster
        # (fed from the same-city member) is one; with production and same-city alone, losing
        # either would stop every write, so the survivor goes on alone (only a synchronous standby
        # is ever promoted: nothing acknowledged is lost)
        strict="remote" in MEMBERS[spec.spec.dr.tier],
        standby_of=standby_of,
        parameters=comp.postgres.parameters if comp.postgres else None,
        archive=None if remote else str(archive_dir(data_dir, app.id, comp.name)),
        restore_from=str(archive_dir(data_dir, app.id, comp.name)) if remote else None,
        data_subdir=cluster.data_subdir(remote),
        # after a restore in place, production's member starts the cluster again from the restored copy
        # (any main member that found the cluster uninitialised would too: never an empty initdb)
        bootstrap_from=clone_from,
        volume_bytes=next((v.size_bytes for v in comp.volumes), 2**30),
    )
    env = {"PATRONI_CONFIGURATION": config}
    if clone_from is not None:
        env[CLONE_PASSWORD] = sec["replication"]
    return PATRONI_ARGV, env
