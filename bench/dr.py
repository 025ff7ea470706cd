"""Crashes of a protected database's primary under a writer that records every acknowledged
transaction: RPO (acknowledged writes missing afterwards) and RTO (from the crash to the first
acknowledged write on the new primary, detection included), for a managed PostgreSQL of a
real `shanzhi serve` (tier same-city: production, same-city and an arbiter centre) and, side by
side, for a bare Patroni cluster with the same settings (three etcd members, two Patroni nodes,
synchronous_mode_strict, ttl 20 s): the floor Shanzhi adds to.

Two crashes: `node` (the primary's Patroni and PostgreSQL killed together: its leader key must
expire) and `postgres` (only PostgreSQL killed: Patroni, alive, hands over at once).

Then drills: `dr test` recovering a copy of the same database beside it, in an isolated
network namespace, while the writer goes on: production's commit latency (p50, p99) during each
drill against the same time just before it, and what is left after `dr cleanup`.

Then partition cycles (tests/dr/partitions.py): the three centres in network namespaces joined at
a core where nftables cuts them apart, a cluster with Shanzhi's member configuration, four faults
in turn (production isolated, only the production/same-city link cut, the arbiter cut off,
production's etcd member killed) under a writer, every node probed five times a second for a
second writable primary. Side by side: the floor of an isolation's failover, the leader key's
ttl (Patroni may promote only after it expires), and of a write outage, none.

Then restores in place (`dr restore --to TIME --in-place`, approved by a second user): each to
the moment between two batches of writes, the rows checked afterwards; side by side, the floor of
the same restore as a copy beside the running cluster (`dr restore`), which the in-place one makes
first.

Needs root, Patroni and etcd (apt-get install patroni etcd-server); the partitions need
network namespaces and nftables.

    python bench/dr.py [--quick] [--crashes N] [--drills N] [--partitions N] [--restores N]
                       [--only crashes|drills|partitions|restores] [-o results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/dr/bare.py

from tests.dr.bare import BareCluster, Writer, free_port, kill_postmaster, wait
from tests.dr.centres import Centres
from tests.dr.partitions import KINDS, run_cycle

from shanzhi.controllers.dr import stop_quorum
from shanzhi.dr.patroni import PATRONI, TIMING
from shanzhi.providers.local import stop_all_under
from shanzhi.providers.sandbox import default_workload_root

console = Console(width=140)


STALL = 120.0  # a crash with no write this long after it counts as stalled

Crash = Callable[[], Callable[[], None] | None]  # crash the primary; what brings the node back, if anything


def crash_loop(
    name: str, dsn: str, crashes: int, crash: Crash, healthy: Callable[[], bool], diagnose: Callable[[str], None]
) -> dict[str, Any]:
    """`crashes` times: wait until healthy, crash the primary, time the first write sent after
    the crash and acknowledged; then bring the lost node back (it rejoins as a replica). A
    system not healthy again 240 s after a crash ends the loop (reported, `diagnose` keeps its
    state and logs)."""
    wait(healthy, 240, f"{name}: a primary and a running synchronous standby")
    wait(lambda: _create_table(dsn), 60, f"{name}: the table")
    w = Writer(dsn)
    rtos: list[float] = []
    stalled = 0
    stuck: str | None = None
    for i in range(crashes):
        try:
            wait(healthy, 240, f"{name}: a primary and a running synchronous standby")
        except TimeoutError:
            stuck = f"not healthy again 240 s after crash {i} (logs kept)"
            console.print(f"  {name}: [red]{stuck}[/]")
            diagnose(f"{name.replace('/', '-').replace(' ', '-')}-crash-{i}")
            break
        start = len(w.acked)
        wait(lambda start=start: len(w.acked) > start + 20, 60, f"{name}: writes before crash {i + 1}")
        t0 = time.monotonic()
        recover = crash()
        try:
            at = wait(lambda t0=t0: w.recovered_after(t0), STALL, f"{name}: writes back after crash {i + 1}")
        except TimeoutError:  # reported, not hidden: the run goes on once the node is back
            stalled += 1
            console.print(f"  {name}: crash {i + 1}/{crashes}: [red]no write for {STALL:.0f}s[/]")
        else:
            rtos.append(at - t0)
            console.print(f"  {name}: crash {i + 1}/{crashes}: writes back after {at - t0:.1f}s")
        if recover is not None:
            recover()
    w.stop()
    lost: int | None = None  # unknown when no writable primary is left to count on
    with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True, connect_timeout=10) as c:
        stored = {r[0] for r in c.execute("SELECT id FROM acks")}
        lost = sum(1 for n, _, _ in w.acked if n not in stored)
    done = len(rtos) + stalled
    return {
        "crashes": done,
        "acknowledged": len(w.acked),
        "lost": lost,
        "rto": rtos,
        "stalled": stalled,
        "stuck": stuck,
    }


def _create_table(dsn: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS acks (id bigint PRIMARY KEY)")
    return True


def quantile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(p * (len(s) - 1)))]


# ------------------------------------------------------------------------- Shanzhi
class Shanzhi:
    def __init__(self, root: Path, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.data = root / "shanzhi"
        self.data.mkdir()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "shanzhi", "serve", "--data-dir", str(self.data), "--port", str(self.port),
                "--interval", "0.3", "--failover-grace", "1"]  # fmt: skip
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}, **(env or {})}
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
        wait(lambda: all(c["health"] == "healthy" for c in self.http.get("/clouds").json()), 60, "the clouds healthy")
        spec = {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "tax", "vdc": "gz/tax"},
                "spec": {"dr": {"tier": "same-city", "rpo": "0s"},
                         "components": [{"name": "db", "kind": "postgres"}]}}  # fmt: skip
        r = self.http.post("/apps", json=spec)
        assert r.status_code < 300, r.text
        wait(self.healthy, 240, "Shanzhi: two members running")
        cred = self.http.get("/apps/tax/dr/credentials", params={"vdc": "gz/tax"}).json()
        dsn = str(cred["databases"][0]["connection"])
        wait(lambda: psycopg.connect(dsn).close() or True, 120, "Shanzhi: the app's database")
        return dsn

    def members(self) -> list[dict[str, Any]]:
        st = self.http.get("/apps/tax/dr", params={"vdc": "gz/tax"}).json()
        return [m for d in st["databases"] for m in d["members"] if m["cluster"] == "main"]

    def healthy(self) -> bool:
        """A primary and its synchronous standby, running, and every quorum member healthy (as
        `dr reprotect` would say)."""
        ms = self.members()
        roles = sorted((m["role"], m["state"]) for m in ms)
        if roles != [("primary", "running"), ("replica", "running")] or not any(m.get("sync") for m in ms):
            return False
        # and they are the members the platform runs now (not a lost one's record, not yet expired)
        rows = self.http.get("/instances", params={"app": "tax", "vdc": "gz/tax"}).json()
        if {m["name"] for m in ms} != {r["name"] for r in rows if r["state"] == "running"}:
            return False
        sites = self.http.get("/dr/topology").json()["sites"]
        return all(e["health"] == "healthy" for site in sites for e in site["etcd"])

    def crash_node(self) -> Callable[[], None]:
        """The primary's node lost: its cloud fails (Patroni, PostgreSQL and the centre's etcd
        member SIGKILLed, nothing restarted there) until the writes are back; then the cloud
        recovers (the DR controller makes the etcd member again)."""
        primary = next(m for m in self.members() if m["role"] == "primary")
        cloud = {"gz-a": "prod", "gz-b": "same"}[primary["site"]]
        self.http.post(f"/clouds/{cloud}/fail", json={}).raise_for_status()

        def recover() -> None:
            self.http.post(f"/clouds/{cloud}/recover", json={}).raise_for_status()

        return recover

    def crash_postgres(self) -> None:
        primary = next(m for m in self.members() if m["role"] == "primary")
        kill_postmaster(int(primary["host"].rpartition(":")[2]))

    def diagnose(self, dest: Path) -> None:
        """What the platform says of the database and its quorum, its log and every workload's."""
        dest.mkdir(parents=True, exist_ok=True)
        for what, path in (("dr-status", "/apps/tax/dr?vdc=gz/tax"), ("topology", "/dr/topology"),
                           ("events", "/events?limit=300")):  # fmt: skip
            with contextlib.suppress(httpx.HTTPError):
                (dest / f"{what}.json").write_text(self.http.get(path).text)
        shutil.copy(self.root / "server.log", dest / "server.log")
        for log in self.data.glob("clouds/*/instances/*/log"):
            shutil.copy(log, dest / f"{log.parents[2].name}-{log.parent.name}.log")
        # what fills the members' volumes (a full one stops a primary): each top-level entry's size
        volumes = sorted(default_workload_root(self.data).glob("*/volumes/*/*"))
        sizes = subprocess.run(
            ["du", "-s", "--block-size=1M", *map(str, volumes)], check=False, capture_output=True, text=True
        )
        (dest / "volumes.txt").write_text(sizes.stdout + sizes.stderr)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        stop_all_under(self.data / "clouds", remove=True)
        stop_quorum(self.data, remove=True)


