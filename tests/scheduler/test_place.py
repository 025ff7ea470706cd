from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from shanzhi.domain.spec import AntiAffinity, CloudSelector, Placement, Spread
from shanzhi.scheduler import HostState, Replica, Request, place

GiB = 2**30


def hosts(spec: dict[str, tuple[str, dict[str, str], int]], cpu: int = 4000, memory: int = 8 * GiB) -> list[HostState]:
    """{cloud: (site, tags, n_hosts)} -> host states."""
    out = []
    for cloud, (site, tags, n) in spec.items():
        for i in range(n):
            out.append(HostState(cloud, site, "gz", f"h{i}", cpu, memory, 10, cloud_tags=tags))
    return out


def req(placement: Placement, cpu: int = 500, memory: int = GiB, total: int = 4, runtime: str = "process") -> Request:
    return Request(cpu=cpu, memory=memory, runtime=runtime, placement=placement, total_replicas=total)


WORLD = {
    "city-a": ("site-1", {"level": "city"}, 2),
    "city-b": ("site-2", {"level": "city"}, 2),
    "dist-x": ("site-3", {"level": "district"}, 2),
}


def test_tags_select_clouds_and_the_reason_names_the_tag() -> None:
    hs = hosts(WORLD)
    decisions = place(hs, req(Placement(clouds=CloudSelector(tags={"level": "city"}))), 4)
    assert all(d.cloud in {"city-a", "city-b"} for d in decisions)
    assert decisions[0].explain["excluded"]["dist-x"] == "tag level=city wanted, cloud has level=district"


def test_spread_over_site_reaches_min_groups() -> None:
    hs = hosts(WORLD)
    p = Placement(clouds=CloudSelector(tags={"level": "city"}), spread=Spread(over="site", minGroups=2))
    decisions = place(hs, req(p), 4)
    assert Counter(d.site for d in decisions) == {"site-1": 2, "site-2": 2}


def test_spread_that_cannot_be_met_is_refused_with_a_reason() -> None:
    hs = hosts(WORLD)
    p = Placement(clouds=CloudSelector(names=["city-a"]), spread=Spread(over="site", minGroups=2))
    decisions = place(hs, req(p), 2)
    assert not any(d.placed for d in decisions)
    assert "spread over site needs 2 groups, only 1 feasible" in decisions[0].reason
    assert all(h.used_instances == 0 for h in hs)


def test_spread_counts_existing_replicas() -> None:
    hs = hosts(WORLD)
    p = Placement(clouds=CloudSelector(tags={"level": "city"}), spread=Spread(over="site", minGroups=2))
    r = Request(500, GiB, "process", p, 2, existing=(Replica("city-a", "site-1", "h0"),))
    (d,) = place(hs, r, 1)
    assert d.site == "site-2"


def test_anti_affinity_puts_replicas_on_distinct_hosts_and_stops_when_out() -> None:
    hs = hosts({"c": ("s", {}, 3)})
    decisions = place(hs, req(Placement(antiAffinity=AntiAffinity(over="host")), total=4), 4)
    placed = [d for d in decisions if d.placed]
    assert len({d.host for d in placed}) == len(placed) == 3
    assert "anti-affinity" in decisions[3].explain["excluded"]["c"]


def test_capacity_is_never_exceeded() -> None:
    hs = hosts({"c": ("s", {}, 1)}, cpu=1000)
    decisions = place(hs, req(Placement(), cpu=400), 3)
    assert [d.placed for d in decisions] == [True, True, False]
    assert "no host with 400m cpu" in decisions[2].explain["excluded"]["c"]
    assert hs[0].used_cpu == 800


def test_binpack_fills_one_host_least_allocated_spreads() -> None:
    pack = place(hosts({"c": ("s", {}, 3)}), req(Placement(strategy="binpack")), 3)
    assert len({d.host for d in pack}) == 1
    spread = place(hosts({"c": ("s", {}, 3)}), req(Placement(strategy="least-allocated")), 3)
    assert len({d.host for d in spread}) == 3


def test_unhealthy_and_wrong_runtime_are_filtered() -> None:
    hs = hosts({"a": ("s1", {}, 1), "b": ("s2", {}, 1)})
    hs[0].healthy = False
    hs[1].runtimes = frozenset({"process"})
    (d,) = place(hs, req(Placement(), runtime="vm"), 1)
    assert not d.placed
    assert d.explain["excluded"] == {
        "a": "unhealthy",
        "b": "cannot run a vm component (supports process)",
    }


def test_decisions_are_deterministic() -> None:
    p = Placement(spread=Spread(over="cloud", minGroups=2))
    a = place(hosts(WORLD), req(p), 5)
    b = place(hosts(WORLD), req(p), 5)
    assert [(d.cloud, d.host) for d in a] == [(d.cloud, d.host) for d in b]


clouds = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.tuples(st.sampled_from(["s1", "s2", "s3"]), st.sampled_from([{}, {"level": "city"}]), st.integers(1, 4)),
    min_size=1,
)


@settings(max_examples=200, deadline=None)
@given(
    clouds,
    st.integers(100, 3000),
    st.integers(1, 12),
    st.sampled_from([None, "site", "cloud"]),
    st.integers(1, 3),
    st.sampled_from([None, "host", "cloud", "site"]),
    st.sampled_from(["spread", "least-allocated", "binpack"]),
    st.booleans(),
)
def test_no_placement_ever_violates_a_hard_constraint(
    world: dict[str, tuple[str, dict[str, str], int]],
    cpu: int,
    n: int,
    spread: str | None,
    min_groups: int,
    anti: str | None,
    strategy: str,
    city_only: bool,
) -> None:
    hs = hosts(world, cpu=4000, memory=16 * GiB)
    p = Placement(
        clouds=CloudSelector(tags={"level": "city"} if city_only else {}),
        spread=Spread(over=spread, minGroups=min_groups) if spread else None,  # type: ignore[arg-type]
        antiAffinity=AntiAffinity(over=anti) if anti else None,  # type: ignore[arg-type]
        strategy=strategy,  # type: ignore[arg-type]
    )
    decisions = place(hs, req(p, cpu=cpu, memory=GiB, total=n), n)
    placed = [d for d in decisions if d.placed]
    by_host = {(h.cloud, h.host): h for h in hs}
    for h in hs:  # capacity
        assert h.used_cpu <= h.cpu and h.used_memory <= h.memory and h.used_instances <= h.max_instances
    for d in placed:  # selector
        assert not city_only or world[d.cloud or ""][1].get("level") == "city"
        assert (d.cloud, d.host) in by_host
    if anti:  # anti-affinity
        key = {"host": lambda d: (d.cloud, d.host), "cloud": lambda d: d.cloud, "site": lambda d: d.site}[anti]
        assert len({key(d) for d in placed}) == len(placed)
    if spread and placed:  # spread: either enough groups or nothing placed at all... per step
        groups = {d.site if spread == "site" else d.cloud for d in placed}
        assert len(groups) >= min(min_groups, n, len(placed))


def test_data_residency_keeps_replicas_in_allowed_regions() -> None:
    hs = [
        HostState("gz-1", "s1", "gz", "h0", 4000, 8 * GiB, 10),
        HostState("sz-1", "s2", "sz", "h0", 4000, 8 * GiB, 10),
    ]
    decisions = place(hs, req(Placement(regions=["sz"])), 3)
    assert {d.cloud for d in decisions} == {"sz-1"}
    assert "outside the allowed regions ['sz'] (data residency)" in decisions[0].explain["excluded"]["gz-1"]
    blocked = place(hs, req(Placement(regions=["hk"])), 1)
    assert not blocked[0].placed
