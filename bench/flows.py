"""The flow pipeline under load: new flows per second in, flow records out.

A netns cloud with two instances; the client's namespace opens new UDP flows (a fresh 5-tuple
each) to the server at a fixed rate. Measured, per rate:

- floor: a bare conntrack event reader in the client's host namespace, which only counts NEW
  events (the kernel's delivery, nothing parsed or stored): events received, its CPU;
- Shanzhi: the collector of that host (parse, track, JSON out) and the flow recorder (identities,
  rules, batched inserts into SQLite): flows recorded, lost, CPU of each as % of one core, and
  the latency from the packet's send to its record being readable in the database (p50/p99).

Needs root (namespaces, nftables).

    python bench/flows.py [--quick] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table
from sqlalchemy import select

from shanzhi.controllers.fleet import Fleet
from shanzhi.controllers.flows import FlowController
from shanzhi.controllers.network import NetworkController
from shanzhi.network.addressing import management_address
from shanzhi.network.policy import AppNet, Endpoint, compile_ruleset
from shanzhi.providers.base import InstanceRequest, NetworkAttachment
from shanzhi.providers.fabric.member import unavailable
from shanzhi.providers.netns.provider import NetnsProvider
from shanzhi.services.clouds import add_cloud
from shanzhi.store import open_database
from shanzhi.store.tables import Flow

console = Console(width=160)
POOL = "10.249.0.0/20"
CLIENT, SERVER = "10.249.1.10", "10.249.1.20"

GENERATOR = """
import socket, sys, time, json
rate, seconds, dst = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
total = int(rate * seconds)
sent = []
t0 = time.time()
for n in range(total):
    target = t0 + n / rate
    now = time.time()
    if now < target:
        time.sleep(target - now)
        now = time.time()
    sport, dport = 20000 + n % 40000, 1000 + n // 40000
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", sport))
    s.sendto(b"x", (dst, dport))
    s.close()
    sent.append((sport, dport, now))
print(json.dumps({"sent": sent, "seconds": time.time() - t0}))
"""

FLOOR = """
import socket, sys, time, errno, select
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)
s.setsockopt(socket.SOL_SOCKET, 33, 64 * 2**20)
s.bind((0, 1))
seconds = float(sys.argv[1])
n = overruns = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    if not select.select([s], [], [], 0.2)[0]:
        continue
    try:
        buf = s.recv(1 << 20)
    except OSError as e:
        if e.errno == errno.ENOBUFS:
            overruns += 1
            continue
        raise
    i = 0
    while i + 16 <= len(buf):
        length = int.from_bytes(buf[i:i + 4], "little")
        if length < 16:
            break
        n += 1
        i += (length + 3) & ~3
