"""A workload's own metrics: a replica that exports Prometheus text on its `metrics` port is read
with the cloud's samples (gauges as read, counters as rates), its minutes and hours keep them,
Prometheus discovers it there, and the autoscaler follows one of them (a queue's depth)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shanzhi.controllers.alarm_rules import RuleEvaluator
from shanzhi.controllers.metrics import MetricsCollector
from shanzhi.domain.alarm_rules import RuleIn
from shanzhi.domain.errors import InvalidInput
from shanzhi.domain.metrics import HOUR, MINUTE
from shanzhi.domain.spec import parse_app
from shanzhi.services.alarm_rules import add_rule
from shanzhi.services.autoscale import Autoscaler
from shanzhi.store import Database
from shanzhi.store.tables import Alarm, App, Event, MetricPoint, utcnow
from tests.controllers.test_reconciler import World, app_doc

# an HTTP server whose queue depth is set by GET /depth=N; it counts the jobs it is asked for
WORKLOAD = """
import http.server, sys
state = {"depth": 0.0, "jobs": 0}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/depth="):
            state["depth"] = float(self.path.split("=")[1])
        elif self.path == "/job":
            state["jobs"] += 1
        body = b"ok"
        if self.path == "/metrics":
            body = (
                "# TYPE queue_depth gauge\\n"
                'queue_depth{queue="a"} %s\\nqueue_depth{queue="b"} 0\\n'
                "# TYPE jobs_total counter\\njobs_total %d\\n"
                "# TYPE latency_seconds histogram\\nlatency_seconds_bucket{le=\\"+Inf\\"} 1\\n"
                "latency_seconds_count 1\\nlatency_seconds_sum 0.1\\n"
                % (state["depth"], state["jobs"])
            ).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def poke(endpoint: str | None, path: str) -> None:
    """GET a path from a replica's server, waiting for it to listen: "running" means its process
    is alive, and a Python server binds its port a moment later."""
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://{endpoint}{path}", timeout=5).raise_for_status()
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def world(db: Database, data_dir: Path) -> Iterator[World]:
    w = World(db, data_dir)
    w.cloud("city-a", "local", "site-a", "city", hosts=2)
    yield w
    w.rec.close()


def queue_app(replicas: int = 1, **component: Any) -> dict[str, Any]:
    doc = app_doc("queue", replicas=replicas, placement={"spread": {"over": "site", "minGroups": 1}})
    comp = doc["spec"]["components"][0]
    comp["run"]["command"] = ["python3", "-c", WORKLOAD, "${PORT}"]
    comp["metrics"] = {"port": "http", "path": "/metrics"}
    comp.update(component)
    return doc


def test_a_replicas_own_metrics_are_sampled_kept_and_discoverable(world: World) -> None:
    world.apply(queue_app())
    world.converge(world.running("queue", 1))
    [replica] = world.rows("queue")
    assert replica.metrics_url == f"http://{replica.endpoint}/metrics"  # on the port it was given
    poke(replica.endpoint, "/depth=7")
    collector = MetricsCollector(world.db, world.fleet, lambda: True)
    now = utcnow()
    collector.run_once(now)
    for _ in range(5):
        poke(replica.endpoint, "/job")
    time.sleep(0.5)
    collector.run_once(now + timedelta(seconds=1))
    point = collector.latest[replica.name].point
    assert point.get("queue_depth") == 7.0  # summed over its queues
    jobs = point.get("jobs_total")
    assert jobs is not None and 2 < jobs < 20  # 5 jobs in ~0.5 s: a rate, not the running total
    assert point.get("latency_seconds_count") is None  # histograms are left out
    assert point.cpu >= 0 and point.get("cpu") == point.cpu  # the cloud's own samples are still there
    # the minute closes: its average keeps the workload's metrics; the hour rolls them up
    collector.flush(now + timedelta(minutes=1))
    collector.flush(now + timedelta(hours=1, minutes=1))
    with world.db.session() as s, s.begin():
        kept = {p.resolution: p.custom for p in s.scalars(select(MetricPoint))}
    assert kept[MINUTE] is not None and kept[MINUTE]["queue_depth"] == 7.0
    assert kept[HOUR] is not None and kept[HOUR]["queue_depth"] == 7.0


