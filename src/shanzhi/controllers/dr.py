"""The DR controller: runs the quorum, admits managed databases to it and watches them.

Each pass (on the leader, after the reconciler):

1. **Quorum.** Once an app asks for protection, one etcd member per quorum centre (production,
   same-city, arbiter) and one in the remote centre for its standby clusters, each recorded in
   the store with its address and ports. A member runs on its centre's `local` cloud as a
   platform workload (the platform's own uid, a volume for its data, the ports its peers were
   told): losing the cloud loses the member, and once the cloud is back the member is made
   again on the same volume and rejoins. A centre without such a cloud runs its member beside
   the server on the centre's address (found again after a restart by pid and start time).
   Each pass checks every member's health and records changes as events. Auth is enabled on
   first start: the root password stays in the data directory (0600).
2. **Admission.** Each managed database gets an etcd user and role that reach only its own
   prefix; its members are created only after that (`DrCluster.prepared`), so a tenant's
   Patroni can never read or take another's leader key.
3. **Watch.** Each database's members as Patroni records them in etcd: role, state, timeline,
   lag. A new leader is an event and a report (who, when it was last seen, when the new one
   was, the data it may have lost); the app's database and role are created once a leader runs.

Patroni holds the leader key, fences and promotes: this controller never decides a failover.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import psutil
import psycopg
from psycopg import sql
from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.controllers import dr_activate, dr_backup, dr_restore
from shanzhi.controllers.dr_members import main_members, site_roles, standby_source
from shanzhi.controllers.fleet import Fleet
from shanzhi.domain.dr import MEMBERS, quorum_sites, sites_by_role
from shanzhi.domain.errors import ShanzhiError
from shanzhi.domain.spec import AppSpec
from shanzhi.dr.etcd import EtcdMember, member_argv
from shanzhi.dr.patroni import (
    API_USER,
    NAMESPACE,
    SUPERUSER,
    MemberStatus,
    api_base,
    etcd_prefix,
    etcd_user,
    json_object,
    lag_bytes,
    parse_member,
    scope,
    settings_to_mend,
    standby_cluster,
    sync_standbys,
)
from shanzhi.files import write_private
from shanzhi.providers.base import PLATFORM_VDC, InstanceRequest, VolumeRequest, free_port
from shanzhi.sealing import Vault
from shanzhi.store import Database
from shanzhi.store.changes import mark
from shanzhi.store.events import record_event
from shanzhi.store.tables import DR_KEY, Cloud, DrCluster, DrEtcdMember, DrReport, Instance, Site, utcnow

log = logging.getLogger("shanzhi.dr")
TIMEOUT = httpx.Timeout(2.0)
HEALTH_TIMEOUT = httpx.Timeout(1.0)
QUORUM_GRACE = 5.0  # seconds an etcd member is unhealthy before that is an event
PASSWORDS = ("superuser", "replication", "app", "etcd")  # each managed database's, sealed (DrCluster.keys)
_NEEDS_AUTH = re.compile(r"user name is empty|invalid auth token|permission denied|token")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _prefix_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class ClusterView(NamedTuple):
    """A Patroni cluster as etcd has it."""

    members: list[MemberStatus]
    leader: str | None
    position: int | None  # the leader's last position (its `/status` optime)
    sync: set[str]  # the synchronous standbys `/sync` names
    config: dict[str, Any]  # its dynamic configuration


class Etcd:
    """The few calls of etcd's v3 JSON gateway the controller needs (auth and ranges)."""

    def __init__(self, urls: list[str], root_password: str) -> None:
        self.urls = urls
        self.root_password = root_password
        self._token: str | None = None
        self._http = httpx.Client(timeout=TIMEOUT)

    def close(self) -> None:
        self._http.close()

    def call(self, path: str, body: dict[str, Any], *, auth: bool = True) -> dict[str, Any]:
        last: Exception | None = None
        for url in self.urls:
            try:
                headers = {"Authorization": self._token} if auth and self._token else {}
                r = self._http.post(f"{url}/v3/{path}", json=body, headers=headers)
                if auth and r.status_code in (400, 401, 403) and _NEEDS_AUTH.search(r.text):
                    self._token = self._authenticate(url)
                    r = self._http.post(f"{url}/v3/{path}", json=body, headers={"Authorization": self._token})
                if r.status_code == 200:
                    out: dict[str, Any] = r.json()
                    return out
                last = RuntimeError(f"etcd {path}: {r.status_code} {r.text[:200]}")
                if "already exists" in r.text or "already granted" in r.text:
                    return {}
            except httpx.HTTPError as err:
                last = err
        raise RuntimeError(f"etcd unreachable or refused ({', '.join(self.urls)}): {last}")

    def _authenticate(self, url: str) -> str:
        r = self._http.post(f"{url}/v3/auth/authenticate", json={"name": "root", "password": self.root_password})
        r.raise_for_status()
        return str(r.json()["token"])

    def enable_auth(self) -> None:
        """Root with the platform's password, then auth on (idempotent: once on, root logs in)."""
        if self._token is not None:
            return
        r = self._http.post(
            f"{self.urls[0]}/v3/auth/authenticate", json={"name": "root", "password": self.root_password}
        )
        if r.status_code == 200:
            self._token = str(r.json()["token"])
            return
        if "not enabled" not in r.text:
            raise RuntimeError(f"etcd auth: {r.status_code} {r.text[:200]}")
        self.call("auth/user/add", {"name": "root", "password": self.root_password}, auth=False)
        self.call("auth/user/grant", {"user": "root", "role": "root"}, auth=False)
        self.call("auth/enable", {}, auth=False)

    def admit(self, user: str, password: str, prefix: str) -> None:
        """A user and role that may read and write only `prefix`."""
        self.call("auth/role/add", {"name": user})
        perm = {"permType": "READWRITE", "key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
        self.call("auth/role/grant", {"name": user, "perm": perm})
        self.call("auth/user/add", {"name": user, "password": password})
        self.call("auth/user/grant", {"user": user, "role": user})

    def get_prefix(self, prefix: str) -> dict[str, str]:
        out = self.call("kv/range", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        return {
            base64.b64decode(kv["key"]).decode(): base64.b64decode(kv.get("value", "")).decode()
            for kv in out.get("kvs", [])
        }

    def delete_prefix(self, prefix: str) -> int:
        out = self.call("kv/deleterange", {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))})
        return int(out.get("deleted", 0))

    def healthy(self) -> bool:
        for url in self.urls:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if self._http.get(f"{url}/health").json().get("health") == "true":
                    return True
        return False


