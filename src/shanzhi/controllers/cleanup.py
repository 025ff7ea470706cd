"""End-of-pass cleanups: provider instances no row claims, volumes whose app is gone, and clouds
that finished draining."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping

from sqlalchemy import func, select

from shanzhi.controllers.fleet import Fleet
from shanzhi.domain.errors import ShanzhiError
from shanzhi.providers import ObservedInstance
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import Cloud, DrEtcdMember, Instance, VolumeRecord

log = logging.getLogger("shanzhi.reconciler")


def sweep_orphans(
    db: Database,
    fleet: Fleet,
    observed: Mapping[str, Mapping[str, ObservedInstance] | None],
    among: set[str] | None = None,
) -> None:
    """Delete provider instances that no row claims (left by a crash or a manual change):
    every listed one, or only those named in `among` (what is new in the listing).

    `observed` is the pass's listing, taken before its rows were read, so an instance created
    during the pass is never mistaken for an orphan.
    """
    if among is not None and not among:
        return
    with db.session() as s, s.begin():
        q = select(Instance.name, Cloud.name).join(Cloud, Instance.cloud_id == Cloud.id)
        if among is None:
            claimed = {(cloud, name) for name, cloud in s.execute(q)}
        else:
            listed = sorted(among)
            claimed = set()
            for i in range(0, len(listed), 500):
                claimed |= {(c, n) for n, c in s.execute(q.where(Instance.name.in_(listed[i : i + 500])))}
        # the DR quorum's etcd members are the platform's workloads: no app row, still claimed
        claimed |= {(m.cloud.name, m.instance) for m in s.scalars(select(DrEtcdMember)) if m.cloud is not None}
        clouds = {c.name: (c.kind, dict(c.options)) for c in s.scalars(select(Cloud))}
    for cloud, seen in list(observed.items()):
        if seen is None or cloud not in clouds:
            continue
        kind, options = clouds[cloud]
        for name in seen if among is None else among & seen.keys():
            if (cloud, name) in claimed:
                continue
            try:
                fleet.provider(cloud, kind, options).delete_instance(name)
            except (ShanzhiError, OSError, sqlite3.Error) as err:
                log.warning("could not remove orphan %s on %s: %s", name, cloud, err)
                continue
            with db.session() as s, s.begin():
                record_event(s, "OrphanRemoved", "instance", name, f"removed {name} from {cloud}: no app claims it")


def finish_removals(db: Database, fleet: Fleet) -> None:
    """Remove clouds that were draining and now hold no instance."""
    with db.session() as s, s.begin():
        for cloud in s.scalars(select(Cloud).where(Cloud.draining.is_(True))):
            left = s.scalar(select(func.count()).select_from(Instance).where(Instance.cloud_id == cloud.id))
            if left:
                continue
            record_event(s, "CloudRemoved", "cloud", cloud.name, f"cloud {cloud.name} drained and removed")
            for v in s.scalars(select(VolumeRecord).where(VolumeRecord.cloud_id == cloud.id)):
                s.delete(v)  # its disks go with the cloud's state
            s.flush()
            s.delete(cloud)
            fleet.remove(cloud.name, cloud.kind, dict(cloud.options))


def reclaim_volumes(db: Database, fleet: Fleet) -> None:
    """Delete the disks of volumes marked `deleting` (their app is gone, reclaim policy `delete`,
    or an operator asked); the row goes once its cloud confirms. A cloud that fails is retried."""
    with db.session() as s, s.begin():
        todo = [
            (v.id, v.key, v.cloud.name, v.cloud.kind, dict(v.cloud.options), v.vdc.path, v.app_name)
            for v in s.scalars(select(VolumeRecord).where(VolumeRecord.state == "deleting"))
        ]
    for vid, key, cloud, kind, options, vdc, app in todo:
        try:
            fleet.provider(cloud, kind, options).delete_volume(key)
        except (ShanzhiError, OSError, sqlite3.Error) as err:
            log.warning("could not delete volume %s on %s: %s", key, cloud, err)
            continue
        with db.session() as s, s.begin():
            v = s.get(VolumeRecord, vid)
            if v is not None:
                s.delete(v)
            record_event(s, "VolumeDeleted", "volume", key, f"volume {key} deleted from {cloud}", vdc=vdc, app=app)