# ------------------------------------------------------------------------- bare Patroni
class Bare:
    """The floor: the same engines and settings, run by hand (tests/dr/bare.py); a lost node's
    Patroni is started again once the writes are back."""

    def __init__(self, root: Path) -> None:
        self.cluster = BareCluster(root / "bare", strict=False)  # two data centres, as Shanzhi's same-city tier

    def dsn(self) -> str:
        return self.cluster.dsn()

    def healthy(self) -> bool:
        return self.cluster.healthy() and all(_etcd_healthy(m.client_url) for m in self.cluster.etcd)

    def crash_node(self) -> Callable[[], None]:
        """The same loss: the node and its centre's etcd member (n0 with e0, n1 with e1)."""
        name = self.cluster.primary()
        etcd = self.cluster.etcd[int(name[1:])].name
        self.cluster.crash_node(name, restart_after=None)
        self.cluster.kill_etcd(etcd)

        def recover() -> None:
            self.cluster.start_etcd(etcd)
            self.cluster.start(name)

        return recover

    def crash_postgres(self) -> None:
        self.cluster.crash_postgres(self.cluster.primary())

    def diagnose(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for log in self.cluster.root.glob("*.log"):
            shutil.copy(log, dest / log.name)

    def close(self) -> None:
        self.cluster.close()


def _etcd_healthy(url: str) -> bool:
    try:
        return bool(httpx.get(f"{url}/health", timeout=1).json().get("health") == "true")
    except (httpx.HTTPError, ValueError):
        return False


# ------------------------------------------------------------------------- drills
def drill_impact(
    root: Path, drills: int, window: float = 10.0, control: bool = False, scratch: str = "memory"
) -> dict[str, Any]:
    """Production's commit latency while `dr test` recovers a copy beside it, against the same
    length of time just before each drill (the baseline), and what each drill leaves after
    `dr cleanup`. `control`: the same windows with no drill in them (how far two quiet windows
    differ on this machine: the comparison's own noise). `scratch`: where the copies go,
    `memory` (the default: a tmpfs) or `disk` (beside production, as before)."""
    system = Shanzhi(root, {"SHANZHI_DRILL_SCRATCH": "off"} if scratch == "disk" else None)
    vdc = {"vdc": "gz/tax"}
    try:
        dsn = system.setup()
        wait(lambda: _create_table(dsn), 60, "the table")
        system.http.post("/apps/tax/dr/backups", params=vdc).raise_for_status()
        w = Writer(dsn)
        time.sleep(3.0)
        windows: list[tuple[str, float, float]] = []
        reports = []
        residue = 0
        for i in range(drills):
            base = time.monotonic()
            time.sleep(window)
            start = time.monotonic()
            if control:
                time.sleep(window)
                windows += [("baseline", base, start), ("drill", start, time.monotonic())]
                console.print(f"  control {i + 1}/{drills}: no drill")
                continue
            r = system.http.post("/apps/tax/dr/test", params=vdc)
            r.raise_for_status()
            # the drill's copy keeps running until cleanup: measure as long as the baseline
            time.sleep(max(0.0, window - (time.monotonic() - start)))
            end = time.monotonic()
            windows += [("baseline", base, start), ("drill", start, end)]
            report = r.json()
            reports.append(report)
            system.http.post("/apps/tax/dr/cleanup", params=vdc).raise_for_status()
            ns = (report["body"].get("network") or {}).get("namespace")
            left = Path(report["body"]["dir"]).exists() or (ns is not None and ns in _namespaces())
            residue += left
            where = f"isolated in {ns}" if ns else "on the host loopback"
            where += ", in memory" if report["body"].get("in_memory") else ", on disk"
            console.print(f"  drill {i + 1}/{drills}: RTO {report['body']['rto_seconds']:.1f}s, {where}, "
                          f"residue: {'yes' if left else 'none'}")  # fmt: skip
        w.stop()
    finally:
        system.close()

    def samples(kind: str) -> list[tuple[float, float]]:
        """(seconds into its window, latency) of each commit sent in a window of `kind`."""
        return [(sent - a, at - sent) for _, sent, at in w.acked for k, a, b in windows if k == kind and a <= sent < b]

    out: dict[str, Any] = {
        "drills": drills, "residue": residue, "rto": [r["body"]["rto_seconds"] for r in reports], "control": control,
        "scratch": None if control else scratch, "in_memory": sum(bool(r["body"].get("in_memory")) for r in reports),
    }  # fmt: skip
    for kind in ("baseline", "drill"):
        got = samples(kind)
        xs = [latency for _, latency in got]
        # where in its window the tail is: p99 of each second since the window began
        by_second: list[list[float]] = [[] for _ in range(int(window) + 1)]
        for offset, latency in got:
            by_second[min(int(offset), int(window))].append(latency)
        out[kind] = {
            "commits": len(xs), "p50_ms": quantile(xs, 0.5) * 1000, "p99_ms": quantile(xs, 0.99) * 1000,
            "p99_ms_by_second": [round(quantile(b, 0.99) * 1000, 2) if b else None for b in by_second],
        }  # fmt: skip
    return out


def _namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout.split()


def drill_table(runs: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Production's commits during drills (`dr test`), against just before each")
    for col in ("copies", "window", "commits", "p50", "p99", "p99 vs baseline", "drill RTO p50 / max",
                "residue after cleanup"):  # fmt: skip
        table.add_column(col, justify="right")
    for name, r in runs.items():
        b = r["baseline"]["p99_ms"]
        for kind in ("baseline", "drill"):
            x = r[kind]
            table.add_row(name if kind == "baseline" else "", kind if not r["control"] else f"{kind} (none run)",
                          f"{x['commits']:,}", f"{x['p50_ms']:.2f} ms", f"{x['p99_ms']:.2f} ms",
                          f"{(x['p99_ms'] / b - 1) * 100:+.0f}%" if kind == "drill" and b else "—",
                          _spread(r["rto"]) if kind == "drill" else "—",
                          f"{r['residue']} of {r['drills']}" if kind == "drill" else "—")  # fmt: skip
    return table


# ------------------------------------------------------------------------- restores in place
def restores_in_place(root: Path, rounds: int, rows: int = 200) -> dict[str, Any]:
    """`rounds` restores in place of a same-city database (production and same-city members),
    each to the moment between two batches of writes, side by side with the floor: the same
    restore as a copy beside the running cluster (`dr restore`), which the in-place one makes
    first. Each round checks that exactly the rows written before the moment are there."""
    system = Shanzhi(root)
    out: dict[str, Any] = {"rounds": [], "rows_per_batch": rows}
    try:
        dsn = system.setup()
        http = system.http
        # the approver (a rule of the VDC's): the requester may not approve its own request
        security = (system.data / "security.token").read_text().strip()
        httpx.post(f"{system.url}/api/v1/users", json={"name": "approver", "password": "correct-horse-9"},
                   headers={"Authorization": f"Bearer {security}"}, timeout=30).raise_for_status()  # fmt: skip
        http.post("/approval-rules", json={"vdc": "gz/tax", "name": "dr", "conditions": {"activations": True},
                                           "stages": [["approver"]]}).raise_for_status()  # fmt: skip
        login = httpx.post(f"{system.url}/api/v1/auth/login", json={"user": "approver", "password": "correct-horse-9"})
        approver = {"Authorization": f"Bearer {login.json()['token']}"}
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE TABLE acks (id bigint PRIMARY KEY)")
        kept = 0
        for i in range(rounds):
            http.post("/apps/tax/dr/backups", params={"vdc": "gz/tax"}, json={}).raise_for_status()
            with psycopg.connect(dsn, autocommit=True) as c:
                for k in range(rows):
                    c.execute("INSERT INTO acks VALUES (%s)", (i * 10 * rows + k,))
                time.sleep(1.0)
                moment = c.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
                time.sleep(1.0)
                for k in range(rows):
                    c.execute("INSERT INTO acks VALUES (%s)", (i * 10 * rows + rows + k,))
            kept += rows
            body = {"to": moment.isoformat()}
            copy = http.post("/apps/tax/dr/restore", params={"vdc": "gz/tax"}, json=body, timeout=700)
            copy.raise_for_status()
            http.post("/apps/tax/dr/cleanup", params={"vdc": "gz/tax"}).raise_for_status()
            held = http.post("/apps/tax/dr/restore-in-place", params={"vdc": "gz/tax"}, json=body)
            held.raise_for_status()
            asked = time.monotonic()
            r = httpx.post(f"{system.url}/api/v1/approvals/{held.json()['id']}/approve", json={}, headers=approver,
                           timeout=30)  # fmt: skip
            r.raise_for_status()

            def finished(i: int = i) -> dict[str, Any] | None:
                done = [x for x in http.get("/dr/reports", params={"app": "tax", "vdc": "gz/tax"}).json()
                        if x["kind"] == "restore-in-place" and x["outcome"] != "running"]  # fmt: skip
                return done[-1] if len(done) > i else None

            report = wait(finished, 600, f"restore in place {i + 1}")
            elapsed = time.monotonic() - asked
            got = None
            with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, connect_timeout=5) as c:
                got = c.execute("SELECT count(*) FROM acks").fetchone()[0]  # type: ignore[index]
            wait(system.healthy, 240, "both members running again")
            b = report["body"]
            row = {
                "outcome": report["outcome"], "copy_seconds": copy.json()["body"]["seconds"],
                "writable_seconds": next((st["seconds"] for st in b.get("steps", []) if "accepts writes" in st["step"]),
                                         None),
                "writes_stopped_seconds": b.get("writes_stopped_seconds"), "with_backup_seconds": b.get("seconds"),
                "rows": got, "rows_expected": kept, "asked_to_done_seconds": round(elapsed, 3),
            }  # fmt: skip
            out["rounds"].append(row)
            console.print(f"  restore {i + 1}/{rounds}: {report['outcome']}, writable after "
                          f"{row['writable_seconds']}s (copy alone {row['copy_seconds']}s), writes stopped "
                          f"{row['writes_stopped_seconds']}s, rows {got}/{kept}")  # fmt: skip
    finally:
        system.close()
    return out


def restore_table(result: dict[str, Any]) -> Table:
    rounds = result["rounds"]
    table = Table(title=f"Restores in place ({len(rounds)}; same-city tier: production and same-city members)")
    for col in ("", "p50", "max"):
        table.add_column(col, justify="right")

    def line(name: str, key: str) -> None:
        xs = [float(r[key]) for r in rounds if r.get(key) is not None]
        if xs:
            table.add_row(name, f"{statistics.median(xs):.1f} s", f"{max(xs):.1f} s")

    line("floor: the same restore as a copy beside the cluster (`dr restore`)", "copy_seconds")
    line("approval to a writable primary on the restored data", "writable_seconds")
    line("writes stopped (members stopped to primary writable)", "writes_stopped_seconds")
    line("with the new base backup after it", "with_backup_seconds")
    wrong = sum(1 for r in rounds if r["rows"] != r["rows_expected"] or r["outcome"] != "succeeded")
    table.add_row("rounds with other rows than those before the moment, or failed", str(wrong), "")
    return table


# ------------------------------------------------------------------------- partitions
def partition_cycles(
    root: Path, cycles: int, logs: Path | None = None, progress: Path | None = None, minutes: float | None = None
) -> dict[str, Any]:
    """`cycles` faults, the four kinds in turn, on one cluster across three namespaced centres.
    A cluster that is not healthy again 240 s after a heal ends the run (reported, with the
    nodes' logs copied to `logs`); so does `minutes` of cycling (no new cycle starts after)."""
    centres = Centres(f"b{os.getpid() % 100000}", "10.254.240.0/24")
    runs: list[dict[str, Any]] = []
    stuck: str | None = None
    try:
        cluster = BareCluster(root / "partitions", strict=False, centres=centres)
        try:
            dsn = cluster.dsn()
            wait(lambda: _create_table(dsn), 60, "the table")
            w = Writer(dsn)
            deadline = time.monotonic() + minutes * 60 if minutes else None
            for i in range(cycles):
                if deadline is not None and time.monotonic() > deadline:
                    stuck = f"(time is up after {i} cycles: --minutes {minutes:g})"
                    break
                try:
                    r = run_cycle(cluster, centres, w, KINDS[i % len(KINDS)])
                except TimeoutError as err:
                    stuck = f"(not healthy again before cycle {i + 1}: {err})"
                    break
                runs.append(r)
                if r["kind"] == "isolate-production" and not r["failover"] and logs is not None:
                    # production cut off and nothing promoted (writes wait for the heal): the
                    # nodes' logs so far, to see why the standby was not a candidate
                    kept = logs / f"cycle-{i + 1}"
                    kept.mkdir(parents=True, exist_ok=True)
                    for f in (root / "partitions").glob("*.log"):
                        shutil.copy(f, kept / f.name)
                if progress is not None:  # what is done so far survives a run stopped early
                    progress.write_text(json.dumps(runs))
                split = (
                    f"[red]{r['split_rounds']} rounds with two writable primaries[/]"
                    if r["split_rounds"]
                    else "no split"
                )
                moved = "failover" if r["failover"] else "no failover"
                healed = "" if r["recovered_s"] is not None else ", [red]not healthy again[/]"
                console.print(f"  partition {i + 1}/{cycles} {r['kind']}: {moved}, {split}, "
                              f"longest write gap {r['outage_s']:.1f}s{healed}")  # fmt: skip
            w.stop()
            lost: int | None = None
            with contextlib.suppress(psycopg.Error), psycopg.connect(dsn, autocommit=True, connect_timeout=5) as c:
                stored = {row[0] for row in c.execute("SELECT id FROM acks")}
                lost = sum(1 for n in w.ids if n not in stored)
            acknowledged = len(w.acked)
        finally:
            if stuck and logs is not None and not stuck.startswith("(time"):
                logs.mkdir(parents=True, exist_ok=True)
                for f in (root / "partitions").glob("*.log"):
                    shutil.copy(f, logs / f.name)
                console.print(f"[red]the cluster did not recover {stuck}[/]; the nodes' logs are in {logs}")
            cluster.close()
    finally:
        centres.close()
    return {"cycles": runs, "acknowledged": acknowledged, "lost": lost, "stuck": stuck}


def _spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} / {max(xs):.1f}s" if xs else "—"