def seal_passwords(s: Session, data_dir: Path) -> list[tuple[DrCluster, dict[str, str]]]:
    """Every managed database with its passwords, made (a new one's) and sealed with the data
    directory's `dr.key` before anything uses them (a row's from before sealing: sealed now)."""
    vault = Vault.for_data_dir(data_dir, DR_KEY)
    out = []
    for c in s.scalars(select(DrCluster)):
        keys = c.keys(data_dir, vault)
        if "sealed" not in c.secrets:
            keys = keys or {k: secrets.token_urlsafe(24) for k in PASSWORDS}
            c.secrets = {"sealed": vault.seal_json(keys)}
        out.append((c, keys))
    return out


class DrController:
    def __init__(self, db: Database, fleet: Fleet) -> None:
        self.db = db
        self.fleet = fleet
        self.data_dir = fleet.data_dir
        self.dir = fleet.data_dir / "dr"
        self._backups = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dr-backup")
        self._backup: Future[None] | None = None
        self._ops = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dr-ops")
        self._op: Future[None] | None = None
        self._etcd: dict[str, Etcd] = {}
        self._seen: dict[int, dict[str, Any]] = {}  # cluster id -> the leader as last seen
        self._unhealthy: dict[int, float] = {}  # etcd member id -> since when (monotonic)
        self._reported: set[int] = set()  # etcd members whose being down was an event
        self._cleared: dict[int, float] = {}  # cluster id -> when its records in etcd were last cleared

    def close(self) -> None:
        self._backups.shutdown(wait=False, cancel_futures=True)
        self._ops.shutdown(wait=False, cancel_futures=True)
        for e in self._etcd.values():
            e.close()

    # --------------------------------------------------------------------- pass
    def run_once(self) -> None:
        with self.db.session() as s, s.begin():
            if s.scalar(select(DrCluster.id).limit(1)) is None:
                return  # nothing protected: no quorum to run
            self._plan_members(s)
            rows = list(s.scalars(select(DrEtcdMember).order_by(DrEtcdMember.id)))
            members = [
                (m.id, m.cluster, EtcdMember(m.name, m.address, m.client_port, m.peer_port), m.health,
                 (m.instance, m.cloud.name, m.cloud.kind, dict(m.cloud.options)) if m.cloud else None)
                for m in rows
            ]  # fmt: skip
        clusters: dict[str, list[EtcdMember]] = {}
        for _, cluster, m, _, _ in members:
            clusters.setdefault(cluster, []).append(m)
        health: dict[int, str] = {}
        for mid, cluster, m, _, cloud in members:
            ms = clusters[cluster]
            try:
                if cloud is None:
                    self._run_member(cluster, m, ms)
                else:
                    self._run_on_cloud(cluster, m, ms, *cloud)
                health[mid] = self._health(m)
            except (ShanzhiError, OSError, RuntimeError) as err:
                health[mid] = f"down: {err}"[:255]
        self._record_health({mid: (was, health[mid]) for mid, _, _, was, _ in members})
        for cluster, ms in clusters.items():
            if cluster not in self._etcd:
                self._etcd[cluster] = Etcd([m.client_url for m in ms], self._root_password())
        for cluster in clusters:
            try:
                if self._etcd[cluster].healthy():
                    self._etcd[cluster].enable_auth()
            except (RuntimeError, httpx.HTTPError) as err:
                log.warning("etcd %s not ready: %s", cluster, err)
        self._admit_and_watch()

    # ------------------------------------------------------------------ quorum
    def _plan_members(self, s: Session) -> None:
        """Rows for the etcd members the topology calls for (fixed once made)."""
        roles = site_roles(s)
        want: list[tuple[str, str]] = [("quorum", site) for site in quorum_sites(roles)]
        remote = sites_by_role(roles).get("remote")
        if remote:
            want.append(("remote", remote))
        have = {(m.cluster, m.site.name) for m in s.scalars(select(DrEtcdMember))}
        if any(c == "quorum" for c, _ in have):
            want = [w for w in want if w[0] != "quorum"]  # a quorum's membership is fixed once formed
        for cluster, site in want:
            if (cluster, site) in have:
                continue
            site_row = s.scalar(select(Site).where(Site.name == site))
            assert site_row is not None
            cloud = _site_cloud(s, site_row)
            address = str(cloud.options.get("address", "127.0.0.1")) if cloud else _site_address(s, site_row)
            taken = {p for m in s.scalars(select(DrEtcdMember)) for p in (m.client_port, m.peer_port)}
            client = free_port(taken, address)
            peer = free_port(taken | {client}, address)
            s.add(
                DrEtcdMember(
                    cluster=cluster, name=f"{cluster}-{site}", site_id=site_row.id, address=address,
                    client_port=client, peer_port=peer, cloud_id=cloud.id if cloud else None,
                )
            )  # fmt: skip
            where = f"on cloud {cloud.name}" if cloud else "beside the server (the centre has no local cloud)"
            record_event(s, "QuorumMemberPlanned", "site", site,
                         f"etcd member {cluster}-{site} at {address}:{client}, {where}")  # fmt: skip
        s.flush()

    def _root_password(self) -> str:
        path = self.dir / "etcd-root.secret"
        if not path.exists():
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_private(path, secrets.token_urlsafe(24))
        return path.read_text().strip()

    def _run_member(self, cluster: str, m: EtcdMember, ms: list[EtcdMember]) -> None:
        """Start the member unless it runs (pid and start time in its state file)."""
        home = self.dir / "etcd" / m.name
        state = home / "state.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            st = json.loads(state.read_text())
            if _alive(int(st["pid"]), float(st["create_time"])):
                return
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        # through a shell that backgrounds it and exits: never our child (no zombie), its own session
        launched = subprocess.run(
            ["/bin/sh", "-c", '"$@" </dev/null >>"$ETCD_LOG" 2>&1 & echo $!', "sh",
             *member_argv(m, ms, str(home / "data"), self._cluster_token(cluster))],
            env={**os.environ, "ETCD_LOG": str(home / "log")}, capture_output=True, text=True, check=True,
            start_new_session=True,
        )  # fmt: skip
        pid = int(launched.stdout)
        write_private(state, json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time()}))
        log.info("started etcd member %s (pid %s) at %s", m.name, pid, m.client_url)

    def _cluster_token(self, cluster: str) -> str:
        """etcd's initial-cluster token: this platform's own (a digest: it is on a command line)."""
        return f"shanzhi-{cluster}-{hashlib.sha256(self._root_password().encode()).hexdigest()[:12]}"

    def _run_on_cloud(self, cluster: str, m: EtcdMember, ms: list[EtcdMember], instance: str, cloud: str,
                      kind: str, options: dict[str, Any]) -> None:  # fmt: skip
        """Make the member a workload of its centre's cloud unless it runs there (the cloud's
        create is idempotent); its data on a volume of its own, so a member made again rejoins."""
        p = self.fleet.provider(cloud, kind, options)
        host = next((h.name for h in p.hosts() if h.healthy), None)
        if host is None:
            raise ShanzhiError(f"cloud {cloud} has no healthy host")
        p.create_instance(
            InstanceRequest(
                name=instance, app="dr-quorum", component=cluster, vdc=PLATFORM_VDC, host=host,
                cpu=1000, memory=512 * 2**20,
                command=tuple(member_argv(m, ms, "${VOLUME_DATA}/etcd", self._cluster_token(cluster))),
                ports=(("client", m.client_port), ("peer", m.peer_port)), fixed_ports=True,
                volumes=(VolumeRequest(key=instance, name="data", size=2**30, mount_path="/var/lib/etcd"),),
            )
        )  # fmt: skip

    def _health(self, m: EtcdMember) -> str:
        """`healthy` when the member answers with a leader (etcd's `/health`), else why not."""
        try:
            r = httpx.get(f"{m.client_url}/health", timeout=HEALTH_TIMEOUT)
            if r.status_code == 200 and r.json().get("health") in ("true", True):
                return "healthy"
        except httpx.HTTPError as err:
            return f"unreachable: {type(err).__name__}"
        except ValueError:
            pass  # not etcd's answer
        return f"unhealthy: {r.status_code} {r.text[:120]}"

    def _record_health(self, seen: dict[int, tuple[str, str]]) -> None:
        """Store changed health. A member unhealthy for `QUORUM_GRACE` seconds is an event (not
        the second without a leader that an election takes), and so is its return after that."""
        now_t = time.monotonic()
        for mid, (_, now) in seen.items():
            if now == "healthy":
                self._unhealthy.pop(mid, None)
            else:
                self._unhealthy.setdefault(mid, now_t)
        down = {mid for mid, since in self._unhealthy.items() if now_t - since >= QUORUM_GRACE} - self._reported
        back = {mid for mid in self._reported if mid not in self._unhealthy}
        changed = {mid: now for mid, (was, now) in seen.items() if now != was}
        if not (changed or down or back):
            return
        with self.db.session() as s, s.begin():
            for mid in changed.keys() | down | back:
                row = s.get(DrEtcdMember, mid)
                if row is None:
                    continue
                if mid in changed:
                    row.health, row.health_at = changed[mid], utcnow()
                if mid in down:
                    record_event(s, "QuorumMemberDown", "site", row.site.name,
                                 f"etcd member {row.name}: {seen[mid][1]}", warning=True)  # fmt: skip
                elif mid in back:
                    record_event(s, "QuorumMemberHealthy", "site", row.site.name, f"etcd member {row.name}: healthy")
        self._reported = (self._reported | down) - back

    # ------------------------------------------------------------------ databases
    def _admit_and_watch(self) -> None:
        with self.db.session() as s, s.begin():
            rows = [
                (c.id, c.app_id, c.app.vdc.path, c.component, c.prepared, keys,
                 AppSpec.model_validate(c.app.spec), bool(c.status.get("bootstrapped")),
                 (c.activation or {}).get("state"), c.remote_leads, c.restoring)
                for c, keys in seal_passwords(s, self.data_dir)
            ]  # fmt: skip
        for cid, app_id, vdc, comp, prepared, sec, spec, ready, activation, remote_leads, restoring in rows:
            remote = "remote" in MEMBERS[spec.spec.dr.tier]
            try:
                if not prepared:
                    self._admit(cid, app_id, vdc, comp, sec, remote)
                self._watch(cid, app_id, comp, spec, sec, remote)
            except (RuntimeError, httpx.HTTPError, KeyError, OSError, psycopg.Error) as err:
                log.warning("database %s/%s: %s", app_id, comp, err)
            if activation in ("approved", "running") and (self._op is None or self._op.done()):
                self._op = self._ops.submit(self._activate, cid, app_id, comp)
            elif activation == "rebuilding" and (self._op is None or self._op.done()):
                self._op = self._ops.submit(self._rebuild, cid, app_id, comp)
            elif restoring and (self._op is None or self._op.done()):
                self._op = self._ops.submit(self._restore, cid, app_id, comp, remote)
            idle = self._backup is None or self._backup.done()
            plan = spec.spec.dr.backups
            # while the remote centre leads, the main cluster is stopped or a standby: nothing to back up
            if ready and idle and not remote_leads and dr_backup.due(self.db, app_id, comp, plan.every_seconds):
                self._backup = self._backups.submit(self._scheduled_backup, app_id, comp, plan.keep)

    def _activate(self, cid: int, app_id: int, comp: str) -> None:
        """An approved activation of the remote centre, off the leader's loop (it waits for Patroni)."""
        try:
            leader: str | None = None
            with contextlib.suppress(RuntimeError, httpx.HTTPError):  # a lost quorum shows no leader
                members, key, *_ = self._read("quorum", scope(app_id, comp))
                leader = next((m.name for m in members if m.name == key and m.state == "running"), None)
            dr_activate.activate(self.db, self.data_dir, cid, leader)
        except Exception:
            log.exception("activating the remote centre of database %s/%s failed", app_id, comp)

    def _rebuild(self, cid: int, app_id: int, comp: str) -> None:
        """`dr reprotect` after an activation: the fenced main cluster's record in the quorum is
        cleared (its members are stopped), then the fence lifted: the reconciler starts its
        members afresh (`pgdata-r<n>`) as a standby cluster of the remote primary."""
        try:
            e = self._etcd.get("quorum")
            if e is None or not e.healthy():
                log.warning("database %s/%s: the quorum is not healthy; the rebuild waits for it", app_id, comp)
                return
            gone = e.delete_prefix(etcd_prefix(scope(app_id, comp)))
            self._seen.pop(cid, None)
            self._cleared[cid] = time.monotonic()
            with self.db.session() as s, s.begin():
                c = s.get(DrCluster, cid)
                if c is None or (c.activation or {}).get("state") != "rebuilding":
                    return
                c.activation = {**(c.activation or {}), "state": "standby", "rebuilt_at": utcnow().isoformat()}
                c.leader = None
                mark(s, [app_id])
                record_event(s, "MainClusterRebuilding", "app", c.app.name,
                             f"database {comp}: the main cluster's old record cleared ({gone} keys); its members "
                             f"start afresh (pgdata-r{c.generation}, the old data kept) as a standby cluster of "
                             "the remote primary", vdc=c.app.vdc.path, app=c.app.name)  # fmt: skip
        except Exception:
            log.exception("rebuilding the main cluster of database %s/%s failed", app_id, comp)

    def _restore(self, cid: int, app_id: int, comp: str, remote: bool) -> None:
        """An approved restore in place, off the leader's loop (it waits for copies and members)."""

        def clear() -> int:
            gone = 0
            for cluster, sc in (("quorum", scope(app_id, comp)), ("remote", scope(app_id, comp, True))):
                if cluster == "remote" and not remote:
                    continue
                e = self._etcd.get(cluster)
                if e is None or not e.healthy():
                    raise RuntimeError(f"the {cluster} etcd is not healthy; the restore waits for it")
                gone += e.delete_prefix(etcd_prefix(sc))
            self._seen.pop(cid, None)
            self._cleared[cid] = time.monotonic()
            return gone

        try:
            dr_restore.restore_in_place(self.db, self.fleet, cid, clear)
        except Exception:
            log.exception("restoring database %s/%s in place failed; the next pass carries on", app_id, comp)

    def _scheduled_backup(self, app_id: int, comp: str, keep: int) -> None:
        """One at a time, off the leader's loop (a big database takes a while)."""
        try:
            dr_backup.take_backup(self.db, self.data_dir, app_id, comp, why="scheduled")
            dr_backup.prune(self.db, app_id, comp, keep)
        except Exception:
            log.exception("scheduled backup of database %s/%s failed", app_id, comp)

    def _admit(self, cid: int, app_id: int, vdc: str, comp: str, sec: dict[str, str], remote: bool) -> None:
        main = self._etcd.get("quorum")
        if main is None or not main.healthy():
            return
        dr_backup.prepare_archive(self.data_dir, vdc, app_id, comp)  # before any member starts
        for cluster, sc in (("quorum", scope(app_id, comp)), ("remote", scope(app_id, comp, True))):
            if cluster == "remote" and not remote:
                continue
            e = self._etcd.get(cluster)
            if e is None or not e.healthy():
                return
            e.admit(etcd_user(sc), sec["etcd"], etcd_prefix(sc))
        with self.db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            if c is not None:
                c.prepared = True
                record_event(s, "DatabaseAdmitted", "app", c.app.name, f"database {comp} admitted to the DR quorum",
                             vdc=c.app.vdc.path, app=c.app.name)  # fmt: skip

    def _read(self, cluster: str, sc: str) -> ClusterView:
        """A Patroni cluster as etcd has it, in one range read of its prefix."""
        e = self._etcd.get(cluster)
        if e is None:
            return ClusterView([], None, None, set(), {})
        kv = e.get_prefix(f"{NAMESPACE}{sc}/")
        members = [
            parse_member(k.rsplit("/", 1)[-1], v)
            for k, v in sorted(kv.items())
            if k.startswith(f"{NAMESPACE}{sc}/members/")
        ]
        pos: int | None = None
        with contextlib.suppress(ValueError, TypeError, KeyError):
            st = kv.get(f"{NAMESPACE}{sc}/status")
            pos = int(json.loads(st)["optime"]) if st else None
        return ClusterView(
            members,
            kv.get(f"{NAMESPACE}{sc}/leader"),
            pos,
            sync_standbys(json_object(kv.get(f"{NAMESPACE}{sc}/sync"))),
            json_object(kv.get(f"{NAMESPACE}{sc}/config")),
        )

    def _patch_config(self, api: str, body: dict[str, Any], password: str) -> str | None:
        """A change to a cluster's dynamic configuration through its leader's Patroni API; why it
        failed, or None."""
        try:
            with httpx.Client(timeout=10.0, auth=(API_USER, password)) as http:
                http.patch(f"{api}/config", json=body).raise_for_status()
        except httpx.HTTPError as err:
            return str(err) or type(err).__name__
        return None

    def _mend(self, cid: int, comp: str, mend: dict[str, Any], api: str, password: str) -> None:
        """A cluster made before a dynamic setting came gets it (`patroni.settings_to_mend`)."""
        err = self._patch_config(api, mend, password)
        if err is not None:
            log.warning("database %s: setting %s failed (%s); next pass", comp, mend, err)
            return
        with self.db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            if c is not None:
                said = ", ".join(f"{k} {v}" for k, v in mend.items())
                record_event(s, "DatabaseSettingsMended", "app", c.app.name,
                             f"database {comp}: its Patroni cluster now runs with {said}",
                             vdc=c.app.vdc.path, app=c.app.name)  # fmt: skip

    def _repoint(self, cid: int, comp: str, follow: dict[str, Any], moved: bool, api: str, password: str) -> None:
        """The remote standby cluster told, through its leader's Patroni API, to replicate from
        where the same-city member runs now (it moved: another cloud, another address) and to
        read the WAL archive (a cluster made before it did). Patroni rewrites its
        `primary_conninfo`. It is never pointed at production: fed from same-city, it can never
        be ahead of it."""
        to = f"{follow['host']}:{follow['port']}"
        err = self._patch_config(api, {"standby_cluster": follow}, password)
        if err is not None:
            log.warning("database %s: re-pointing the remote standby at %s failed (%s); next pass", comp, to, err)
            return
        why = "the same-city member moved" if moved else "and from the main cluster's WAL archive"
        with self.db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            if c is not None:
                record_event(s, "RemoteStandbyRepointed", "app", c.app.name,
                             f"database {comp}: the remote standby cluster now replicates from {to} ({why})",
                             vdc=c.app.vdc.path, app=c.app.name)  # fmt: skip

    def _watch(self, cid: int, app_id: int, comp: str, spec: AppSpec, sec: dict[str, str], remote: bool) -> None:
        read_at = time.monotonic()
        members, leader, pos, sync, config = self._read("quorum", scope(app_id, comp))
        rview = self._read("remote", scope(app_id, comp, True)) if remote else ClusterView([], None, None, set(), {})
        rmembers, rleader = rview.members, rview.leader
        # the remote standby cluster's `standby_cluster` section, as its dynamic configuration has it
        follows = rview.config.get("standby_cluster")
        followed = dict(follows) if remote and isinstance(follows, dict) else None
        repoint: tuple[dict[str, Any], bool, str] | None = None
        lead = next((m for m in members if m.name == leader), None)
        mend = settings_to_mend(config)
        lags = lag_bytes(members, pos if pos is not None else (lead.wal_position if lead else None))
        source_pos = pos if pos is not None else (lead.wal_position if lead else None)
        rlags = lag_bytes(rmembers, source_pos)
        now = utcnow()
        with self.db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            if c is None or self._cleared.get(cid, -1.0) >= read_at:
                return  # gone, or read before a restore or rebuild cleared its records (ops thread): stale
            sites = {
                r.name: (r.cloud.site.name if r.cloud else None)
                for r in s.scalars(select(Instance).where(Instance.app_id == app_id, Instance.component == comp))
            }
            out = [
                {"cluster": "main", "name": m.name, "role": _role(m, leader), "state": m.state, "timeline": m.timeline,
                 "host": m.host, "api": m.api, "site": sites.get(m.name), "lag_bytes": lags.get(m.name),
                 "sync": m.name in sync}
                for m in members
            ] + [
                {"cluster": "remote", "name": m.name, "role": m.role, "state": m.state, "timeline": m.timeline,
                 "host": m.host, "api": m.api, "site": sites.get(m.name), "lag_bytes": rlags.get(m.name),
                 "leader": m.name == rleader}
                for m in rmembers
            ]  # fmt: skip
            before = self._seen.get(cid) or {"leader": c.leader, "at": c.updated_at, "position": None}
            if leader and lead is not None and lead.state == "running" and leader != before["leader"]:
                self._new_leader(s, c, before, leader, lead, now)
            if leader and lead is not None and lead.state == "running":
                self._seen[cid] = {"leader": leader, "at": now, "position": lead.wal_position}
            c.leader, c.timeline = leader, lead.timeline if lead else c.timeline
            known = dict(c.status.get("known", {}))  # every member ever seen: an activation probes them all
            known.update({m["name"]: {"cluster": m["cluster"], "host": m["host"]} for m in out if m["host"]})
            c.status = {**c.status, "members": out, "leader_position": pos, "known": known}
            if leader and lead is not None and lead.state == "running" and lead.role == "primary":
                # what an activation of the remote centre would lose, as last measured while production led
                lagging = [v for v in rlags.values() if v is not None]
                c.status["main_seen"] = now.isoformat()
                if lagging:
                    c.status["remote_lag"] = {"bytes": min(lagging), "at": now.isoformat()}
            c.updated_at = now
            # with synchronous_mode_strict a primary commits nothing until its standby runs: wait for it
            expected = main_members(spec)
            running = sum(1 for m in members if m.state == "running")
            need_bootstrap = lead is not None and running >= expected and not c.status.get("bootstrapped")
            host = lead.host if lead else None
            component = next((x for x in spec.spec.databases() if x.name == comp), None)
            database = component.postgres.database if component is not None and component.postgres else "app"
            # the remote standby cluster follows the same-city member wherever it runs now
            rlead = next((m for m in rmembers if m.name == rleader and m.state == "running" and m.api), None)
            if remote and not c.remote_leads and component is not None and rlead is not None and rlead.api:
                source = standby_source(s, c.app, spec, component)
                if source is not None and followed is not None:
                    want = standby_cluster(*source, str(dr_backup.archive_dir(self.data_dir, app_id, comp)))
                    if any(followed.get(k) != v for k, v in want.items()):
                        moved = (followed.get("host"), followed.get("port")) != source
                        repoint = (want, moved, api_base(rlead.api))
        if need_bootstrap and host:
            self._bootstrap(cid, host, sec, database)
        if repoint is not None:
            self._repoint(cid, comp, *repoint, sec["superuser"])
        if mend and lead is not None and lead.role == "primary" and lead.state == "running" and lead.api:
            self._mend(cid, comp, mend, api_base(lead.api), sec["superuser"])

    def _new_leader(
        self, s: Session, c: DrCluster, before: dict[str, Any], leader: str, lead: MemberStatus, now: Any
    ) -> None:
        app = c.app
        planned = s.scalar(
            select(DrReport.id).where(
                DrReport.app_id == app.id,
                DrReport.kind.in_(("switchover", "failback", "restore-in-place")),
                DrReport.outcome == "running",
                DrReport.started_at >= now - timedelta(minutes=5),  # one a crash left running does not count
            )
        )
        if planned is not None:  # the operation's own report tells it
            record_event(s, "DatabaseLeader", "app", app.name, f"database {c.component}: {leader} leads (planned)",
                         vdc=app.vdc.path, app=app.name)  # fmt: skip
            return
        if before["leader"] is None:
            record_event(s, "DatabaseLeader", "app", app.name, f"database {c.component}: {leader} leads",
                         vdc=app.vdc.path, app=app.name)  # fmt: skip
            return
        lost = None
        if before.get("position") is not None and lead.wal_position is not None:
            lost = max(0, int(before["position"]) - int(lead.wal_position))
        gap = (now - before["at"]).total_seconds()
        summary = (
            f"database {c.component}: {leader} took over from {before['leader']} (timeline {lead.timeline}); "
            f"{gap:.1f}s from the old leader last seen to the new one running"
        )
        record_event(s, "DatabaseFailover", "app", app.name, summary, warning=True, vdc=app.vdc.path, app=app.name)
        s.add(
            DrReport(
                app_id=app.id, vdc=app.vdc.path, app=app.name, kind="failover", outcome="succeeded", summary=summary,
                body={"component": c.component, "old_leader": before["leader"], "new_leader": leader,
                      "timeline": lead.timeline, "old_leader_last_seen": before["at"].isoformat(),
                      "new_leader_seen": now.isoformat(), "seconds": round(gap, 3),
                      "lost_bytes_at_most": lost},
                started_at=before["at"], finished_at=now,
            )
        )  # fmt: skip

    def _bootstrap(self, cid: int, host: str, sec: dict[str, str], database: str) -> None:
        """The app's role and database, once, on the leader (idempotent)."""
        h, _, port = host.rpartition(":")
        with psycopg.connect(
            host=h,
            port=int(port),
            user=SUPERUSER,
            password=sec["superuser"],
            dbname="postgres",
            connect_timeout=3,
            autocommit=True,
            options="-c statement_timeout=10000 -c synchronous_commit=local",
        ) as conn:  # fmt: skip
            # never waits for a standby (this loop must not hang); they are running, so they follow
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'app'").fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE app LOGIN PASSWORD {}").format(sql.Literal(sec["app"])))
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {} OWNER app").format(sql.Identifier(database)))
        with self.db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            if c is not None:
                c.status = {**c.status, "bootstrapped": True}
                record_event(s, "DatabaseReady", "app", c.app.name, f"database {c.component}: {database} ready",
                             vdc=c.app.vdc.path, app=c.app.name)  # fmt: skip


