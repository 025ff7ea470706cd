"""A bare Patroni cluster, run by hand: three etcd members and two Patroni nodes as the
`postgres` user, with the settings Shanzhi gives its own (synchronous_mode_strict, ttl 20 s).
For the platform's own database in tests, and for bench/dr.py as the floor."""

from __future__ import annotations

import bisect
import itertools
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import yaml

from shanzhi.controllers.dr import Etcd
from shanzhi.dr.etcd import EtcdMember, member_argv
from shanzhi.dr.patroni import (
    NAMESPACE,
    PATRONI,
    PATRONI_ARGV,
    Secrets,
    connection_string,
    json_object,
    member_config,
    sync_standbys,
)
from tests.dr.centres import CENTRES, Centres

ENGINES = (PATRONI, "/usr/bin/etcd", "/usr/lib/postgresql/15/bin/postgres")


def missing() -> str | None:
    """Why a Patroni cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (Patroni runs as the postgres user)"
    gone = [e for e in ENGINES if not Path(e).exists()]
    return f"not installed: {', '.join(gone)} (apt-get install patroni etcd-server postgresql)" if gone else None


def need_engines() -> None:
    """Skip the test where a Patroni cluster cannot run here; fail instead where they are
    required (`SHANZHI_REQUIRE_DR=1`, as CI sets)."""
    import pytest

    why = missing()
    if why is not None:
        if os.environ.get("SHANZHI_REQUIRE_DR") == "1":
            pytest.fail(f"DR engines required here: {why}")
        pytest.skip(why)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def wait(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            v = cond()
        except Exception:  # any failure means not yet
            v = None
        if v:
            return v
        time.sleep(0.2)
    raise TimeoutError(f"timed out waiting for {what}")


def kill_postmaster(port: int) -> None:
    """SIGKILL the postmaster listening on `port` (Patroni starts it with `--port=`)."""
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].endswith("/postgres") and f"--port={port}" in cmd:
            os.kill(p.info["pid"], signal.SIGKILL)
            return
    raise RuntimeError(f"no postmaster on port {port}")


class BareCluster:
    """Three etcd members and a Patroni node per address. With `centres`: one etcd member in each
    centre's namespace and a node in production's and same-city's, at the centres' addresses
    (fixed ports: each namespace is a host of its own)."""

    def __init__(
        self,
        root: Path,
        addresses: tuple[str, ...] = ("127.0.6.1", "127.0.7.1"),
        *,
        strict: bool = True,
        centres: Centres | None = None,
        archive: Path | None = None,
    ) -> None:
        """`archive`: a directory the primary archives its WAL to (none by default)."""
        self.root = root
        self.centres = centres
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres", "postgres")
        for parent in root.parents:  # the postgres user must reach its directories
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o001)
        self.secrets = Secrets("su-pass-123", "repl-pass-123", "", "")
        if archive is not None:
            archive.mkdir(parents=True)
            shutil.chown(archive, "postgres", "postgres")
        if centres is None:
            self.etcd = [
                EtcdMember(f"e{i}", "127.0.5.1", free_port("127.0.5.1"), free_port("127.0.5.1")) for i in range(3)
            ]
            self.where: dict[str, str | None] = {m.name: None for m in self.etcd}
        else:
            self.etcd = [EtcdMember(c, centres.address[c], 2379, 2380) for c in CENTRES]
            self.where = {c: c for c in CENTRES}
            addresses = (centres.address["prod"], centres.address["same"])
        self.etcd_procs: dict[str, subprocess.Popen[bytes]] = {}
        self._dcs = Etcd([m.client_url for m in self.etcd], root_password="")  # no auth here
        hosts = [f"{m.address}:{m.client_port}" for m in self.etcd]
        self.nodes: dict[str, dict[str, Any]] = {}
        for i, addr in enumerate(addresses):
            name = f"n{i}"
            data = root / name
            data.mkdir()
            shutil.chown(data, "postgres", "postgres")
            os.chmod(data, 0o700)
            conf = member_config(cluster_scope="bare", member=name, etcd_hosts=hosts, secrets=self.secrets,
                                 synchronous=True, strict=strict, archive=archive and str(archive))  # fmt: skip
            pg, api = (5432, 8008) if centres else (free_port(addr), free_port(addr))
            for k, v in {
                "${ADDRESS}": addr,
                "${PORT_PG}": str(pg),
                "${PORT_API}": str(api),
                "${VOLUME_DATA}": str(data),
            }.items():
                conf = conf.replace(k, v)
            doc = yaml.safe_load(conf)
            doc["etcd3"] = {"hosts": hosts}  # no etcd auth here
            self.nodes[name] = {"conf": yaml.safe_dump(doc), "pg": f"{addr}:{pg}", "api": f"http://{addr}:{api}",
                                "data": data, "centre": CENTRES[i] if centres else None}  # fmt: skip
        try:
            for m in self.etcd:
                self.start_etcd(m.name)
            for name in self.nodes:
                self.start(name)
                if name == "n0":
                    wait(lambda: self.role("n0") == "primary", 120, "n0 bootstraps")
            wait(self.healthy, 240, "a primary and its synchronous standby")
        except BaseException:
            self.close()
            raise

    def _enter(self, centre: str | None) -> list[str]:
        return self.centres.enter(centre) if self.centres is not None and centre is not None else []

    def start_etcd(self, name: str) -> None:
        m = next(m for m in self.etcd if m.name == name)
        self.etcd_procs[name] = subprocess.Popen(
            [*self._enter(self.where[name]), *member_argv(m, self.etcd, str(self.root / m.name), "bare")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_etcd(self, name: str) -> None:
        """The etcd member lost (SIGKILL); `start_etcd` brings it back with its data."""
        p = self.etcd_procs[name]
        p.kill()
        p.wait()

    def start(self, name: str) -> None:
        n = self.nodes[name]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.root), "PATRONI_CONFIGURATION": n["conf"]}
        with open(self.root / f"{name}.log", "ab") as log:
            n["proc"] = subprocess.Popen(
                [*self._enter(n["centre"]), "setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups",
                 *PATRONI_ARGV], env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def role(self, name: str) -> str | None:
        try:
            d = httpx.get(f"{self.nodes[name]['api']}/patroni", timeout=1).json()
        except (httpx.HTTPError, ValueError):
            return None
        return "primary" if d.get("role") in ("master", "primary") and d.get("state") == "running" else d.get("role")

    def primary(self) -> str:
        return next(n for n in self.nodes if self.role(n) == "primary")

    def healthy(self) -> bool:
        """A primary, every other node a running replica, one of them its synchronous standby
        (Patroni promotes only that one: crashing before it is chosen proves nothing). The
        synchronous standby as etcd's `/sync` key names it, which is what Patroni's leader race
        reads: a member's own `/sync` endpoint answers from its cached view, which can still show
        the standby the primary dropped when it restarted (a cut then found no candidate)."""
        roles = {n: self.role(n) for n in self.nodes}
        if sorted(str(r) for r in roles.values()) != ["primary"] + ["replica"] * (len(self.nodes) - 1):
            return False
        primary = next(n for n, r in roles.items() if r == "primary")
        sync = self.dcs("sync")
        return sync.get("leader") == primary and any(roles.get(n) == "replica" for n in sync_standbys(sync))

    def dcs(self, key: str) -> dict[str, Any]:
        """The cluster's `key` in etcd (`sync`, `status`, ...), read from the first etcd member that
        answers (a linearizable read: what the quorum holds); {} if none does."""
        path = f"{NAMESPACE}bare/{key}"
        try:
            return json_object(self._dcs.get_prefix(path).get(path))
        except RuntimeError:
            return {}

    def dsn(self, database: str = "postgres") -> str:
        return connection_string([n["pg"] for n in self.nodes.values()], "postgres", self.secrets.superuser, database)

    def sqlalchemy_url(self, database: str = "postgres") -> str:
        hosts = "&".join(f"host={n['pg']}" for n in self.nodes.values())
        return f"postgresql+psycopg://postgres:{self.secrets.superuser}@/{database}?{hosts}&target_session_attrs=read-write"

    def _kill_postgres(self, name: str) -> bool:
        """SIGKILL the node's postmaster (by its pid file: ports repeat across namespaces)."""
        try:
            pid = int((self.nodes[name]["data"] / "pgdata" / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            return False
        return True

    def crash_node(self, name: str, restart_after: float | None = 3.0) -> None:
        """The node lost: Patroni and PostgreSQL killed together; back after `restart_after` s."""
        n = self.nodes[name]
        n["proc"].send_signal(signal.SIGKILL)
        n["proc"].wait()
        self._kill_postgres(name)
        if restart_after is not None:
            threading.Timer(restart_after, self.start, args=(name,)).start()

    def crash_postgres(self, name: str) -> None:
        if not self._kill_postgres(name):
            raise RuntimeError(f"no postmaster for {name}")

    def close(self) -> None:
        self._dcs.close()
        for name, n in self.nodes.items():
            if n.get("proc") is not None and n["proc"].poll() is None:
                n["proc"].send_signal(signal.SIGKILL)
                n["proc"].wait()
            self._kill_postgres(name)
        for p in self.etcd_procs.values():
            p.kill()
            p.wait()
        for child in self.root.iterdir():  # the nodes' logs stay for a failure to be read (tmp_path goes later)
            if child.suffix != ".log":
                shutil.rmtree(child, ignore_errors=True)


class Writer:
    """One row per autocommit insert; acknowledged when the commit returned. Each write keeps
    when it was sent, so a commit in flight at the crash does not count as the recovery."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.acked: list[tuple[int, float, float]] = []  # id, sent, acknowledged
        self.failures: list[float] = []  # when a write or a connection failed
        self.errors: list[str] = []  # what failed
        self.n = int(time.time() * 1000) * 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=2)
                self.n += 1
                sent = time.monotonic()
                conn.execute("INSERT INTO acks VALUES (%s)", (self.n,))
                self.acked.append((self.n, sent, time.monotonic()))
            except psycopg.Error as err:
                self.failures.append(time.monotonic())
                self.errors.append(f"{type(err).__name__}: {str(err)[:300]}")
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    @property
    def ids(self) -> list[int]:
        """The acknowledged ids, in order."""
        return [n for n, _, _ in self.acked]

    def recovered_after(self, t: float, *, any_ack: bool = False) -> float | None:
        """When writes came back after the first failure since `t` (a backend of a killed
        postmaster may still finish a commit or two: those are not the recovery). `any_ack`: the
        first write sent after `t` and acknowledged, failure or not."""
        if not any_ack:
            failed = next((f for f in self.failures if f > t), None)
            if failed is None:
                return None
            t = failed
        i = bisect.bisect_right(self.acked, t, key=lambda a: a[1])  # one thread appends, in order
        return self.acked[i][2] if i < len(self.acked) else None

    def longest_gap(self, start: float, end: float) -> float:
        """The longest time in [start, end] with no write acknowledged."""
        lo = bisect.bisect_right(self.acked, start, key=lambda a: a[2])
        hi = bisect.bisect_left(self.acked, end, key=lambda a: a[2])
        marks = [start, *(at for _, _, at in self.acked[lo:hi]), end]
        return max(b - a for a, b in itertools.pairwise(marks))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
