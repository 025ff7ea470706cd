"""The platform's placement path: engine first, exact scheduler on refusal, one shared usage."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shanzhi.domain.spec import AntiAffinity, CloudSelector, Placement, Spread
from shanzhi.scheduler.core import HostState, Request
from shanzhi.scheduler.engine import Engine

GiB = 2**30


def hosts() -> list[HostState]:
    out = []
    for c, site in (("a", "s1"), ("b", "s2"), ("c", "s3")):
        for i in range(3):
            out.append(HostState(c, site, "gz", f"h{i}", 4000, 8 * GiB, 5, cloud_tags={"level": "city"}))
    return out


def test_weights_divide_replicas_and_reasons_name_the_engine() -> None:
    e = Engine(hosts())
    p = Placement(weights={"a": 3.0, "b": 1.0})
    ds = e.decide("k", Request(100, GiB // 8, "process", p, 8), 8)
    assert sorted(d.cloud for d in ds) == ["a"] * 6 + ["b"] * 2
    assert all(d.explain["engine"] == "fleet" and d.reason.startswith("placed on") for d in ds)


def test_a_refusal_falls_back_to_the_explained_scheduler() -> None:
    e = Engine(hosts())
    p = Placement(clouds=CloudSelector(tags={"level": "district"}))
    (d,) = e.decide("k", Request(100, GiB, "process", p, 1), 1)
    assert not d.placed and d.explain["excluded"]["a"] == "tag level=district wanted, cloud has level=city"


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([500, 1000, 2000]),
            st.integers(1, 4),
            st.sampled_from([None, "site", "cloud"]),
            st.sampled_from([None, "host", "cloud", "site"]),
        ),
        max_size=25,
    )
)
def test_engine_and_exact_scheduler_share_usage_and_never_overcommit(
    asks: list[tuple[int, int, str | None, str | None]],
) -> None:
    hs = hosts()
    e = Engine(hs)
    for i, (cpu, n, spread, anti) in enumerate(asks):
        p = Placement(
            spread=Spread(over=spread, minGroups=2) if spread else None,  # type: ignore[arg-type]
            antiAffinity=AntiAffinity(over=anti) if anti else None,  # type: ignore[arg-type]
        )
        e.decide(f"k{i}", Request(cpu, GiB, "process", p, n), n)
    for i, h in enumerate(hs):
        assert h.used_cpu <= h.cpu and h.used_instances <= h.max_instances
        assert (h.used_cpu, h.used_memory, h.used_instances) == (
            int(e.state.used_cpu[i]),
            int(e.state.used_mem[i]),
            int(e.state.used_inst[i]),
        )
