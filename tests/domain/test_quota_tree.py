"""Property tests: any sequence of quota changes, strict toggles and usage requests, each checked
the way the services check them, leaves every nesting, strict and roll-up invariant intact."""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from shanzhi.domain.errors import InvalidInput, QuotaExceeded
from shanzhi.domain.quota import (
    RESOURCES,
    Quota,
    Usage,
    ancestors,
    check_child_quota,
    check_descendants_fit,
    check_strict,
    check_usage,
    check_usage_fits,
    children_of,
    rollup,
)

PATHS = ["a", "a/b", "a/c", "a/b/d", "a/b/e", "a/c/f", "a/b/d/g", "a/b/d/g/h"]
limits = st.one_of(st.none(), st.integers(0, 40))
quotas = st.builds(Quota, cpu=limits, memory=limits, instances=limits, storage=limits)
usages = st.builds(
    Usage, cpu=st.integers(0, 12), memory=st.integers(0, 12), instances=st.integers(0, 3), storage=st.integers(0, 12)
)
ops = st.one_of(
    st.tuples(st.just("quota"), st.sampled_from(PATHS), quotas),
    st.tuples(st.just("strict"), st.sampled_from(PATHS), st.booleans()),
    st.tuples(st.just("use"), st.sampled_from(PATHS), usages),
    st.tuples(st.just("release"), st.sampled_from(PATHS), usages),
)


def _apply(op: tuple[str, str, object], q: dict[str, Quota], strict: set[str], used: dict[str, Usage]) -> None:
    """One operation, refused or done exactly as shanzhi.services.vdcs / apps do it."""
    kind, path, arg = op
    if kind == "quota":
        assert isinstance(arg, Quota)
        check_child_quota(path, arg, q)
        check_descendants_fit(path, arg, {p: v for p, v in q.items() if p.startswith(path + "/")})
        check_usage_fits(path, arg, used)
        check_strict(path, {**q, path: arg}, strict)
        q[path] = arg
    elif kind == "strict":
        new = (strict | {path}) if arg else (strict - {path})
        check_strict(path, q, new)
        strict.clear()
        strict.update(new)
    elif kind == "use":
        assert isinstance(arg, Usage)
        check_usage(path, arg, q, used)
        used[path] = used.get(path, Usage()) + arg
    else:  # releasing never needs a check; never below zero
        assert isinstance(arg, Usage)
        have = used.get(path, Usage())
        used[path] = Usage(*(max(0, getattr(have, r) - getattr(arg, r)) for r in RESOURCES))


def _invariants(q: dict[str, Quota], strict: set[str], used: dict[str, Usage]) -> None:
    for path, quota in q.items():
        for resource, limit in quota.items():
            if limit is None:
                continue
            # 1. nesting: never above any ancestor's limit
            for anc in ancestors(path):
                above = getattr(q[anc], resource)
                assert above is None or limit <= above, (path, anc, resource)
            # 2. roll-up: the subtree's usage never exceeds the limit
            assert getattr(rollup(path, used), resource) <= limit, (path, resource)
            # 3. strict: the children's own limits fit in the parent's
            if path in strict:
                given_out = sum(getattr(q[c], resource) or 0 for c in children_of(path, q))
                assert given_out <= limit, (path, resource)


@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=40))
def test_every_accepted_sequence_keeps_every_invariant(sequence: list[tuple[str, str, object]]) -> None:
    q = {p: Quota() for p in PATHS}
    strict: set[str] = set()
    used: dict[str, Usage] = {}
    for op in sequence:
        with contextlib.suppress(InvalidInput, QuotaExceeded):  # refused ones are checked below too
            _apply(op, q, strict, used)
        _invariants(q, strict, used)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(PATHS), usages), st.sampled_from(PATHS))
def test_rollup_is_the_sum_over_the_subtree(used: dict[str, Usage], root: str) -> None:
    total = rollup(root, used)
    below = [p for p in used if p == root or p.startswith(root + "/")]
    for r in RESOURCES:
        assert getattr(total, r) == sum(getattr(used[p], r) for p in below)
    # and a parent's roll-up is its own use plus its children's roll-ups
    own = used.get(root, Usage())
    kids = children_of(root, PATHS)
    combined = own
    for k in kids:
        combined = combined + rollup(k, used)
    assert combined == total


@settings(max_examples=200, deadline=None)
@given(st.lists(ops, max_size=30))
def test_a_refused_operation_changes_nothing(sequence: list[tuple[str, str, object]]) -> None:
    q = {p: Quota() for p in PATHS}
    strict: set[str] = set()
    used: dict[str, Usage] = {}
    for op in sequence:
        before = (dict(q), set(strict), dict(used))
        try:
            _apply(op, q, strict, used)
        except (InvalidInput, QuotaExceeded):
            assert (q, strict, used) == before
