"""Plans over the live store, applied as migrations that never lose service."""

from __future__ import annotations

import pytest

from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.services import plans
from tests.controllers.test_reconciler import World, districts, sim_doc, world

__all__ = ["districts", "world"]  # fixtures shared with the reconciler tests


def test_evacuation_plan_moves_every_replica_without_loss_of_service(districts: World) -> None:
    districts.apply(sim_doc("permits", 6, spread={"over": "cloud", "minGroups": 2}, antiAffinity={"over": "host"}))
    districts.converge(districts.running("permits", 6))
    target = "d1"
    on_target = {r.name for r in districts.rows() if r.cloud and r.cloud.name == target}
    assert on_target
    with districts.db.session() as s, s.begin():
        p = plans.make_plan(s, "evacuate", target, time_limit=5)
        plan_id = p.id
        assert p.status == "proposed" and {m["instance"] for m in p.moves["moves"]} == on_target
        assert all(m["to"]["cloud"] != target for m in p.moves["moves"])
    assert len(districts.rows()) == 6  # proposing changes nothing
    with districts.db.session() as s, s.begin():
        plans.apply(s, plan_id)
    lowest = [6]

    def watch() -> None:
        lowest[0] = min(lowest[0], sum(1 for r in districts.rows() if r.state == "running"))

    def done() -> bool:
        rows = districts.rows()
        return len(rows) == 6 and all(r.state == "running" and r.cloud and r.cloud.name != target for r in rows)

    districts.converge(done, each=watch)
    assert lowest[0] >= 6  # start new, wait healthy, stop old: never fewer than desired
    assert not {r.name for r in districts.rows()} & on_target
    hosts = [(r.cloud.name, r.host) for r in districts.rows() if r.cloud]
    assert len(set(hosts)) == 6  # anti-affinity kept
    with districts.db.session() as s, s.begin(), pytest.raises(Conflict, match="already applied"):
        plans.apply(s, plan_id)


def test_rebalance_plan_and_bad_requests(districts: World) -> None:
    districts.apply(sim_doc("permits", 4, spread={"over": "cloud", "minGroups": 2}, strategy="binpack"))
    districts.converge(districts.running("permits", 4))
    with districts.db.session() as s, s.begin():
        p = plans.make_plan(s, "rebalance", target=0.01, time_limit=5)
        assert p.summary["solver"] in ("OPTIMAL", "FEASIBLE")
        for bad in (
            lambda: plans.make_plan(s, "shuffle"),
            lambda: plans.make_plan(s, "evacuate"),
            lambda: plans.make_plan(s, "rebalance", target=1.5),
        ):
            with pytest.raises(InvalidInput):
                bad()
        with pytest.raises(NotFound):
            plans.make_plan(s, "evacuate", "nowhere")
        with pytest.raises(NotFound):
            plans.get_plan(s, 999)


def test_an_evacuation_names_its_stranded_replicas_and_fences_the_cloud_until_dropped(districts: World) -> None:
    from sqlalchemy import select

    from shanzhi.store.tables import Cloud

    only_d1 = {"clouds": {"tags": {"level": "district"}, "names": ["d1"]}}
    districts.apply(sim_doc("permits", 1, **only_d1))  # it may run on d1 only: nowhere to go
    districts.converge(districts.running("permits", 1))
    (stuck,) = [r.name for r in districts.rows()]
    with districts.db.session() as s, s.begin():
        p = plans.make_plan(s, "evacuate", "d1", time_limit=5)
        plan_id = p.id
        assert p.summary["stranded"] == 1 and p.summary["stranded_instances"] == [stuck]
        assert s.scalar(select(Cloud.fenced_by_plan).where(Cloud.name == "d1")) == plan_id
    # while the plan is reviewed, nothing new lands on d1
    districts.apply(sim_doc("later", 1, **only_d1))
    districts.converge(lambda: len(districts.rows("later")) == 1)
    (waiting,) = districts.rows("later")
    assert waiting.cloud is None
    assert waiting.explain["excluded"]["d1"] == f"fenced by evacuation plan {plan_id} (until it is applied or dropped)"
    with districts.db.session() as s, s.begin():
        assert plans.drop(s, plan_id).status == "dropped"
        with pytest.raises(Conflict, match="already dropped"):
            plans.apply(s, plan_id)
    districts.converge(districts.running("later", 1))  # d1 takes it now
    with districts.db.session() as s, s.begin():
        assert s.scalar(select(Cloud.fenced_by_plan).where(Cloud.name == "d1")) is None
