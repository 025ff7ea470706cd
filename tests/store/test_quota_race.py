"""Quota checks and writes are atomic: many concurrent applies and VDC creations (threads, one
session each, on the real database) never oversubscribe a shared ancestor or a strict parent."""

from __future__ import annotations

import threading
from collections.abc import Callable

from shanzhi.domain.errors import InvalidInput, QuotaExceeded
from shanzhi.domain.quota import Quota, parse_quota
from shanzhi.domain.spec import parse_app
from shanzhi.services.apps import apply_app
from shanzhi.services.vdcs import create_vdc, get_vdc, usage_by_vdc
from shanzhi.store import Database


def _race(n: int, work: Callable[[int], None]) -> tuple[int, int]:
    ok, refused = [], []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
            ok.append(i)
        except (QuotaExceeded, InvalidInput):
            refused.append(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(ok), len(refused)


def test_concurrent_applies_in_sibling_vdcs_never_oversubscribe_the_parent(db: Database) -> None:
    with db.session() as s, s.begin():
        create_vdc(s, "city", parse_quota("cpu=10"))
        for k in range(4):
            create_vdc(s, f"city/d{k}", Quota())

    def apply(i: int) -> None:
        doc = {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": f"a{i}", "vdc": f"city/d{i % 4}"},
            "spec": {"components": [{"name": "c", "image": "x", "resources": {"cpu": "1"}}]},
        }
        with db.session() as s, s.begin():
            apply_app(s, parse_app(doc))

    ok, refused = _race(32, apply)
    assert (ok, refused) == (10, 22)
    with db.session() as s:
        assert sum(u.cpu for u in usage_by_vdc(s).values()) == 10_000


def test_concurrent_children_of_a_strict_parent_never_add_up_to_more(db: Database) -> None:
    with db.session() as s, s.begin():
        create_vdc(s, "city", parse_quota("cpu=10"), strict=True)

    def child(i: int) -> None:
        with db.session() as s, s.begin():
            create_vdc(s, f"city/c{i}", parse_quota("cpu=3"))

    ok, refused = _race(16, child)
    assert (ok, refused) == (3, 13)
    with db.session() as s:
        assert get_vdc(s, "city").strict