def _behind(rs: list[dict[str, Any]]) -> tuple[str, str]:
    """An isolation's standby behind the lost primary's last optime: p50 / max, and how many
    were beyond Patroni's default `maximum_lag_on_failover` (1 MiB: no failover there)."""
    lags = [r["race_lag_bytes"] for r in rs if r.get("race_lag_bytes") is not None]
    if not lags:
        return "—", "—"
    return f"{statistics.median(lags):,.0f} / {max(lags):,} B", str(sum(lag > 2**20 for lag in lags))


def partition_table(result: dict[str, Any]) -> Table:
    runs = result["cycles"]
    lost = "?" if result["lost"] is None else result["lost"]
    stuck = f"; stopped {result['stuck']}" if result.get("stuck") else ""
    table = Table(title=f"Partition cycles between three centres ({len(runs)}; {result['acknowledged']:,} writes "
                        f"acknowledged, {lost} lost{stuck})")  # fmt: skip
    for col in ("fault", "cycles", "probe rounds", "2 writable", "failovers", "promoted p50/max", "floor: ttl",
                "write gap p50/max", "healthy p50/max", "not healthy", "packets cut",
                "standby behind p50/max", "> 1 MiB"):  # fmt: skip
        table.add_column(col, justify="right")
    for kind in KINDS:
        rs = [r for r in runs if r["kind"] == kind]
        if not rs:
            continue
        promoted = [r["promoted_after_s"] for r in rs if r["promoted_after_s"] is not None]
        table.add_row(kind, str(len(rs)), f"{sum(r['probe_rounds'] for r in rs):,}",
                      str(sum(r["split_rounds"] for r in rs)), str(sum(r["failover"] for r in rs)),
                      _spread(promoted), f"{TIMING['ttl']}s" if kind == "isolate-production" else "—",
                      _spread([r["outage_s"] for r in rs]),
                      _spread([r["recovered_s"] for r in rs if r["recovered_s"] is not None]),
                      str(sum(r["recovered_s"] is None for r in rs)),
                      f"{sum(r['packets_dropped'] for r in rs):,}", *_behind(rs))  # fmt: skip
    return table


