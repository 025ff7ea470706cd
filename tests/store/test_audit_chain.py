"""The audit trail is a hash chain: edits, deletions and reorders are found and named."""

from __future__ import annotations

import subprocess
import sys
import threading

from sqlalchemy import text

from shanzhi.store import Database
from shanzhi.store.audit import append, verify_chain
from shanzhi.store.tables import AuditRecord


def write(db: Database, n: int, actor: str = "admin") -> None:
    for i in range(n):
        with db.session() as s, s.begin():
            append(s, AuditRecord(actor=actor, method="POST", path=f"/api/v1/x/{i}", status=201, outcome="success"))


def check(db: Database) -> tuple[bool, int, str]:
    with db.reader.connect() as c:
        r = verify_chain(c)
    return r.ok, r.records, r.problem


def test_an_untouched_chain_verifies(db: Database) -> None:
    write(db, 20)
    assert check(db) == (True, 20, "")


def test_an_edited_record_is_named(db: Database) -> None:
    write(db, 10)
    with db.engine.begin() as c:
        c.execute(text("UPDATE audit SET actor = 'someone-else' WHERE id = 4"))
    ok, _, problem = check(db)
    assert not ok and problem == "audit record 4: its content was changed after it was written"


def test_a_deleted_record_is_found_at_the_next_one(db: Database) -> None:
    write(db, 10)
    with db.engine.begin() as c:
        c.execute(text("DELETE FROM audit WHERE id = 6"))
    ok, n, problem = check(db)
    assert not ok and n == 5 and problem.startswith("audit record 7: does not follow")


def test_swapped_records_are_found(db: Database) -> None:
    write(db, 6)
    with db.engine.begin() as c:
        a = c.execute(text("SELECT path FROM audit WHERE id = 2")).scalar_one()
        b = c.execute(text("SELECT path FROM audit WHERE id = 3")).scalar_one()
        c.execute(text("UPDATE audit SET path = :p WHERE id = 2"), {"p": b})
        c.execute(text("UPDATE audit SET path = :p WHERE id = 3"), {"p": a})
    assert check(db)[2].startswith("audit record 2:")


def test_a_rewritten_tail_cannot_hide_a_deletion(db: Database) -> None:
    """Deleting the newest record leaves a valid shorter chain: only its length tells, so the
    ledger (where every audit record is also written, signed) is the tamper-proof copy."""
    write(db, 5)
    with db.engine.begin() as c:
        c.execute(text("DELETE FROM audit WHERE id = 5"))
    assert check(db) == (True, 4, "")


def test_concurrent_writers_never_fork_the_chain(db: Database) -> None:
    threads = [threading.Thread(target=write, args=(db, 10, f"w{i}")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert check(db) == (True, 60, "")


def test_the_cli_verifies_offline(db: Database) -> None:
    write(db, 3)
    run = [sys.executable, "-m", "shanzhi", "audit", "verify", "--database-url", db.url]
    ok = subprocess.run(run, capture_output=True, text=True, check=False)
    assert ok.returncode == 0 and "3 audit records form an unbroken chain" in ok.stdout
    with db.engine.begin() as c:
        c.execute(text("UPDATE audit SET status = 200 WHERE id = 2"))
    bad = subprocess.run(run, capture_output=True, text=True, check=False)
    assert bad.returncode == 1 and "audit record 2: its content was changed" in bad.stderr


def test_pruning_stops_at_the_first_record_the_ledger_still_owes(db: Database) -> None:
    """A record whose commitment is still in the outbox is never pruned (its copy would be lost,
    and the ledger's drainer deleting that outbox row would deadlock against the cascade)."""
    from datetime import timedelta

    from shanzhi.store.audit import prune
    from shanzhi.store.tables import AuditOutbox, utcnow

    write(db, 3)
    with db.session() as s, s.begin():
        for i in range(3):
            rec = AuditRecord(actor="a", method="POST", path=f"/api/v1/y/{i}", status=201, outcome="success")
            append(s, rec, to_ledger=True)
    write(db, 2)
    with db.session() as s, s.begin():
        owed = sorted(s.scalars(text("SELECT audit_id FROM audit_outbox")).all())
        assert owed == [4, 5, 6]
        assert prune(s, utcnow() + timedelta(days=1)) == 3  # 1-3 only
    with db.session() as s, s.begin():
        s.execute(AuditOutbox.__table__.delete())  # delivered
        assert prune(s, utcnow() + timedelta(days=1)) == 5  # now the rest
    assert check(db) == (True, 0, "")
