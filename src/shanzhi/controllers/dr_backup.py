"""Backups of managed databases: the WAL archive, base backups, and point-in-time restores into
an isolated copy.

- **WAL archive.** Every member of a database's main cluster runs with `archive_command` into
  `<workload root>/dr-archive/<scope>/wal` (owned by the VDC's uid: the member writes it, no other
  tenant enters it); whichever member is primary archives, at least once a minute
  (`archive_timeout`). On one machine this is a directory; a city would mount the remote
  centre's storage there.
- **Base backups.** `pg_basebackup` (tar, compressed, with the WAL it needs) from a running
  member, into the data directory (`dr/backups/<scope>/<report id>`, the platform's alone), on
  demand (`shanzhi dr backup`) and on the app's schedule (`spec.dr.backups.every`, 24 h by
  default; the newest `keep` are kept). Each is a report of kind `backup`.
- **Restores.** `shanzhi dr restore APP --to TIME`: the newest base backup finished before TIME,
  replayed from the archive up to TIME by a PostgreSQL of its own (the VDC's uid, loopback, a
  port of its own) that then opens for writes: a copy to read the past from or to check a
  backup by (a drill), never touching the running cluster. The report says the time it
  recovered to, how long it took, and how to connect; `shanzhi dr cleanup` stops and removes it.
- **Drills** (`shanzhi dr test`) recover a copy to now the same way, in a network namespace of
  its own with nothing but its loopback (as root, where namespaces exist): nothing in it can
  reach production and nothing outside can reach it; the platform checks it through its socket.

Why our own code: Patroni archives and restores nothing itself, and pgBackRest or WAL-G would
add a repository format and daemons for what `pg_basebackup`, `cp` and PostgreSQL's own
recovery do here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import psycopg
from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, InvalidInput
from shanzhi.dr.patroni import BIN_DIR, REPLICATOR, SUPERUSER, connection_string, scope
from shanzhi.providers.fabric.member import unavailable
from shanzhi.providers.fabric.topology import Fabric
from shanzhi.providers.sandbox import SAFE_PATH, Sandbox, default_workload_root, make_reachable, server_id
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, DrCluster, DrReport, utcnow

log = logging.getLogger("shanzhi.dr")

BACKUP_TIMEOUT = 3600.0
RESTORE_TIMEOUT = 600.0


def archive_dir(data_dir: Path, app_id: int, component: str) -> Path:
    """Where the main cluster's primary archives its WAL."""
    return default_workload_root(data_dir) / "dr-archive" / scope(app_id, component) / "wal"


def prepare_archive(data_dir: Path, vdc: str, app_id: int, component: str) -> Path:
    """The archive directory, made before any member starts: the VDC's uid alone writes it."""
    path = archive_dir(data_dir, app_id, component)
    box = Sandbox.for_data_dir(data_dir)
    uid = box.uid_for(vdc)
    root = path.parent.parent
    make_reachable(root)  # the workload root may not exist yet
    for p in (root, root.parent):
        os.chmod(p, 0o711)
    path.parent.mkdir(mode=0o700, exist_ok=True)
    path.mkdir(mode=0o700, exist_ok=True)
    for p in (path.parent, path):
        os.chown(p, uid, uid)
    return path


def _backups_dir(data_dir: Path, app_id: int, component: str) -> Path:
    return data_dir / "dr" / "backups" / scope(app_id, component)


def _restores_root(data_dir: Path) -> Path:
    return default_workload_root(data_dir) / "dr-restores"


def _memory_root(data_dir: Path) -> Path:
    """Where drills' copies go when they fit in memory: a tmpfs (`SHANZHI_DRILL_SCRATCH`, by
    default /dev/shm; `off`: none), in a directory of this server's own."""
    scratch = os.environ.get("SHANZHI_DRILL_SCRATCH", "/dev/shm")
    return Path(scratch) / f"shanzhi-{server_id(data_dir)}-drills"


