"""A managed PostgreSQL member's Patroni configuration, and what Patroni reports of it.

A member is an instance like any other: the provider substitutes `${ADDRESS}`, `${PORT_PG}`,
`${PORT_API}` and `${VOLUME_DATA}`, and Patroni reads the whole YAML from
`PATRONI_CONFIGURATION`. The timing is Patroni's minimum safe one (ttl 20 s, loop_wait 1 s,
retry_timeout 5 s), measured on this project's machines; `wal_retrieve_retry_interval` is
500 ms so that replicas find the new primary's slot ~2 s sooner after a promotion.
"""

from __future__ import annotations

import ast
import inspect
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import quote, urlsplit

import yaml

from shanzhi.dr import walprune

BIN_DIR = "/usr/lib/postgresql/15/bin"
PATRONI = "/usr/bin/patroni"  # Debian's: it runs under /usr/bin/python3, which has psycopg2

#: Debian's Patroni 3.0.2, with its etcd3 leader-key refresh made compare-and-set. Its own
#: `Etcd3._update_leader` puts the leader key unconditionally whenever its lease is not the one
#: its (cached) view of the cluster shows: an old primary isolated past the ttl, whose demotion
#: was still running when the network came back, got a new lease and took the key from the
#: primary promoted meanwhile (seen by this project's partition cycles, tests/dr/partitions.py).
#: This refreshes the key only while its value is this member's name, else takes it only if it is
#: absent, as Patroni's own etcd (v2) backend does (`prevValue`, then acquire on key-not-found).
#: Versions whose method has another signature (later ones) are left alone.
CAS_PATCH = """
import inspect, time
from patroni.dcs import etcd3 as e3
from patroni.dcs import AbstractDCS

def _update_leader(self):
    retry = self._retry.copy()
    def _retry(*args, **kwargs):
        kwargs['retry'] = retry
        return retry(*args, **kwargs)
    self._run_and_handle_exceptions(self._do_refresh_lease, True, retry=_retry)
    if not self._lease:
        return False
    cluster = self.cluster
    if cluster and isinstance(cluster.leader, e3.Leader) and cluster.leader.session == self._lease:
        return True
    retry.deadline = retry.stoptime - time.time()
    if retry.deadline < 1:
        raise e3.Etcd3Error('update_leader timeout')
    key, name = e3.base64_encode(self.leader_path), e3.base64_encode(self._name)
    put = {'request_put': {'key': key, 'value': name, 'lease': self._lease}}
    for cmp in ({'target': 'VALUE', 'key': key, 'value': name}, {'target': 'CREATE', 'key': key, 'create_revision': 0}):
        if self._run_and_handle_exceptions(self._client.txn, cmp, put, retry=_retry):
            return True
    e3.logger.warning('the leader key is held by another member: not taking it (compare-and-set)')
    return False

if list(inspect.signature(AbstractDCS._update_leader).parameters) == ['self']:  # 3.0's, not later ones
    e3.Etcd3._update_leader = e3.catch_return_false_exception(_update_leader)
"""
#: the launcher also prunes the WAL of earlier timelines from its member's pg_wal (`walprune`)
_PRUNE = """
import os, yaml
_conf = yaml.safe_load(os.environ.get("PATRONI_CONFIGURATION") or "{}") or {}
_data_dir = (_conf.get("postgresql") or {}).get("data_dir")
if _data_dir:
    start_pruning(_data_dir)
"""


def _code(module: ModuleType) -> str:
    """A module's source without its docstring, which would otherwise go on every member's
    command line."""
    source = inspect.getsource(module)
    first = ast.parse(source).body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and first.end_lineno is not None:
        return "".join(source.splitlines(keepends=True)[first.end_lineno :])
    return source


_LAUNCH = CAS_PATCH + _code(walprune) + _PRUNE + "from patroni.__main__ import main\nmain()\n"
#: how a member's Patroni is started (`PATRONI_CONFIGURATION` in its environment)
PATRONI_ARGV = ("/usr/bin/python3", "-c", _LAUNCH)
NAMESPACE = "/shanzhi/"
SUPERUSER = "postgres"
API_USER = "shanzhi"  # Patroni's REST API, with the superuser's password
REPLICATOR = "replicator"