def test_a_replica_whose_endpoint_fails_has_no_own_metrics_that_round(world: World) -> None:
    world.apply(queue_app(metrics={"port": "http", "path": "/nothing-here"}))
    world.converge(world.running("queue", 1))
    [replica] = world.rows("queue")
    collector = MetricsCollector(world.db, world.fleet, lambda: True)
    collector.run_once()
    time.sleep(0.3)
    collector.run_once()
    point = collector.latest[replica.name].point
    assert point.custom == {} and point.get("queue_depth") is None  # the workload's server says "ok", not metrics


def test_the_autoscaler_follows_a_workloads_own_metric(world: World) -> None:
    auto = {"min": 1, "max": 4, "metric": "queue_depth", "target": 10, "cooldown": "1s"}
    world.apply(queue_app(autoscale=auto))
    world.converge(world.running("queue", 1))
    collector = MetricsCollector(world.db, world.fleet, lambda: True)
    scaler = Autoscaler(world.db, lambda: dict(collector.latest))
    [first] = world.rows("queue")
    poke(first.endpoint, "/depth=35")  # 35 waiting against 10 per replica
    collector.run_once()
    time.sleep(0.3)
    collector.run_once()
    assert scaler.run_once() == 1
    with world.db.session() as s, s.begin():
        app = s.scalar(select(App).where(App.name == "queue"))
        assert app is not None and app.spec["spec"]["components"][0]["replicas"] == 4
        [why] = [e.message for e in s.scalars(select(Event).where(Event.reason == "Autoscaled"))]
    assert "queue_depth 35 per replica (over 1) is above the target 10: 1 -> 4 replicas" in why
    world.converge(world.running("queue", 4), timeout=60)


def test_an_alarm_rule_watches_a_workloads_own_metric(world: World) -> None:
    world.apply(queue_app())
    world.converge(world.running("queue", 1))
    [replica] = world.rows("queue")
    with world.db.session() as s, s.begin():
        add_rule(s, RuleIn.model_validate({"name": "backlog", "vdc": "gz", "metric": "queue_depth", "above": 20}), "t")
    collector = MetricsCollector(world.db, world.fleet, lambda: True)
    rules = RuleEvaluator(world.db, lambda: dict(collector.latest))
    poke(replica.endpoint, "/depth=3")
    collector.run_once()
    time.sleep(0.3)
    collector.run_once()
    assert rules.run_once() == 0  # 3 waiting: no alarm
    poke(replica.endpoint, "/depth=25")
    collector.run_once()
    assert rules.run_once() == 1
    with world.db.session() as s, s.begin():
        [alarm] = s.scalars(select(Alarm)).all()
        assert alarm.instance == replica.name and "queue_depth 25 above 20" in alarm.message
    poke(replica.endpoint, "/depth=0")
    collector.run_once()
    rules.run_once()
    with world.db.session() as s, s.begin():
        assert s.scalars(select(Alarm)).one().resolved_at is not None


@pytest.mark.parametrize(
    ("component", "message"),
    [
        ({"autoscale": {"max": 3, "metric": "queue_depth", "target": 5}, "metrics": None}, "needs 'metrics'"),
        ({"metrics": {"port": "nope"}}, "metrics names port 'nope'"),
        ({"autoscale": {"max": 3, "metric": "9lives", "target": 5}}, "nor a Prometheus metric name"),
        ({"autoscale": {"max": 3, "metric": "queue_depth", "target": "5Gi"}}, "not a number of queue_depth"),
        ({"metrics": {"port": "http", "path": "no-slash"}}, "path"),
    ],
)
def test_bad_custom_metric_specs_are_refused(component: dict[str, Any], message: str) -> None:
    doc = queue_app(**component)
    comp = doc["spec"]["components"][0]
    if comp.get("metrics") is None:
        comp.pop("metrics")
    with pytest.raises(InvalidInput, match=message):
        parse_app(doc)


def test_changing_where_metrics_are_exported_does_not_roll_replicas() -> None:
    a = parse_app(queue_app()).spec.components[0]
    b = parse_app(queue_app(metrics={"port": "http", "path": "/other"})).spec.components[0]
    placement = parse_app(queue_app()).spec.placement
    assert a.spec_hash(placement) == b.spec_hash(placement)