def _copies_root(data_dir: Path, backup: Path, archive: Path, drill: bool) -> Path:
    """Where a copy is unpacked (made, each level traversable by the copy's uid). A drill's copy
    goes to memory when it fits with room to spare (twice its size, and a quarter of the tmpfs
    left over): unpacked on the disk production flushes its WAL to, the copy's thousands of new
    files ride in the journal commit that production's next fsync waits for (ext4), and the
    write-back of its pages competes with production's flushes. A restore's copy is kept and
    read from: it goes on disk."""
    if drill and os.environ.get("SHANZHI_DRILL_SCRATCH") != "off":
        root = _memory_root(data_dir)
        need = 2 * (_unpacked_size(backup) + _wal_since(archive, backup))
        with contextlib.suppress(OSError):
            fs = os.statvfs(root.parent)
            if fs.f_bavail * fs.f_frsize - need >= fs.f_blocks * fs.f_frsize // 4 and _own_directory(root):
                return root
    root = _restores_root(data_dir)
    make_reachable(root)
    for p in (root, root.parent):
        os.chmod(p, 0o711)
    return root


def _unpacked_size(backup: Path) -> int:
    """The base backup's size unpacked: the sum of its manifest's files (else four times the archive)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        manifest = json.loads((backup / "backup_manifest").read_text())
        return sum(int(f["Size"]) for f in manifest["Files"])
    return 4 * (backup / "base.tar.gz").stat().st_size


def _wal_since(archive: Path, backup: Path) -> int:
    """The archived WAL a copy of `backup` replays (at most: what reached the archive since)."""
    since = backup.stat().st_mtime - 60
    return sum(st.st_size for f in archive.iterdir() if (st := f.stat()).st_mtime >= since) if archive.exists() else 0


def _own_directory(path: Path) -> bool:
    """Make `path` (0711) in a directory that others may write (/dev/shm), or accept it if it is
    already there, a directory (no link), this process's and writable by no one else: one that a
    workload made first would let it reach every drill's copy."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o711)
        os.chmod(path, 0o711)
    st = path.lstat()
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022:
        return True
    log.warning("%s is not this server's own directory: drills' copies go on disk", path)
    return False


