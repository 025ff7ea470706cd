"""Submission rules, witnessed checkpoints, and the verifier against every kind of tampering."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from shanzhi.ledger.entries import EntryError, make_entry, open_entry
from shanzhi.ledger.log import TILE, split_bundle
from shanzhi.ledger.merkle import leaf_hash
from shanzhi.ledger.note import Signer, sign
from shanzhi.ledger.service import Ledger
from shanzhi.ledger.verify import DatabaseSource, DirectorySource, export, parse_tile_index, tile_path, verify_log
from shanzhi.store import Database
from tests.ledger.conftest import DEPT, LOG_KEY, PLATFORM, WITNESSES, access


def fill(ledger: Ledger, n: int, checkpoint_every: int = 150) -> None:
    done = 0
    while done < n:
        k = min(checkpoint_every, n - done)
        ledger.submit([access(done + i) for i in range(k)])
        done += k
        assert ledger.publish() is not None


def check(ledger: Ledger, **kw: object) -> object:
    return verify_log(
        DatabaseSource(ledger.db),
        LOG_KEY.verifier,
        [w.verifier for w in WITNESSES],
        quorum=2,
        **kw,  # type: ignore[arg-type]
    )


def test_links_must_point_at_real_entries(ledger: Ledger) -> None:
    resp = make_entry(DEPT, "responsibility", "resp/health-01", {"code": "health-01", "title": "Clinic licensing"})
    [(i, h)] = ledger.submit([resp])
    cat = make_entry(
        DEPT,
        "catalog",
        "catalog/clinics",
        {"code": "clinics", "version": 1, "name": "Clinics", "provider": "gz/health", "share_type": "unconditional"},
        links=[("responsibility", i, h)],
    )
    assert ledger.submit([cat])[0][0] == i + 1
    with pytest.raises(EntryError, match="beyond the log"):
        ledger.submit(
            [make_entry(DEPT, "access", "c", {"catalog": "c", "consumer": "x", "records": 1}, links=[("grant", 99, h)])]
        )
    with pytest.raises(EntryError, match="leaf hash does not match"):
        ledger.submit(
            [
                make_entry(
                    DEPT,
                    "access",
                    "c",
                    {"catalog": "c", "consumer": "x", "records": 1},
                    links=[("grant", i, bytes(32))],
                )
            ]
        )
    assert ledger.log.size == 2  # refused submissions appended nothing


def test_an_unregistered_department_cannot_submit(ledger: Ledger) -> None:
    stranger = Signer.generate("gz.gov.cn/unknown")
    with pytest.raises(EntryError, match="no registered key"):
        ledger.submit([make_entry(stranger, "access", "c", {"catalog": "c", "consumer": "x", "records": 1})])
    assert ledger.log.size == 0


def test_checkpoints_carry_quorum_cosignatures(ledger: Ledger) -> None:
    ledger.submit([access(i) for i in range(10)])
    note = ledger.publish()
    assert note is not None and note.count("\u2014 witness.gz.example/") == 3
    assert ledger.publish() is None  # nothing new: no new checkpoint
    ledger.submit([access(10)])
    assert ledger.publish() is not None
    assert [s for s, _ in ledger.checkpoints()] == [10, 11]


def _audit(db: Database, n: int, *, to_ledger: bool = True) -> list[int]:
    from shanzhi.store import audit as chain
    from shanzhi.store.tables import AuditRecord

    ids = []
    with db.session() as s, s.begin():
        for i in range(n):
            r = AuditRecord(
                actor="admin", method="POST", path=f"/api/v1/apps?secret={i}", status=201, outcome="success"
            )
            ids.append(chain.append(s, r, to_ledger=to_ledger).id)
    return ids


def test_audit_records_reach_the_ledger_as_commitments_that_disclose_nothing(ledger: Ledger) -> None:
    from shanzhi.store.audit import commitment_of
    from shanzhi.store.tables import AuditOutbox, AuditRecord

    ids = _audit(ledger.db, 3)
    assert ledger.drain_audit_outbox() == 3 and ledger.drain_audit_outbox() == 0
    with ledger.db.session() as s:
        assert s.scalar(select(func.count()).select_from(AuditOutbox)) == 0
        records = {r.id: r for r in s.scalars(select(AuditRecord))}
    for rid in ids:
        r = records[rid]
        entry = ledger.log.entry(r.ledger_index)  # type: ignore[arg-type]
        env = open_entry(entry, ledger.keys())
        assert (env.type, env.submitter, env.subject) == ("audit", PLATFORM.name, f"audit/{rid}")
        assert env.body == {"record": rid, "commitment": commitment_of(r.hash, r.commit_salt)}
        assert b"secret" not in entry and b"admin" not in entry and r.hash.encode() not in entry


def test_concurrent_drainers_deliver_each_record_exactly_once(ledger: Ledger) -> None:
    import threading

    ids = _audit(ledger.db, 200)
    barrier = threading.Barrier(4)

    def drain() -> None:
        barrier.wait()
        while ledger.drain_audit_outbox(limit=17):
            pass

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    subjects = [open_entry(ledger.log.entry(i), ledger.keys()).subject for i in range(ledger.log.refresh())]
    assert sorted(subjects) == sorted(f"audit/{i}" for i in ids)


def test_a_clean_log_verifies(ledger: Ledger) -> None:
    fill(ledger, 700)
    r = check(ledger, department_keys=ledger.keys())
    assert r.ok, r.problem  # type: ignore[attr-defined]
    assert (r.entries_checked, r.checkpoints_checked, r.signatures_checked) == (700, 5, 700)  # type: ignore[attr-defined]


def _bundle(db: Database, idx: int) -> list[bytes]:
    with db.engine.connect() as c:
        return split_bundle(bytes(c.execute(text(f"SELECT data FROM ledger_bundles WHERE idx = {idx}")).scalar_one()))


def _write_bundle(db: Database, idx: int, entries: list[bytes]) -> None:
    data = b"".join(len(e).to_bytes(2, "big") + e for e in entries)
    with db.engine.begin() as c:
        c.execute(text("UPDATE ledger_bundles SET data = :d WHERE idx = :i"), {"d": data, "i": idx})


@pytest.mark.parametrize("position", [0, 255, 256, 600])
def test_one_changed_byte_in_any_entry_is_named(ledger: Ledger, position: int) -> None:
    fill(ledger, 700)
    entries = _bundle(ledger.db, position // TILE)
    e = bytearray(entries[position % TILE])
    e[len(e) // 2] ^= 0x01
    entries[position % TILE] = bytes(e)
    _write_bundle(ledger.db, position // TILE, entries)
    r = check(ledger)
    assert not r.ok and r.problem.startswith(f"entry {position} does not match its leaf hash")  # type: ignore[attr-defined]


def test_a_deleted_entry_is_named(ledger: Ledger) -> None:
    fill(ledger, 400)
    entries = _bundle(ledger.db, 1)
    del entries[10]
    _write_bundle(ledger.db, 1, entries)
    assert check(ledger).problem.startswith("entry 266 does not match")  # type: ignore[attr-defined]


def test_two_reordered_entries_are_named(ledger: Ledger) -> None:
    fill(ledger, 400)
    entries = _bundle(ledger.db, 0)
    entries[41], entries[42] = entries[42], entries[41]
    _write_bundle(ledger.db, 0, entries)
    assert check(ledger).problem.startswith("entry 41 does not match")  # type: ignore[attr-defined]


def test_a_missing_bundle_is_named(ledger: Ledger) -> None:
    fill(ledger, 700)
    with ledger.db.engine.begin() as c:
        c.execute(text("DELETE FROM ledger_bundles WHERE idx = 1"))
    assert "entries 256..511 are missing" in check(ledger).problem  # type: ignore[attr-defined]


def test_a_replaced_checkpoint_is_detected(ledger: Ledger) -> None:
    fill(ledger, 300)
    with ledger.db.engine.begin() as c:
        size, note = c.execute(text("SELECT size, note FROM ledger_checkpoints ORDER BY size LIMIT 1")).one()
        body = note[: note.rfind("\n\n") + 1]
        lines = body.split("\n")
        lines[2] = base64.b64encode(leaf_hash(b"a different root")).decode()
        forged_body = "\n".join(lines)
        # the operator holds the log key, so the log signature is valid; the cosignatures are copied over
        forged = sign(forged_body, LOG_KEY) + "".join(note[note.rfind("\n\n") + 2 :].splitlines(keepends=True)[1:])
        c.execute(text("UPDATE ledger_checkpoints SET note = :n WHERE size = :s"), {"n": forged, "s": size})
    r = check(ledger)
    assert not r.ok and r.problem.startswith(f"checkpoint at size {size}:")  # type: ignore[attr-defined]
    assert "witness.gz.example" in r.problem and "does not verify" in r.problem  # type: ignore[attr-defined]
    # without witnesses the root itself gives it away
    alone = verify_log(DatabaseSource(ledger.db), LOG_KEY.verifier)
    assert "is not the root of the first" in alone.problem


def test_an_operator_rewrite_with_recomputed_tiles_fails_on_witnesses(ledger: Ledger, db: Database) -> None:
    """Rewrite entry 5, rebuild every tile and checkpoint with the log key: only witnesses can tell."""
    fill(ledger, 300)
    entries = [ledger.log.entry(i) for i in range(300)]
    entries[5] = access(99_999)
    with db.engine.begin() as c:
        for t in ("ledger_bundles", "ledger_tiles", "ledger_state", "ledger_checkpoints"):
            c.execute(text(f"DELETE FROM {t}"))
    from shanzhi.ledger.checkpoint import Checkpoint
    from shanzhi.ledger.log import Log

    forged_log = Log(db)
    forged_log.append(entries)
    with db.engine.begin() as c:
        body = Checkpoint(LOG_KEY.name, 300, forged_log.root()).body()
        c.execute(
            text("INSERT INTO ledger_checkpoints (size, note, at) VALUES (300, :n, CURRENT_TIMESTAMP)"),
            {"n": sign(body, LOG_KEY)},
        )
    r = check(ledger)
    assert not r.ok and "0 witness cosignatures, 2 required" in r.problem  # type: ignore[attr-defined]
    # and the witnesses themselves refuse to cosign the rewritten history
    ledger.log.refresh()
    ledger.submit([access(1)])
    assert ledger.publish() is None


def test_export_and_verify_from_files(ledger: Ledger, tmp_path: Path) -> None:
    fill(ledger, 600)
    out = tmp_path / "export"
    assert export(ledger.db, out) == 600
    assert (out / "checkpoint").read_text().startswith(LOG_KEY.name + "\n600\n")
    assert (out / tile_path(0, 2, 88)).exists() and (out / "tile/entries/000").exists()
    r = verify_log(DirectorySource(out), LOG_KEY.verifier, [w.verifier for w in WITNESSES], quorum=2)
    assert r.ok and r.entries_checked == 600, r.problem
    p = out / "tile/entries/001"
    data = bytearray(p.read_bytes())
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    assert not verify_log(DirectorySource(out), LOG_KEY.verifier).ok


def test_tile_paths() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path("entries", 5, 17) == "tile/entries/005.p/17"
    assert parse_tile_index("x001/x234/067") == (1234067, None)
    assert parse_tile_index("005.p/17") == (5, 17)
    arabic_indic = "\u0660\u0660\u0661"
    for bad in ("1234", "x01/234", "001/234", "005.p/0", "005.p/256", "abc", "x000/001", arabic_indic, "005.p/017"):
        with pytest.raises(ValueError):
            parse_tile_index(bad)


_ = DEPT


def test_a_corrupted_inner_tile_is_named_though_a_proof_through_it_still_verifies(
    ledger: Ledger, tmp_path: Path
) -> None:
    """x/mod's TileHashReader trusts an inner tile once the tile above authenticates the part a
    proof needs; a wrong leaf hash elsewhere in that tile goes unnoticed. The verifier here
    recomputes every tile from the entries, so it names it."""
    from shanzhi.ledger.checkpoint import Checkpoint
    from shanzhi.ledger.merkle import verify_inclusion

    fill(ledger, 600)
    out = tmp_path / "export"
    export(ledger.db, out)
    inner = out / "tile/0/001"  # leaf hashes of entries 256..511; tile 1/000.p/2 holds its subtree hash
    data = bytearray(inner.read_bytes())
    data[5 * 32] ^= 0x01  # entry 261's leaf hash
    inner.write_bytes(bytes(data))
    cp = Checkpoint.parse((out / "checkpoint").read_text().split("\n\n")[0] + "\n")
    proof = ledger.log.inclusion_proof(3, 600)  # uses tile 0/001 only through tile 1's hash of it
    verify_inclusion(leaf_hash(ledger.log.entry(3)), 3, 600, proof, cp.root)  # still proves entry 3
    r = verify_log(DirectorySource(out), LOG_KEY.verifier)
    assert not r.ok and r.problem.startswith("entry 261 does not match its leaf hash in tile 0/1"), r.problem
