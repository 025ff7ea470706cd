"""Restoring a managed database in place: what the DR controller does once `dr restore APP --to
TIME --in-place` is approved. Everything written after TIME is given up, on purpose, so the
request is held for approval like an activation of the remote centre.

1. **Copy.** A copy recovered to TIME is made as `dr restore` makes one (the newest base backup
   before it, the WAL archive replayed by PostgreSQL's own recovery), opened and checked. If
   that fails, nothing in production was touched.
2. **Stop.** Every member of both clusters is stopped (the reconciler terminates them while the
   state says `stopping`); the step waits until none is left, lost ones included.
3. **Clear.** The database's records in the quorum's and the remote centre's etcd are deleted,
   so Patroni sees a cluster to bootstrap. Every member's data now goes in a new directory of its
   volume (`...-p<n>`); the old data stays beside it.
4. **Start.** Production's member bootstraps the cluster by Patroni's custom bootstrap:
   `pg_basebackup` of the copy (`shanzhi.dr.patroni.member_config(bootstrap_from=...)`). The
   others wait for it to run as primary and clone it as usual (the remote standby cluster from
   the same-city member). The step waits until the primary accepts writes.
5. **After.** The copy is stopped and removed, and a new base backup is taken: older backups
   reach only up to TIME on the old timeline. Each member's volume keeps the data from just
   before this restore (to go back to by hand); what earlier restores left is removed through
   the volume's cloud, so restores in a row never fill a volume. The report has the steps and
   timings, the time the data was recovered to, how long writes were stopped and what was
   removed.

The state (`approved` → `copying` → `stopping` → `starting` → `succeeded` | `failed`) is in the
cluster's record, and each step carries on from it after a restart. A failure before the records
are cleared ends the restore with the cluster as it was. Once they are cleared, the controller
keeps waiting for the primary; it never goes back to the old data by itself.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from shanzhi.controllers import dr_backup
from shanzhi.controllers.dr_activate import writable
from shanzhi.controllers.dr_members import member_role
from shanzhi.controllers.fleet import Fleet
from shanzhi.domain.errors import ShanzhiError
from shanzhi.domain.spec import AppSpec
from shanzhi.store import Database
from shanzhi.store.changes import mark
from shanzhi.store.events import record_event
from shanzhi.store.tables import DrCluster, DrReport, Instance, VolumeRecord, utcnow

log = logging.getLogger("shanzhi.dr")
STOP_TIMEOUT = 120.0
START_TIMEOUT = 300.0


def _update(db: Database, cid: int, **changes: Any) -> dict[str, Any]:
    """Change the restore's record (and have the reconciler look at the app again)."""
    with db.session() as s, s.begin():
        c = s.get(DrCluster, cid)
        assert c is not None
        c.restore = {**(c.restore or {}), **changes}
        mark(s, [c.app_id])
        return dict(c.restore)


def _report(db: Database, rid: int, outcome: str, summary: str, steps: list[dict[str, Any]], **body: Any) -> None:
    with db.session() as s, s.begin():
        r = s.get(DrReport, rid)
        assert r is not None
        r.body = {**r.body, "steps": [*r.body.get("steps", []), *steps], **body}
        if outcome != "running":
            r.outcome, r.summary, r.finished_at = outcome, summary, utcnow()
            record_event(s, "DatabaseRestoredInPlace" if outcome == "succeeded" else "RestoreInPlaceFailed", "app",
                         r.app, summary, warning=True, vdc=r.vdc, app=r.app)  # fmt: skip
    for st in steps:
        log.info("restore in place (report %s) at %.1fs: %s", rid, st["seconds"], st["step"])


