"""The DR quorum's etcd members as workloads of their centres' clouds, with real etcd.

A centre with a `local` cloud runs its member there, as the platform's own uid, its data on a
volume of the cloud: losing the cloud loses the member, and once the cloud is back the member
is made again on its volume and rejoins as the same member. A centre without such a cloud runs
its member beside the server. The members are the platform's: never swept as orphans, and the
cloud that holds one cannot be removed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shanzhi.controllers.cleanup import sweep_orphans
from shanzhi.controllers.dr import DrController
from shanzhi.domain.errors import Conflict
from shanzhi.providers.base import PLATFORM_VDC
from shanzhi.providers.sandbox import Sandbox
from shanzhi.services import dr
from shanzhi.services.clouds import inject_failure, remove_cloud
from shanzhi.store import Database
from shanzhi.store.tables import DrEtcdMember, Event
from tests.controllers.test_dr_placement import doc
from tests.controllers.test_reconciler import World

ETCD = Path("/usr/bin/etcd")
CENTRES = (("prod", "gz-a", "127.0.1.1", "production"), ("same", "gz-b", "127.0.2.1", "same-city"),
           ("far", "sz", "127.0.3.1", "remote"))  # fmt: skip


@pytest.fixture
def quorum(db: Database, data_dir: Path) -> Iterator[tuple[World, DrController]]:
    if not ETCD.exists():
        if os.environ.get("SHANZHI_REQUIRE_DR") == "1":
            pytest.fail(f"DR engines required here: {ETCD} not installed")
        pytest.skip(f"{ETCD} not installed (apt-get install etcd-server)")
    w = World(db, data_dir)
    for cloud, site, address, _ in CENTRES:
        w.cloud(cloud, "local", site, "city", address=address)
    w.cloud("arb", "sim", "fs", "city", hosts=1, boot=0)  # the arbiter's centre runs no processes
    w.rec.run_once()  # the clouds' health and hosts
    with db.session() as s, s.begin():
        for _, site, _, role in (*CENTRES, ("", "fs", "", "arbiter")):
            dr.set_role(s, site, role)
    w.apply({**doc("two-sites-three-centres"), "spec": {**doc("two-sites-three-centres")["spec"], "components": [
        {"name": "db", "kind": "postgres"}]}})  # fmt: skip
    controller = DrController(db, w.fleet)
    yield w, controller
    controller.close()
    w.rec.close()


Health = dict[str, tuple[str | None, str]]  # member -> (its cloud, its health)


def health(w: World) -> Health:
    with w.db.session() as s, s.begin():
        return {m.name: (m.cloud.name if m.cloud else None, m.health) for m in s.scalars(select(DrEtcdMember))}


def until(controller: DrController, w: World, cond: Callable[[Health], object], what: str, timeout: float = 60) -> None:
    """Run the DR controller's passes until `cond` holds of the members' recorded health."""
    deadline = time.monotonic() + timeout
    while True:
        controller.run_once()
        if cond(health(w)):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: {health(w)}")
        time.sleep(0.5)


def events(w: World, reason: str) -> list[str]:
    with w.db.session() as s, s.begin():
        return [e.message for e in s.scalars(select(Event).where(Event.reason == reason).order_by(Event.id))]


def test_quorum_members_live_and_die_with_their_centres_clouds(quorum: tuple[World, DrController]) -> None:
    w, controller = quorum
    until(controller, w, lambda h: len(h) == 4 and all(x == "healthy" for _, x in h.values()), "all members healthy")
    assert {n: c for n, (c, _) in health(w).items()} == {
        "quorum-gz-a": "prod", "quorum-gz-b": "same", "quorum-fs": None, "remote-sz": "far",
    }  # fmt: skip
    prod = w.fleet.provider("prod", "local", {"address": "127.0.1.1"})
    seen = prod.describe("etcd.quorum-gz-a")
    assert seen["alive"] and "--listen-peer-urls" in seen["argv"]
    assert not any("etcd-root" in a or "password" in a for a in seen["argv"])
    box = Sandbox.for_data_dir(w.data_dir)
    if box.isolate:  # as root: the platform's own uid, never root's nor a tenant's
        assert seen["uid"] == box.uid_for(PLATFORM_VDC) not in (0, box.uid_for("gz"))
    main = controller._etcd["quorum"]
    ids = sorted(m["ID"] for m in main.call("cluster/member/list", {})["members"])
    assert len(ids) == 3

    # the platform's workloads: a sweep of everything the clouds list leaves them alone
    sweep_orphans(w.db, w.fleet, {"prod": {i.name: i for i in prod.list_instances()}})
    assert prod.describe("etcd.quorum-gz-a")["alive"] and not events(w, "OrphanRemoved")
    with w.db.session() as s, s.begin(), pytest.raises(Conflict, match="runs the DR quorum's etcd member quorum-gz-a"):
        remove_cloud(s, "prod", drain=True)

    # production's cloud lost: its member with it; the other two keep a quorum
    with w.db.session() as s, s.begin():
        inject_failure(s, w.fleet, "prod", None, recover=False)

    def production_down(h: Health) -> bool:
        return h["quorum-gz-a"][1].startswith("down:") and all(
            x == "healthy" for n, (_, x) in h.items() if n != "quorum-gz-a"
        )

    until(controller, w, production_down, "the production member down, the others healthy")
    until(controller, w, lambda _: events(w, "QuorumMemberDown"), "an event once it has been down for a while")
    assert events(w, "QuorumMemberDown") == ["etcd member quorum-gz-a: down: cloud prod has no healthy host"]
    assert not prod.describe("etcd.quorum-gz-a")["alive"]

    # back: made again on its volume, it rejoins as the same member (no new one in the cluster)
    with w.db.session() as s, s.begin():
        inject_failure(s, w.fleet, "prod", None, recover=True)
    until(controller, w, lambda h: h["quorum-gz-a"][1] == "healthy", "the production member back")
    assert events(w, "QuorumMemberHealthy") == ["etcd member quorum-gz-a: healthy"]
    assert sorted(m["ID"] for m in main.call("cluster/member/list", {})["members"]) == ids
    topo = {e["name"]: e for site in dr_topology(w) for e in site["etcd"]}
    assert topo["quorum-gz-a"]["cloud"] == "prod" and topo["quorum-gz-a"]["health"] == "healthy"
    assert topo["quorum-fs"]["cloud"] is None


def dr_topology(w: World) -> list[dict[str, object]]:
    with w.db.session() as s, s.begin():
        sites: list[dict[str, object]] = dr.topology(s)["sites"]
        return sites
