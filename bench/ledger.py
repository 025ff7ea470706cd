"""Directory ledger benchmark, side by side with the physical limits, in one run.

- durable appends/s in-process (SQLite, PostgreSQL) against raw `hashlib.sha256` leaf
  hashing and raw batched INSERTs of the same entries into the same database;
- submission over the HTTP API (real server, department-signed entries checked on arrival),
  batched and one entry per request, against the raw Ed25519 verification rate;
- submit -> cosigned checkpoint latency with 3 real witness processes;
- inclusion and consistency proofs at N entries: generation/s and verification/s (one core);
- full verification of an N-entry log; storage bytes per entry beyond the entry itself.

    python bench/ledger.py [--quick] [-o results.json]

--quick: proofs at 1 M entries and verification of 1 M (about a minute);
full: proofs at 10 M and verification of 17 M entries (one day of a city's exchange).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from _pg import throwaway_postgres
from shanzhi.ledger.entries import make_entry
from shanzhi.ledger.keys import load_or_create
from shanzhi.ledger.log import Log
from shanzhi.ledger.merkle import leaf_hash, verify_consistency, verify_inclusion
from shanzhi.ledger.note import Signer
from shanzhi.ledger.verify import DatabaseSource, verify_log
from shanzhi.store import Database, open_database

ORIGIN = "bench.shanzhi.example/ledger"
DEPT = Signer.generate("gz.gov.cn/health")
console = Console(width=160)


def entries(n: int, size: int = 100, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(size) for _ in range(n)]


def rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


# -------------------------------------------------------------- appends
def bench_appends(db: Database, n: int, batch: int) -> dict[str, float]:
    data = entries(n)
    t = time.perf_counter()
    for e in data:
        hashlib.sha256(b"\x00" + e).digest()
    hash_rate = rate(n, time.perf_counter() - t)
    log = Log(db)
    t = time.perf_counter()
    for i in range(0, n, batch):
        log.append(data[i : i + batch])
    append_rate = rate(n, time.perf_counter() - t)
    with db.engine.begin() as c:
        c.exec_driver_sql(
            "CREATE TABLE bench_raw (id BIGINT PRIMARY KEY, data BYTEA)".replace(
                "BYTEA", "BLOB" if db.is_sqlite else "BYTEA"
            )
        )
    t = time.perf_counter()
    for i in range(0, n, batch):
        with db.engine.begin() as c:
            c.execute(
                text("INSERT INTO bench_raw (id, data) VALUES (:i, :d)"),
                [{"i": j, "d": data[j]} for j in range(i, min(i + batch, n))],
            )
    raw_rate = rate(n, time.perf_counter() - t)
    return {"appends_per_s": append_rate, "raw_hash_per_s": hash_rate, "raw_insert_per_s": raw_rate}


# ------------------------------------------------------ HTTP and witnesses
class Proc:
    def __init__(self, args: list[str], ready_url: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
        self.p = subprocess.Popen(
            [sys.executable, "-m", "shanzhi", *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(ready_url, timeout=1).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.p.poll() is not None:
                raise RuntimeError(f"{args[0]} did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_http(tmp: Path, n_batched: int, n_single: int, n_latency: int) -> dict[str, float]:
    data_dir = tmp / "server"
    log_key = load_or_create(data_dir / "ledger.key", ORIGIN)
    procs: list[Proc] = []
    witness_args: list[str] = []
    try:
        for i, d in enumerate(("health", "transport", "finance")):
            port = free_port()
            wkey = load_or_create(tmp / f"w{i}" / "witness.key", f"witness.bench/{d}", 0x04)
            procs.append(
                Proc(
                    [
                        "witness",
                        "serve",
                        "--log",
                        f"{ORIGIN}={log_key.verifier.encode()}",
                        "--name",
                        f"witness.bench/{d}",
                        "--data-dir",
                        str(tmp / f"w{i}"),
                        "--port",
                        str(port),
                    ],
                    f"http://127.0.0.1:{port}/status",
                )
            )
            witness_args += ["--witness", f"http://127.0.0.1:{port}={wkey.verifier.encode()}"]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs.append(
            Proc(
                [
                    "serve",
                    "--data-dir",
                    str(data_dir),
                    "--port",
                    str(port),
                    "--ledger-origin",
                    ORIGIN,
                    "--witness-quorum",
                    "3",
                    *witness_args,
                ],
                f"{url}/healthz",
            )
        )
        token = (data_dir / "admin.token").read_text().strip()
        http = httpx.Client(base_url=f"{url}/api/v1/ledger", headers={"Authorization": f"Bearer {token}"}, timeout=60)
        http.post("/keys", json={"name": DEPT.name, "vkey": DEPT.verifier.encode(), "role": "department"})
        signed = [
            make_entry(DEPT, "access", "catalog/c", {"catalog": "c", "consumer": "gz/x", "records": i}).decode()
            for i in range(n_batched + n_single + n_latency)
        ]
        # raw verification rate: the limit of checking signatures on arrival, per core
        from shanzhi.ledger.entries import open_entry

        t = time.perf_counter()
        for e in signed[:2000]:
            open_entry(e.encode(), {DEPT.name: DEPT.verifier})
        check_rate = rate(2000, time.perf_counter() - t)

        def run(chunks: list[list[str]], threads: int) -> float:
            it = iter(chunks)
            lock = threading.Lock()

            def worker() -> None:
                with httpx.Client(base_url=http.base_url, headers=http.headers, timeout=60) as c:
                    while True:
                        with lock:
                            chunk = next(it, None)
                        if chunk is None:
                            return
                        r = c.post("/entries", json={"entries": chunk})
                        r.raise_for_status()

            t0 = time.perf_counter()
            ts = [threading.Thread(target=worker) for _ in range(threads)]
            for x in ts:
                x.start()
            for x in ts:
                x.join()
            return time.perf_counter() - t0

        batched = signed[:n_batched]
        t_batched = run([batched[i : i + 200] for i in range(0, len(batched), 200)], 4)
        single = signed[n_batched : n_batched + n_single]
        t_single = run([[e] for e in single], 8)
        # latency: submit one entry, wait until a checkpoint covering it is published (3 of 3 cosigned)
        lat = []
        for e in signed[n_batched + n_single :]:
            t0 = time.perf_counter()
            idx = http.post("/entries", json={"entries": [e]}).json()[0]["index"]
            while True:
                r = http.get("/checkpoint")
                if r.status_code == 200 and int(r.text.split("\n")[1]) > idx:
                    break
                time.sleep(0.005)
            lat.append(time.perf_counter() - t0)
            time.sleep(random.uniform(0, 0.25))
        http.close()
        q = statistics.quantiles(lat, n=100)
        return {
            "http_batched_per_s": rate(n_batched, t_batched),
            "http_single_per_s": rate(n_single, t_single),
            "signature_checks_per_s": check_rate,
            "checkpoint_latency_p50_s": q[49],
            "checkpoint_latency_p99_s": q[98],
            "latency_samples": len(lat),
        }
    finally:
        for p in procs:
            p.stop()


# ------------------------------------------------------ proofs and verify
def build(db: Database, n: int) -> tuple[Log, int]:
    log = Log(db)
    total_bytes = 0
    batch = 100_000
    rnd = random.Random(5)
    for i in range(0, n, batch):
        chunk = [rnd.randbytes(100) for _ in range(min(batch, n - i))]
        total_bytes += sum(len(e) for e in chunk)
        log.append(chunk)
        if (i // batch) % 20 == 0:
            console.print(f"  building: {i + len(chunk):,} / {n:,}", style="dim")
    return log, total_bytes


def bench_proofs(log: Log, n: int, samples: int) -> dict[str, float]:
    rnd = random.Random(9)
    idx = [rnd.randrange(n) for _ in range(samples)]
    t = time.perf_counter()
    proofs = [log.inclusion_proof(i, n) for i in idx]
    gen_incl = rate(samples, time.perf_counter() - t)
    root = log.root_at(n)
    leaves = [leaf_hash(e) for e in (log.entry(i) for i in idx)]
    reps = max(1, 20_000 // samples)
    t = time.perf_counter()
    for _ in range(reps):
        for i, leaf, p in zip(idx, leaves, proofs, strict=True):
            verify_inclusion(leaf, i, n, p, root)
    ver_incl = rate(samples * reps, time.perf_counter() - t)
    olds = [rnd.randint(1, n - 1) for _ in range(samples)]
    t = time.perf_counter()
    cproofs = [log.consistency_proof(o, n) for o in olds]
    gen_cons = rate(samples, time.perf_counter() - t)
    old_roots = [log.root_at(o) for o in olds]
    t = time.perf_counter()
    for _ in range(reps):
        for o, r_old, p in zip(olds, old_roots, cproofs, strict=True):
            verify_consistency(o, n, p, r_old, root)
    ver_cons = rate(samples * reps, time.perf_counter() - t)
    return {
        "proof_tree_size": n,
        "inclusion_gen_per_s": gen_incl,
        "inclusion_verify_per_s": ver_incl,
        "consistency_gen_per_s": gen_cons,
        "consistency_verify_per_s": ver_cons,
    }


def bench_verify(db: Database, log: Log) -> dict[str, float]:
    signer = Signer.generate(ORIGIN)
    t = time.perf_counter()
    report = verify_log(DatabaseSource(db), signer.verifier)
    seconds = time.perf_counter() - t
    if not report.ok:
        raise RuntimeError(report.problem)
    return {
        "verify_entries": report.entries_checked,
        "verify_s": seconds,
        "verify_per_s": rate(report.entries_checked, seconds),
    }


def storage(path: Path, db: Database, n: int, entry_bytes: int) -> dict[str, float]:
    import sqlite3

    with sqlite3.connect(path) as raw:  # a checkpoint cannot run inside the engine's transaction
        raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = path.stat().st_size
    return {"db_bytes": size, "bytes_per_entry_overhead": (size - entry_bytes) / n}


# ----------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about a minute: 1 M-entry proofs and verification")
    ap.add_argument("-o", "--output", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    quick = args.quick
    n_append = 200_000 if quick else 1_000_000
    n_proof = 1_000_000 if quick else 10_000_000
    n_verify = 1_000_000 if quick else 17_000_000
    results: dict[str, Any] = {"quick": quick}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        console.print("appends, SQLite ...")
        db = open_database(f"sqlite+pysqlite:///{tmp}/append.db")
        db.migrate()
        results["sqlite"] = bench_appends(db, n_append, 10_000)
        db.dispose()
        with throwaway_postgres() as url:
            if url is not None:
                console.print("appends, PostgreSQL ...")
                db = open_database(url)
                db.migrate()
                results["postgresql"] = bench_appends(db, n_append // 4, 10_000)
                db.dispose()
        console.print("HTTP API and witnessed checkpoints ...")
        results["http"] = bench_http(tmp, 6_000 if quick else 30_000, 600 if quick else 3_000, 40 if quick else 200)
        console.print(f"building a {n_verify:,}-entry log ...")
        path = tmp / "big.db"
        db = open_database(f"sqlite+pysqlite:///{path}")
        db.migrate()
        t = time.perf_counter()
        log, entry_bytes = build(db, n_verify)
        results["build"] = {"entries": n_verify, "seconds": time.perf_counter() - t}
        results["storage"] = storage(path, db, n_verify, entry_bytes)
        console.print(f"proofs at {n_proof:,} ...")
        results["proofs"] = bench_proofs(log, n_proof, 500 if quick else 2_000)
        console.print(f"verifying {n_verify:,} entries ...")
        results["verify"] = bench_verify(db, log)
        db.dispose()
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    show(results)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


def show(r: dict[str, Any]) -> None:
    t = Table(title="Shanzhi directory ledger (2 cores)" + (" --quick" if r["quick"] else ""))
    for col in ("measure", "Shanzhi", "physical limit / reference", "target"):
        t.add_column(col, justify="right" if col != "measure" else "left")
    s = r["sqlite"]
    t.add_row(
        "durable appends/s, SQLite, in-process",
        f"{s['appends_per_s']:,.0f}",
        f"sha256 {s['raw_hash_per_s']:,.0f}/s; raw inserts {s['raw_insert_per_s']:,.0f}/s",
        ">= 50,000",
    )
    if "postgresql" in r:
        p = r["postgresql"]
        t.add_row(
            "durable appends/s, PostgreSQL, in-process",
            f"{p['appends_per_s']:,.0f}",
            f"raw inserts {p['raw_insert_per_s']:,.0f}/s",
            "",
        )
    h = r["http"]
    t.add_row(
        "appends/s over HTTP, 200 per request, signatures checked",
        f"{h['http_batched_per_s']:,.0f}",
        f"Ed25519 checks {h['signature_checks_per_s']:,.0f}/s per core",
        ">= 3,000",
    )
    t.add_row("appends/s over HTTP, 1 per request, 8 clients", f"{h['http_single_per_s']:,.0f}", "", "")
    t.add_row(
        "submit -> checkpoint cosigned by 3 of 3 witnesses, p50",
        f"{h['checkpoint_latency_p50_s'] * 1000:,.0f} ms",
        "Tessera 0.6-6 s; Rekor v2 up to 20 s",
        "",
    )
    t.add_row("submit -> cosigned checkpoint, p99", f"{h['checkpoint_latency_p99_s'] * 1000:,.0f} ms", "", "<= 1 s")
    pr = r["proofs"]
    n = f"{pr['proof_tree_size'] / 1e6:g} M"
    t.add_row(f"inclusion proofs at {n}: generated/s", f"{pr['inclusion_gen_per_s']:,.0f}", "", "")
    t.add_row(f"inclusion proofs at {n}: verified/s (1 core)", f"{pr['inclusion_verify_per_s']:,.0f}", "", ">= 50,000")
    t.add_row(f"consistency proofs at {n}: generated/s", f"{pr['consistency_gen_per_s']:,.0f}", "", "")
    t.add_row(
        f"consistency proofs at {n}: verified/s (1 core)", f"{pr['consistency_verify_per_s']:,.0f}", "", ">= 40,000"
    )
    v = r["verify"]
    t.add_row(
        f"full verification of {v['verify_entries'] / 1e6:g} M entries",
        f"{v['verify_s']:.1f} s",
        f"{v['verify_per_s']:,.0f} entries/s",
        "17 M in <= 60 s",
    )
    st = r["storage"]
    t.add_row(
        "storage per entry beyond the entry (SQLite file)",
        f"{st['bytes_per_entry_overhead']:.1f} B",
        "leaf hash 32 B + length 2 B",
        "<= 40 B",
    )
    t.add_row("peak memory (RSS) of the benchmark process", f"{r['peak_rss_mb']:,.0f} MiB", "", "")
    console.print(t)


if __name__ == "__main__":
    main()
