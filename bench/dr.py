"""Crashes of a protected database's primary under a writer that records every acknowledged
transaction: RPO (acknowledged writes missing afterwards) and RTO (from the crash to the first
acknowledged write on the new primary, detection included), for a managed PostgreSQL of a
real `shanzhi serve` (tier same-city: production, same-city and an arbiter centre) and, side by
side, for a bare Patroni cluster with the same settings (three etcd members, two Patroni nodes,
synchronous_mode_strict, ttl 20 s): the floor Shanzhi adds to.

Two crashes: `node` (the primary's Patroni and PostgreSQL killed together: its leader key must
expire) and `postgres` (only PostgreSQL killed: Patroni, alive, hands over at once).

Needs root, Patroni and etcd (apt-get install patroni etcd-server).

    python bench/dr.py [--quick] [--crashes N] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/dr/bare.py

from tests.dr.bare import BareCluster, kill_postmaster, wait

from shanzhi.controllers.dr import stop_quorum
from shanzhi.dr.patroni import PATRONI
from shanzhi.providers.local import stop_all_under

console = Console(width=140)


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class Writer:
    """One row per autocommit insert; acknowledged when the commit returned, with its time."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.acked: list[tuple[int, float]] = []
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
                conn.execute("INSERT INTO acks VALUES (%s)", (self.n,))
                self.acked.append((self.n, time.monotonic()))
            except psycopg.Error:
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)
        if conn is not None:
            conn.close()

    def first_after(self, t: float) -> float | None:
        return next((at for _, at in self.acked if at > t), None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def crash_loop(
    name: str, dsn: str, crashes: int, crash: Callable[[], None], healthy: Callable[[], bool]
) -> dict[str, Any]:
    """`crashes` times: wait until healthy, crash the primary, time the first write after it."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS acks (id bigint PRIMARY KEY)")
    w = Writer(dsn)
    rtos: list[float] = []
    for i in range(crashes):
        wait(healthy, 180, f"{name}: a primary and a running synchronous standby")
        start = len(w.acked)
        wait(lambda start=start: len(w.acked) > start + 20, 60, f"{name}: writes before crash {i + 1}")
        t0 = time.monotonic()
        crash()
        at = wait(lambda t0=t0: w.first_after(t0 + 0.05), 120, f"{name}: a write after crash {i + 1}")
        rtos.append(at - t0)
        console.print(f"  {name}: crash {i + 1}/{crashes}: writes back after {at - t0:.1f}s")
    w.stop()
    with psycopg.connect(dsn, autocommit=True) as c:
        stored = {r[0] for r in c.execute("SELECT id FROM acks")}
    lost = sum(1 for n, _ in w.acked if n not in stored)
    return {"crashes": crashes, "acknowledged": len(w.acked), "lost": lost, "rto": rtos}


def quantile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


# ------------------------------------------------------------------------- Shanzhi
class Shanzhi:
    def __init__(self, root: Path) -> None:
        self.data = root / "shanzhi"
        self.data.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "shanzhi", "serve", "--data-dir", str(self.data), "--port", str(self.port),
                "--interval", "0.3", "--failover-grace", "1"]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
        self.log = open(root / "server.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait(lambda: httpx.get(f"{self.url}/healthz").status_code == 200, 30, "the server")
        token = (self.data / "admin.token").read_text().strip()
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

    def setup(self) -> str:
        for cloud, site, addr, role in (("prod", "gz-a", "127.0.1.1", "production"),
                                        ("same", "gz-b", "127.0.2.1", "same-city"),
                                        ("arb", "gz-c", "127.0.4.1", "arbiter")):  # fmt: skip
            body = {"name": cloud, "kind": "local", "site": site, "region": "gd", "options": {"address": addr}}
            self.http.post("/clouds", json=body).raise_for_status()
            self.http.put(f"/sites/{site}/dr-role", json={"role": role}).raise_for_status()
        self.http.post("/vdcs", json={"path": "gz/tax", "parents": True}).raise_for_status()
        spec = {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "tax", "vdc": "gz/tax"},
                "spec": {"dr": {"tier": "same-city", "rpo": "0s"},
                         "components": [{"name": "db", "kind": "postgres"}]}}  # fmt: skip
        self.http.post("/apps", json=spec).raise_for_status()
        wait(self.healthy, 240, "Shanzhi: two members running")
        cred = self.http.get("/apps/tax/dr/credentials", params={"vdc": "gz/tax"}).json()
        dsn = str(cred["databases"][0]["connection"])
        wait(lambda: psycopg.connect(dsn).close() or True, 120, "Shanzhi: the app's database")
        return dsn

    def members(self) -> list[dict[str, Any]]:
        st = self.http.get("/apps/tax/dr", params={"vdc": "gz/tax"}).json()
        return [m for d in st["databases"] for m in d["members"] if m["cluster"] == "main"]

    def healthy(self) -> bool:
        ms = self.members()
        return sorted((m["role"], m["state"]) for m in ms) == [("primary", "running"), ("replica", "running")]

    def _primary_state(self) -> dict[str, Any]:
        name = next(m["name"] for m in self.members() if m["role"] == "primary")
        return dict(json.loads(next((self.data / "clouds").glob(f"*/instances/{name}/state.json")).read_text()))

    def crash_node(self) -> None:
        os.killpg(int(self._primary_state()["pgid"]), signal.SIGKILL)  # its namespace and all in it

    def crash_postgres(self) -> None:
        primary = next(m for m in self.members() if m["role"] == "primary")
        kill_postmaster(int(primary["host"].rpartition(":")[2]))

    def close(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        stop_all_under(self.data / "clouds", remove=True)
        stop_quorum(self.data, remove=True)


# ------------------------------------------------------------------------- bare Patroni
class Bare:
    """The floor: the same engines and settings, run by hand (tests/dr/bare.py); a crashed node's
    Patroni is started again 3 s later, as the reconciler would."""

    def __init__(self, root: Path) -> None:
        self.cluster = BareCluster(root / "bare")

    def dsn(self) -> str:
        return self.cluster.dsn()

    def healthy(self) -> bool:
        return self.cluster.healthy()

    def crash_node(self) -> None:
        self.cluster.crash_node(self.cluster.primary())

    def crash_postgres(self) -> None:
        self.cluster.crash_postgres(self.cluster.primary())

    def close(self) -> None:
        self.cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 crashes of each kind (a few minutes)")
    ap.add_argument("--crashes", type=int, default=20)
    ap.add_argument("-o", "--output", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0 or not Path(PATRONI).exists() or not Path("/usr/bin/etcd").exists():
        sys.exit("needs root, Patroni and etcd (apt-get install patroni etcd-server)")
    crashes = 3 if args.quick else args.crashes
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dr-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        for who, make in (("shanzhi", Shanzhi), ("bare patroni", Bare)):
            console.print(f"[bold]{who}[/]: starting")
            system = make(root)
            try:
                dsn = system.setup() if isinstance(system, Shanzhi) else system.dsn()
                for kind in ("postgres", "node"):
                    crash = system.crash_postgres if kind == "postgres" else system.crash_node
                    results[f"{who}/{kind}"] = crash_loop(f"{who}/{kind}", dsn, crashes, crash, system.healthy)
            finally:
                system.close()
    table = Table(title=f"Primary crashes under a writer ({crashes} of each kind)")
    for col in ("system", "crash", "RPO: acked writes lost", "RTO p50", "RTO p99", "RTO max", "acknowledged"):
        table.add_column(col, justify="right")
    for key, r in results.items():
        who, kind = key.split("/")
        rto = r["rto"]
        table.add_row(who, kind, f"{r['lost']} in {r['crashes']} crashes", f"{statistics.median(rto):.1f}s",
                      f"{quantile(rto, 0.99):.1f}s", f"{max(rto):.1f}s", f"{r['acknowledged']:,}")  # fmt: skip
    console.print(table)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
