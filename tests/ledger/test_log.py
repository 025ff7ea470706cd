"""The stored log on SQLite and PostgreSQL: roots, tiles, proofs, reopen, cross-check with pymerkle."""

from __future__ import annotations

import os
import random

import pytest
from pymerkle import InmemoryTree

from shanzhi.ledger.log import TILE, LedgerError, Log, split_bundle
from shanzhi.ledger.merkle import leaf_hash, root_of, verify_consistency, verify_inclusion
from shanzhi.store import Database


def entries(n: int, seed: int = 1) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(rnd.randint(0, 40)) for _ in range(n)]


def test_roots_proofs_and_tiles_across_tile_boundaries(db: Database) -> None:
    log = Log(db)
    data = entries(70_000 // 100 + TILE * 2 + 17)  # a few full tiles and a partial one
    hashes = [leaf_hash(e) for e in data]
    first = 0
    for chunk in (1, 2, 300, 5, TILE, len(data) - 1 - 2 - 300 - 5 - TILE):
        assert log.append(data[first : first + chunk]) == first
        first += chunk
        assert log.size == first
        assert log.root() == root_of(hashes[:first])
    n = log.size
    for size in (1, 2, 255, 256, 257, 511, 512, 700, n):
        assert log.root_at(size) == root_of(hashes[:size])
    rnd = random.Random(7)
    for _ in range(40):
        size = rnd.randint(1, n)
        i = rnd.randrange(size)
        verify_inclusion(hashes[i], i, size, log.inclusion_proof(i, size), root_of(hashes[:size]))
        old = rnd.randint(1, size)
        verify_consistency(old, size, log.consistency_proof(old, size), root_of(hashes[:old]), root_of(hashes[:size]))
    full = log.tile(0, 0)
    assert full is not None and full == b"".join(hashes[:TILE])
    assert log.tile(0, n // TILE, n % TILE) == b"".join(hashes[(n // TILE) * TILE : n])
    assert log.tile(0, n // TILE) is None  # not full yet
    bundle = log.bundle(1)
    assert bundle is not None and split_bundle(bundle) == data[TILE : 2 * TILE]
    assert log.entries(250, 260) == data[250:260]


def test_reopening_rebuilds_the_same_tree(db: Database) -> None:
    data = entries(1000, seed=3)
    Log(db).append(data[:600])
    again = Log(db)
    assert again.size == 600
    again.append(data[600:])
    assert Log(db).root() == root_of([leaf_hash(e) for e in data])


def test_two_writers_on_one_database_interleave_safely(db: Database) -> None:
    a, b = Log(db), Log(db)
    data = entries(900, seed=4)
    a.append(data[:300])
    b.append(data[300:600])  # b was stale: it must reload before appending
    a.append(data[600:])
    assert Log(db).root() == root_of([leaf_hash(e) for e in data])
    assert a.refresh() == b.refresh() == 900


def test_oversized_entries_are_refused_and_change_nothing(db: Database) -> None:
    log = Log(db)
    log.append([b"ok"])
    with pytest.raises(LedgerError, match="over the 65535-byte limit"):
        log.append([b"fine", b"x" * 70_000])
    assert log.size == 1 and Log(db).size == 1


def test_a_failed_transaction_leaves_memory_and_store_unchanged(db: Database) -> None:
    log = Log(db)
    log.append([b"a", b"b"])
    root = log.root()
    with db.engine.begin() as c:
        c.exec_driver_sql("DROP TABLE ledger_bundles")
    with pytest.raises(Exception):  # noqa: B017 - any database error
        log.append([b"c"])
    assert (log.size, log.root()) == (2, root)


@pytest.mark.parametrize("seed", range(5))
def test_cross_check_with_pymerkle_on_random_trees(tmp_path: object, seed: int) -> None:
    from shanzhi.store import open_database

    db = open_database(f"sqlite+pysqlite:///{tmp_path}/x.db")  # type: ignore[str-bytes-safe]
    db.migrate()
    rnd = random.Random(seed)
    data = [os.urandom(rnd.randint(1, 64)) for _ in range(rnd.randint(1, 700))]
    log = Log(db)
    theirs = InmemoryTree(algorithm="sha256")
    for e in data:
        log.append([e])
        theirs.append_entry(e)
    for size in {1, len(data), rnd.randint(1, len(data))}:
        assert log.root_at(size) == theirs.get_root(size)
        i = rnd.randrange(size)
        verify_inclusion(leaf_hash(data[i]), i, size, log.inclusion_proof(i, size), theirs.get_root(size))
        old = rnd.randint(1, size)
        verify_consistency(old, size, log.consistency_proof(old, size), theirs.get_root(old), theirs.get_root(size))
    db.dispose()
