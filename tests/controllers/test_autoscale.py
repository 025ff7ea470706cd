"""Autoscaling real processes: load raises a replica's cpu (held to its cgroup's share), the
replicas rise to what the load asks for, nothing changes within the cooldown, and they fall back
once the load is gone. Every decision is an event saying why; quota still applies."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from shanzhi.controllers.metrics import MetricsCollector
from shanzhi.domain.quota import Quota
from shanzhi.services.autoscale import Autoscaler
from shanzhi.services.vdcs import set_quota
from shanzhi.store import Database
from shanzhi.store.tables import Event
from tests.controllers.test_reconciler import World, app_doc

# an HTTP server that burns cpu for a while when asked (GET /busy=SECONDS), idles otherwise
WORKLOAD = """
import http.server, sys, threading, time
until = [0.0]
def burn():
    while True:
        if time.time() < until[0]:
            sum(range(20000))
        else:
            time.sleep(0.02)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/busy="):
            until[0] = time.time() + float(self.path.split("=")[1])
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a):
        pass
threading.Thread(target=burn, daemon=True).start()
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


@pytest.fixture
def world(db: Database, data_dir: Path) -> Iterator[World]:
    w = World(db, data_dir)
    w.cloud("city-a", "local", "site-a", "city", hosts=2)
    yield w
    w.rec.close()


def events(w: World, reason: str) -> list[str]:
    with w.db.session() as s, s.begin():
        return [e.message for e in s.scalars(select(Event).where(Event.reason == reason).order_by(Event.id))]


def replicas(w: World) -> int:
    with w.db.session() as s, s.begin():
        from shanzhi.store.tables import App

        app = s.scalar(select(App).where(App.name == "crunch"))
        assert app is not None
        return int(app.spec["spec"]["components"][0]["replicas"])


def test_load_raises_replicas_within_bounds_and_they_fall_after_the_cooldown(world: World) -> None:
    doc = app_doc("crunch", replicas=1, placement={"spread": {"over": "site", "minGroups": 1}})
    comp = doc["spec"]["components"][0]
    comp["run"]["command"] = ["python3", "-c", WORKLOAD, "${PORT}"]
    comp["resources"]["cpu"] = 0.5
    comp["autoscale"] = {"min": 1, "max": 3, "metric": "cpu", "target": 0.15, "cooldown": "3s"}
    world.apply(doc)
    world.converge(world.running("crunch", 1))
    collector = MetricsCollector(world.db, world.fleet, lambda: True)
    scaler = Autoscaler(world.db, lambda: dict(collector.latest))
    collector.run_once()
    time.sleep(1)
    collector.run_once()
    assert scaler.run_once() == 0  # idle, and at its minimum: nothing to do
    [first] = world.rows("crunch")
    httpx.get(f"http://{first.endpoint}/busy=60", timeout=5)  # load arrives
    time.sleep(1.5)
    collector.run_once()
    assert collector.latest[first.name].point.cpu > 0.3
    assert scaler.run_once() == 1
    assert replicas(world) == 3  # ceil(1 x ~0.5 / 0.15) = 4, kept to max 3
    [why] = events(world, "Autoscaled")
    assert "above the target 0.15: 1 -> 3 replicas (min 1, max 3)" in why
    world.converge(world.running("crunch", 3), timeout=60)
    collector.run_once()
    assert scaler.run_once() == 0  # within the cooldown: no second change
    httpx.get(f"http://{first.endpoint}/busy=0", timeout=5)  # the load goes away
    time.sleep(3.5)  # past the cooldown
    collector.run_once()
    time.sleep(1)
    collector.run_once()
    assert scaler.run_once() == 1
    assert replicas(world) == 1
    assert "below the target" in events(world, "Autoscaled")[-1]
    world.converge(world.running("crunch", 1), timeout=60)


def test_a_scale_up_past_the_quota_is_refused_and_said_once(world: World) -> None:
    with world.db.session() as s, s.begin():
        set_quota(s, "gz", Quota(cpu=600))  # room for one replica of 0.5 cores
    doc = app_doc("crunch", replicas=1, placement={"spread": {"over": "site", "minGroups": 1}})
    comp = doc["spec"]["components"][0]
    comp["run"]["command"] = ["python3", "-c", WORKLOAD, "${PORT}"]
    comp["resources"]["cpu"] = 0.5
    comp["autoscale"] = {"min": 1, "max": 3, "target": 0.15, "cooldown": "1h"}
    world.apply(doc)
    world.converge(world.running("crunch", 1))
    collector = MetricsCollector(world.db, world.fleet, lambda: True)
    scaler = Autoscaler(world.db, lambda: dict(collector.latest))
    [first] = world.rows("crunch")
    collector.run_once()
    httpx.get(f"http://{first.endpoint}/busy=60", timeout=5)
    time.sleep(1.5)
    collector.run_once()
    assert scaler.run_once() == 0
    assert replicas(world) == 1  # nothing changed
    [refused] = events(world, "AutoscaleRefused")
    assert "quota" in refused and "1 -> 3" in refused
    assert scaler.run_once() == 0 and len(events(world, "AutoscaleRefused")) == 1  # once per cooldown
    httpx.get(f"http://{first.endpoint}/busy=0", timeout=5)