# ----------------------------------------------------------------------------- backups
def take_backup(db: Database, data_dir: Path, app_id: int, component: str, *, why: str = "asked") -> DrReport:
    """A base backup of the database now, from one of its running members (a replica first, so
    the primary's work is not slowed). Returns its report (failed ones too)."""
    with db.session() as s, s.begin():
        cluster = s.scalar(select(DrCluster).where(DrCluster.app_id == app_id, DrCluster.component == component))
        if cluster is None:
            raise InvalidInput(f"app has no managed database {component!r}")
        app = cluster.app
        members = [m for m in cluster.status.get("members", []) if m.get("cluster") == "main"]
        running = [m for m in members if m.get("state") == "running" and m.get("host")]
        running.sort(key=lambda m: m.get("role") == "primary")
        if not running:
            raise Conflict(f"database {component} of {app.name} has no running member to back up from yet")
        source = running[0]
        password = cluster.keys(data_dir)["replication"]
        report = DrReport(
            app_id=app.id, vdc=app.vdc.path, app=app.name, kind="backup", outcome="running",
            summary=f"base backup of {component} from {source['name']} ({why})",
            body={"component": component, "member": source["name"], "why": why},
        )  # fmt: skip
        s.add(report)
        s.flush()
        vdc, name = app.vdc.path, app.name
    target = _backups_dir(data_dir, app_id, component) / str(report.id)
    partial = target.with_name(f"{report.id}.part")
    host, _, port = str(source["host"]).rpartition(":")
    started = time.monotonic()
    error = None
    try:
        partial.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        shutil.rmtree(partial, ignore_errors=True)
        argv = [f"{BIN_DIR}/pg_basebackup", "-h", host, "-p", port, "-U", REPLICATOR, "-D", str(partial),
                "-Ft", "-z", "-X", "fetch", "-c", "fast", "--no-password"]  # fmt: skip
        done = subprocess.run(
            argv, env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"},
            capture_output=True, text=True, timeout=BACKUP_TIMEOUT, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            error = f"pg_basebackup failed: {(done.stderr or done.stdout).strip()[-500:]}"
        else:
            partial.rename(target)
    except (OSError, subprocess.TimeoutExpired) as err:
        error = f"pg_basebackup failed: {err}"
    seconds = time.monotonic() - started
    with db.session() as s, s.begin():
        r = s.get(DrReport, report.id)
        assert r is not None
        r.finished_at = utcnow()
        if error is not None:
            shutil.rmtree(partial, ignore_errors=True)
            r.outcome, r.summary = "failed", f"{r.summary}: {error}"
            record_event(s, "BackupFailed", "app", name, r.summary, warning=True, vdc=vdc, app=name)
        else:
            size = sum(f.stat().st_size for f in target.iterdir())
            r.outcome = "succeeded"
            r.body = {**r.body, "path": str(target), "bytes": size, "seconds": round(seconds, 3)}
            r.summary = f"{r.summary}: {size:,} bytes in {seconds:.1f}s"
            record_event(s, "BackupTaken", "app", name, r.summary, vdc=vdc, app=name)
        return r


def backups(db: Database, app_id: int, component: str | None = None) -> list[DrReport]:
    """The app's kept base backups, oldest first."""
    with db.session() as s, s.begin():
        return kept_backups(s, app_id, component)


def kept_backups(s: Session, app_id: int, component: str | None = None) -> list[DrReport]:
    q = select(DrReport).where(DrReport.app_id == app_id, DrReport.kind == "backup", DrReport.outcome == "succeeded")
    rows = list(s.scalars(q.order_by(DrReport.id)))
    return [r for r in rows if not r.body.get("pruned") and (component is None or r.body["component"] == component)]


def archived_until(data_dir: Path, app_id: int, component: str) -> str | None:
    """When the newest WAL segment reached the archive (None: none has)."""
    wal = archive_dir(data_dir, app_id, component)
    times = [f.stat().st_mtime for f in wal.iterdir() if not f.name.endswith(".part")] if wal.exists() else []
    return datetime.fromtimestamp(max(times), UTC).isoformat(timespec="seconds") if times else None


def prune(db: Database, app_id: int, component: str, keep: int) -> int:
    """Remove all but the newest `keep` base backups. Returns how many went."""
    old = backups(db, app_id, component)[:-keep] if keep > 0 else []
    with db.session() as s, s.begin():
        for r in old:
            shutil.rmtree(r.body["path"], ignore_errors=True)
            row = s.get(DrReport, r.id)
            if row is not None:
                row.body = {**row.body, "pruned": True}
    return len(old)


def due(db: Database, app_id: int, component: str, every: float) -> bool:
    """Is the database's scheduled backup due (none yet, or the newest older than `every`)?"""
    if every <= 0:
        return False
    kept = backups(db, app_id, component)
    newest = kept[-1].finished_at if kept else None
    return newest is None or utcnow() - newest >= timedelta(seconds=every)


# ---------------------------------------------------------------------------- restores
def restore(
    db: Database, data_dir: Path, app_id: int, component: str, to: datetime, *, drill: bool = False
) -> DrReport:
    """A copy of the database as it was at `to`, running on its own (see the module docstring).
    `drill`: a recovery test to now; the report (kind `drill`) measures RTO (from asking to the
    copy answering) and RPO (what the copy lacks: from its last transaction to the moment asked)."""
    if to.tzinfo is None:
        raise InvalidInput("the time to restore to needs its zone (e.g. 2026-12-06T10:00:00+08:00)")
    now = utcnow()
    if to > now:
        raise InvalidInput(f"{to.isoformat()} is in the future (now {now.isoformat(timespec='seconds')})")
    with db.session() as s, s.begin():
        cluster = s.scalar(select(DrCluster).where(DrCluster.app_id == app_id, DrCluster.component == component))
        if cluster is None:
            raise InvalidInput(f"app has no managed database {component!r}")
        app: App = cluster.app
        vdc, name, sec = app.vdc.path, app.name, cluster.keys(data_dir)
        primary = next(
            (m for m in cluster.status.get("members", []) if m.get("cluster") == "main" and m.get("role") == "primary"),
            None,
        )
    kept = [b for b in backups(db, app_id, component) if b.finished_at and b.finished_at <= to]
    if not kept:
        first = backups(db, app_id, component)
        earliest = first[0].finished_at.isoformat(timespec="seconds") if first and first[0].finished_at else None
        raise InvalidInput(
            f"no base backup of {component} finished before {to.isoformat()}: "
            + (f"the earliest point to restore to is {earliest}" if earliest else "take one with `shanzhi dr backup`")
        )
    base = kept[-1]
    started = time.monotonic()
    # a restore: what was written up to now reaches the archive (else it can reach only what was);
    # a drill asks production nothing (it recovers what the archive has, as after a real loss)
    host = str(primary["host"]) if primary is not None and primary.get("host") else None
    complete = not drill and host is not None and _switch_wal(host, sec["superuser"])
    with db.session() as s, s.begin():
        report = DrReport(
            app_id=app_id, vdc=vdc, app=name, kind="drill" if drill else "restore", outcome="running",
            summary=f"{'drill' if drill else 'restore'} of {component} to {to.isoformat()} from backup {base.id}",
            body={"component": component, "backup": base.id, "target": to.isoformat(), "state": "restoring"},
        )  # fmt: skip
        s.add(report)
        s.flush()
    box = Sandbox.for_data_dir(data_dir)
    uid = box.uid_for(vdc) if box.isolate else os.geteuid()
    archive = archive_dir(data_dir, app_id, component)
    home: Path | None = None  # made in the try
    error = None
    body: dict[str, Any] = {}
    network: dict[str, Any] = _drill_network(data_dir, report.id) if drill else {"namespace": None, "isolated": False}
    try:
        root = _copies_root(data_dir, Path(base.body["path"]), archive, drill)
        home = root / f"{scope(app_id, component)}-r{report.id}"
        durable = not drill  # a drill's copy is thrown away at cleanup: see _start_copy
        cgroup = _background(box, report.id)
        body = _start_copy(
            home, Path(base.body["path"]), archive, None if drill else to, uid, network["namespace"], durable, cgroup
        )
        try:
            body.update(_wait_promoted(home, body, to))
        except _PastTheArchive:
            if not complete:
                raise RuntimeError(
                    f"the archive ends before {to.isoformat()} (last archived "
                    f"{archived_until(data_dir, app_id, component)}) and the primary could not be asked for "
                    "the rest: restore to an earlier time"
                ) from None
            # nothing was committed between the last archived commit and `to`: all of it is the state at `to`
            body = _start_copy(home, Path(base.body["path"]), archive, None, uid, network["namespace"], durable, cgroup)
            body.update(_wait_promoted(home, body, to), whole_archive=True)
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        error = str(err)
        _stop(body.get("pid"), body.get("create_time"))
        _remove_background(box, report.id)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)
        _remove_namespace(data_dir, network["namespace"])
    seconds = time.monotonic() - started
    with db.session() as s, s.begin():
        r = s.get(DrReport, report.id)
        assert r is not None
        r.finished_at = utcnow()
        if error is not None:
            r.outcome, r.summary = "failed", f"{r.summary}: {error}"
            r.body = {**r.body, "state": "failed"}
            record_event(s, "RestoreFailed", "app", name, r.summary, warning=True, vdc=vdc, app=name)
        else:
            database = body.pop("database", "app")
            r.outcome = "succeeded"
            r.body = {
                **r.body, **body, "state": "ready", "seconds": round(seconds, 3), "network": network,
                "in_memory": Path(body["dir"]).parent == _memory_root(data_dir),
                "connection": connection_string([f"127.0.0.1:{body['port']}"], "app", None, database),
            }  # fmt: skip
            where = (
                f"in network namespace {network['namespace']} (no link out: `ip netns exec` it, or use the socket "
                f"in {body['dir']})"
                if network["namespace"]
                else f"on 127.0.0.1:{body['port']}"
            )
            r.summary = (
                f"{component} restored to {body['recovered_to'] or 'the backup'} (asked {to.isoformat()}) in "
                f"{seconds:.1f}s {where}"
            )
            if drill:
                last = datetime.fromisoformat(body["recovered_to"]) if body["recovered_to"] else None
                rpo = max(0.0, (to - last).total_seconds()) if last else None
                r.body = {**r.body, "rto_seconds": round(seconds, 3), "rpo_seconds": rpo}
                r.summary = (
                    f"drill of {component}: a copy answered in {seconds:.1f}s (RTO) with everything up to "
                    f"{body['recovered_to']} ({'?' if rpo is None else f'{rpo:.1f}s'} before the drill: RPO), "
                    f"{body['checks']['tables']} tables in {database}; production untouched"
                    + (
                        f" (the copy isolated in network namespace {network['namespace']})"
                        if network["isolated"]
                        else ""
                    )
                    + "; `dr cleanup` removes it"
                )
            record_event(s, "DrillPassed" if drill else "DatabaseRestored", "app", name, r.summary, vdc=vdc, app=name)
        return r


