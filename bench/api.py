"""API under load: a real `shanzhi serve` on loopback, driven by wrk (Debian's `wrk`), with
`/healthz` as the floor in the same run.

For each backend (SQLite, and PostgreSQL when it answers) and each process layout (one process;
`--workers N` API processes with the controllers in their own), it measures:

- `GET /healthz` (no authentication, no database): the floor of the HTTP stack;
- an authenticated `GET /api/v1/status` and `GET /api/v1/apps` (token lookup, grants, rule);
- `POST /api/v1/apps`: applies (validation, quota check, audit record with its ledger outbox
  row, one transaction each), and afterwards checks that exactly the acknowledged apps exist:
  nothing lost, nothing doubled.

Targets (the hardening issue): authenticated reads >= 1,000 req/s with p99 <= 100 ms at 50
connections; applies >= 100/s with p99 <= 500 ms.

    python bench/api.py [--quick] [--workers 2] [-o bench/results/api.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pg import throwaway_postgres
from shanzhi.providers.local import stop_all_under

REPORT_LUA = """
report = function(summary, latency, created)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format('RESULT {{"requests": %d, "seconds": %f, "p50_ms": %f, "p99_ms": %f, ' ..
    '"errors": %d, "non2xx": %d, "created": %d}}\\n', summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, errors, summary.errors.status, created))
end
"""

READ_LUA = (
    REPORT_LUA
    + """
wrk.headers["Authorization"] = "Bearer {token}"
done = function(summary, latency, requests) report(summary, latency, 0) end
"""
)

APPLY_LUA = (
    REPORT_LUA
    + """