#: Patroni's dynamic settings: the minimum safe timing and what RPO 0 and rewind need
TIMING: dict[str, Any] = {"ttl": 20, "loop_wait": 1, "retry_timeout": 5, "primary_start_timeout": 0}
#: how far (bytes) a synchronous cluster's standby may be behind the last position its lost
#: primary wrote to etcd and still be promoted. Patroni's default, 1 MiB, counts WAL no commit
#: waited for: a bulk load streams its WAL to the standby as it is written, and over a link
#: between centres it can be megabytes behind when the primary is lost; then no member ever
#: qualifies and the cluster stays without a primary until the old one returns
#: (patroni/patroni#3703, zalando/postgres-operator#1632). In synchronous mode only the
#: synchronous standby races (the `/sync` key names it), and it holds every acknowledged
#: commit: what it lacks was never acknowledged. 64 MiB is the bound where the key is absent
#: (any replica then races), as at a cluster's very start. (This project's partition cycles
#: measure it at each isolation: there the standby was always ahead of that position.)
SYNC_LAG_ON_FAILOVER = 64 * 2**20


@dataclass(frozen=True)
class Secrets:
    superuser: str
    replication: str
    app: str
    etcd: str  # the cluster's own etcd user's password (its prefix only)


def scope(app_id: int, component: str, remote: bool = False) -> str:
    """The Patroni cluster's name: the main cluster, or the remote centre's standby cluster."""
    return f"a{app_id}-{component}" + ("-remote" if remote else "")


def etcd_user(cluster_scope: str) -> str:
    return f"patroni-{cluster_scope}"


def etcd_prefix(cluster_scope: str) -> str:
    return f"{NAMESPACE}{cluster_scope}/"


def api_base(api_url: str) -> str:
    """A member's Patroni REST API base, from the `api_url` it registers in etcd (`.../patroni`)."""
    return api_url.removesuffix("/patroni")


def standby_cluster(host: str, port: int, archive: str | None = None) -> dict[str, Any]:
    """Patroni's `standby_cluster` section: a cluster that replicates from `host:port` (its
    members cloned from there by pg_basebackup), set at bootstrap or changed live via /config.
    `archive`: the main cluster's WAL archive, read for what the source no longer keeps (a
    source cloned afresh has none of the WAL before its clone; one the standby cluster could not
    reach for a while may have recycled it)."""
    out: dict[str, Any] = {"host": host, "port": port, "create_replica_methods": ["basebackup"]}
    if archive is not None:
        out["restore_command"] = f"cp {shlex.quote(archive.rstrip('/'))}/%f %p"
    return out


