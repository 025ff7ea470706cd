"""Inventory benchmark: a city's worth of resources synced into one table, SQLite and PostgreSQL.

50 `sim` clouds of 10 hosts and 1,990 servers found on them each (100,000 resources; with
--quick 20 clouds, 40,000), side by side in one run:
- first sync: every cloud listed and every row written, against the floor: a raw bulk INSERT
  of the same rows into the same table;
- resync with nothing changed (a digest per row: nothing is written);
- a change visible: an instance created on one cloud, seconds until its row is in the
  inventory with the controller's thread running (interval 1 s);
- peak RSS of the process after the sync.

    python bench/inventory.py [--quick] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, func, insert, select

from _pg import throwaway_postgres
from shanzhi.controllers import Fleet
from shanzhi.controllers.inventory import InventoryController, digest
from shanzhi.providers import InstanceRequest
from shanzhi.services.clouds import add_cloud
from shanzhi.services.inventory import request_sync
from shanzhi.store import Database, open_database
from shanzhi.store.tables import Cloud, InventoryItem, utcnow

HOSTS, FOUND = 10, 1990


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def world(db: Database, clouds: int) -> None:
    with db.session() as s, s.begin():
        for c in range(clouds):
            add_cloud(s, f"dc{c:02d}", "sim", f"site-{c % 5}", "gz", {}, {"hosts": HOSTS, "boot": 0, "found": FOUND})


def floor(db: Database, fleet: Fleet) -> float:
    """A raw bulk insert of the same rows (the provider listings taken beforehand, untimed)."""
    with db.session() as s, s.begin():
        clouds = [(c.id, c.name, c.kind, dict(c.options)) for c in s.scalars(select(Cloud))]
    now = utcnow()
    rows = [
        {
            "cloud_id": cid,
            "kind": r.kind,
            "external_id": r.id,
            "name": r.name,
            "state": r.state,
            "managed": r.managed,
            "instance": r.instance,
            "attrs": dict(r.attrs),
            "digest": digest(r),
            "first_seen_at": now,
            "updated_at": now,
        }
        for cid, name, kind, options in clouds
        for r in fleet.provider(name, kind, options).inventory()
    ]
    with db.session() as s, s.begin():
        s.execute(delete(InventoryItem))
    t0 = time.perf_counter()
    with db.session() as s, s.begin():
        for i in range(0, len(rows), 5000):
            s.execute(insert(InventoryItem), rows[i : i + 5000])
    took = time.perf_counter() - t0
    with db.session() as s, s.begin():
        s.execute(delete(InventoryItem))
    return took


def change_visible(db: Database, fleet: Fleet, ctl: InventoryController, tries: int) -> list[float]:
    """Seconds from an instance's creation on a cloud to its row in the inventory."""
    ctl.interval = 1.0
    with db.session() as s, s.begin():
        request_sync(s, None)  # due now, then every second
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            ctl.run_once()
            stop.wait(0.2)

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    out = []
    try:
        with db.session() as s, s.begin():
            cloud = s.scalar(select(Cloud).where(Cloud.name == "dc07"))
            assert cloud is not None
            p = fleet.provider(cloud.name, cloud.kind, dict(cloud.options))
        for n in range(tries):
            name = f"probe-{n}"
            req = InstanceRequest(name, "a", "c", "gz", "dc07-h0000", 100, 2**20, image="x")
            t0 = time.perf_counter()
            p.create_instance(req)
            while True:
                with db.session() as s, s.begin():
                    if s.scalar(select(InventoryItem.id).where(InventoryItem.external_id == name)) is not None:
                        break
                time.sleep(0.02)
            out.append(time.perf_counter() - t0)
            time.sleep(0.3)
    finally:
        stop.set()
        t.join()
    return out


def run_backend(name: str, url: str, clouds: int, tries: int, tmp: Path) -> dict[str, Any]:
    db = open_database(url)
    db.migrate()
    fleet = Fleet(tmp / name)
    world(db, clouds)
    ctl = InventoryController(db, fleet, lambda: True, interval=3600)
    out: dict[str, Any] = {"backend": name, "clouds": clouds}
    t0 = time.perf_counter()
    ctl.run_once()
    out["first_sync_s"] = time.perf_counter() - t0
    out["peak_rss_mib"] = peak_rss_mib()
    with db.session() as s, s.begin():
        out["items"] = s.scalar(select(func.count()).select_from(InventoryItem))
        request_sync(s, None)
    t0 = time.perf_counter()
    ctl.run_once()
    out["idle_sync_s"] = time.perf_counter() - t0
    seen = change_visible(db, fleet, ctl, tries)
    out["change_visible_p50_s"] = statistics.median(seen)
    out["change_visible_max_s"] = max(seen)
    out["raw_insert_s"] = floor(db, fleet)
    db.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20 clouds (40,000 resources) instead of 50 (100,000)")
    ap.add_argument("-o", "--output", type=Path, help="write results as JSON here")
    args = ap.parse_args()
    clouds, tries = (20, 3) if args.quick else (50, 10)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        results.append(run_backend("sqlite", f"sqlite+pysqlite:///{tmp}/bench.db", clouds, tries, Path(tmp)))
        with throwaway_postgres() as url:
            if url is not None:
                results.append(run_backend("postgresql", url, clouds, tries, Path(tmp)))
    per = HOSTS + FOUND
    table = Table(title=f"Shanzhi inventory ({clouds} sim clouds x {per:,} resources = {clouds * per:,})")
    cols = [
        ("backend", "backend", "{}"),
        ("items", "items", "{:,}"),
        ("first sync s", "first_sync_s", "{:.2f}"),
        ("raw insert s (floor)", "raw_insert_s", "{:.2f}"),
        ("resync, no change s", "idle_sync_s", "{:.2f}"),
        ("change visible p50 s", "change_visible_p50_s", "{:.2f}"),
        ("change visible max s", "change_visible_max_s", "{:.2f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"),
    ]
    for title, _, _ in cols:
        table.add_column(title, justify="right")
    for r in results:
        table.add_row(*(fmt.format(r[key]) for _, key, fmt in cols))
    Console(width=160).print(table)
    if args.output:
        args.output.write_text(
            json.dumps({"benchmark": "inventory", "quick": args.quick, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