def cleanup(db: Database, data_dir: Path, app_id: int) -> list[int]:
    """Stop and remove the app's restored copies. Returns the reports they came from."""
    with db.session() as s, s.begin():
        q = select(DrReport.id).where(DrReport.app_id == app_id, DrReport.kind.in_(("restore", "drill")))
        ids = list(s.scalars(q.order_by(DrReport.id)))
    return [i for i in ids if remove_copy(db, data_dir, i)]


def remove_copy(db: Database, data_dir: Path, report_id: int) -> bool:
    """Stop and remove the restored copy of report `report_id` (False: none is there)."""
    with db.session() as s, s.begin():
        r = s.get(DrReport, report_id)
        if r is None or r.body.get("state") != "ready":
            return False
        _stop(r.body.get("pid"), r.body.get("create_time"))
        _remove_background(Sandbox.for_data_dir(data_dir), r.id)
        shutil.rmtree(r.body.get("dir", ""), ignore_errors=True)
        _remove_namespace(data_dir, (r.body.get("network") or {}).get("namespace"))
        r.body = {**r.body, "state": "removed", "removed_at": utcnow().isoformat()}
        record_event(s, "RestoreRemoved", "app", r.app, f"restored copy of report {r.id} stopped and removed",
                     vdc=r.vdc, app=r.app)  # fmt: skip
        return True


