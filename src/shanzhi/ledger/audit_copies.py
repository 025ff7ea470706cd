"""Does every audit record have its commitment in the directory ledger?

Each audit record written since commitments began (it has a salt) must either wait in the
outbox or name the ledger entry holding its commitment; that entry must be the platform's
signed `audit` entry for the record, with sha256(salt || chain hash). Run by `audit verify`,
which the audit administrator alone may call: it reads the salts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from shanzhi.ledger.entries import EntryError, open_entry
from shanzhi.ledger.log import LedgerError, Log
from shanzhi.ledger.note import Verifier
from shanzhi.store.audit import commitment_of
from shanzhi.store.tables import AuditOutbox, AuditRecord

MAX_LISTED = 20


@dataclass
class CopiesReport:
    checked: int = 0
    pending: int = 0  # still in the outbox: delivered within a second by a running server
    missing: list[int] = field(default_factory=list)  # neither delivered nor waiting
    wrong: list[int] = field(default_factory=list)  # the entry named is not this record's commitment

    @property
    def ok(self) -> bool:
        return not self.missing and not self.wrong

    def problem(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} audit records have no ledger copy: {self.missing[:MAX_LISTED]}")
        if self.wrong:
            parts.append(f"{len(self.wrong)} ledger copies do not match their records: {self.wrong[:MAX_LISTED]}")
        return "; ".join(parts)

    def summary(self) -> dict[str, object]:
        return {
            "checked": self.checked,
            "pending": self.pending,
            "missing": self.missing[:MAX_LISTED],
            "wrong": self.wrong[:MAX_LISTED],
        }


def check_copies(conn: Connection, log: Log, platform: Callable[[str], Verifier | None]) -> CopiesReport:
    report = CopiesReport()
    waiting = set(conn.execute(select(AuditOutbox.audit_id)).scalars())
    rows = conn.execute(
        select(AuditRecord.id, AuditRecord.hash, AuditRecord.commit_salt, AuditRecord.ledger_index)
        .where(AuditRecord.commit_salt != "")  # older records had a best-effort copy in the clear
        .order_by(AuditRecord.id)
    )
    size = log.refresh()
    for rid, chain_hash, salt, index in rows:
        report.checked += 1
        if index is None:
            if rid in waiting:
                report.pending += 1
            else:
                report.missing.append(rid)
            continue
        try:
            if index >= size:
                raise LedgerError(f"entry {index} is beyond the log")
            env = open_entry(log.entry(index), platform)
        except (EntryError, LedgerError):
            report.wrong.append(rid)
            continue
        want = {"record": rid, "commitment": commitment_of(chain_hash, salt)}
        if env.type != "audit" or env.subject != f"audit/{rid}" or env.body != want:
            report.wrong.append(rid)
    return report
