import pytest
from hypothesis import given
from hypothesis import strategies as st

from shanzhi.domain.errors import InvalidInput, QuotaExceeded
from shanzhi.domain.quota import (
    Quota,
    Usage,
    ancestors,
    check_child_quota,
    check_descendants_fit,
    check_usage,
    effective_limits,
    parse_quota,
    rollup,
)


def test_parse_quota() -> None:
    q = parse_quota("cpu=2,memory=4Gi,instances=10")
    assert q == Quota(cpu=2000, memory=4 * 2**30, instances=10)
    assert parse_quota("") == Quota()


@pytest.mark.parametrize(
    ("text", "field"),
    [("gpu=1", "quota.gpu"), ("cpu=x", "quota.cpu"), ("cpu", "quota"), ("instances=-1", "quota.instances")],
)
def test_bad_quota_names_the_key(text: str, field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_quota(text)
    assert info.value.field == field


def test_ancestors() -> None:
    assert ancestors("gz/health/it") == ["gz", "gz/health"]
    assert ancestors("gz") == []


def test_child_may_not_exceed_the_nearest_limit_above() -> None:
    quotas = {"gz": Quota(cpu=8000), "gz/health": Quota(memory=2**30)}
    check_child_quota("gz/health/it", Quota(cpu=8000, memory=2**30), quotas)
    with pytest.raises(InvalidInput, match=r"set by VDC gz$"):
        check_child_quota("gz/health/it", Quota(cpu=9000), quotas)
    with pytest.raises(InvalidInput, match="set by VDC gz/health"):
        check_child_quota("gz/health/it", Quota(memory=2**31), quotas)


def test_lowering_below_a_child_is_refused() -> None:
    with pytest.raises(InvalidInput, match="already granted to VDC gz/a"):
        check_descendants_fit("gz", Quota(cpu=1000), {"gz/a": Quota(cpu=2000)})


def test_usage_rolls_up_and_any_ancestor_can_refuse() -> None:
    quotas = {"gz": Quota(instances=5), "gz/a": Quota(instances=10)}
    usage = {"gz/a": Usage(instances=2), "gz/b": Usage(instances=2)}
    assert rollup("gz", usage) == Usage(instances=4)
    check_usage("gz/a", Usage(instances=1), quotas, usage)
    with pytest.raises(QuotaExceeded) as info:
        check_usage("gz/a", Usage(instances=2), quotas, usage)
    assert (info.value.vdc, info.value.resource, info.value.limit, info.value.requested) == ("gz", "instances", 5, 6)


def test_a_shrinking_update_passes_even_when_already_over() -> None:
    check_usage("gz", Usage(cpu=-1000), {"gz": Quota(cpu=1)}, {"gz": Usage(cpu=5000)})


paths = st.sampled_from(["r", "r/a", "r/b", "r/a/x", "r/a/y", "r/b/z", "r/a/x/deep"])
limits = st.one_of(st.none(), st.integers(0, 50))


@given(
    st.dictionaries(paths, st.builds(Quota, cpu=limits, memory=limits, instances=limits)),
    paths,
    st.builds(Quota, cpu=limits, memory=limits, instances=limits),
)
def test_accepted_child_quota_never_exceeds_any_ancestor(quotas: dict[str, Quota], path: str, q: Quota) -> None:
    try:
        check_child_quota(path, q, quotas)
    except InvalidInput:
        return
    for a in ancestors(path):
        aq = quotas.get(a)
        if aq is None:
            continue
        for res, v in q.items():
            lim = getattr(aq, res)
            if v is not None and lim is not None:
                assert v <= lim


@given(
    st.dictionaries(paths, st.builds(Quota, cpu=limits, memory=limits, instances=limits)),
    st.lists(st.tuples(paths, st.integers(0, 20)), max_size=30),
)
def test_admitted_usage_never_breaks_any_quota(quotas: dict[str, Quota], requests: list[tuple[str, int]]) -> None:
    usage: dict[str, Usage] = {}
    for path, n in requests:
        delta = Usage(cpu=n, memory=n, instances=n)
        try:
            check_usage(path, delta, quotas, usage)
        except QuotaExceeded:
            continue
        usage[path] = usage.get(path, Usage()) + delta
    for p, q in quotas.items():
        total = rollup(p, usage)
        for res, lim in q.items():
            if lim is not None:
                assert getattr(total, res) <= lim, (p, res)
    # effective limits agree with the raw quotas
    for p in quotas:
        for res, eff in effective_limits(p, quotas).items():
            if eff is not None:
                assert eff[0] == min(
                    getattr(quotas[a], res)
                    for a in [*ancestors(p), p]
                    if a in quotas and getattr(quotas[a], res) is not None
                )
