"""How fast a tenant-network policy change takes effect: a real `shanzhi serve` with a netns cloud,
an app whose `network` section is applied open and closed again and again, and the time from the
API's answer to the first packet that gets through (opening) or the first that no longer does
(closing). Side by side with the floor: applying the same nftables table to the hosts directly.

Needs root (namespaces, nftables).

    python bench/policy.py [--quick] [-o results.json]
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
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from shanzhi.providers.fabric.member import remove_fabric, unavailable
from shanzhi.providers.fabric.topology import Fabric
from shanzhi.providers.local import stop_all_under
from shanzhi.providers.sandbox import server_id

console = Console(width=130)
PORT = 8080
SERVE = "import http.server as h; h.ThreadingHTTPServer(('0.0.0.0', 8080), h.SimpleHTTPRequestHandler).serve_forever()"

# a connect every 10 ms (each waiting at most 50 ms) until it succeeds (or fails), printing when
PROBE = """
import socket, sys, time
dst, want = sys.argv[1], sys.argv[2] == "open"
deadline = time.time() + 30
while time.time() < deadline:
    s = socket.socket(); s.settimeout(0.05)
    ok = s.connect_ex((dst, 8080)) == 0
    s.close()
    if ok == want:
        print(time.time()); break
    time.sleep(0.01)
else:
    print(-1)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def app(name: str, vdc: str, network: dict[str, Any] | None) -> dict[str, Any]:
    comp = {
        "name": "main",
        "resources": {"cpu": 0.2, "memory": "64Mi"},
        "run": {"command": ["python3", "-c", SERVE]},
        "ports": [{"name": "http", "port": PORT}],
        "health": {"tcp": {"port": "http"}},
    }
    spec: dict[str, Any] = {"components": [comp], "placement": {"clouds": {"names": ["t1"]}}}
    if network is not None:
        spec["network"] = network
    return {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": name, "vdc": vdc}, "spec": spec}


def running(c: httpx.Client, name: str) -> dict[str, Any]:
    for _ in range(600):
        rows = [i for i in c.get("/api/v1/instances", params={"app": name}).json() if i["state"] == "running"]
        if rows:
            return dict(rows[0])
        time.sleep(0.2)
    raise RuntimeError(f"{name} never ran")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 changes each way instead of 20")
    ap.add_argument("-o", "--output", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    why = unavailable()
    if why:
        raise SystemExit(f"bench/policy.py: {why}")
    rounds = 5 if args.quick else 20
    data = Path(tempfile.mkdtemp(prefix="shanzhi-bench-policy-")) / "data"
    data.mkdir()
    port = free_port()
    argv = [sys.executable, "-m", "shanzhi", "serve", "--data-dir", str(data), "--port", str(port), "--demo"]
    argv += ["--no-demo-vms", "--network-pool", "10.248.0.0/20", "--interval", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
    log = open(data.parent / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {"rounds": rounds}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        token = (data / "admin.token").read_text().strip()
        c = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        cloud = {"name": "t1", "kind": "netns", "site": "gz-huangpu", "region": "gz", "options": {"hosts": 2}}
        c.post("/api/v1/clouds", json=cloud).raise_for_status()
        c.post("/api/v1/apps", json=app("caller", "gz/transport", None)).raise_for_status()
        closed: dict[str, Any] = {"allow": []}
        opened = {"allow": [{"from": {"vdc": "gz/transport", "app": "caller"}, "ports": ["http"]}]}
        c.post("/api/v1/apps", json=app("target", "gz/health", closed)).raise_for_status()
        caller, target = running(c, "caller"), running(c, "target")
        fabric = Fabric(server_id(data))
        ns = fabric.instance("t1", caller["name"])
        dst = target["endpoint"].rsplit(":", 1)[0]
        took: dict[str, list[float]] = {"open": [], "close": []}
        for i in range(rounds):
            for way, network in (("open", opened), ("close", closed)):
                probe = subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, dst, way],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                time.sleep(0.3)  # the probe is trying
                c.post("/api/v1/apps", json=app("target", "gz/health", network)).raise_for_status()
                answered = time.time()
                out, _ = probe.communicate(timeout=60)
                at = float(out.strip())
                if at < 0:
                    raise RuntimeError(f"round {i}: the change to {way} never took effect")
                took[way].append(max(0.0, at - answered))
            console.print(f"round {i + 1}/{rounds}: open {took['open'][-1]:.2f} s, close {took['close'][-1]:.2f} s")
        # the floor: the same table applied to both hosts by nft directly
        host = fabric.host("t1", 0)
        table = subprocess.run(
            ["ip", "netns", "exec", host, "nft", "-j", "list", "table", "inet", "shanzhi"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        doc = {"nftables": [x for x in json.loads(table)["nftables"] if "metainfo" not in x]}
        replace = {"nftables": [{"delete": {"table": {"family": "inet", "name": "shanzhi"}}}]}
        floor = []
        for _ in range(rounds):
            start = time.monotonic()
            for h in (fabric.host("t1", 0), fabric.host("t1", 1)):
                for d in (replace, {"nftables": [{"add": x} for x in doc["nftables"]]}):
                    subprocess.run(
                        ["ip", "netns", "exec", h, "nft", "-j", "-f", "-"], input=json.dumps(d), text=True, check=True
                    )
            floor.append(time.monotonic() - start)
        results["open_s"] = took["open"]
        results["close_s"] = took["close"]
        results["nft_floor_s"] = floor
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        stop_all_under(data / "clouds", remove=True)
        remove_fabric(data)

    def q(xs: list[float], p: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    t = Table(title=f"policy change to effect, {rounds} changes each way (controller interval 1 s)")
    for col in ("", "p50", "p95", "max"):
        t.add_column(col, justify="right")
    for label, xs in (
        ("open a path (apply -> first packet through)", results["open_s"]),
        ("close it (apply -> first packet refused)", results["close_s"]),
        ("floor: nft applies the table to both hosts", results["nft_floor_s"]),
    ):
        t.add_row(label, f"{statistics.median(xs):.3f} s", f"{q(xs, 0.95):.3f} s", f"{max(xs):.3f} s")
    console.print(t)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
