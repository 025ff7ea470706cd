"""/audit: read the audit trail, verify its hash chain, prune what is past retention."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import AwareDatetime, BaseModel, ConfigDict
from sqlalchemy import select

from shanzhi.api.audit import transaction
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import MAX_ID
from shanzhi.api.threads import slow
from shanzhi.domain.errors import InvalidInput
from shanzhi.ledger.audit_copies import check_copies
from shanzhi.store.audit import prune as prune_chain
from shanzhi.store.audit import verify_chain
from shanzhi.store.tables import AuditAnchor, AuditRecord, utcnow

router = APIRouter(prefix="/audit", tags=["audit"])


class PruneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    before: datetime | None = None  # default: now minus the retention period


@router.get("")
def records(
    since: int = Query(0, ge=0, le=MAX_ID, description="only records with id greater than this"),
    limit: int = Query(200, ge=1, le=5000),
    actor: str | None = Query(None, max_length=128, description="only this user's records"),
    path: str | None = Query(None, max_length=512, description="only requests whose path starts so: /api/v1/apps"),
    outcome: Literal["success", "denied", "error"] | None = Query(None, description="only this outcome"),
    after: AwareDatetime | None = Query(None, description="only records from this time on (ISO 8601, with its zone)"),
    before: AwareDatetime | None = Query(None, description="only records before this time (with its zone)"),
    rt: Runtime = Depends(runtime),
) -> list[dict[str, Any]]:
    """The trail, oldest first, a page at a time (`since` the last id seen), filtered."""
    with rt.db.reader.connect() as c:
        q = select(AuditRecord.__table__).where(AuditRecord.id > since)
        if actor is not None:
            q = q.where(AuditRecord.actor == actor)
        if path is not None:
            q = q.where(AuditRecord.path.startswith(path, autoescape=True))
        if outcome is not None:
            q = q.where(AuditRecord.outcome == outcome)
        if after is not None:
            q = q.where(AuditRecord.at >= after)
        if before is not None:
            q = q.where(AuditRecord.at < before)
        rows = c.execute(q.order_by(AuditRecord.id).limit(limit))
        return [dict(r._mapping) for r in rows]


@router.get("/verify")
@slow
def verify(rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    with rt.db.reader.connect() as c:
        report = verify_chain(c)
        anchor = c.execute(select(AuditAnchor.first_id, AuditAnchor.pruned).where(AuditAnchor.id == 1)).first()
        copies = check_copies(c, rt.ledger.log, rt.ledger.keys().get) if rt.ledger is not None else None
    problems = [p for p in (report.problem, copies.problem() if copies else "") if p]
    return {
        "ok": report.ok and (copies is None or copies.ok),
        "records": report.records,
        "problem": "; ".join(problems),
        "pruned": anchor.pruned if anchor else 0,
        "retention_days": rt.settings.audit_retention_days,
        "ledger_copies": copies.summary() if copies else None,
    }


@router.post("/prune")
def prune(request: Request, body: PruneIn, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Remove records older than the retention period (never younger ones)."""
    limit = utcnow() - timedelta(days=rt.settings.audit_retention_days)
    before = body.before or limit
    if before.tzinfo is None:
        raise InvalidInput("give 'before' with a time zone, e.g. 2026-01-01T00:00:00Z", field="before")
    if before > limit:
        raise InvalidInput(
            f"records are kept {rt.settings.audit_retention_days} days: 'before' may be at most "
            f"{limit:%Y-%m-%d %H:%M} UTC",
            field="before",
        )
    request.state.target = f"audit records before {before.isoformat()}"
    with transaction(request) as s:
        n = prune_chain(s, before)
    return {"pruned": n, "before": before}
