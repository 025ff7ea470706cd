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
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from _pg import throwaway_postgres
from shanzhi.controllers import Fleet, Reconciler
from shanzhi.domain.quota import Quota
from shanzhi.domain.spec import parse_app
from shanzhi.services.apps import apply_app
from shanzhi.services.clouds import add_cloud
from shanzhi.services.vdcs import create_vdc
from shanzhi.store import Database, open_database


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
    # the same, as `serve` runs it: settled apps left alone between full passes
    rec.full_resync = 3600.0
    rec.run_once()  # a pass that learns which apps are settled
    t = time.perf_counter()
    for _ in range(steady):
        rec.run_once()
    settled_pass = (time.perf_counter() - t) / steady
    # apply to first placement: a new app applied, then the pass the API's wake-up starts at once
    latencies = []
    for i in range(10):
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
        "apply_to_placement_p50_s": latencies[len(latencies) // 2],
        "apply_to_placement_max_s": latencies[-1],
        "skipped": rec.skipped,
        "provider_listing_s": listing,
    }


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
    args = ap.parse_args()
    apps = args.apps or (100 if args.quick else 400)
    each = args.replicas
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run_backend("sqlite", f"sqlite+pysqlite:///{tmp}/bench.db", apps, each, Path(tmp)))
        with throwaway_postgres() as url:
            if url is not None and not args.sqlite_only:
                results.append(run_backend("postgresql", url, apps, each, Path(tmp)))
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
            v = r[key] * 1000 if key in ("idle_pass_s", "settled_pass_s", "provider_listing_s") else r[key]
            row.append(fmt.format(v))
        table.add_row(*row)
    Console(width=160).print(table)
    if args.output:
        args.output.write_text(
            json.dumps({"benchmark": "reconcile", "quick": args.quick, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
