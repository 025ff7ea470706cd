"""The audit trail as a hash chain: an edited, deleted or reordered record is detected.

Each record stores the hash of the record before it and its own hash over that and its
fields (SHA-256 of canonical JSON). Writers are serialised, by the write lock on SQLite and
a transaction-scoped advisory lock on PostgreSQL, so the chain never forks. `verify_chain`
recomputes it from the first record and names the first one that does not fit.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session

from shanzhi.store.tables import AuditRecord, utcnow

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
    raw = prev_hash + "\n" + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(raw.encode()).hexdigest()


def append(s: Session, record: AuditRecord) -> AuditRecord:
    """Add `record` at the end of the chain (inside the caller's transaction)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK})
    last = s.scalar(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1))
    record.prev_hash = last or GENESIS
    record.at = utcnow()
    record.source = record.source or ""
    record.detail = record.detail or ""
    s.add(record)
    s.flush()  # assigns the id, which the hash covers
    record.hash = chain_hash(record, record.prev_hash)
    return record


@dataclass
class ChainReport:
    ok: bool
    records: int
    problem: str = ""


def verify_chain(conn: Connection) -> ChainReport:
    prev = GENESIS
    n = 0
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