def member_config(
    *,
    cluster_scope: str,
    member: str,
    etcd_hosts: Sequence[str],
    secrets: Secrets,
    synchronous: bool,
    strict: bool | None = None,
    standby_of: tuple[str, int] | None = None,
    parameters: Mapping[str, str | int] | None = None,
    archive: str | None = None,
    restore_from: str | None = None,
    data_subdir: str = "pgdata",
    bootstrap_from: tuple[str, int] | None = None,
    volume_bytes: int = 2**30,
) -> str:
    """The YAML Patroni runs a member with. `synchronous`: RPO 0 (only a synchronous standby is
    ever promoted); `strict` (default: as `synchronous`): a primary without a synchronous standby
    stops accepting writes rather than risk them (right where a standby is left after losing any
    one centre; with two data centres it would stop all writes once either is lost).
    `standby_of`: this member is (the leader of) a standby cluster fed from that host and port.
    `archive`: the directory its primary archives each WAL segment to (at least once a minute),
    for point-in-time restores. `restore_from`: the WAL archive a standby cluster also replays
    from (what its source no longer keeps). `data_subdir`: where in the volume its data directory is (a main
    cluster rebuilt as a standby of the remote one starts afresh beside the old data, kept).
    `bootstrap_from`: a cluster started afresh (a restore in place) is cloned from that PostgreSQL
    (the restored copy) instead of made empty by initdb. `volume_bytes`: the size of the member's
    volume, which its WAL must fit (`wal_limits`)."""
    params: dict[str, Any] = {
        "wal_log_hints": "on",
        "wal_retrieve_retry_interval": "500ms",
        "max_wal_senders": 10,
        "max_replication_slots": 10,
        "hot_standby": "on",
        "shared_buffers": "16MB",
        "max_connections": 50,
        "password_encryption": "scram-sha-256",
    }
    if archive is not None:
        params.update(archive_parameters(archive))
    params.update(parameters or {})
    dcs: dict[str, Any] = {
        **TIMING,
        "synchronous_mode": synchronous,
        "synchronous_mode_strict": synchronous if strict is None else strict and synchronous,
        **({"maximum_lag_on_failover": SYNC_LAG_ON_FAILOVER} if synchronous else {}),
        "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": params},
    }
    if standby_of is not None:
        dcs["standby_cluster"] = standby_cluster(*standby_of, restore_from)
    data = "${VOLUME_DATA}"
    conf: dict[str, Any] = {
        "scope": cluster_scope,
        "namespace": NAMESPACE,
        "name": member,
        "log": {"level": "INFO"},
        "restapi": {
            "listen": "${ADDRESS}:${PORT_API}",
            "connect_address": "${ADDRESS}:${PORT_API}",
            # its writing calls (switchover, restart, config) are the platform's alone
            "authentication": {"username": API_USER, "password": secrets.superuser},
        },
        "etcd3": {
            "hosts": list(etcd_hosts),
            "username": etcd_user(cluster_scope),
            "password": secrets.etcd,
        },
        "bootstrap": {"dcs": dcs, "initdb": [{"encoding": "UTF8"}, "data-checksums"]},
        "postgresql": {
            "listen": "${ADDRESS}:${PORT_PG}",
            "connect_address": "${ADDRESS}:${PORT_PG}",
            "data_dir": f"{data}/{data_subdir}",
            "bin_dir": BIN_DIR,
            "pgpass": f"{data}/pgpass",
            "use_unix_socket": True,
            "authentication": {
                "superuser": {"username": SUPERUSER, "password": secrets.superuser},
                "replication": {"username": REPLICATOR, "password": secrets.replication},
            },
            "pg_hba": [
                "local all all trust",  # the socket is in the volume, which only this VDC's uid enters
                f"host replication {REPLICATOR} all scram-sha-256",
                "host all all all scram-sha-256",
            ],
            # local, so that members of clusters made before pick them up at their next start; what
            # the spec's parameters set stays theirs
            "parameters": {
                "unix_socket_directories": data,
                **{k: v for k, v in wal_limits(volume_bytes).items() if k not in (parameters or {})},
            },
        },
    }
    if bootstrap_from is not None:
        host, port = bootstrap_from
        conf["bootstrap"]["method"] = "clone"
        conf["bootstrap"]["clone"] = {
            "command": shlex.join(["/usr/bin/python3", "-c", _CLONE, host, str(port)]),
            "keep_existing_recovery_conf": False,
        }
    return yaml.safe_dump(conf, sort_keys=False)


def json_object(raw: str | None) -> dict[str, Any]:
    """A Patroni key's JSON object value ({} if absent or not an object)."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return {}
    return dict(value) if isinstance(value, dict) else {}


def sync_standbys(sync: Mapping[str, Any]) -> set[str]:
    """The synchronous standbys a cluster's `/sync` key (its JSON object) names."""
    return set(str(sync.get("sync_standby") or "").split(",")) - {""}


