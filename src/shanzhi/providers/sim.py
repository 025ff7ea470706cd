"""`sim`: a simulated fleet of hosts, for scale tests, drills and demos.

The same role as Nova's fake driver or KWOK: N hosts with declared cpu/memory, instances
that take `boot` seconds to become running, and failure injection for a host or the whole
cloud. State lives in a small SQLite file of its own (stdlib sqlite3, WAL), so it survives a
restart of Shanzhi and is shared safely by two processes on one data directory.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shanzhi.domain.errors import CloudUnavailable, Conflict, InvalidInput, NotFound
from shanzhi.domain.metrics import Usage
from shanzhi.domain.quantity import parse_cpu, parse_memory
from shanzhi.providers.base import (
    CloudStatus,
    HostInfo,
    InstanceRequest,
    InstanceState,
    ObservedInstance,
    OptionSpec,
    Provider,
    Resource,
    non_negative_float,
    non_negative_int,
    positive_int,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (name TEXT PRIMARY KEY, host TEXT NOT NULL,
    created REAL NOT NULL, ports TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS failures (target TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS adopted (found TEXT PRIMARY KEY, name TEXT NOT NULL);
"""
_CLOUD = "*"


class SimProvider(Provider):
    kind = "sim"
    runtimes = frozenset({"process", "vm"})
    probes_endpoints = False
    options = {
        "hosts": OptionSpec(positive_int, 10, "number of simulated hosts"),
        "cpu": OptionSpec(parse_cpu, 16_000, "cpu per host (default 16)"),
        "memory": OptionSpec(parse_memory, 64 * 2**30, "memory per host (default 64Gi)"),
        "instances": OptionSpec(positive_int, 110, "instances per host"),
        "boot": OptionSpec(non_negative_float, 1.0, "seconds from create to running"),
        "found": OptionSpec(
            non_negative_int, 0, "servers the cloud already runs that Shanzhi did not create (inventory, adoption)"
        ),
    }

    def __init__(self, name: str, options: dict[str, Any], state_dir: Path, credentials: Any = None) -> None:
        super().__init__(name, options, state_dir, credentials)
        self._db_path = state_dir / "sim.sqlite3"
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._hosts = frozenset(self._host_names())

    def __del__(self) -> None:
        if self._conn is not None:
            self._conn.close()

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One transaction on the provider's own connection (opened once, shared by threads)."""
        with self._lock:
            if self._conn is None:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self._db_path, timeout=30, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(_SCHEMA)
                self._conn = conn
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _failures(self, conn: sqlite3.Connection) -> set[str]:
        return {row[0] for row in conn.execute("SELECT target FROM failures")}

    def _host_names(self) -> list[str]:
        return [f"{self.name}-h{i:04d}" for i in range(int(self.opts["hosts"]))]

    def status(self) -> CloudStatus:
        with self._db() as conn:
            failed = self._failures(conn)
        if _CLOUD in failed:
            return CloudStatus(False, "cloud failed (failure injection)")
        return CloudStatus(True, f"ok ({len(failed)} failed hosts)" if failed else "ok")

    def hosts(self) -> list[HostInfo]:
        with self._db() as conn:
            failed = self._failures(conn)
        down = _CLOUD in failed
        return [
            HostInfo(
                name=h,
                cpu=int(self.opts["cpu"]),
                memory=int(self.opts["memory"]),
                max_instances=int(self.opts["instances"]),
                healthy=not down and h not in failed,
            )
            for h in self._host_names()
        ]

    def _observe(self, name: str, host: str, created: float, port: int, failed: set[str]) -> ObservedInstance:
        endpoint = f"{host}.sim:{port}"
        if host in failed:
            return ObservedInstance(name, host, "failed", endpoint, {"port": port}, "host failed")
        booted = time.time() >= created + float(self.opts["boot"])
        state: InstanceState = "running" if booted else "starting"
        return ObservedInstance(name, host, state, endpoint, {"port": port})

    def list_instances(self) -> list[ObservedInstance]:
        with self._db() as conn:
            failed = self._failures(conn)
            if _CLOUD in failed:
                raise CloudUnavailable(f"cloud {self.name} is not answering (failure injection)")
            rows = conn.execute("SELECT name, host, created, ports FROM instances").fetchall()
        return [self._observe(n, h, c, int(p), failed) for n, h, c, p in rows]

    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        if req.host not in self._hosts:
            raise InvalidInput(f"cloud {self.name} has no host {req.host!r}")
        with self._db() as conn:
            failed = self._failures(conn)
            if _CLOUD in failed:
                raise CloudUnavailable(f"cloud {self.name} is not answering (failure injection)")
            if req.host in failed:
                raise CloudUnavailable(f"host {req.host} of cloud {self.name} has failed")
            row = conn.execute("SELECT host, created, ports FROM instances WHERE name = ?", (req.name,)).fetchone()
            if row is None:
                port = 30000 + zlib.crc32(req.name.encode()) % 30000
                row = (req.host, time.time(), str(port))
                conn.execute("INSERT INTO instances VALUES (?, ?, ?, ?)", (req.name, *row))
        return self._observe(req.name, row[0], row[1], int(row[2]), failed)

    def delete_instance(self, name: str) -> None:
        with self._db() as conn:
            if _CLOUD in self._failures(conn):
                raise CloudUnavailable(f"cloud {self.name} is not answering (failure injection)")
            conn.execute("DELETE FROM instances WHERE name = ?", (name,))

    def usage(self) -> dict[str, Usage]:
        """Synthetic but consistent use: each instance busy at its own level (from its name),
        swinging slowly (a 10-minute cycle), counters integrated from its creation."""
        with self._db() as conn:
            failed = self._failures(conn)
            if _CLOUD in failed:
                raise CloudUnavailable(f"cloud {self.name} is not answering (failure injection)")
            rows = conn.execute("SELECT name, host, created FROM instances").fetchall()
        now = time.time()
        return {name: _synthetic(name, now - created) for name, host, created in rows if host not in failed}

    def _found(self, adopted: set[str], failed: set[str]) -> list[Resource]:
        hosts = self._host_names()
        out = []
        for i in range(int(self.opts["found"])):
            rid = f"{self.name}-legacy-{i:05d}"
            if rid in adopted:
                continue
            host = hosts[i % len(hosts)]
            attrs = {"host": host, "image": "legacy-os", "cpu": 1000, "memory": 2**30, "ports": [8080]}
            out.append(Resource("server", rid, f"legacy-{i}", "stopped" if host in failed else "running", attrs=attrs))
        return out

    def inventory(self) -> list[Resource]:
        """The hosts, Shanzhi's instances and the `found` servers (those not adopted)."""
        with self._db() as conn:
            failed = self._failures(conn)
            if _CLOUD in failed:
                raise CloudUnavailable(f"cloud {self.name} is not answering (failure injection)")
            rows = conn.execute("SELECT name, host, created, ports FROM instances").fetchall()
            adopted = {row[0] for row in conn.execute("SELECT found FROM adopted")}
        out = [
            Resource("host", h.name, h.name, "up" if h.healthy else "down", True, attrs={"cpu": h.cpu})
            for h in self.hosts()
        ]
        for name, host, created, port in rows:
            o = self._observe(name, host, created, int(port), failed)
            out.append(Resource("server", name, name, o.state, True, name, {"host": host, "endpoint": o.endpoint}))
        return out + self._found(adopted, failed)

    def adopt(self, resource_id: str, req: InstanceRequest) -> ObservedInstance:
        """A found server becomes the instance `req.name`, on the host it runs on, as it is."""
        index = resource_id.removeprefix(f"{self.name}-legacy-")
        if not index.isdigit() or int(index) >= int(self.opts["found"]):
            raise NotFound(f"cloud {self.name} runs no server {resource_id}", field="id")
        host = self._host_names()[int(index) % len(self._hosts)]
        with self._db() as conn:
            failed = self._failures(conn)
            held = conn.execute("SELECT name FROM adopted WHERE found = ?", (resource_id,)).fetchone()
            if held is not None and held[0] != req.name:
                raise Conflict(f"{resource_id} is already Shanzhi's instance {held[0]}", field="id")
            if held is None:
                conn.execute("INSERT INTO adopted VALUES (?, ?)", (resource_id, req.name))
                conn.execute("INSERT INTO instances VALUES (?, ?, ?, ?)", (req.name, host, 0.0, "8080"))
        return self._observe(req.name, host, 0.0, 8080, failed)

    def inject_failure(self, host: str | None = None) -> None:
        if host is not None and host not in self._hosts:
            raise InvalidInput(f"cloud {self.name} has no host {host!r}", field="host")
        with self._db() as conn:
            conn.execute("INSERT OR IGNORE INTO failures VALUES (?)", (host or _CLOUD,))

    def recover(self, host: str | None = None) -> None:
        with self._db() as conn:
            conn.execute("DELETE FROM failures WHERE target = ?", (host or _CLOUD,))


def _synthetic(name: str, age: float) -> Usage:
    level = 0.05 + (zlib.crc32(name.encode()) % 100) / 250  # 0.05 to 0.45 cores
    period = 600 / (2 * math.pi)
    busy = level * (age + 0.3 * period * (1 - math.cos(max(age, 0.0) / period)))  # the integral of the swing
    return Usage(
        cpu_seconds=busy,
        memory=(64 + zlib.crc32(name.encode()) % 256) * 2**20,
        rx_bytes=int(busy * 200_000),
        tx_bytes=int(busy * 120_000),
        read_bytes=int(busy * 50_000),
        write_bytes=int(busy * 80_000),
    )