print(n, overruns, time.process_time())
"""


def world(tmp: Path) -> tuple[Any, Fleet, NetnsProvider]:
    data = tmp / "data"
    data.mkdir()
    db = open_database(f"sqlite+pysqlite:///{data / 'shanzhi.db'}")
    db.migrate()
    with db.session() as s, s.begin():
        cloud = add_cloud(s, "b1", "netns", "bench", "bench", {}, {"hosts": "2", "cpu": "4", "instances": "10"})
        cloud.health = "healthy"  # as a reconciler would find it (none runs here)
        options = dict(cloud.options)
    fleet = Fleet(data)
    p = fleet.provider("b1", "netns", options)
    assert isinstance(p, NetnsProvider)
    assert p.status().healthy
    mgmt = management_address(POOL)
    for name, host, addr in (("client", "node-0", CLIENT), ("server", "node-1", SERVER)):
        net = NetworkAttachment(addr, POOL, mgmt)
        p.create_instance(
            InstanceRequest(name, "bench", "main", "bench", host, 500, 64 << 20, ("sleep", "3600"), network=net)
        )
    return db, fleet, p


def run_generator(p: NetnsProvider, rate: float, seconds: float) -> dict[str, Any]:
    ns = p.fabric.instance("b1", "client")
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", GENERATOR, str(rate), str(seconds), SERVER],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def floor(p: NetnsProvider, rate: float, seconds: float) -> dict[str, Any]:
    host = p.fabric.host("b1", 0)
    reader = subprocess.Popen(
        ["ip", "netns", "exec", host, sys.executable, "-c", FLOOR, str(seconds + 3)],
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(0.5)
    gen = run_generator(p, rate, seconds)
    out, _ = reader.communicate()
    n, overruns, cpu = out.split()
    return {
        "offered": len(gen["sent"]),
        "achieved_rate": len(gen["sent"]) / gen["seconds"],
        "received": int(n),
        "overruns": int(overruns),
        "cpu_pct": 100 * float(cpu) / gen["seconds"],
    }


def shanzhi(db: Any, flows: FlowController, p: NetnsProvider, rate: float, seconds: float) -> dict[str, Any]:
    seen: dict[tuple[int, int], float] = {}
    stop = threading.Event()
    last = [0]
    with db.session() as s:
        last[0] = s.scalar(select(Flow.id).order_by(Flow.id.desc()).limit(1)) or 0

    def poll() -> None:
        while not stop.is_set():
            with db.session() as s:
                rows = s.execute(
                    select(Flow.id, Flow.sport, Flow.dport).where(Flow.id > last[0], Flow.dst == SERVER)
                ).all()
            now = time.time()
            for fid, sport, dport in rows:
                seen.setdefault((int(sport), int(dport)), now)
                last[0] = max(last[0], int(fid))
            time.sleep(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    procs = [psutil.Process(c.proc.pid) for c in flows._collectors.values()]
    me = psutil.Process()
    c0 = [pr.cpu_times() for pr in procs]
    m0 = me.cpu_times()
    lost0 = dict(flows.lost)
    gen = run_generator(p, rate, seconds)
    sent = {(sp, dp): t for sp, dp, t in gen["sent"]}
    deadline = time.monotonic() + 30
    settled, count = time.monotonic(), -1
    while time.monotonic() < deadline and len(set(sent) & set(seen)) < len(sent):
        now_seen = len(seen)
        if now_seen != count:
            settled, count = time.monotonic(), now_seen
        elif time.monotonic() - settled > 10:  # nothing more is coming: stop the clock
            break
        time.sleep(0.2)
    window = gen["seconds"]
    c1 = [pr.cpu_times() for pr in procs]
    m1 = me.cpu_times()
    stop.set()
    poller.join()
    lat = sorted(seen[k] - sent[k] for k in sent if k in seen)
    collector_cpu = sum((b.user + b.system) - (a.user + a.system) for a, b in zip(c0, c1, strict=True))
    recorder_cpu = (m1.user + m1.system) - (m0.user + m0.system)
    return {
        "offered": len(sent),
        "achieved_rate": len(sent) / window,
        "recorded": sum(1 for k in sent if k in seen),
        "lost_reported": {k: flows.lost[k] - lost0.get(k, 0) for k in flows.lost},
        "collector_cpu_pct": 100 * collector_cpu / window,
        "recorder_cpu_pct": 100 * recorder_cpu / window,
        "latency_p50_s": statistics.median(lat) if lat else None,
        "latency_p99_s": lat[int(0.99 * (len(lat) - 1))] if lat else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 s per rate instead of 15")
    ap.add_argument("-o", "--output", type=Path, help="write the results as JSON here")
    args = ap.parse_args()
    why = unavailable()
    if why:
        raise SystemExit(f"bench/flows.py: {why}")
    seconds = 5.0 if args.quick else 15.0
    rates = [1000.0, 10000.0]
    results: dict[str, Any] = {"seconds_per_rate": seconds, "rates": {}}
    with tempfile.TemporaryDirectory() as tmp:
        db, fleet, p = world(Path(tmp))
        try:
            eps = [
                Endpoint(CLIENT, "bench", "bench", "client", p.link_name("client")),
                Endpoint(SERVER, "bench", "bench", "server", p.link_name("server")),
            ]
            network = NetworkController(db, fleet, POOL)
            network.ruleset = compile_ruleset(eps, [AppNet("bench", "bench", None)], management_address(POOL))
            network.endpoints = {e.address: e for e in eps}
            network.homes = {CLIENT: p.fabric.host("b1", 0), SERVER: p.fabric.host("b1", 1)}
            p.apply_policy(network.ruleset.commands)
            for rate in rates:
                console.print(f"floor at {rate:.0f} new flows/s ...")
                results["rates"][str(int(rate))] = {"floor": floor(p, rate, seconds)}
                time.sleep(32)  # the unreplied UDP entries expire (30 s), so both runs start from the same table
            flows = FlowController(db, network, lambda: True)
            flows.start()
            while len(flows.ready()) < 2:
                time.sleep(0.2)
            time.sleep(2)
            for rate in rates:
                console.print(f"Shanzhi at {rate:.0f} new flows/s ...")
                results["rates"][str(int(rate))]["shanzhi"] = shanzhi(db, flows, p, rate, seconds)
                time.sleep(32)
            flows.stop()
        finally:
            p.dismantle()
            db.dispose()
    table = Table(title=f"flow pipeline: new UDP flows per second, {seconds:.0f} s per rate (one core = 100 %)")
    for col in (
        "rate (achieved)",
        "floor: events",
        "floor cpu",
        "recorded",
        "lost (reported)",
        "collector cpu",
        "recorder cpu",
        "latency p50",
        "latency p99",
    ):
        table.add_column(col, justify="right")
    for rate, r in results["rates"].items():
        f, s = r["floor"], r["shanzhi"]
        table.add_row(
            f"{rate} ({s['achieved_rate']:.0f})",
            f"{f['received']}/{f['offered']}",
            f"{f['cpu_pct']:.1f} %",
            f"{s['recorded']}/{s['offered']}",
            json.dumps(s["lost_reported"]),
            f"{s['collector_cpu_pct']:.1f} %",
            f"{s['recorder_cpu_pct']:.1f} %",
            f"{s['latency_p50_s']:.2f} s" if s["latency_p50_s"] is not None else "-",
            f"{s['latency_p99_s']:.2f} s" if s["latency_p99_s"] is not None else "-",
        )
    console.print(table)
    if args.output:
        args.output.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
