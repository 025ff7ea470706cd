"""Reconcile cost proportional to change: the change feed (in process, and LISTEN/NOTIFY across
processes on PostgreSQL), change-driven passes, and apps sharded across two replicas."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from shanzhi.controllers import Fleet, Reconciler
from shanzhi.domain.quota import Quota
from shanzhi.domain.spec import parse_app
from shanzhi.services.apps import apply_app
from shanzhi.services.clouds import add_cloud
from shanzhi.services.vdcs import create_vdc
from shanzhi.store import Database, open_database
from shanzhi.store.changes import ChangeFeed, Listener, parse, quiet
from shanzhi.store.shards import SHARDS, Shards
from shanzhi.store.tables import App, Cloud, Host, Instance


def doc(name: str, replicas: int = 1, cpu: str = "250m") -> dict[str, Any]:
    return {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": name, "vdc": "gz"},
        "spec": {
            "components": [
                {"name": "api", "replicas": replicas, "resources": {"cpu": cpu, "memory": "64Mi"}, "image": "x"}
            ]
        },
    }


def seed(db: Database, hosts: int = 2, cpu: int = 64) -> None:
    with db.session() as s, s.begin():
        create_vdc(s, "gz", Quota())
        for c in ("d0", "d1"):
            add_cloud(s, c, "sim", f"site-{c}", "gz", {}, {"hosts": hosts, "boot": 0, "cpu": cpu})


def apply(db: Database, name: str, **kw: Any) -> int:
    with db.session() as s, s.begin():
        apply_app(s, parse_app(doc(name, **kw)))
    with db.session() as s, s.begin():
        app_id = s.scalar(select(App.id).where(App.name == name))
    assert app_id is not None
    return app_id


def until(cond: Callable[[], bool], step: Callable[[], None], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "did not happen in time"
        step()
        time.sleep(0.05)


def states(db: Database) -> list[str]:
    with db.session() as s, s.begin():
        return list(s.scalars(select(Instance.state)))


# ----------------------------------------------------------------------------- the feed
def test_committed_writes_name_their_apps_and_rollbacks_nothing(db: Database) -> None:
    seed(db)
    feed = db.changes
    feed.take()
    app_id = apply(db, "permits")
    apps, everything = feed.take()
    assert app_id in apps and not everything
    # a rolled-back change is never published
    with db.session() as s:
        s.begin()
        s.execute(update(App).where(App.id == app_id).values(generation=99))
        app = s.get(App, app_id)
        assert app is not None
        app.generation = 100
        s.flush()
        s.rollback()
    assert feed.take() == (set(), False)
    # a quiet session (the reconciler's own writes) wakes nobody
    with db.session() as s, s.begin():
        quiet(s)
        app = s.get(App, app_id)
        assert app is not None
        app.generation += 1
    assert feed.take() == (set(), False)
    # a cloud or host change concerns every app; setting a host to what it was is no change
    with db.session() as s, s.begin():
        c0 = s.scalars(select(Cloud)).first()
        assert c0 is not None
        c0.hosts.append(Host(name="h9", cpu=1000, memory=2**30, max_instances=10))
    assert feed.take() == (set(), True)
    with db.session() as s, s.begin():
        host = s.scalars(select(Host)).first()
        assert host is not None
        host.cpu = 1000
    assert feed.take() == (set(), False)
    with db.session() as s, s.begin():
        cloud = s.scalars(select(Cloud)).first()
        assert cloud is not None
        cloud.draining = True
    assert feed.take() == (set(), True)


def test_a_notice_names_at_most_what_fits_and_a_bad_one_is_ignored() -> None:
    assert parse("3,5,x,7") == ({3, 5, 7}, False)
    assert parse("*") == (set(), True)
    from shanzhi.store.changes import _payloads

    bodies = _payloads(set(range(5000)), everything=True)
    assert bodies[0] == "*" and all(len(b) <= 8000 for b in bodies)
    assert set().union(*(parse(b)[0] for b in bodies[1:])) == set(range(5000))


def test_another_process_hears_a_commit_by_notify(pg_url: str) -> None:
    writer = open_database(pg_url)
    writer.migrate()
    reader = open_database(pg_url)
    heard = ChangeFeed()
    listener = Listener(reader.engine, heard)
    listener.start()
    try:
        assert listener.connected.wait(10)
        seed(writer)
        app_id = apply(writer, "permits")
        until(lambda: app_id in heard.take()[0], lambda: None, timeout=10)
        with writer.session() as s:  # a rollback is never heard
            s.begin()
            app = s.get(App, app_id)
            assert app is not None
            app.generation += 1
            s.flush()
            s.rollback()
        time.sleep(0.5)
        assert app_id not in heard.take()[0]
        # a lost connection: heard again once back, with "everything" (notices may have been missed)
        with reader.engine.connect() as c:
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
                )
            )
        until(lambda: heard.take()[1], lambda: None, timeout=15)
    finally:
        listener.stop()
        writer.dispose()
        reader.dispose()


# ----------------------------------------------------------------------- change-driven passes
@pytest.fixture
def world(db: Database, data_dir: Path) -> Iterator[tuple[Database, Reconciler]]:
    seed(db)
    rec = Reconciler(db, Fleet(data_dir), failover_grace=0, full_resync=3600, feed=db.changes)
    yield db, rec
    rec.close()


class _Cycle:
    """Garbage only the collector frees: it refers to itself."""

    def __init__(self) -> None:
        self.me = self


def test_the_full_pass_settles_the_heap_and_the_next_full_pass_frees_what_it_froze(
    world: tuple[Database, Reconciler],
) -> None:
    db, rec = world
    apply(db, "app-0")
    kept = _Cycle()
    gone = weakref.ref(kept)
    try:
        rec.run_once()  # the first pass is full: what is alive now is frozen
        del kept
        gc.collect()
        assert gone() is not None  # frozen: the collector's scans leave it alone
        rec.run_once()  # a change pass settles nothing
        gc.collect()
        assert gone() is not None
        rec._last_full = float("-inf")  # the next full resync
        rec.run_once()
        assert gone() is None  # unfrozen, collected, nothing leaks
    finally:
        gc.unfreeze()


def test_an_idle_pass_reconciles_nothing_and_a_change_only_its_app(world: tuple[Database, Reconciler]) -> None:
    db, rec = world
    ids = [apply(db, f"app-{i}", replicas=2) for i in range(6)]
    until(lambda: states(db).count("running") == 12, rec.run_once)
    until(lambda: rec.reconciled == 0, rec.run_once, timeout=10)  # settled: nothing left to look at
    rec.run_once()
    assert rec.reconciled == 0 and rec.skipped == 6
    # a change through the store: that app alone
    apply(db, "app-3", replicas=3)
    rec.run_once()
    assert rec.reconciled == 1
    until(lambda: rec.reconciled == 0, rec.run_once, timeout=10)
    # an instance gone behind the platform's back: its cloud's listing names it, its app alone
    with db.session() as s, s.begin():
        victim, cloud = s.execute(
            select(Instance.name, Cloud.name).join(Cloud).where(Instance.app_id == ids[1]).limit(1)
        ).one()
    rec.fleet.provider(cloud, "sim", {"hosts": 2, "boot": 0, "cpu": 64}).delete_instance(victim)
    rec.run_once()
    assert rec.reconciled == 1
    with db.session() as s, s.begin():
        assert s.scalar(select(Instance.restarts).where(Instance.name == victim)) == 1


def test_a_change_the_feed_never_heard_is_found_by_a_resync(world: tuple[Database, Reconciler]) -> None:
    db, rec = world
    app_id = apply(db, "permits", replicas=2)
    until(lambda: states(db) == ["running"] * 2, rec.run_once)
    until(lambda: rec.reconciled == 0, rec.run_once, timeout=10)
    with db.engine.begin() as c:  # by hand, past the ORM: no notice
        c.execute(update(App).where(App.id == app_id).values(generation=App.generation + 1))
        c.execute(update(Instance).where(Instance.app_id == app_id).values(state="exited"))
    rec.run_once()
    assert rec.reconciled == 0  # nobody said
    db.changes.publish(everything=True)  # e.g. a listener that reconnected
    rec.run_once()
    assert rec.reconciled == 1


# ------------------------------------------------------------------------------- shards
def test_two_replicas_split_the_shards_and_one_takes_all_when_the_other_dies(pg_url: str) -> None:
    a_db, b_db = open_database(pg_url), open_database(pg_url)
    a_db.migrate()
    a, b = Shards(a_db), Shards(b_db)
    try:
        a.refresh(leader=True)
        assert len(a.held) == SHARDS and a.members == 1
        b.refresh(leader=False)  # the other still holds every shard: b gets none yet
        assert b.members == 2 and not b.held
        a.refresh(leader=True)  # a lets go of b's half ...
        b.refresh(leader=False)  # ... and b takes it
        assert len(a.held) == len(b.held) == SHARDS // 2 and not (a.held & b.held)
        with a_db.session() as s, s.begin():
            mine = next(iter(a.held))
            assert a.fence(s, mine) and not a.fence(s, next(iter(b.held)))
        with b_db.session() as s, s.begin():
            assert not b.fence(s, mine)
        # b's connection dies (a killed process): its locks go at once, a takes everything
        with a_db.engine.connect() as c:
            c.execute(text("SELECT pg_terminate_backend(:p)"), {"p": b._pid})
            c.commit()
        start = time.monotonic()
        until(lambda: len(a.held) == SHARDS, lambda: a.refresh(leader=True), timeout=10)
        assert time.monotonic() - start < 10
        # and b, with its database back, holds nothing until it has rejoined and been dealt a share
        assert not b.refresh(leader=False) or not (b.held & a.held)
    finally:
        a.release()
        b.release()
        a_db.dispose()
        b_db.dispose()


def test_two_reconcilers_each_place_their_share_and_never_overfill_a_host(pg_url: str, data_dir: Path) -> None:
    dbs = [open_database(pg_url), open_database(pg_url)]
    dbs[0].migrate()
    seed(dbs[0], hosts=1, cpu=8)  # 2 hosts of 8 cpus: 32 replicas of 500m fit, no more
    recs, shards = [], []
    for i, db in enumerate(dbs):
        sh = Shards(db)
        rec = Reconciler(db, Fleet(data_dir), failover_grace=0, full_resync=3600, feed=db.changes, shards=sh)
        rec.leader = i == 0
        recs.append(rec)
        shards.append(sh)
    try:
        for _ in range(2):
            for sh in shards:
                sh.refresh(leader=sh is shards[0])
        assert len(shards[0].held) == len(shards[1].held) == SHARDS // 2
        ids = [apply(dbs[0], f"app-{i}", replicas=2, cpu="500m") for i in range(20)]  # 40 wanted, 32 fit
        seen: list[set[int]] = [set(), set()]

        def both() -> None:  # at the same time: each places while the other does
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda rec: rec.run_once(), recs))
            for i, rec in enumerate(recs):
                seen[i] |= {a for a in ids if rec._owns(a) and a in rec._specs}

        until(lambda: states(dbs[0]).count("running") == 32, both)
        for _ in range(3):
            both()
        assert not (seen[0] & seen[1]) and seen[0] | seen[1] == set(ids)
        with dbs[0].session() as s, s.begin():
            per_host = s.execute(
                select(Instance.cloud_id, Instance.host, func.sum(Instance.cpu))
                .where(Instance.cloud_id.is_not(None))
                .group_by(Instance.cloud_id, Instance.host)
            ).all()
            pending = s.scalar(select(func.count()).where(Instance.state == "pending"))
        assert all(cpu <= 8_000 for _, _, cpu in per_host) and len(per_host) == 2 and pending == 8
        # replica 1 goes: replica 0 takes its apps, and places a new one in 1's old share
        theirs = [a for a in ids if a in seen[1]]
        shards[1].release()
        recs[1].close()
        until(lambda: len(shards[0].held) == SHARDS, lambda: shards[0].refresh(leader=True), timeout=10)
        with dbs[0].session() as s, s.begin():
            gone = s.scalars(select(Instance).where(Instance.state == "running", Instance.app_id.in_(theirs))).first()
            assert gone is not None
            s.delete(gone)  # a replica whose row went: only a reconciler that owns its app places it again

        def placed_again() -> bool:
            with dbs[0].session() as s, s.begin():
                return s.scalar(select(func.count()).where(Instance.state.in_(("running", "pending")))) == 40

        until(lambda: placed_again() and states(dbs[0]).count("running") == 32, recs[0].run_once)
    finally:
        for rec in recs:
            rec.close()
        for sh in shards:
            sh.release()
        for db in dbs:
            db.dispose()


def test_an_app_waiting_on_its_replicas_is_looked_at_when_they_change_or_after_recheck(
    db: Database, data_dir: Path
) -> None:
    """A replica starting (no action left, nothing failed) is not reconciled in every pass the
    feed brings: again when its cloud's listing shows it changed, or after `recheck` seconds."""
    with db.session() as s, s.begin():
        create_vdc(s, "gz", Quota())
        add_cloud(s, "slow", "sim", "site-slow", "gz", {}, {"hosts": 1, "boot": 600, "cpu": 8})  # starts for long
    rec = Reconciler(db, Fleet(data_dir), failover_grace=0, full_resync=3600, feed=db.changes, recheck=3600)
    try:
        apply(db, "permits")
        until(lambda: states(db) == ["starting"], rec.run_once, timeout=10)
        rec.run_once()  # the listing shows the replica as it starts: looked at once more
        rec.run_once()
        assert rec.reconciled == 0 and states(db) == ["starting"]  # waiting, unchanged: left alone
        rec.recheck = 0.0  # what passes did before: every unsettled app, every time
        rec.run_once()
        assert rec.reconciled == 1
        rec.recheck = 3600
        rec.run_once()
        assert rec.reconciled == 0
        apply(db, "permits", replicas=2)  # a change the feed names: looked at at once
        rec.run_once()
        assert rec.reconciled == 1 and len(states(db)) == 2
    finally:
        rec.close()