def _role(m: MemberStatus, leader: str | None) -> str:
    """A member's role as the leader key has it: one that still says primary without the key is
    a former primary (its member key outlives it until its ttl)."""
    if m.name == leader:
        return "standby_leader" if m.role == "standby_leader" else "primary"
    return "former-primary" if m.role == "primary" else m.role


def _site_cloud(s: Session, site: Site) -> Cloud | None:
    """The centre's cloud that runs its etcd member: its first `local` cloud (one that runs
    processes on this machine), or none."""
    q = select(Cloud).where(Cloud.site_id == site.id, Cloud.kind == "local", Cloud.draining.is_(False))
    return s.scalar(q.order_by(Cloud.name).limit(1))


def _site_address(s: Session, site: Site) -> str:
    """Where a centre's etcd member listens: the loopback address of the centre's local clouds."""
    for c in s.scalars(select(Cloud).where(Cloud.site_id == site.id).order_by(Cloud.name)):
        if c.options.get("address"):
            return str(c.options["address"])
    return "127.0.0.1"


def _alive(pid: int, create_time: float) -> bool:
    try:
        return abs(psutil.Process(pid).create_time() - create_time) < 1 and psutil.Process(pid).status() != "zombie"
    except psutil.Error:
        return False


def stop_quorum(data_dir: Path, *, remove: bool = False) -> int:
    """Stop every etcd member this data directory's DR controller started, and every restored
    copy of a database (offline cleanup)."""
    n = dr_backup.stop_restores(data_dir, remove=remove)
    for state in sorted((data_dir / "dr" / "etcd").glob("*/state.json")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            st = json.loads(state.read_text())
            if _alive(int(st["pid"]), float(st["create_time"])):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(st["pid"]), signal.SIGKILL)
                n += 1
    if remove:
        import shutil

        shutil.rmtree(data_dir / "dr", ignore_errors=True)
    return n