def abandon(db: Database, data_dir: Path, report_id: int) -> bool:
    """A copy whose making was cut short (the server stopped during it): its PostgreSQL stopped,
    its directory removed, its report failed. False: the report is not such a copy."""
    with db.session() as s, s.begin():
        r = s.get(DrReport, report_id)
        if r is None or r.outcome != "running" or r.kind not in ("restore", "drill") or r.app_id is None:
            return False
        name = f"{scope(r.app_id, r.body['component'])}-r{r.id}"
        for home in (_restores_root(data_dir) / name, _memory_root(data_dir) / name):
            with contextlib.suppress(OSError, ValueError, IndexError):
                pid = int((home / "pgdata" / "postmaster.pid").read_text().split()[0])
                _stop(pid, psutil.Process(pid).create_time())
            shutil.rmtree(home, ignore_errors=True)
        _remove_background(Sandbox.for_data_dir(data_dir), r.id)
        r.outcome, r.finished_at = "failed", utcnow()
        r.summary = f"{r.summary}: abandoned (the server stopped while it was made); its copy removed"
        r.body = {**r.body, "state": "failed"}
        return True


def stop_restores(data_dir: Path, *, remove: bool = False) -> int:
    """Stop every restored copy under this data directory's workload root (tests, `dr cleanup`
    after a crash). Returns how many were running."""
    root, memory = _restores_root(data_dir), _memory_root(data_dir)
    stopped = 0
    for pid_file in [p for r in (root, memory) if r.is_dir() for p in r.glob("*/pgdata/postmaster.pid")]:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
            stopped += 1
    if remove:
        time.sleep(0.5 if stopped else 0)
        if memory.is_dir() and _own_directory(memory):
            shutil.rmtree(memory, ignore_errors=True)
        cgroups = Sandbox.for_data_dir(data_dir).cgroups
        if cgroups is not None:
            for name in cgroups.named(_COPY_CGROUP):
                cgroups.remove(name)  # once its processes are gone
    if remove and root.exists():
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(root.parent / "dr-archive", ignore_errors=True)
    if remove and unavailable() is None:
        fabric = Fabric(server_id(data_dir))
        for name in fabric.namespaces():
            fabric.remove_isolated(name)
    return stopped


def _drill_network(data_dir: Path, report_id: int) -> dict[str, Any]:
    """Where a drill's copy listens: a network namespace of its own with nothing but its loopback
    (root, namespaces), else the host's loopback on a port of its own (saying why)."""
    why = unavailable()
    if why is not None:
        return {"namespace": None, "isolated": False, "why": why}
    return {"namespace": Fabric(server_id(data_dir)).isolated(f"drill{report_id}"), "isolated": True}


def _remove_namespace(data_dir: Path, name: str | None) -> None:
    if name:
        Fabric(server_id(data_dir)).remove_isolated(name)


