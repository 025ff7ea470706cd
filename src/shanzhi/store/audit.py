"""The audit trail as a hash chain: an edited, deleted or reordered record is detected.

Each record stores the hash of the record before it and its own hash over that and its
fields (SHA-256 of canonical JSON). Writers are serialised, by the write lock on SQLite and
a transaction-scoped advisory lock on PostgreSQL, so the chain never forks. `verify_chain`
recomputes it from the first record and names the first one that does not fit.

Retention: `prune` removes records older than a cut-off and leaves an anchor (the first id
kept and the hash of the last one removed), so the rest still verifies; the prune itself is
an audit record, and every record also has a signed copy in the directory ledger.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, delete, func, select, text
from sqlalchemy.orm import Session

from shanzhi.store.tables import AuditAnchor, AuditOutbox, AuditRecord, utcnow

GENESIS = "0" * 64
_LOCK = 7306103


def chain_hash(r: AuditRecord, prev_hash: str) -> str:
    body = {
        "id": r.id,
        "at": r.at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": r.actor,
        "source": r.source,
        "method": r.method,
        "path": r.path,
        "status": r.status,
        "outcome": r.outcome,
        "detail": r.detail,
    }
    # fields added later are hashed only when set, so records written before them still verify
    for extra in ("role", "action", "target"):
        value = getattr(r, extra)
        if value:
            body[extra] = value
    raw = prev_hash + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def commitment_of(chain_hash: str, salt: str) -> str:
    """What the public ledger holds for a record: hiding (salted) and binding (its chain hash)."""
    return hashlib.sha256(bytes.fromhex(salt) + chain_hash.encode()).hexdigest()


def append(s: Session, record: AuditRecord, *, to_ledger: bool = False) -> AuditRecord:
    """Add `record` at the end of the chain (inside the caller's transaction). With `to_ledger`,
    its commitment is queued in the same transaction for the directory ledger (the outbox)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
    last = s.scalar(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1))
    if last is None:
        anchor = s.get(AuditAnchor, 1)
        last = anchor.prev_hash if anchor is not None else None
    record.prev_hash = last or GENESIS
    record.at = utcnow()
    record.source = record.source or ""
    record.detail = record.detail or ""
    record.role, record.action, record.target = record.role or "", record.action or "", record.target or ""
    s.add(record)
    s.flush()  # assigns the id, which the hash covers
    record.hash = chain_hash(record, record.prev_hash)
    if to_ledger:  # a salt marks a record whose commitment the ledger owes (see ledger.audit_copies)
        record.commit_salt = secrets.token_hex(32)
        s.add(AuditOutbox(audit_id=record.id))
    return record


@dataclass
class ChainReport:
    ok: bool
    records: int
    problem: str = ""


def prune(s: Session, before: datetime) -> int:
    """Remove the records older than `before` (whole prefix of the chain, up to the first one
    not yet in the ledger) and move the anchor."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
    old = select(AuditRecord.id, AuditRecord.hash).where(AuditRecord.at < before)
    # never a record whose ledger commitment is still owed: it would be lost, and the ledger's
    # drainer (deleting that outbox row as it delivers) would deadlock against our cascade
    owed = s.scalar(select(func.min(AuditOutbox.audit_id)))
    if owed is not None:
        old = old.where(AuditRecord.id < owed)
    last = s.execute(old.order_by(AuditRecord.id.desc()).limit(1)).first()
    if last is None:
        return 0
    # only a prefix: a record kept must never follow a removed one out of order
    first_kept = s.scalar(select(func.min(AuditRecord.id)).where(AuditRecord.id > last.id))
    n = s.execute(delete(AuditRecord).where(AuditRecord.id <= last.id)).rowcount  # type: ignore[attr-defined]
    anchor = s.get(AuditAnchor, 1)
    if anchor is None:
        anchor = AuditAnchor(id=1, first_id=0, prev_hash=GENESIS, pruned=0)
        s.add(anchor)
    anchor.first_id = first_kept if first_kept is not None else last.id + 1
    anchor.prev_hash = last.hash
    anchor.pruned += n
    anchor.at = utcnow()
    s.flush()
    return int(n)


def verify_chain(conn: Connection) -> ChainReport:
    prev = GENESIS
    n = 0
    anchor = conn.execute(select(AuditAnchor.prev_hash).where(AuditAnchor.id == 1)).scalar()
    if anchor is not None:
        prev = anchor
    rows = conn.execute(select(AuditRecord.__table__).order_by(AuditRecord.id))
    for row in rows:
        r = AuditRecord(**{k: getattr(row, k) for k in row._fields})
        if r.at.tzinfo is None:
            r.at = r.at.replace(tzinfo=UTC)
        if r.prev_hash != prev:
            return ChainReport(
                False, n, f"audit record {r.id}: does not follow the record before it (one was deleted or reordered)"
            )
        if chain_hash(r, r.prev_hash) != r.hash:
            return ChainReport(False, n, f"audit record {r.id}: its content was changed after it was written")
        prev = r.hash
        n += 1
    return ChainReport(True, n)
