"""Control-plane benchmark: apply throughput and reconcile convergence, SQLite and PostgreSQL.

Side by side in one run:
- apply: apps/s through the service layer (validation, quota check with locks, events),
  against the physical limit: raw batched INSERTs of the same number of rows into the
  same database;
- converge: seconds for the reconciler to place and start N replicas on `sim` clouds
  (boot latency 0), and the cost of a steady-state pass that has nothing to do, against
  the bare cost of listing the same instances from the providers.

    python bench/reconcile.py [--quick] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select, text

from _pg import throwaway_postgres
from shanzhi.controllers import Fleet, Reconciler
from shanzhi.domain.quota import Quota
from shanzhi.domain.spec import parse_app
from shanzhi.services.apps import apply_app
from shanzhi.services.clouds import add_cloud
from shanzhi.services.vdcs import create_vdc
from shanzhi.store import Database, open_database
from shanzhi.store.changes import Listener
from shanzhi.store.locks import LeaderLock
from shanzhi.store.shards import SHARDS, Shards
from shanzhi.store.tables import App


def doc(i: int, replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": f"app-{i}", "vdc": f"gz/d{i % 8}"},
        "spec": {
            "components": [
                {"name": "api", "replicas": replicas, "resources": {"cpu": "250m", "memory": "256Mi"}, "image": "x"}
            ],
            "placement": {"clouds": {"tags": {"level": "district"}}, "spread": {"over": "cloud", "minGroups": 2}},
        },
    }


def world(db: Database, clouds: int, hosts: int) -> None:
    with db.session() as s, s.begin():
        create_vdc(s, "gz", Quota())
        for d in range(8):
            create_vdc(s, f"gz/d{d}", Quota())
        for c in range(clouds):
            add_cloud(s, f"d{c}", "sim", f"site-{c}", "gz", {"level": "district"}, {"hosts": hosts, "boot": 0})


def bench_apply(db: Database, n: int, replicas: int) -> dict[str, float]:
    docs = [parse_app(doc(i, replicas)) for i in range(n)]
    t = time.perf_counter()
    for spec in docs:
        with db.session() as s, s.begin():
            apply_app(s, spec)
    ours = time.perf_counter() - t
    # physical limit: the same number of rows, raw batched inserts, one transaction
    with db.engine.begin() as c:
        c.exec_driver_sql("CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, name VARCHAR(64), spec TEXT)")
    payload = json.dumps(doc(0, replicas))
    t = time.perf_counter()
    with db.engine.begin() as c:
        c.execute(
            text("INSERT INTO bench_raw (id, name, spec) VALUES (:id, :name, :spec)"),
            [{"id": i, "name": f"app-{i}", "spec": payload} for i in range(n)],
        )
    raw = time.perf_counter() - t
    return {"apps": n, "apply_per_s": n / ours, "raw_insert_per_s": n / raw}


def bench_converge(db: Database, data_dir: Path, replicas: int) -> dict[str, float]:
    fleet = Fleet(data_dir)
    rec = Reconciler(db, fleet, failover_grace=0)
    t = time.perf_counter()
    passes = 0
    while True:
        rec.run_once()
        passes += 1
        with db.engine.begin() as c:
            running = c.exec_driver_sql("SELECT count(*) FROM instances WHERE state = 'running'").scalar()
        if running == replicas or passes > 50:
            break
    converge = time.perf_counter() - t
    t = time.perf_counter()
    steady = 3
    for _ in range(steady):
        rec.run_once()
    idle_pass = (time.perf_counter() - t) / steady
    # settled apps left alone by their fingerprints (three column queries a pass): `serve` on
    # SQLite when API workers run in processes of their own, so their writes are never heard
    rec.full_resync = 3600.0
    rec.run_once()  # a pass that learns which apps are settled
    t = time.perf_counter()
    for _ in range(steady):
        rec.run_once()
    settled_pass = (time.perf_counter() - t) / steady
    rec.close()
    # as `serve` runs it otherwise: told what changed, a pass looks at nothing else
    rec = Reconciler(db, fleet, failover_grace=0, full_resync=3600.0, feed=db.changes)
    rec.run_once()  # its first pass is full
    while rec.reconciled:
        rec.run_once()
    t = time.perf_counter()
    for _ in range(steady):
        rec.run_once()
    change_pass = (time.perf_counter() - t) / steady
    assert rec.reconciled == 0
    # apply to first placement: a new app applied, then the pass its notice starts at once
    latencies = []
    for i in range(20):
        spec = parse_app(doc(1_000_000 + i, 1))
        t = time.perf_counter()
        with db.session() as s, s.begin():
            apply_app(s, spec)
        rec.run_once()
        with db.engine.begin() as c:
            placed = c.exec_driver_sql(
                "SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id "
                f"WHERE a.name = 'app-{1_000_000 + i}' AND i.cloud_id IS NOT NULL"
            ).scalar()
        assert placed == 1, f"app-{1_000_000 + i} not placed in one pass"
        latencies.append(time.perf_counter() - t)
    latencies.sort()
    t = time.perf_counter()
    for name, p in fleet._providers.items():  # the bare provider listing a pass must do
        del name
        p[2].list_instances()
    listing = time.perf_counter() - t
    rec.close()
    return {
        "replicas": replicas,
        "running": float(running or 0),
        "passes": passes,
        "converge_s": converge,
        "replicas_per_s": replicas / converge,
        "idle_pass_s": idle_pass,
        "settled_pass_s": settled_pass,
        "change_pass_s": change_pass,
        "apply_to_placement_p50_s": latencies[len(latencies) // 2],
        "apply_to_placement_p99_s": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "apply_to_placement_max_s": latencies[-1],
        "skipped": rec.skipped,
        "provider_listing_s": listing,
    }


def _replica(url: str, data_dir: str, go: Any, stop: Any, held: Any, passes: Any, looked: Any) -> None:
    """One `serve` replica's reconcile loop, as the controller manager runs it (no other controllers)."""
    import threading

    db = open_database(url)
    shards, lock = Shards(db), LeaderLock(db)
    rec = Reconciler(db, Fleet(Path(data_dir)), failover_grace=0, full_resync=3600.0, feed=db.changes, shards=shards)
    wake = threading.Event()
    db.changes.subscribe(wake.set)
    listener = Listener(db.engine, db.changes)
    listener.start()
    while not stop.is_set():
        leader = lock.try_acquire()
        held.value = len(shards.refresh(leader))
        rec.leader = leader
        if shards.held and go.is_set():
            rec.run_once()
            passes.value += 1
            looked.value += rec.reconciled
        wake.wait(0.5)
        wake.clear()
    listener.stop()
    shards.release()
    lock.release()
    rec.close()
    db.dispose()