def _switch_wal(host: str, password: str) -> bool:
    """Close the primary's current WAL segment and wait until it is archived (True: it is)."""
    h, _, port = host.rpartition(":")
    with contextlib.suppress(psycopg.Error), psycopg.connect(
        host=h, port=int(port), user=SUPERUSER, password=password, dbname="postgres",
        connect_timeout=3, autocommit=True, options="-c statement_timeout=10000",
    ) as conn:  # fmt: skip
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        deadline = time.monotonic() + 30
        while row is not None and time.monotonic() < deadline:  # until that segment is in the archive
            done = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()
            if done and done[0] and str(done[0]) >= str(row[0]):
                return True
            time.sleep(0.2)
    return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _PastTheArchive(Exception):
    """PostgreSQL replayed the whole archive without passing the target time."""


_COPY_CGROUP = "copy-r"  # and the report's id


def _background(box: Sandbox, report_id: int) -> Path | None:
    """The cgroup a copy's processes run in, yielding the CPU to everything else (None: no
    cgroups here; nice 19 alone)."""
    if box.cgroups is None:
        return None
    try:
        return box.cgroups.background(f"{_COPY_CGROUP}{report_id}")
    except OSError as err:
        log.warning("no background cgroup for the copy of report %s (%s): nice 19 alone", report_id, err)
        return None


def _remove_background(box: Sandbox, report_id: int) -> None:
    if box.cgroups is not None:
        box.cgroups.remove(f"{_COPY_CGROUP}{report_id}")


def _in_cgroup(procs: Path | None, argv: list[str]) -> list[str]:
    """`argv` run inside the cgroup of `procs` (a shell joins it, then becomes the command)."""
    return argv if procs is None else ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *argv]


def _start_copy(
    home: Path,
    backup: Path,
    archive: Path,
    to: datetime | None,
    uid: int,
    netns: str | None,
    durable: bool,
    cgroup: Path | None,
) -> dict[str, Any]:
    """Start PostgreSQL on the copy (unpacking the base backup first, once), recovering to `to`
    (None: all of the archive), in network namespace `netns` if given (its own loopback; the
    platform reaches it through its socket in `home`). Both run in `cgroup` when given (see
    `Cgroups.background`), with an environment of their own (none of the server's).

    Not `durable` (a drill's copy, removed at cleanup): the copy never asks the disk to flush
    (`fsync`, `full_page_writes` and `synchronous_commit` off), so it does not sync its whole
    data directory at start nor at the end-of-recovery checkpoint. Production shares the disk
    and its commits wait on their own flushes; a drill's copy that a machine crash loses is
    simply run again."""
    pgdata = home / "pgdata"
    if not pgdata.exists():
        pgdata.mkdir(parents=True, mode=0o700)
        # unpacked by tar at the lowest CPU and I/O priority (it is the heaviest part of a restore,
        # and production shares the machine); the archive is pg_basebackup's, from our own data dir
        unpack = ["nice", "-n", "19", "ionice", "-c", "3", "tar", "-xzf", str(backup / "base.tar.gz"),
                  "-C", str(pgdata), "--no-same-owner"]  # fmt: skip
        done = subprocess.run(
            _in_cgroup(cgroup, unpack), capture_output=True, text=True, check=False, env=_copy_env(home)
        )
        if done.returncode != 0:
            raise RuntimeError(f"could not unpack base backup {backup.name}: {done.stderr.strip()[-400:]}")
    for stale in ("postmaster.pid", "postmaster.opts", "standby.signal"):
        (pgdata / stale).unlink(missing_ok=True)
    (pgdata / "recovery.signal").write_text("")
    port = _free_port()
    conf = home / "restore.conf"
    settings = {
        "data_directory": str(pgdata), "hba_file": str(home / "pg_hba.conf"), "ident_file": str(home / "pg_ident.conf"),
        "listen_addresses": "127.0.0.1", "port": port, "unix_socket_directories": str(home),
        "max_connections": 50, "max_wal_senders": 10, "max_replication_slots": 10, "shared_buffers": "16MB",
        "hot_standby": "off", "archive_mode": "off", "wal_level": "replica",
        "restore_command": f"cp {archive}/%f \"%p\"", "recovery_target_action": "promote",
        "logging_collector": "off", **({"recovery_target_time": to.isoformat()} if to is not None else {}),
        **({} if durable else {"fsync": "off", "full_page_writes": "off", "synchronous_commit": "off"}),
    }  # fmt: skip
    conf.write_text("".join(f"{k} = {_quote(v)}\n" for k, v in settings.items()))
    # replication too: a restore in place clones the cluster's new primary from the copy
    (home / "pg_hba.conf").write_text(
        f"local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication {REPLICATOR} 127.0.0.0/8 "
        "scram-sha-256\n"
    )
    (home / "pg_ident.conf").write_text("")
    for dirpath, _, files in os.walk(home):
        os.chown(dirpath, uid, uid)
        for f in files:
            os.chown(os.path.join(dirpath, f), uid, uid, follow_symlinks=False)
    argv = [f"{BIN_DIR}/postgres", f"--config-file={conf}"]
    if uid != os.geteuid():
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--", *argv]
    argv = ["nice", "-n", "19", *argv]  # a copy beside production yields the CPU to it
    if netns is not None:
        argv = ["ip", "netns", "exec", netns, *argv]  # each execs the next in place: the pid is PostgreSQL's
    argv = _in_cgroup(cgroup, argv)  # joined first: `ip netns exec` mounts a /sys without the cgroups
    log_file = home / "log"
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=home, env=_copy_env(home))  # fmt: skip
    return {
        "pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time(), "port": port, "dir": str(home),
        "durable": durable,
    }  # fmt: skip


