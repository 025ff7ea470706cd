"""Volumes follow a replica's ordinal: created as intent with the replica, kept over a scale-down
for the next replica of that ordinal, never attached to two replicas during a roll, reclaimed
with the app (or kept, `retain`), counted against quota."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from shanzhi.domain.errors import InvalidInput
from shanzhi.services.apps import delete_app
from shanzhi.store.tables import App, VolumeRecord
from tests.controllers.test_reconciler import World, districts, sim_doc, world

__all__ = ["districts", "world"]


def vm_doc(name: str, replicas: int, reclaim: str = "delete", **changes: Any) -> dict[str, Any]:
    doc = sim_doc(name, replicas)
    comp = doc["spec"]["components"][0]
    comp["volumes"] = [{"name": "data", "size": "1Gi", "mountPath": "/data", "reclaimPolicy": reclaim}]
    comp.update(changes)
    return doc


def volumes(w: World, app: str | None = None) -> list[VolumeRecord]:
    with w.db.session() as s, s.begin():
        q = select(VolumeRecord).order_by(VolumeRecord.ordinal, VolumeRecord.id)
        if app is not None:
            q = q.where(VolumeRecord.app_name == app)
        return list(s.scalars(q))


def test_volumes_follow_ordinals_through_scaling_and_rolls(districts: World) -> None:
    districts.apply(vm_doc("db", 2))
    districts.converge(districts.running("db", 2))
    rows = {r.ordinal: r for r in districts.rows("db")}
    assert sorted(rows) == [0, 1]
    vols = volumes(districts)
    assert [(v.ordinal, v.state, v.instance) for v in vols] == [
        (0, "attached", rows[0].name),
        (1, "attached", rows[1].name),
    ]
    assert vols[0].key == "gz_db_api-0_data" and vols[0].cloud_id == rows[0].cloud_id
    with districts.db.session() as s, s.begin():
        app = s.scalar(select(App).where(App.name == "db"))
        assert app is not None and app.storage == 2 * 2**30  # the volumes count against quota
    # scale down: ordinal 1's volume stays, released, for the next replica of ordinal 1
    districts.apply(vm_doc("db", 1))
    districts.converge(districts.running("db", 1))
    assert [(v.ordinal, v.state, v.instance) for v in volumes(districts)][1] == (1, "released", None)
    districts.apply(vm_doc("db", 2))
    districts.converge(districts.running("db", 2))
    again = {r.ordinal: r for r in districts.rows("db")}
    attached = [v for v in volumes(districts) if v.ordinal == 1 and v.state == "attached"]
    assert len(attached) == 1 and attached[0].instance == again[1].name
    # a roll (new spec) never runs two replicas of one ordinal: its disk goes from old to new
    districts.apply(vm_doc("db", 2, restartedAt="2026-12-02T12:00:00+00:00"))
    worst = [0]

    def watch() -> None:
        live = [r.ordinal for r in districts.rows("db") if r.state != "terminating"]
        worst[0] = max(worst[0], max(live.count(o) for o in set(live)) if live else 0)

    districts.converge(
        lambda: (
            districts.running("db", 2)()
            and {r.name for r in districts.rows("db")}.isdisjoint({again[0].name, again[1].name})
        ),
        each=watch,
    )
    assert worst[0] == 1
    assert sorted(r.ordinal for r in districts.rows("db")) == [0, 1]


def test_deleting_the_app_reclaims_its_volumes_unless_retained(districts: World) -> None:
    districts.apply(vm_doc("db", 2))
    districts.apply(vm_doc("keep", 1, reclaim="retain"))
    districts.converge(lambda: districts.running("db", 2)() and districts.running("keep", 1)())
    assert len(volumes(districts)) == 3
    for name in ("db", "keep"):
        with districts.db.session() as s, s.begin():
            delete_app(s, name)
    districts.converge(lambda: not districts.rows() and len(volumes(districts)) == 1)
    (kept,) = volumes(districts)
    assert (kept.app_name, kept.state, kept.app_id, kept.instance) == ("keep", "released", None, None)
    assert districts.events("VolumeDeleted") == ["gz_db_api-0_data", "gz_db_api-1_data"]


def test_a_moved_replica_takes_its_volumes_cold_and_the_source_goes(districts: World) -> None:
    from shanzhi.services import plans

    districts.apply(vm_doc("db", 1))
    districts.converge(districts.running("db", 1))
    (old,) = districts.rows("db")
    assert old.cloud is not None
    target = next(c for c in ("d1", "d2", "d3") if c != old.cloud.name)
    with districts.db.session() as s, s.begin():
        plans.move(s, old.name, target)
    both = [0]

    def watch() -> None:
        live = [r for r in districts.rows("db") if r.state in ("starting", "running")]
        both[0] = max(both[0], len(live))

    districts.converge(
        lambda: (
            [(r.state, r.cloud.name if r.cloud else None) for r in districts.rows("db")] == [("running", target)]
            and len(volumes(districts)) == 1
        ),
        each=watch,
    )
    assert both[0] == 1  # cold: the old one stopped before the new one started
    (new,) = districts.rows("db")
    assert new.ordinal == old.ordinal and new.replaces is None
    (vol,) = volumes(districts)
    assert (vol.key, vol.state, vol.instance, vol.cloud_id) == ("gz_db_api-0_data", "attached", new.name, new.cloud_id)
    assert districts.events("Migrated") == [new.name]
    districts.cloud("c9", "sim", "site-c9", "city")
    with districts.db.session() as s, s.begin():
        from shanzhi.store.tables import Event

        msg = s.scalar(select(Event.message).where(Event.reason == "Migrated"))
        assert msg is not None and f"{old.cloud.name} -> {target}" in msg and "; down " in msg
        with pytest.raises(InvalidInput, match="already runs on"):
            plans.move(s, new.name, target)
        with pytest.raises(InvalidInput, match="placement rules out"):
            plans.move(s, new.name, "c9")


def test_a_replica_goes_back_to_the_cloud_that_holds_its_disk(districts: World) -> None:
    districts.apply(vm_doc("db", 2))
    districts.converge(districts.running("db", 2))
    home = {r.ordinal: r.cloud.name for r in districts.rows("db") if r.cloud}[1]
    districts.apply(vm_doc("db", 1))
    districts.converge(districts.running("db", 1))
    (before,) = [v for v in volumes(districts) if v.ordinal == 1]
    assert before.state == "released"
    # make its home the fullest cloud: least-allocated alone would now choose another one
    filler = sim_doc("filler", 3, clouds={"names": [home]})
    districts.apply(filler)
    districts.converge(districts.running("filler", 3))
    districts.apply(vm_doc("db", 2))
    districts.converge(districts.running("db", 2))
    back = {r.ordinal: r for r in districts.rows("db")}[1]
    assert back.cloud is not None and back.cloud.name == home
    (after,) = [v for v in volumes(districts) if v.ordinal == 1]
    assert (after.id, after.state, after.instance) == (before.id, "attached", back.name)  # the same disk
