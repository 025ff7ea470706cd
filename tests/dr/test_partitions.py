"""Partitions between three centres in network namespaces, cut with nftables in the core: a
Patroni cluster with Shanzhi's member configuration (same-city tier: production, same-city and an
arbiter) goes through one cycle of each fault under a writer, with every node probed about five
times a second. Never two writable primaries; an isolated production fails over and rejoins as a
standby once healed; the other faults move nothing; no acknowledged write is lost.

`bench/dr.py --partitions N` runs the same cycles N times and reports the figures."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.dr.bare import BareCluster, Writer, need_engines, wait
from tests.dr.centres import Centres
from tests.dr.partitions import KINDS, run_cycle
from tests.network.kernel import fresh_pool, skip_unless_netns


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[BareCluster, Centres]]:
    skip_unless_netns()
    need_engines()
    tag = f"t{os.getpid() % 100000}"
    centres = Centres(tag, fresh_pool())
    try:
        cluster = BareCluster(tmp_path / "pg", strict=False, centres=centres)
        try:
            yield cluster, centres
        finally:
            cluster.close()
    finally:
        centres.close()
        assert Centres.leftovers(tag) == []


def test_partition_cycles_never_give_two_writable_primaries(world: tuple[BareCluster, Centres]) -> None:
    cluster, centres = world
    # the centres really are apart: each node sees the others only across the core
    assert len(set(centres.namespace.values())) == 3
    dsn = cluster.dsn()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE acks (id bigint PRIMARY KEY)")
    w = Writer(dsn)
    try:
        wait(lambda: len(w.acked) > 50, 60, "writes before the first cut")
        cycles = {k: run_cycle(cluster, centres, w, k, hold=6.0) for k in KINDS}
        wait(cluster.healthy, 120, "healthy after the last cycle")
        after = len(w.acked)
        wait(lambda: len(w.acked) > after + 50, 60, "writes after the last heal")
    finally:
        w.stop()
    for kind, r in cycles.items():
        assert r["probe_rounds"] > 10, (kind, r)
        assert r["split_rounds"] == 0, (kind, r["split"])
        assert r["recovered_s"] is not None, (kind, r)

    iso = cycles["isolate-production"]
    assert iso["failover"] and iso["promoted_after_s"] is not None, iso
    assert iso["packets_dropped"] > 0
    # the old primary came back as a standby of the new one (healthy: a primary and its sync standby)
    assert iso["primary_after"] != iso["primary_before"]
    for kind in ("cut-production-same-city", "arbiter-down", "etcd-member-loss"):
        assert not cycles[kind]["failover"], (kind, cycles[kind])
    assert cycles["cut-production-same-city"]["packets_dropped"] > 0
    assert cycles["arbiter-down"]["packets_dropped"] > 0
    # the quorum held without the arbiter or production's etcd member: writes went on
    assert cycles["arbiter-down"]["acked_during_fault"] > 0
    assert cycles["etcd-member-loss"]["acked_during_fault"] > 0

    with psycopg.connect(dsn, autocommit=True) as c:
        stored = {r[0] for r in c.execute("SELECT id FROM acks")}
    missing_ids = [n for n in w.ids if n not in stored]
    assert w.ids and missing_ids == [], f"{len(missing_ids)} acknowledged writes lost"