def bench_replicas(url: str, data_dir: Path, apps: int, count: int) -> dict[str, Any]:
    """`count` replicas (processes) converge `apps` apps of one replica each, applied while they
    waited; then, with two,
    one is killed: how long until the other holds every shard and places an app of the dead
    one's share."""
    ctx = multiprocessing.get_context("spawn")
    db = open_database(url)
    db.migrate()
    world(db, clouds=6, hosts=max(50, apps // 300 + 1))
    stop, go = ctx.Event(), ctx.Event()
    stats = [(ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)) for _ in range(count)]
    procs = [
        ctx.Process(target=_replica, args=(url, str(data_dir), go, stop, *stats[i]), daemon=True) for i in range(count)
    ]
    for p in procs:
        p.start()
    deadline = time.monotonic() + 60
    while sum(h.value for h, _, _ in stats) < SHARDS or any(h.value == 0 for h, _, _ in stats):
        assert time.monotonic() < deadline, "replicas did not split the shards"
        time.sleep(0.1)
    shares = [h.value for h, _, _ in stats]
    for i in range(apps):  # applied while the replicas wait, so that the apply rate is not measured
        with db.session() as s, s.begin():
            apply_app(s, parse_app(doc(i, 1)))
    t = time.perf_counter()
    go.set()

    def running() -> int:
        with db.engine.begin() as c:
            return int(c.exec_driver_sql("SELECT count(*) FROM instances WHERE state = 'running'").scalar() or 0)

    while running() < apps:
        assert time.perf_counter() - t < 1800, "did not converge"
        time.sleep(0.1)
    converge = time.perf_counter() - t
    out: dict[str, Any] = {
        "replicas": count,
        "apps": apps,
        "converge_s": converge,
        "apps_per_s": apps / converge,
        "shards": shares,
        "looked_at": [lk.value for _, _, lk in stats],
    }
    if count > 1:
        procs[-1].kill()
        procs[-1].join()
        t = time.perf_counter()
        while stats[0][0].value < SHARDS:
            assert time.perf_counter() - t < 60, "no takeover"
            time.sleep(0.05)
        out["takeover_s"] = time.perf_counter() - t
        # a new app whose shard was the dead replica's
        with db.session() as s, s.begin():
            next_id = int(s.scalar(select(func.max(App.id))) or 0) + 1
        i = 2_000_000
        while True:  # ids are handed out in order: apply filler apps until the next is in the right shard
            spec = parse_app(doc(i, 1))
            with db.session() as s, s.begin():
                apply_app(s, spec)
            if next_id % SHARDS % count == count - 1:
                break
            next_id, i = next_id + 1, i + 1
        t0 = time.perf_counter()
        while True:
            with db.engine.begin() as c:
                placed = c.exec_driver_sql(
                    f"SELECT count(*) FROM instances i JOIN apps a ON a.id = i.app_id WHERE a.name = 'app-{i}' "
                    "AND i.cloud_id IS NOT NULL"
                ).scalar()
            if placed:
                break
            assert time.perf_counter() - t0 < 60, "the survivor did not place the dead replica's app"
            time.sleep(0.02)
        out["dead_share_placed_s"] = time.perf_counter() - t0
    stop.set()
    for p in procs:
        p.join(30)
    db.dispose()
    return out


def run_backend(name: str, url: str, apps: int, replicas_each: int, tmp: Path) -> dict[str, Any]:
    db = open_database(url)
    db.migrate()
    world(db, clouds=6, hosts=max(50, apps * replicas_each // 300 + 1))  # room for all (64 a host by cpu)
    out = {"backend": name}
    out.update(bench_apply(db, apps, replicas_each))
    out.update(bench_converge(db, tmp / name, apps * replicas_each))
    db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (well under a minute)")
    ap.add_argument("-o", "--output", type=Path, help="write results as JSON here")
    ap.add_argument("--apps", type=int, help="how many apps (default 400; --quick 100)")
    ap.add_argument("--replicas", type=int, default=3, help="replicas per app (default 3)")
    ap.add_argument("--sqlite-only", action="store_true", help="leave PostgreSQL out")
    ap.add_argument("--no-split", action="store_true", help="leave out two replicas splitting the apps")
    ap.add_argument("--split-apps", type=int, help="apps for the replicas run (default 4000; --quick 300)")
    args = ap.parse_args()
    apps = args.apps or (100 if args.quick else 400)
    each = args.replicas
    results = []
    split: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run_backend("sqlite", f"sqlite+pysqlite:///{tmp}/bench.db", apps, each, Path(tmp)))
        with throwaway_postgres() as url:
            if url is not None and not args.sqlite_only:
                results.append(run_backend("postgresql", url, apps, each, Path(tmp)))
        if not args.sqlite_only and not args.no_split:
            n = args.split_apps or (300 if args.quick else 4000)
            for count in (1, 2):
                with throwaway_postgres() as url:
                    if url is not None:
                        print(f"{count} replica(s) converging {n} apps ...", flush=True)
                        split.append(bench_replicas(url, Path(tmp) / f"split{count}", n, count))
    hosts = max(50, apps * each // 300 + 1)
    table = Table(title=f"Shanzhi control plane ({apps} apps x {each} replicas on 6 sim clouds x {hosts} hosts)")
    cols = [
        ("backend", "backend", "{}"),
        ("apply apps/s", "apply_per_s", "{:,.0f}"),
        ("raw inserts/s (limit)", "raw_insert_per_s", "{:,.0f}"),
        ("converge s", "converge_s", "{:.2f}"),
        ("replicas/s", "replicas_per_s", "{:,.0f}"),
        ("passes", "passes", "{}"),
        ("idle pass ms", "idle_pass_s", "{:.0f}"),
        ("settled pass ms", "settled_pass_s", "{:.0f}"),
        ("change pass ms", "change_pass_s", "{:.1f}"),
        ("apply to placement p50/max ms", "apply_to_placement", "{}"),
        ("provider list ms", "provider_listing_s", "{:.0f}"),
    ]
    for title, _, _ in cols:
        table.add_column(title, justify="right")
    for r in results:
        row = []
        for _, key, fmt in cols:
            if key == "apply_to_placement":
                row.append(f"{r['apply_to_placement_p50_s'] * 1000:.0f} / {r['apply_to_placement_max_s'] * 1000:.0f}")
                continue
            v = (
                r[key] * 1000
                if key in ("idle_pass_s", "settled_pass_s", "change_pass_s", "provider_listing_s")
                else r[key]
            )
            row.append(fmt.format(v))
        table.add_row(*row)
    Console(width=160).print(table)
    if split:
        st = Table(title="serve replicas on one PostgreSQL, each its share of the apps (processes, sim clouds)")
        for title in (
            "replicas",
            "apps",
            "converge s",
            "apps/s",
            "shards each",
            "apps looked at each",
            "takeover s",
            "dead share placed s",
        ):
            st.add_column(title, justify="right")
        for r in split:
            st.add_row(
                str(r["replicas"]),
                f"{r['apps']:,}",
                f"{r['converge_s']:.1f}",
                f"{r['apps_per_s']:.0f}",
                " / ".join(map(str, r["shards"])),
                " / ".join(f"{x:,}" for x in r["looked_at"]),
                f"{r['takeover_s']:.2f}" if "takeover_s" in r else "-",
                f"{r['dead_share_placed_s']:.2f}" if "dead_share_placed_s" in r else "-",
            )
        Console(width=160).print(st)
    if args.output:
        args.output.write_text(
            json.dumps({"benchmark": "reconcile", "quick": args.quick, "results": results, "replicas": split}, indent=2)
        )


if __name__ == "__main__":
    main()