local threads = {{}}
counter = 0  -- globals: each thread has its own, and done() reads them with thread:get
created = 0
setup = function(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end
request = function()
  counter = counter + 1
  local body = string.format('{{"apiVersion":"shanzhi.io/v1","kind":"App",' ..
    '"metadata":{{"name":"b%d-%d","vdc":"bench"}},' ..
    '"spec":{{"components":[{{"name":"c","image":"x","resources":{{"cpu":"10m","memory":"1Mi"}}}}],' ..
    '"placement":{{"clouds":{{"names":["sim"]}}}}}}}}', id, counter)
  return wrk.format("POST", "/api/v1/apps",
    {{["Content-Type"] = "application/json", ["Authorization"] = "Bearer {token}"}}, body)
end
response = function(status, headers, body)
  if status == 201 then created = created + 1 end
end
done = function(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("created") end
  report(summary, latency, total)
end
"""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(database_url: str | None, workers: int, threads: int | None = None) -> Any:
    data = Path(tempfile.mkdtemp(prefix="shanzhi-bench-api-"))
    port = free_port()
    args = [sys.executable, "-m", "shanzhi", "serve", "--data-dir", str(data), "--port", str(port)]
    args += ["--workers", str(workers), "--logins-per-minute", "100000", "--failures-per-minute", "100000"]
    args += ["--threads", str(threads)] if threads else []
    if database_url:
        args += ["--database-url", database_url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    log = open(data.parent / f"{data.name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise RuntimeError(f"server did not start; see {log.name}")
        token = (data / "admin.token").read_text().strip()
        h = {"Authorization": f"Bearer {token}"}
        httpx.post(f"{url}/api/v1/clouds", json={"name": "sim", "kind": "sim", "site": "s", "region": "gz",
                   "options": {"hosts": 50}}, headers=h, timeout=30).raise_for_status()  # fmt: skip
        httpx.post(f"{url}/api/v1/vdcs", json={"path": "bench"}, headers=h, timeout=30).raise_for_status()
        for i in range(20):  # something to list
            body = {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": f"seed{i}", "vdc": "bench"},
                    "spec": {"components": [{"name": "c", "image": "x", "resources": {"cpu": "10m", "memory": "1Mi"}}],
                             "placement": {"clouds": {"names": ["sim"]}}}}  # fmt: skip
            httpx.post(f"{url}/api/v1/apps", json=body, headers=h, timeout=30).raise_for_status()
        yield url, token
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_all_under(data / "clouds", remove=True)
        shutil.rmtree(data, ignore_errors=True)
        log.close()


def wrk(url: str, path: str, script: str, connections: int, seconds: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        cmd = ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "-s", f.name]
        out = subprocess.run([*cmd, url + path], capture_output=True, text=True, check=True, timeout=seconds + 60)
    finally:
        os.unlink(f.name)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    r: dict[str, Any] = json.loads(line[len("RESULT ") :])
    r["rps"] = r["requests"] / r["seconds"]
    return r


def run(backend: str, database_url: str | None, workers: int, seconds: int, threads: int | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with server(database_url, workers, threads) as (url, token):
        read = READ_LUA.format(token=token)
        out["healthz"] = wrk(url, "/healthz", read, 50, seconds)
        out["status"] = wrk(url, "/api/v1/status", read, 50, seconds)
        out["apps"] = wrk(url, "/api/v1/apps?vdc=bench", read, 50, seconds)
        out["apply"] = wrk(url, "/api/v1/apps", APPLY_LUA.format(token=token), 10, seconds)
        h = {"Authorization": f"Bearer {token}"}
        apps = httpx.get(f"{url}/api/v1/apps", params={"vdc": "bench"}, headers=h, timeout=60).json()
        made = len([a for a in apps if a["name"].startswith("b")])
        out["apply"]["stored"] = made
        # every acknowledged apply must be stored; a few more may be, answered after wrk stopped
        # listening; a name is never stored twice (names are unique, applies idempotent by name)
        out["apply"]["acknowledged_missing"] = max(0, out["apply"]["created"] - made)
        out["apply"]["in_flight_at_stop"] = max(0, made - out["apply"]["created"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 s per measurement instead of 20")
    ap.add_argument("--workers", type=int, default=2, help="API processes in the multi-process layout")
    ap.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    ap.add_argument(
        "--threads", default="", help="`serve --threads` per API process; several (4,40) run each layout with each"
    )
    ap.add_argument("--layouts", help="API processes of each layout to run, e.g. 2 or 1,4 (default: 1 and --workers)")
    ap.add_argument("-o", "--output", default="bench/results/api.json")
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/api.py needs wrk: apt-get install wrk")
    seconds = 5 if args.quick else 20
    results: dict[str, Any] = {"cores": os.cpu_count(), "seconds": seconds, "runs": {}}
    console = Console()
    for backend in ("sqlite", "postgresql") if args.backend == "both" else (args.backend,):
        for workers in [int(n) for n in args.layouts.split(",")] if args.layouts else (1, args.workers):
            for threads in [int(n) for n in args.threads.split(",") if n] or [None]:
                key = f"{backend}, {workers} API process{'es' if workers > 1 else ''}"
                key += f", {threads} threads" if threads else ""
                with throwaway_postgres() if backend == "postgresql" else nullcontext("") as pg:
                    if pg is None:
                        continue
                    console.print(f"[bold]{key}[/] ...")
                    results["runs"][key] = run(backend, pg or None, workers, seconds, threads)
    table = Table(title=f"API under load (wrk, {seconds} s each, {os.cpu_count()} cores)")
    for col in ("layout", "/healthz req/s", "GET /status req/s (p99)", "GET /apps req/s (p99)", "applies/s (p99)",
                "acknowledged, not stored"):  # fmt: skip
        table.add_column(col, justify="right" if col != "layout" else "left")
    for key, r in results["runs"].items():
        table.add_row(
            key,
            f"{r['healthz']['rps']:,.0f}",
            f"{r['status']['rps']:,.0f} ({r['status']['p99_ms']:.0f} ms)",
            f"{r['apps']['rps']:,.0f} ({r['apps']['p99_ms']:.0f} ms)",
            f"{r['apply']['rps']:,.0f} ({r['apply']['p99_ms']:.0f} ms)",
            str(r["apply"]["acknowledged_missing"]),
        )
    console.print(table)
    console.print(
        "targets: authenticated reads >= 1,000/s with p99 <= 100 ms at 50 connections; applies >= 100/s, p99 <= 500 ms"
    )
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(results, indent=1))
    console.print(f"written to {args.output}")


if __name__ == "__main__":
    main()
