"""The fast scheduler, its failover and the optimiser: hard constraints always hold."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shanzhi.scheduler.fast import AppRequest, CloudInfo, FleetState, HostSpec, sainte_lague
from shanzhi.scheduler.optimize import apply_plan, plan

GiB = 2**30


def world(n_clouds: int = 6, hosts: int = 8, seed: int = 0) -> FleetState:
    rnd = random.Random(seed)
    clouds = [
        CloudInfo(f"c{i}", f"s{i // 2}", f"r{i % 3}", {"level": "city" if i % 2 else "district"})
        for i in range(n_clouds)
    ]
    hs = [
        HostSpec(c.name, rnd.choice([8000, 16000]), rnd.choice([32, 64]) * GiB, 20)
        for c in clouds
        for _ in range(hosts)
    ]
    return FleetState(clouds, hs, sample=4, seed=seed)


def test_residency_selector_and_spread() -> None:
    s = world()
    out = s.add_app(
        AppRequest(
            "a", 1000, GiB, 4, regions=frozenset({"r0", "r1"}), tags={"level": "city"}, spread_over="site", min_groups=2
        )
    )
    assert out.placed
    for h in out.hosts:
        c = s.clouds[int(s.host_cloud[h])]
        assert c.region in {"r0", "r1"} and c.tags["level"] == "city"
    assert len({s.group_of(h, "site") for h in out.hosts}) >= 2
    assert s.violations() == []


def test_refusals_change_nothing_and_say_why() -> None:
    s = world()
    before = s.used_cpu.copy()
    out = s.add_app(AppRequest("big", 64000, GiB, 1))
    assert not out.placed and "unschedulable" in out.reason
    out = s.add_app(AppRequest("nowhere", 1000, GiB, 1, regions=frozenset({"mars"})))
    assert not out.placed and "residency removed 6" in out.reason
    out = s.add_app(AppRequest("spread", 1000, GiB, 3, clouds=frozenset({"c0"}), spread_over="cloud", min_groups=2))
    assert not out.placed and "needs 2 groups, only 1 feasible" in out.reason
    assert (s.used_cpu == before).all() and not s.placement


def test_group_anti_affinity_across_apps() -> None:
    s = world(n_clouds=2, hosts=3)
    assert s.add_app(AppRequest("p", 1000, GiB, 3, group="g")).placed
    assert s.add_app(AppRequest("q", 1000, GiB, 3, group="g")).placed
    assert not set(s.placement["p"]) & set(s.placement["q"])
    assert not s.add_app(AppRequest("r", 1000, GiB, 1, group="g")).placed  # all 6 hosts taken by the group


def test_scaling_up_never_moves_a_replica() -> None:
    s = world()
    s.add_app(AppRequest("a", 1000, GiB, 3, spread_over="cloud", min_groups=2))
    before = list(s.placement["a"])
    s.add_app(AppRequest("a", 1000, GiB, 4, spread_over="cloud", min_groups=2))
    assert s.placement["a"][:3] == before and len(s.placement["a"]) == 4


def test_sainte_lague_is_house_monotone_and_proportional() -> None:
    w = [5.0, 3.0, 2.0]
    prev = [0, 0, 0]
    for n in range(1, 40):
        cur = sainte_lague(w, n)
        assert sum(cur) == n and all(c >= p for c, p in zip(cur, prev, strict=True))
        prev = cur
    assert sainte_lague(w, 10) == [5, 3, 2]
    assert sainte_lague([1.0, 0.0], 3) == [3, 0]


def test_failover_replaces_only_the_lost_replicas() -> None:
    s = world(n_clouds=6, hosts=8)
    for i in range(20):
        s.add_app(AppRequest(f"a{i}", 2000, 2 * GiB, 3, spread_over="cloud", min_groups=2, anti_affinity=True))
    lost_cloud = 2
    start, end = int(s.cloud_start[lost_cloud]), int(s.cloud_end[lost_cloud])
    untouched = {a: [h for h in hs if not start <= h < end] for a, hs in s.placement.items()}
    stats = s.fail_cloud("c2")
    assert stats["affected"] == stats["replaced"] + stats["unplaced"] and stats["affected"] > 0
    for a, hs in s.placement.items():
        assert hs[: len(untouched[a])] == untouched[a]  # survivors did not move
        assert all(not start <= h < end for h in hs)
    assert s.violations() == []


def test_optimiser_evacuates_a_cloud_without_breaking_anything() -> None:
    s = world(n_clouds=5, hosts=6, seed=2)
    for i in range(25):
        s.add_app(AppRequest(f"a{i}", 2000, 2 * GiB, 2, spread_over="cloud", min_groups=2, anti_affinity=i % 3 == 0))
    on_c1 = sum(1 for hs in s.placement.values() for h in hs if s.host_cloud[h] == 1)
    p = plan(s, evacuate=["c1"], time_limit=10)
    assert p.status in ("OPTIMAL", "FEASIBLE") and p.stuck == 0
    assert len(p.moves) == on_c1  # exactly the replicas that had to move
    apply_plan(s, p)
    s.cloud_healthy[1] = False
    s.host_healthy[int(s.cloud_start[1]) : int(s.cloud_end[1])] = False
    assert s.violations() == []


requests = st.builds(
    AppRequest,
    name=st.uuids().map(str),
    cpu=st.sampled_from([500, 1000, 2000, 4000, 8000]),
    memory=st.sampled_from([GiB, 2 * GiB, 8 * GiB]),
    replicas=st.integers(1, 5),
    regions=st.one_of(st.none(), st.sets(st.sampled_from(["r0", "r1", "r2"]), min_size=1).map(frozenset)),
    tags=st.sampled_from([{}, {"level": "city"}]),
    spread_over=st.sampled_from([None, "cloud", "site"]),
    min_groups=st.integers(1, 3),
    anti_affinity=st.booleans(),
    group=st.sampled_from([None, "g1", "g2"]),
    strategy=st.sampled_from(["least-allocated", "binpack"]),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(requests, min_size=1, max_size=40), st.integers(0, 5), st.integers(0, 3))
def test_no_placement_ever_violates_a_hard_constraint(reqs: list[AppRequest], fail: int, seed: int) -> None:
    s = world(seed=seed)
    for r in reqs:
        before = (s.used_cpu.copy(), {k: list(v) for k, v in s.placement.items()})
        out = s.add_app(r)
        if not out.placed:  # all or nothing
            assert (s.used_cpu == before[0]).all() and s.placement == before[1]
    assert s.violations() == []
    s.fail_cloud(f"c{fail}")
    assert s.violations() == []


@pytest.mark.parametrize("seed", [0, 1])
def test_optimiser_plans_keep_every_constraint(seed: int) -> None:
    s = world(n_clouds=4, hosts=5, seed=seed)
    rnd = random.Random(seed)
    for i in range(30):
        s.add_app(
            AppRequest(
                f"a{i}",
                rnd.choice([1000, 2000, 4000]),
                GiB,
                rnd.randint(1, 3),
                spread_over=rnd.choice([None, "cloud"]),
                min_groups=2,
                anti_affinity=rnd.random() < 0.3,
                group=rnd.choice([None, "g"]),
                strategy="binpack",
            )
        )
    p = plan(s, target_utilisation=0.5, time_limit=5)
    assert p.status in ("OPTIMAL", "FEASIBLE")
    apply_plan(s, p)
    assert s.violations() == []


def test_a_whole_site_fails_over_in_one_batch() -> None:
    s = world(n_clouds=6, hosts=8)
    for i in range(15):
        s.add_app(AppRequest(f"a{i}", 2000, 2 * GiB, 3, spread_over="cloud", min_groups=2))
    site_clouds = {i for i, c in enumerate(s.clouds) if c.site == "s1"}
    stats = s.fail_site("s1")
    assert stats["affected"] > 0 and stats["affected"] == stats["replaced"] + stats["unplaced"]
    assert all(int(s.host_cloud[h]) not in site_clouds for hs in s.placement.values() for h in hs)
    assert s.violations() == []


def test_explanations_carry_filters_seats_and_scores() -> None:
    s = world()
    out = s.add_app(AppRequest("a", 1000, GiB, 4, regions=frozenset({"r0"}), spread_over="cloud", min_groups=2))
    ex = out.explain
    assert ex["removed"]["residency"] == 4 and ex["eligible_clouds"] == 2
    assert sum(ex["seats"].values()) == 4 and set(ex["seats"]) == set(ex["clouds"])
    assert all(0 <= v <= 1 for v in ex["host_scores"].values())
