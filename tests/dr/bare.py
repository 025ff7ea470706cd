"""A bare Patroni cluster, run by hand: three etcd members and two Patroni nodes as the
`postgres` user, with the settings Shanzhi gives its own (synchronous_mode_strict, ttl 20 s).
For the platform's own database in tests, and for bench/dr.py as the floor."""

from __future__ import annotations

import contextlib
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

from shanzhi.dr.etcd import EtcdMember, member_argv
from shanzhi.dr.patroni import PATRONI, Secrets, connection_string, member_config

ENGINES = (PATRONI, "/usr/bin/etcd", "/usr/lib/postgresql/15/bin/postgres")


def missing() -> str | None:
    """Why a Patroni cluster cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (Patroni runs as the postgres user)"
    gone = [e for e in ENGINES if not Path(e).exists()]
    return f"not installed: {', '.join(gone)} (apt-get install patroni etcd-server postgresql)" if gone else None


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
    def __init__(
        self, root: Path, addresses: tuple[str, ...] = ("127.0.6.1", "127.0.7.1"), *, strict: bool = True
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        shutil.chown(root, "postgres", "postgres")
        for parent in root.parents:  # the postgres user must reach its directories
            if parent == Path("/"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o001)
        self.secrets = Secrets("su-pass-123", "repl-pass-123", "", "")
        self.etcd = [EtcdMember(f"e{i}", "127.0.5.1", free_port("127.0.5.1"), free_port("127.0.5.1")) for i in range(3)]
        self.etcd_procs = [
            subprocess.Popen(
                member_argv(m, self.etcd, str(root / m.name), "bare"),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for m in self.etcd
        ]
        hosts = [f"{m.address}:{m.client_port}" for m in self.etcd]
        self.nodes: dict[str, dict[str, Any]] = {}
        for i, addr in enumerate(addresses):
            name = f"n{i}"
            data = root / name
            data.mkdir()
            shutil.chown(data, "postgres", "postgres")
            os.chmod(data, 0o700)
            conf = member_config(cluster_scope="bare", member=name, etcd_hosts=hosts, secrets=self.secrets,
                                 synchronous=True, strict=strict)  # fmt: skip
            pg, api = free_port(addr), free_port(addr)
            for k, v in {
                "${ADDRESS}": addr,
                "${PORT_PG}": str(pg),
                "${PORT_API}": str(api),
                "${VOLUME_DATA}": str(data),
            }.items():
                conf = conf.replace(k, v)
            doc = yaml.safe_load(conf)
            doc["etcd3"] = {"hosts": hosts}  # no etcd auth here
            self.nodes[name] = {"conf": yaml.safe_dump(doc), "pg": f"{addr}:{pg}", "api": f"http://{addr}:{api}"}
        try:
            for name in self.nodes:
                self.start(name)
                if name == "n0":
                    wait(lambda: self.role("n0") == "primary", 120, "n0 bootstraps")
            wait(self.healthy, 120, "a primary and its synchronous standby")
        except BaseException:
            self.close()
            raise

    def start(self, name: str) -> None:
        n = self.nodes[name]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.root), "PATRONI_CONFIGURATION": n["conf"]}
        with open(self.root / f"{name}.log", "ab") as log:
            n["proc"] = subprocess.Popen(
                ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", PATRONI],
                env=env, stdout=log, stderr=subprocess.STDOUT,
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
        (Patroni promotes only that one: crashing before it is chosen proves nothing)."""
        roles = {n: self.role(n) for n in self.nodes}
        if sorted(str(r) for r in roles.values()) != ["primary"] + ["replica"] * (len(self.nodes) - 1):
            return False
        return any(self._sync(n) for n, r in roles.items() if r == "replica")

    def _sync(self, name: str) -> bool:
        try:
            return httpx.get(f"{self.nodes[name]['api']}/sync", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def dsn(self, database: str = "postgres") -> str:
        return connection_string([n["pg"] for n in self.nodes.values()], "postgres", self.secrets.superuser, database)

    def sqlalchemy_url(self, database: str = "postgres") -> str:
        hosts = "&".join(f"host={n['pg']}" for n in self.nodes.values())
        return f"postgresql+psycopg://postgres:{self.secrets.superuser}@/{database}?{hosts}&target_session_attrs=read-write"

    def _port(self, name: str) -> int:
        return int(self.nodes[name]["pg"].rpartition(":")[2])

    def crash_node(self, name: str, restart_after: float | None = 3.0) -> None:
        """The node lost: Patroni and PostgreSQL killed together; back after `restart_after` s."""
        n = self.nodes[name]
        n["proc"].send_signal(signal.SIGKILL)
        n["proc"].wait()
        kill_postmaster(self._port(name))
        if restart_after is not None:
            threading.Timer(restart_after, self.start, args=(name,)).start()

    def crash_postgres(self, name: str) -> None:
        kill_postmaster(self._port(name))

    def close(self) -> None:
        for name, n in self.nodes.items():
            if n.get("proc") is not None and n["proc"].poll() is None:
                n["proc"].send_signal(signal.SIGKILL)
                n["proc"].wait()
            with contextlib.suppress(RuntimeError):
                kill_postmaster(self._port(name))
        for p in self.etcd_procs:
            p.kill()
            p.wait()
        shutil.rmtree(self.root, ignore_errors=True)


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

    def recovered_after(self, t: float) -> float | None:
        """When writes came back after the first failure since `t` (a backend of a killed
        postmaster may still finish a commit or two: those are not the recovery)."""
        failed = next((f for f in self.failures if f > t), None)
        if failed is None:
            return None
        return next((at for _, sent, at in self.acked if sent > failed), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
