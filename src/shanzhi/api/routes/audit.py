"""/audit: read the audit trail and verify its hash chain."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from shanzhi.api.deps import Runtime, runtime
from shanzhi.store.audit import verify_chain
from shanzhi.store.tables import AuditRecord

router = APIRouter(prefix="/audit", tags=["audit"])


@router.get("")
def records(
    since: int = Query(0, ge=0, description="only records with id greater than this"),
    limit: int = Query(200, ge=1, le=5000),
    rt: Runtime = Depends(runtime),
) -> list[dict[str, Any]]:
    with rt.db.reader.connect() as c:
        rows = c.execute(
            select(AuditRecord.__table__).where(AuditRecord.id > since).order_by(AuditRecord.id).limit(limit)
        )
        return [dict(r._mapping) for r in rows]


@router.get("/verify")
def verify(rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    with rt.db.reader.connect() as c:
        report = verify_chain(c)
    return {"ok": report.ok, "records": report.records, "problem": report.problem}
