"""The metrics collector on both databases: a real process's use read off the machine, written
by the minute as minutes close, rolled up by the hour, pruned past retention; and the synthetic
use of a simulated cloud."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from shanzhi.controllers.metrics import MetricsCollector, NewRound
from shanzhi.domain.metrics import HOUR, MINUTE
from shanzhi.store import Database
from shanzhi.store.tables import MetricPoint
from tests.controllers.test_reconciler import World, app_doc, sim_doc

# a web server with a busy child: about one core of cpu, found as the server's descendant
BURN = ["sh", "-c", "python3 -c 'while 1: pass' & exec python3 -m http.server ${PORT} --bind 127.0.0.1"]
T0 = datetime(2026, 12, 5, 10, 0, 5, tzinfo=UTC)


@pytest.fixture
def world(db: Database, data_dir: Path) -> World:
    w = World(db, data_dir)
    yield w
    w.rec.close()


def points(db: Database, resolution: int) -> list[MetricPoint]:
    with db.session() as s, s.begin():
        return list(s.scalars(select(MetricPoint).where(MetricPoint.resolution == resolution).order_by(MetricPoint.at)))


def test_a_local_process_is_sampled_stored_by_the_minute_rolled_up_and_pruned(world: World) -> None:
    world.cloud("city-a", "local", "site-a", "city", hosts=1)
    doc = app_doc("burn", replicas=1, placement={"spread": {"over": "site", "minGroups": 1}})
    doc["spec"]["components"][0]["run"]["command"] = BURN
    doc["spec"]["components"][0]["resources"]["cpu"] = 0.5
    world.apply(doc)
    world.converge(world.running("burn", 1))
    name = world.rows("burn")[0].name
    ctl = MetricsCollector(world.db, world.fleet, lambda: True)
    assert ctl.run_once(T0) == 0  # a first reading: nothing to compare it with yet
    time.sleep(1.0)
    assert ctl.run_once(T0 + timedelta(seconds=20)) == 1
    latest = ctl.latest[name]
    assert latest.labels.app == "burn" and latest.labels.vdc == "gz" and latest.labels.cloud == "city-a"
    assert latest.point.cpu > 0.2  # the busy child counts: it is the server's descendant (or cgroup member)
    if world.fleet.provider("city-a", "local", {}).sandbox.cgroups is not None:
        assert latest.point.cpu < 0.6  # and its cgroup holds it to the half core it asked for
    assert latest.point.memory > 5 * 2**20
    assert latest.point.rx is None  # a process on the machine's own network has no counters of its own
    assert points(world.db, MINUTE) == []  # the minute has not closed
    time.sleep(0.5)
    ctl.run_once(T0 + timedelta(seconds=61))
    [minute] = points(world.db, MINUTE)
    assert (minute.instance, minute.component, minute.at, minute.samples) == (name, "web", T0.replace(second=0), 1)
    assert minute.cpu == pytest.approx(latest.point.cpu)
    ctl.flush(T0 + timedelta(hours=1, minutes=1))  # writes 10:01, rolls 10:00-11:00 into one hour point
    minutes = points(world.db, MINUTE)
    assert len(minutes) == 2
    [hour] = points(world.db, HOUR)
    assert hour.at == T0.replace(second=0) and hour.samples == 2
    assert hour.cpu == pytest.approx(sum(m.cpu for m in minutes) / 2)
    ctl.flush(T0 + timedelta(hours=1, minutes=2))
    assert len(points(world.db, HOUR)) == 1  # an hour is rolled once
    ctl.flush(T0 + timedelta(days=2))
    assert points(world.db, MINUTE) == []  # a day of minutes
    assert len(points(world.db, HOUR)) == 1  # 90 days of hours
    # a collector started afresh (a restart) does not roll the same hour again
    again = MetricsCollector(world.db, world.fleet, lambda: True)
    again.flush(T0 + timedelta(days=2, hours=1))
    assert len(points(world.db, HOUR)) == 1


def test_a_simulated_cloud_reports_steady_synthetic_use_and_a_failed_one_none(world: World) -> None:
    world.cloud("sim-a", "sim", "site-a", "district", hosts=2, boot=0)
    world.apply(sim_doc("api", 3))
    world.converge(world.running("api", 3))
    ctl = MetricsCollector(world.db, world.fleet, lambda: True)
    ctl.run_once(T0)
    time.sleep(0.3)
    assert ctl.run_once(T0 + timedelta(seconds=15)) == 3
    for item in ctl.latest.values():
        assert 0.04 < item.point.cpu < 0.7 and item.point.rx is not None and item.point.rx > 0
    world.fleet.provider("sim-a", "sim", {"hosts": 2, "boot": 0}).inject_failure()
    assert ctl.run_once(T0 + timedelta(seconds=30)) == 0  # the cloud does not answer: skipped


def test_readers_of_the_latest_samples_look_again_only_after_a_new_round() -> None:
    rounds = [0]
    fresh = NewRound(lambda: rounds[0])
    assert fresh() and not fresh() and not fresh()  # the first ask sees a round; then nothing new
    rounds[0] += 1
    assert fresh() and not fresh()
    rounds[0] += 3  # several rounds while nobody asked: one look
    assert fresh() and not fresh()
    always = NewRound(None)  # no collector to go by (tests driving it by hand): every time
    assert always() and always()
