"""Alarm rules evaluated against what the metrics collector sampled and the events recorded, on
both databases: firing after the duration, once per replica; resolving; absence; events;
silences; picking up open alarms after a restart; each rule's own webhook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shanzhi.controllers.alarm_rules import RuleEvaluator
from shanzhi.controllers.alarms import Notifier
from shanzhi.controllers.metrics import MetricsCollector
from shanzhi.domain.alarm_rules import RuleIn
from shanzhi.services.alarm_rules import add_rule, add_silence
from shanzhi.services.apps import delete_app
from shanzhi.services.clouds import inject_failure
from shanzhi.store import Database
from shanzhi.store.tables import Alarm, Event
from tests.controllers.test_reconciler import World, sim_doc


@pytest.fixture
def world(db: Database, data_dir: Path) -> Iterator[World]:
    w = World(db, data_dir)
    w.cloud("sim-a", "sim", "site-a", "district", hosts=2, boot=0)
    w.apply(sim_doc("api", 3))
    w.converge(w.running("api", 3))
    yield w
    w.rec.close()


def rule(w: World, **body: Any) -> int:
    with w.db.session() as s, s.begin():
        return add_rule(s, RuleIn.model_validate(body), "tester").id


def alarms(w: World) -> list[Alarm]:
    with w.db.session() as s, s.begin():
        return list(s.scalars(select(Alarm).order_by(Alarm.id)))


def sample(ctl: MetricsCollector) -> None:
    ctl.run_once()
    time.sleep(0.2)
    ctl.run_once()


def test_a_metric_rule_fires_once_per_replica_and_resolves_when_the_replicas_go(world: World) -> None:
    ctl = MetricsCollector(world.db, world.fleet, lambda: True)
    hot = rule(world, name="busy", vdc="gz", metric="cpu", above=0.01)
    rule(world, name="never", vdc="gz", metric="cpu", above=100)
    rule(world, name="slow", vdc="gz", metric="cpu", above=0.01, **{"for": "1h"})
    rules = RuleEvaluator(world.db, lambda: dict(ctl.latest))
    sample(ctl)
    assert rules.run_once() == 3
    assert rules.run_once() == 0  # once per replica while it lasts
    fired = alarms(world)
    names = {r.name for r in world.rows("api")}
    assert {a.instance for a in fired} == names and {a.rule_id for a in fired} == {hot}
    assert all(a.kind == "rule:busy" and a.vdc == "gz" and a.app == "api" and "above 0.01" in a.message for a in fired)
    assert all(a.resolved_at is None and not a.silenced for a in fired)
    # the evaluator restarts (a new leader): the open alarms still resolve, once
    again = RuleEvaluator(world.db, lambda: dict(ctl.latest))
    assert again.run_once() == 0
    with world.db.session() as s, s.begin():
        delete_app(s, "api")
    world.converge(lambda: world.rows("api") == [])
    again.run_once()
    assert all(a.resolved_at is not None for a in alarms(world))
    with world.db.session() as s, s.begin():
        resolved = s.scalars(select(Event).where(Event.reason == "AlarmResolved")).all()
        assert len(resolved) == 3


def test_absence_events_and_silences(world: World) -> None:
    ctl = MetricsCollector(world.db, world.fleet, lambda: True)
    rules = RuleEvaluator(world.db, lambda: dict(ctl.latest))
    rules.run_once()  # starts watching events from here
    quiet = rule(world, name="quiet", vdc="gz", metric="cpu", absent=True, app="api")
    down = rule(world, name="lost", event="CloudDown", severity="critical")
    sample(ctl)
    assert rules.run_once() == 0  # every replica reports
    with world.db.session() as s, s.begin():
        add_silence(s, rule=None, vdc="gz", app="api", duration="1h", comment="maintenance", by="tester")
        inject_failure(s, world.fleet, "sim-a", None, recover=False)
    world.rec.run_once()  # the reconciler sees the cloud down: a CloudDown event
    sample(ctl)  # nothing answers: no samples
    fired = rules.run_once()
    by_rule = {}
    for a in alarms(world):
        by_rule.setdefault(a.rule_id, []).append(a)
    assert fired == len(by_rule[quiet]) + len(by_rule[down]) and len(by_rule[down]) == 1
    assert len(by_rule[quiet]) == 3 and all(a.silenced and a.notified for a in by_rule[quiet])  # recorded, not sent
    [lost] = by_rule[down]
    assert lost.severity == "critical" and "CloudDown" in lost.message and not lost.silenced and lost.vdc is None


class Receiver(BaseHTTPRequestHandler):
    got: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.got.append({"path": self.path, **json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return


def test_each_rule_notifies_its_own_webhook(world: World) -> None:
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.got = []
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        rule(world, name="mine", vdc="gz", metric="memory", above=1, webhook=f"{url}/dept")
        ctl = MetricsCollector(world.db, world.fleet, lambda: True)
        rules = RuleEvaluator(world.db, lambda: dict(ctl.latest))
        sample(ctl)
        assert rules.run_once() == 3
        notifier = Notifier(world.db, None, lambda: True)
        assert notifier.run_once() == 3
        assert notifier.run_once() == 0  # each alarm once
        assert sorted(g["instance"] for g in Receiver.got) == sorted(r.name for r in world.rows("api"))
        assert {g["path"] for g in Receiver.got} == {"/dept"} and all(g["kind"] == "rule:mine" for g in Receiver.got)
    finally:
        server.shutdown()
        server.server_close()
