"""The reconciler against real processes (local) and the simulated fleet, on both databases.

Each test drives passes by hand (`run_once`), so it can stop "mid-flight", throw the
reconciler away as a crash would, and check that a fresh one converges without duplicates.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from shanzhi.controllers import Fleet, Reconciler
from shanzhi.domain.quota import Quota
from shanzhi.domain.spec import parse_app
from shanzhi.providers import InstanceRequest
from shanzhi.services.apps import apply_app, delete_app
from shanzhi.services.clouds import add_cloud, inject_failure, remove_cloud
from shanzhi.services.vdcs import create_vdc
from shanzhi.store import Database
from shanzhi.store.tables import App, Cloud, Event, Instance

SERVE = ["python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"]


def app_doc(name: str = "hello", replicas: int = 4, tags: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    comp: dict[str, Any] = {
        "name": "web",
        "replicas": replicas,
        "resources": {"cpu": 0.1, "memory": "64Mi"},
        "run": {"command": SERVE, "env": extra.pop("env", {})},
        "ports": [{"name": "http", "port": 8080}],
        "health": {"http": {"path": "/", "port": "http"}, "periodSeconds": 0.2},
    }
    placement = {"clouds": {"tags": tags or {"level": "city"}}, "spread": {"over": "site", "minGroups": 2}}
    placement.update(extra.pop("placement", {}))
    return {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": name, "vdc": "gz"},
        "spec": {"components": [comp | extra], "placement": placement},
    }


def sim_doc(name: str, replicas: int, **placement: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": name, "vdc": "gz"},
        "spec": {
            "components": [
                {"name": "api", "replicas": replicas, "resources": {"cpu": 1, "memory": "1Gi"}, "image": "x"}
            ],
            "placement": {"clouds": {"tags": {"level": "district"}}, **placement},
        },
    }


class World:
    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.data_dir = data_dir
        self.fleet = Fleet(data_dir)
        self.rec = Reconciler(db, self.fleet, failover_grace=0)
        with db.session() as s, s.begin():
            create_vdc(s, "gz", Quota())

    def crash(self) -> None:
        """Throw the reconciler and its fleet away, as a killed process would."""
        self.rec.close()
        self.fleet = Fleet(self.data_dir)
        self.rec = Reconciler(self.db, self.fleet, failover_grace=0)

    def cloud(self, name: str, kind: str, site: str, level: str, **options: Any) -> None:
        with self.db.session() as s, s.begin():
            add_cloud(s, name, kind, site, "gz", {"level": level}, options)

    def apply(self, doc: dict[str, Any]) -> None:
        with self.db.session() as s, s.begin():
            apply_app(s, parse_app(doc))

    def rows(self, app: str | None = None) -> list[Instance]:
        with self.db.session() as s, s.begin():
            q = select(Instance).order_by(Instance.name)
            if app:
                q = q.join(App).where(App.name == app)
            return list(s.scalars(q))

    def converge(self, cond: Callable[[], bool], timeout: float = 30, each: Callable[[], None] | None = None) -> int:
        deadline = time.monotonic() + timeout
        passes = 0
        while True:
            self.rec.run_once()
            passes += 1
            if each:
                each()
            if cond():
                return passes
            assert time.monotonic() < deadline, (
                f"did not converge: {[(r.name, r.state, r.reason) for r in self.rows()]}"
            )
            time.sleep(0.1)

    def running(self, app: str, n: int) -> Callable[[], bool]:
        return lambda: [r.state for r in self.rows(app)] == ["running"] * n

    def processes(self, cloud: str) -> dict[str, str]:
        p = self.fleet.provider(cloud, "local", self._options(cloud))
        return {o.name: o.state for o in p.list_instances()}

    def _options(self, cloud: str) -> dict[str, Any]:
        with self.db.session() as s, s.begin():
            c = s.scalar(select(Cloud).where(Cloud.name == cloud))
            assert c is not None
            return dict(c.options)

    def events(self, reason: str) -> list[str]:
        with self.db.session() as s, s.begin():
            return [e.object_name for e in s.scalars(select(Event).where(Event.reason == reason))]


@pytest.fixture
def world(db: Database, data_dir: Path) -> World:
    w = World(db, data_dir)
    yield w
    w.rec.close()


@pytest.fixture
def local(world: World) -> World:
    world.cloud("city-a", "local", "site-a", "city", hosts=2)
    world.cloud("city-b", "local", "site-b", "city", hosts=2)
    return world


def live_pids(w: World) -> dict[str, int]:
    out = {}
    for cloud in ("city-a", "city-b"):
        root = w.data_dir / "clouds" / cloud / "instances"
        for d in root.glob("*/state.json") if root.exists() else []:
            import json

            st = json.loads(d.read_text())
            out[st["name"]] = st["pid"]
    return out


def test_converges_spread_over_sites_and_serves(local: World) -> None:
    local.apply(app_doc())
    local.converge(local.running("hello", 4))
    rows = local.rows("hello")
    assert sorted(r.cloud.name for r in rows if r.cloud) == ["city-a", "city-a", "city-b", "city-b"]
    for r in rows:
        assert r.endpoint and httpx.get(f"http://{r.endpoint}/", timeout=2).status_code == 200
        assert "placed on" in r.reason or "health check passing" in r.reason
    assert len(local.processes("city-a")) == len(local.processes("city-b")) == 2
    assert "InstanceReady" in {e for e in ("InstanceReady",) if local.events(e)}


def test_more_passes_change_nothing(local: World) -> None:
    local.apply(app_doc())
    local.converge(local.running("hello", 4))
    before = [(r.name, r.endpoint, r.restarts) for r in local.rows()]
    pids = live_pids(local)
    for _ in range(3):
        local.rec.run_once()
    assert [(r.name, r.endpoint, r.restarts) for r in local.rows()] == before
    assert live_pids(local) == pids


def test_a_crash_after_writing_intent_creates_each_instance_exactly_once(local: World) -> None:
    local.apply(app_doc())
    # Do what a pass does up to its commit (rows scheduled), then "crash" before any provider call.
    local.rec._sync_clouds()
    with local.db.session() as s, s.begin():
        app_id = s.scalar(select(App.id))
    assert app_id is not None
    local.rec._execute = lambda actions: None  # type: ignore[method-assign]
    local.rec._reconcile_app(app_id)
    intents = [r.name for r in local.rows()]
    assert len(intents) == 4 and all(r.state == "scheduled" for r in local.rows())
    assert live_pids(local) == {}
    local.crash()
    local.converge(local.running("hello", 4))
    assert [r.name for r in local.rows()] == intents
    assert len(local.processes("city-a")) + len(local.processes("city-b")) == 4


def test_a_crash_after_the_provider_call_adopts_the_process(local: World) -> None:
    local.apply(app_doc(replicas=2))
    local.converge(lambda: all(r.state == "running" for r in local.rows()) and len(local.rows()) == 2)
    # An instance the provider started but whose row still says "scheduled" (crash before the update).
    row = local.rows()[0]
    with local.db.session() as s, s.begin():
        r = s.get(Instance, row.id)
        assert r is not None
        r.state = "scheduled"
    pids = live_pids(local)
    local.crash()
    local.converge(local.running("hello", 2))
    assert live_pids(local) == pids  # adopted, not restarted


def test_orphans_are_removed(local: World) -> None:
    local.apply(app_doc(replicas=2))
    local.converge(local.running("hello", 2))
    p = local.fleet.provider("city-a", "local", local._options("city-a"))
    p.create_instance(
        InstanceRequest(
            name="stray-1", app="x", component="y", vdc="gz", host="node-0", cpu=1, memory=2**26, command=tuple(SERVE)
        )
    )
    local.converge(lambda: "stray-1" not in local.processes("city-a"))
    assert local.events("OrphanRemoved") == ["stray-1"]
    assert len(local.rows()) == 2


def test_a_dead_process_is_restarted_in_place(local: World) -> None:
    local.apply(app_doc(replicas=2))
    local.converge(local.running("hello", 2))
    victim = local.rows()[0]
    os.kill(live_pids(local)[victim.name], signal.SIGKILL)
    local.converge(lambda: any(r.restarts == 1 for r in local.rows()) and local.running("hello", 2)())
    again = {r.name: r for r in local.rows()}
    assert set(again) == {r.name for r in local.rows()} and victim.name in again
    assert again[victim.name].restarts == 1
    assert victim.name in local.events("InstanceExited")


def test_scale_down_and_up(local: World) -> None:
    local.apply(app_doc(replicas=4))
    local.converge(local.running("hello", 4))
    local.apply(app_doc(replicas=2))
    local.converge(local.running("hello", 2))
    assert len(live_pids(local)) == 2
    local.apply(app_doc(replicas=3))
    local.converge(local.running("hello", 3))
    assert len(live_pids(local)) == 3


def test_rolling_update_never_drops_below_desired(local: World) -> None:
    local.apply(app_doc(replicas=3))
    local.converge(local.running("hello", 3))
    old = {r.name for r in local.rows()}
    local.apply(app_doc(replicas=3, env={"VERSION": "2"}))
    lowest = [3]

    def watch() -> None:
        lowest[0] = min(lowest[0], sum(1 for r in local.rows() if r.state == "running"))

    local.converge(lambda: local.running("hello", 3)() and not ({r.name for r in local.rows()} & old), each=watch)
    assert lowest[0] >= 3
    assert len(live_pids(local)) == 3
    hashes = {r.spec_hash for r in local.rows()}
    assert len(hashes) == 1


def test_delete_app_stops_everything(local: World) -> None:
    local.apply(app_doc(replicas=2))
    local.converge(local.running("hello", 2))
    with local.db.session() as s, s.begin():
        delete_app(s, "hello")

    def app_gone() -> bool:
        with local.db.session() as s, s.begin():
            return s.scalar(select(App)) is None

    local.converge(lambda: not local.rows() and not live_pids(local) and app_gone())
    assert local.events("AppDeleted") == ["hello"]


def test_unschedulable_replicas_say_why_and_place_when_possible(local: World) -> None:
    local.apply(app_doc(replicas=2, tags={"level": "district"}))
    local.converge(lambda: len(local.rows()) == 2)
    for r in local.rows():
        assert r.state == "pending" and r.cloud is None
        assert r.explain["excluded"]["city-a"] == "tag level=district wanted, cloud has level=city"
        # the filter that emptied the field leads (not the spread it made impossible)
        assert r.placement.startswith("unschedulable: no cloud fits: tag level=district wanted, cloud has level=city")
    assert local.events("FailedScheduling") == ["hello/web"]  # once per component, not per replica
    local.rec.run_once()
    assert local.events("FailedScheduling") == ["hello/web"]  # not repeated while nothing changes
    local.cloud("sim-x", "sim", "site-x", "district", boot=0)
    local.cloud("sim-y", "sim", "site-y", "district", boot=0)
    local.converge(local.running("hello", 2))


@pytest.fixture
def districts(world: World) -> World:
    for name in ("d1", "d2", "d3"):
        world.cloud(name, "sim", f"site-{name}", "district", hosts=4, boot=0)
    return world


def test_sim_host_failure_replaces_its_instances(districts: World) -> None:
    districts.apply(sim_doc("permits", 6, spread={"over": "cloud", "minGroups": 3}, antiAffinity={"over": "host"}))
    districts.converge(districts.running("permits", 6))
    victim = districts.rows()[0]
    with districts.db.session() as s, s.begin():
        inject_failure(s, districts.fleet, victim.cloud.name, victim.host, recover=False)  # type: ignore[union-attr]
    districts.converge(
        lambda: districts.running("permits", 6)() and victim.name not in {r.name for r in districts.rows()}
    )
    hosts = [(r.cloud.name, r.host) for r in districts.rows() if r.cloud]
    assert (victim.cloud.name, victim.host) not in hosts  # type: ignore[union-attr]
    assert len(set(hosts)) == 6  # anti-affinity kept


def test_sim_cloud_failure_fails_over_and_cleans_up_on_recovery(districts: World) -> None:
    districts.apply(sim_doc("permits", 4, spread={"over": "cloud", "minGroups": 2}))
    districts.converge(districts.running("permits", 4))
    by_cloud = {r.cloud.name for r in districts.rows() if r.cloud}
    lost_cloud = sorted(by_cloud)[0]
    lost = {r.name for r in districts.rows() if r.cloud and r.cloud.name == lost_cloud}
    with districts.db.session() as s, s.begin():
        inject_failure(s, districts.fleet, lost_cloud, None, recover=False)

    def failed_over() -> bool:
        rows = districts.rows()
        healthy = [r for r in rows if r.state == "running"]
        return len(healthy) == 4 and all(r.cloud and r.cloud.name != lost_cloud for r in healthy)

    districts.converge(failed_over)
    assert {r.name for r in districts.rows() if r.state == "lost"} == lost
    assert set(districts.events("InstanceLost")) == lost
    with districts.db.session() as s, s.begin():
        inject_failure(s, districts.fleet, lost_cloud, None, recover=True)
    districts.converge(lambda: not any(r.state in ("lost", "terminating") for r in districts.rows()))
    p = districts.fleet.provider(
        lost_cloud, "sim", {"hosts": 4, "boot": 0, "cpu": 16000, "memory": 64 * 2**30, "instances": 110}
    )
    assert not ({o.name for o in p.list_instances()} & lost)
    assert len(districts.rows()) == 4


def test_a_lost_replica_nothing_replaced_starts_again_under_its_own_name_when_its_cloud_is_back(world: World) -> None:
    """The only cloud fails: nothing can take the replicas' places, so when it is back they start
    again as themselves (a database member stays the member its cluster knows), not as new ones."""
    world.cloud("only", "sim", "site-a", "district", hosts=2, boot=0)
    world.apply(sim_doc("permits", 2))
    world.converge(world.running("permits", 2))
    names = {r.name for r in world.rows()}
    with world.db.session() as s, s.begin():
        inject_failure(s, world.fleet, "only", None, recover=False)
    world.converge(lambda: {r.state for r in world.rows() if r.name in names} == {"lost"})
    assert all(r.cloud is None for r in world.rows() if r.name not in names)  # nowhere else to go
    with world.db.session() as s, s.begin():
        inject_failure(s, world.fleet, "only", None, recover=True)
    world.converge(world.running("permits", 2))
    assert {r.name for r in world.rows()} == names
    assert set(world.events("InstanceRecovered")) == names  # the replicas asked for meanwhile were never placed


def test_draining_a_cloud_moves_its_instances_then_removes_it(districts: World) -> None:
    districts.apply(sim_doc("permits", 4, spread={"over": "cloud", "minGroups": 2}))
    districts.converge(districts.running("permits", 4))
    target = next(r.cloud.name for r in districts.rows() if r.cloud)
    with districts.db.session() as s, s.begin():
        assert remove_cloud(s, target, drain=True) == "draining"

    def gone() -> bool:
        with districts.db.session() as s, s.begin():
            return s.scalar(select(Cloud).where(Cloud.name == target)) is None

    districts.converge(lambda: gone() and districts.running("permits", 4)())
    assert all(r.cloud and r.cloud.name != target for r in districts.rows())
    assert districts.events("CloudRemoved") == [target]


def test_weights_in_the_spec_divide_replicas_and_scaling_moves_nothing(districts: World) -> None:
    doc = sim_doc("weighted", 8, weights={"d1": 3, "d2": 1})
    districts.apply(doc)
    districts.converge(districts.running("weighted", 8))
    clouds = sorted(r.cloud.name for r in districts.rows() if r.cloud)
    assert clouds == ["d1"] * 6 + ["d2"] * 2
    assert all(r.explain.get("engine") == "fleet" for r in districts.rows())
    before = {r.name: (r.cloud.name if r.cloud else None, r.host) for r in districts.rows()}
    districts.apply(sim_doc("weighted", 9, weights={"d1": 3, "d2": 1}))
    districts.converge(districts.running("weighted", 9))
    after = {r.name: (r.cloud.name if r.cloud else None, r.host) for r in districts.rows()}
    assert {k: v for k, v in after.items() if k in before} == before  # n -> n+1 moved nothing


def test_settled_apps_are_left_alone_until_something_about_them_changes(districts: World) -> None:
    w = districts
    w.rec.close()
    w.rec = Reconciler(w.db, w.fleet, failover_grace=0, full_resync=3600)
    w.apply(sim_doc("permits", 3))
    w.apply(sim_doc("licences", 2))
    w.converge(lambda: w.running("permits", 3)() and w.running("licences", 2)())
    w.rec.run_once()
    assert w.rec.skipped == 2  # both settled, nothing changed: neither is loaded
    # a change to one app's spec: that app alone is reconciled
    w.apply(sim_doc("licences", 3))
    w.rec.run_once()
    assert w.rec.skipped == 1
    w.converge(w.running("licences", 3))
    # an instance gone behind the platform's back is seen in the next pass
    victim = w.rows("permits")[0]
    assert victim.cloud is not None
    w.fleet.provider(victim.cloud.name, "sim", w._options(victim.cloud.name)).delete_instance(victim.name)
    w.rec.run_once()
    assert w.rec.skipped == 1 and victim.name in w.events("InstanceVanished")
    w.converge(w.running("permits", 3))
    # a failed host: its app is reconciled, its replica replaced
    other = w.rows("licences")[0]
    with w.db.session() as s, s.begin():
        inject_failure(s, w.fleet, other.cloud.name, other.host, recover=False)  # type: ignore[union-attr]
    w.converge(lambda: w.running("licences", 3)() and other.name not in {r.name for r in w.rows("licences")})
    w.rec.run_once()
    w.rec.run_once()
    assert w.rec.skipped == 2