def restore_in_place(db: Database, fleet: Fleet, cid: int, clear: Callable[[], int]) -> None:
    """Carry the restore in place of cluster `cid` on from the state it is in (see the module's
    docstring). `clear` deletes the database's records in etcd and says how many keys went."""
    data_dir = fleet.data_dir
    with db.session() as s, s.begin():
        c = s.get(DrCluster, cid)
        if c is None or c.restoring is None:
            return
        st = dict(c.restore or {})
        app_id, comp, vdc, name = c.app_id, c.component, c.app.vdc.path, c.app.name
        password = c.keys(data_dir)["superuser"]
        if st["state"] == "approved":
            report = DrReport(
                app_id=app_id, vdc=vdc, app=name, kind="restore-in-place", outcome="running",
                summary=f"restore in place of {comp} to {st['to']} (approval {st.get('request')}) ...",
                body={"component": comp, "target": st["to"], "request": st.get("request"),
                      "approved_by": st.get("by"), "steps": []},
                started_at=utcnow(),
            )  # fmt: skip
            s.add(report)
            s.flush()
            c.restore = st = {**st, "state": "copying", "report": report.id, "started": time.time()}
    rid = int(st["report"])

    def step(what: str, **more: Any) -> dict[str, Any]:
        return {"step": what, "seconds": round(time.time() - float(st["started"]), 3), **more}

    if st["state"] == "copying":
        # a copy begun before a restart is not trusted: made again from the start
        with db.session() as s, s.begin():
            q = select(DrReport.id).where(
                DrReport.app_id == app_id, DrReport.kind == "restore", DrReport.outcome == "running",
                DrReport.started_at >= datetime.fromtimestamp(float(st["started"]), UTC),
            )  # fmt: skip
            cut_short = list(s.scalars(q))
        for copy_id in cut_short:
            dr_backup.abandon(db, data_dir, copy_id)
        try:  # refused now (the backups it was asked with pruned since) or failed: nothing was stopped
            copy = dr_backup.restore(db, data_dir, app_id, comp, datetime.fromisoformat(st["to"]))
            why = None if copy.outcome == "succeeded" else copy.summary
        except ShanzhiError as err:
            why = err.detail
        if why is not None:
            _update(db, cid, state="failed")
            _report(db, rid, "failed", f"restore in place of {comp} failed before anything was stopped: {why}; "
                    "the cluster runs as it was", [step("made no copy")])  # fmt: skip
            return
        body = copy.body
        _archive_history(Path(body["dir"]) / "pgdata", dr_backup.archive_dir(data_dir, app_id, comp))
        _report(db, rid, "running", "", [step(f"a copy recovered to {body.get('recovered_to')} is open and checked",
                                              report=copy.id, checks=body.get("checks"))])  # fmt: skip
        copied = {"host": "127.0.0.1", "port": body["port"], "report": copy.id}
        copied["recovered_to"] = body.get("recovered_to")
        st = _update(db, cid, state="stopping", copy=copied, stop_asked=time.time())

    if st["state"] == "stopping":
        deadline = time.monotonic() + STOP_TIMEOUT
        left = _members_left(db, app_id, comp)
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _members_left(db, app_id, comp)
        if left:
            dr_backup.remove_copy(db, data_dir, int(st["copy"]["report"]))
            _update(db, cid, state="failed")
            _report(db, rid, "failed", f"restore in place of {comp}: members still there after "
                    f"{STOP_TIMEOUT:.0f}s ({', '.join(left)}); nothing was cleared, the members start again on "
                    "their own data", [step("members did not stop", left=left)])  # fmt: skip
            return
        gone = clear()
        with db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            assert c is not None
            count = int((c.restore or {}).get("count", 0)) + 1
            c.restore = st = {**(c.restore or {}), "state": "starting", "count": count, "cleared_at": time.time()}
            c.leader = None
            c.status = {**c.status, "members": [], "leader_position": None}
            mark(s, [app_id])
            subdir = c.data_subdir(False)
        _report(db, rid, "running", "", [
            step("every member stopped"),
            step(f"the quorum's records of the database cleared ({gone} keys); members start in {subdir}, the old "
                 "data kept beside it"),
        ])  # fmt: skip

    if st["state"] == "starting":
        primary = _wait_primary(db, cid, password, START_TIMEOUT)
        if primary is None:  # the records are cleared: never back to the old data by itself; wait on
            log.warning("restore in place of %s: no writable primary yet; still waiting", comp)
            return
        stopped = float(st.get("stop_asked") or st["cleared_at"])
        writes_back = round(time.time() - stopped, 3)
        dr_backup.remove_copy(db, data_dir, int(st["copy"]["report"]))
        _update(db, cid, state="succeeded", finished_at=utcnow().isoformat())
        recovered = st["copy"].get("recovered_to")
        summary = (
            f"database {comp} restored in place to {recovered} (asked {st['to']}): {primary['name']} is primary "
            f"on timeline {primary.get('timeline')}; writes were stopped for {writes_back:.1f}s; everything "
            "written after that time was given up as asked; the data from just before it is kept in each member's "
            "volume"
        )
        steps = [
            step(f"{primary['name']} is primary and accepts writes", timeline=primary.get("timeline")),
            step("the copy stopped and removed"),
        ]
        # older base backups reach only up to the restored time: a new one for what follows
        backup = dr_backup.take_backup(db, data_dir, app_id, comp, why="after a restore in place")
        steps.append(step(f"base backup {backup.id}: {backup.outcome}"))
        removed, kept = _remove_superseded(db, fleet, cid)
        if removed or kept:
            dirs = sorted({n for names in removed.values() for n in names})
            steps.append(step(f"data older than the last restore removed ({', '.join(dirs) or 'none'})"
                              + (f"; kept where it could not be: {'; '.join(kept)}" if kept else ""),
                              removed=removed))  # fmt: skip
        _report(db, rid, "succeeded", summary, steps, recovered_to=recovered, member=primary["name"],
                timeline=primary.get("timeline"), writes_stopped_seconds=writes_back, old_data_removed=removed,
                seconds=round(time.time() - float(st["started"]), 3))  # fmt: skip