def _copy_env(home: Path) -> dict[str, str]:
    """A copy's environment: nothing of the server's (its secrets), which the VDC's uid could read."""
    return {"PATH": SAFE_PATH, "HOME": str(home), "LANG": "C.UTF-8"}


def _quote(v: object) -> str:
    return str(v) if isinstance(v, int) else "'" + str(v).replace("'", "''") + "'"


def _wait_promoted(home: Path, body: dict[str, Any], to: datetime) -> dict[str, Any]:
    """Until the copy has replayed to `to` and opened for writes; what it recovered to."""
    deadline = time.monotonic() + RESTORE_TIMEOUT
    log_file = home / "log"
    while time.monotonic() < deadline:
        if not _alive(body["pid"], body["create_time"]):
            text = log_file.read_text(errors="replace") if log_file.exists() else ""
            if "before configured recovery target was reached" in text:
                (home / "log").rename(home / f"log.{int(time.time())}")
                raise _PastTheArchive()
            raise RuntimeError(f"the restored PostgreSQL stopped: {text.strip()[-400:]}")
        with contextlib.suppress(psycopg.Error), psycopg.connect(
            host=str(home), port=body["port"], user=SUPERUSER, dbname="postgres", connect_timeout=2, autocommit=True
        ) as conn:  # fmt: skip
            row = conn.execute("SELECT pg_is_in_recovery(), pg_last_xact_replay_timestamp()").fetchone()
            if row is not None and row[0] is False:
                names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE NOT datistemplate")]
                database = next((n for n in names if n != "postgres"), "postgres")
                return {
                    "recovered_to": _recovered_to(log_file, row[1]),
                    "database": database,
                    "checks": _checks(home, body["port"], database),
                }
        time.sleep(0.3)
    raise RuntimeError(f"the restore did not finish in {RESTORE_TIMEOUT:.0f}s")


def _checks(home: Path, port: int, database: str) -> dict[str, Any]:
    """What a drill checks in the copy: the app's database opens and answers, and its tables."""
    with psycopg.connect(host=str(home), port=port, user=SUPERUSER, dbname=database, connect_timeout=5) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_user_tables").fetchone()
        return {"database": database, "tables": int(row[0]) if row else 0, "answers": True}


_STOPPED_AT = re.compile(r"(?:recovery stopping (?:before|after) commit of transaction \d+, time|last completed "
                         r"transaction was at log time) (\S+ \S+)")  # fmt: skip


def _recovered_to(log_file: Path, replayed: datetime | None) -> str | None:
    """The time of the last transaction the copy has: PostgreSQL's own word for it."""
    if replayed is not None:
        return replayed.astimezone(UTC).isoformat()
    found = _STOPPED_AT.findall(log_file.read_text(errors="replace")) if log_file.exists() else []
    return found[-1] if found else None


def _alive(pid: int, create_time: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 1 and psutil.Process(pid).status() != "zombie"
    except psutil.Error:
        return False


def _stop(pid: int | None, create_time: float | None) -> None:
    if pid is None or create_time is None or not _alive(pid, create_time):
        return
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGINT)  # fast shutdown
    deadline = time.monotonic() + 15
    while _alive(pid, create_time) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