def settings_to_mend(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a running cluster's dynamic configuration (`config`) lacks of what `member_config`
    bootstraps a new one with: bootstrap settings reach only clusters made after them."""
    if config.get("synchronous_mode") and config.get("maximum_lag_on_failover") != SYNC_LAG_ON_FAILOVER:
        return {"maximum_lag_on_failover": SYNC_LAG_ON_FAILOVER}
    return {}


def wal_limits(volume_bytes: int) -> dict[str, str]:
    """WAL settings that fit a member's volume. PostgreSQL's defaults (`max_wal_size` 1 GB, and a
    replication slot keeping WAL without limit for a standby that is gone) fill a 1 GiB volume
    under steady writes; a full volume stops the primary, and a standby promoted onto one cannot
    even write its first segment on the new timeline. Here: `max_wal_size` a quarter of the
    volume, `wal_keep_size` an eighth, and a slot keeps at most a quarter (a standby that falls
    further behind re-syncs, from the WAL archive where there is one)."""
    mb = max(volume_bytes // 2**20, 256)
    return {
        "max_wal_size": f"{min(mb // 4, 1024)}MB",
        "min_wal_size": f"{max(min(mb // 16, 80), 32)}MB",  # at least two 16 MB segments
        "wal_keep_size": f"{min(mb // 8, 256)}MB",
        "max_slot_wal_keep_size": f"{mb // 4}MB",
    }


#: where a member started by a restore in place finds the replication password for its clone:
#: its own environment (only its uid reads it), since Patroni takes `PATRONI_CONFIGURATION` out
#: of the environment its bootstrap script gets, and a command line is readable by others
CLONE_PASSWORD = "SHANZHI_CLONE_PASSWORD"
#: Patroni's custom bootstrap of a restore in place: `pg_basebackup` of the restored copy into the
#: new data directory (Patroni appends `--scope` and `--datadir`), as the replication user
_CLONE = f"""
import os, subprocess, sys
datadir = next(a.split("=", 1)[1] for a in sys.argv[3:] if a.startswith("--datadir="))
argv = ["{BIN_DIR}/pg_basebackup", "-h", sys.argv[1], "-p", sys.argv[2], "-U", "{REPLICATOR}", "-D", datadir,
        "-X", "stream", "-c", "fast", "--no-password"]
env = {{**os.environ, "PGPASSWORD": os.environ["{CLONE_PASSWORD}"], "PGCONNECT_TIMEOUT": "5"}}
sys.exit(subprocess.call(argv, env=env))
"""


def archive_parameters(archive: str) -> dict[str, str | int]:
    """WAL archiving into `archive`: a segment is copied under a temporary name and renamed, so a
    half-written one is never taken for whole; one already there is accepted only if identical
    (PostgreSQL retries a segment whose archiving it could not confirm)."""
    wal = shlex.quote(archive.rstrip("/"))
    command = (
        f"test -f {wal}/%f && cmp -s %p {wal}/%f || "
        f"(test ! -f {wal}/%f && cp %p {wal}/%f.part && mv {wal}/%f.part {wal}/%f)"
    )
    return {"archive_mode": "on", "archive_command": command, "archive_timeout": 60}


def connection_string(hosts: Sequence[str], user: str, password: str | None, database: str) -> str:
    """A libpq URI over every member, that only ever connects to the writable one (`password`
    None: shown masked)."""
    secret = "********" if password is None else quote(password, safe="")
    return (
        f"postgresql://{quote(user, safe='')}:{secret}@{','.join(hosts)}/{database}"
        "?target_session_attrs=read-write&connect_timeout=3"
    )


@dataclass(frozen=True)
class MemberStatus:
    """One member as Patroni records it in etcd (`/<namespace>/<scope>/members/<name>`)."""

    name: str
    role: str  # primary | replica | standby_leader
    state: str  # running | starting | stopped | ...
    timeline: int | None
    host: str | None  # host:port of PostgreSQL
    api: str | None
    wal_position: int | None  # replayed (replica) or written (primary) LSN, in bytes


def parse_member(name: str, raw: str) -> MemberStatus:
    """A member key's JSON value."""
    data: dict[str, Any] = json.loads(raw)
    conn = urlsplit(str(data.get("conn_url", "")))
    host = f"{conn.hostname}:{conn.port}" if conn.hostname and conn.port else None
    role = str(data.get("role", "unknown"))
    role = "primary" if role == "master" else role
    tl = data.get("timeline")
    pos = data.get("xlog_location")
    return MemberStatus(
        name=name,
        role=role,
        state=str(data.get("state", "unknown")),
        timeline=int(tl) if tl is not None else None,
        host=host,
        api=str(data["api_url"]) if data.get("api_url") else None,
        wal_position=int(pos) if pos is not None else None,
    )


def lag_bytes(members: Sequence[MemberStatus], leader_position: int | None) -> dict[str, int | None]:
    """Each member's replay lag behind the leader's position, in bytes (the leader: 0)."""
    out: dict[str, int | None] = {}
    for m in members:
        if m.role in ("primary", "standby_leader") and leader_position is None:
            out[m.name] = 0
        elif leader_position is None or m.wal_position is None:
            out[m.name] = None
        else:
            out[m.name] = max(0, leader_position - m.wal_position)
    return out