def crash_table(results: dict[str, dict[str, Any]], crashes: int) -> Table:
    table = Table(title=f"Primary crashes under a writer ({crashes} of each kind)")
    for col in (
        "system",
        "crash",
        "RPO: acked writes lost",
        "RTO p50",
        "RTO p99",
        "RTO max",
        f"stalled (>{STALL:.0f}s)",
        "acknowledged",
        "not healthy again",
    ):
        table.add_column(col, justify="right")
    for key, r in results.items():
        who, kind = key.split("/")
        rto = r["rto"] or [float("nan")]
        lost = "unknown" if r["lost"] is None else r["lost"]
        table.add_row(who, kind, f"{lost} in {r['crashes']} crashes", f"{statistics.median(rto):.1f}s",
                      f"{quantile(rto, 0.99):.1f}s", f"{max(rto):.1f}s", f"{r['stalled']}",
                      f"{r['acknowledged']:,}", r.get("stuck") or "-")  # fmt: skip
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="3 crashes of each kind, 3 drills, 8 partition cycles (minutes)"
    )
    ap.add_argument("--crashes", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=200, help="partition cycles (the four faults in turn)")
    ap.add_argument("--drills", type=int, default=10, help="drills (`dr test`) under a writer")
    ap.add_argument("--control", action="store_true", help="drills: the same windows without a drill (the noise)")
    ap.add_argument(
        "--scratch", choices=("memory", "disk", "both"), default="both",
        help="drills: where the copies go (both: a run of each, side by side)",
    )  # fmt: skip
    ap.add_argument("--minutes", type=float, help="stop starting partition cycles after this long")
    ap.add_argument("--restores", type=int, default=5, help="restores in place (`dr restore --in-place`)")
    ap.add_argument("--only", choices=("crashes", "drills", "partitions", "restores"), help="run one part only")
    ap.add_argument("-o", "--output", type=Path, help="write the figures as JSON")
    args = ap.parse_args()
    if os.geteuid() != 0 or not Path(PATRONI).exists() or not Path("/usr/bin/etcd").exists():
        sys.exit("needs root, Patroni and etcd (apt-get install patroni etcd-server)")
    crashes = 3 if args.quick else args.crashes
    partitions = 8 if args.quick else args.partitions
    drills = 3 if args.quick else args.drills
    restores = 2 if args.quick else args.restores
    results: dict[str, dict[str, Any]] = {}
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dr-") as tmp:
        root = Path(tmp)
        os.chmod(root, 0o755)
        if args.only in (None, "crashes"):
            logs = args.output.with_suffix(".logs") if args.output else Path("bench-dr-crash-logs")
            for who, make in (("shanzhi", Shanzhi), ("bare patroni", Bare)):
                console.print(f"[bold]{who}[/]: starting")
                system = make(root)
                try:
                    dsn = system.setup() if isinstance(system, Shanzhi) else system.dsn()
                    for kind in ("postgres", "node"):
                        crash = system.crash_postgres if kind == "postgres" else system.crash_node
                        results[f"{who}/{kind}"] = crash_loop(
                            f"{who}/{kind}", dsn, crashes, crash, system.healthy,
                            lambda tag, system=system: system.diagnose(logs / tag),  # type: ignore[misc]
                        )  # fmt: skip
                finally:
                    system.close()
            console.print(crash_table(results, crashes))
            out.update(results)
        if args.only in (None, "drills") and drills > 0:
            runs: dict[str, dict[str, Any]] = {}
            kinds = ("memory", "disk") if args.scratch == "both" else (args.scratch,)
            for scratch in ("none (control)",) if args.control else kinds:
                console.print(f"[bold]drills[/]: {drills} under a writer, copies: {scratch}")
                where = root / f"drills-{scratch[:4]}"
                where.mkdir()
                runs[scratch] = drill_impact(where, drills, control=args.control, scratch=scratch)
            out["drills"] = runs
            console.print(drill_table(runs))
            for scratch, r in runs.items():
                for kind in ("baseline", "drill"):
                    seconds = " ".join(f"{x}" for x in r[kind]["p99_ms_by_second"])
                    console.print(f"  {scratch}: {kind} p99 by second of its window (ms): {seconds}")
        if args.only in (None, "restores") and restores > 0:
            console.print(f"[bold]restores in place[/]: {restores}")
            where = root / "restores"
            where.mkdir()
            out["restores"] = restores_in_place(where, restores)
            console.print(restore_table(out["restores"]))
        if args.only in (None, "partitions") and partitions > 0:
            console.print(f"[bold]partitions[/]: {partitions} cycles")
            logs = args.output.with_suffix(".logs") if args.output else Path("bench-dr-partition-logs")
            done = args.output.with_suffix(".partial.json") if args.output else None
            out["partitions"] = partition_cycles(root, partitions, logs, done, args.minutes)
            console.print(partition_table(out["partitions"]))
    if args.output:
        args.output.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