def _remove_superseded(db: Database, fleet: Fleet, cid: int) -> tuple[dict[str, list[str]], list[str]]:
    """Remove, from every member's volume, the data directories earlier restores in place left
    (`DrCluster.superseded_subdirs`): what was removed per volume, and why some could not be."""
    with db.session() as s, s.begin():
        c = s.get(DrCluster, cid)
        assert c is not None
        spec = AppSpec.model_validate(c.app.spec)
        q = select(VolumeRecord).where(
            VolumeRecord.app_id == c.app_id, VolumeRecord.component == c.component, VolumeRecord.state != "deleting"
        )
        volumes = [
            (v.cloud.name, v.cloud.kind, dict(v.cloud.options), v.key,
             c.superseded_subdirs(member_role(spec, v.ordinal) == "remote"))
            for v in s.scalars(q.order_by(VolumeRecord.ordinal))
        ]  # fmt: skip
    removed: dict[str, list[str]] = {}
    kept: list[str] = []
    for cloud, kind, options, key, names in volumes:
        if not names:
            continue
        try:
            gone = fleet.provider(cloud, kind, options).remove_from_volume(key, names)
        except (ShanzhiError, OSError) as err:
            kept.append(f"{cloud}/{key}: {err}")
            continue
        if gone:
            removed[f"{cloud}/{key}"] = gone
    return removed, kept


def _members_left(db: Database, app_id: int, comp: str) -> list[str]:
    """The members still on a cloud (running, stopping or lost); those waiting to be placed
    have no process."""
    with db.session() as s, s.begin():
        q = select(Instance.name, Instance.state).where(
            Instance.app_id == app_id, Instance.component == comp, Instance.cloud_id.is_not(None)
        )
        return [f"{n} ({state})" for n, state in s.execute(q)]


def _wait_primary(db: Database, cid: int, password: str, timeout: float) -> dict[str, Any] | None:
    """The main cluster's primary once it runs and accepts writes (as the DR controller's reads
    show it), or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            members = list(c.status.get("members", [])) if c is not None else []
        for m in members:
            ok = m.get("cluster") == "main" and m.get("role") == "primary" and m.get("state") == "running"
            if ok and m.get("host") and writable(str(m["host"]), password):
                return dict(m)
        time.sleep(0.5)
    return None


def _archive_history(pgdata: Path, archive: Path) -> None:
    """The copy's timeline history files into the WAL archive (the copy archives nothing itself),
    owned like the archive: a later restore to a time after this one follows the new timeline."""
    uid = archive.stat().st_uid
    for f in sorted((pgdata / "pg_wal").glob("*.history")):
        target = archive / f.name
        if target.exists():
            continue
        part = archive / f".{f.name}.part"
        shutil.copyfile(f, part)
        shutil.chown(part, uid, uid)
        part.rename(target)
