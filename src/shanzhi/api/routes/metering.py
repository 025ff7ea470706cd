"""/rates, /usage, /bill: prices per cloud, metered hours, chargeback per VDC subtree."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.errors import InvalidInput
from shanzhi.domain.rbac import Principal
from shanzhi.services import metering as svc

router = APIRouter(tags=["metering"])
PRICE = Field("0", description="yuan per unit-hour, e.g. '0.05'")


class RateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cpu: str | float = PRICE
    memory: str | float = PRICE
    storage: str | float = PRICE
    currency: str = Field("CNY", pattern="^[A-Z]{3}$")


def _period(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    for name, t in (("from", start), ("to", end)):
        if t.tzinfo is None:
            raise InvalidInput(f"give '{name}' with a time zone, e.g. 2026-11-01T00:00:00Z", field=name)
    return start, end


def _scope_vdc(p: Principal, vdc: str | None) -> None:
    if vdc is not None:
        require(p, "bill.read", vdc, visible="bill.read")  # outside the caller's bills: as if missing


@router.get("/rates")
def list_rates(rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    with rt.db.session() as s, s.begin():
        return [svc.rate_out(r) for r in svc.list_rates(s)]


@router.put("/rates/{cloud}")
def set_rate(request: Request, cloud: str, body: RateIn) -> dict[str, Any]:
    request.state.target = f"rates of cloud {cloud}"
    with transaction(request) as s:
        return svc.rate_out(svc.set_rate(s, cloud, body.cpu, body.memory, body.storage, body.currency))


@router.get("/usage")
def usage(
    start: datetime = Query(..., alias="from"),
    end: datetime = Query(..., alias="to"),
    vdc: str | None = Query(None, description="a VDC subtree"),
    limit: int = Query(1000, ge=1, le=100_000),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[dict[str, Any]]:
    """Metered records: one per instance per clock hour."""
    _period(start, end)
    _scope_vdc(p, vdc)
    with rt.db.session() as s, s.begin():
        rows = svc.usage_records(s, p.scope("bill.read"), vdc, start, end, limit)
        return [
            {
                "hour": u.hour,
                "instance": u.instance,
                "app": u.app,
                "vdc": u.vdc,
                "cloud": u.cloud,
                "cpu": u.cpu,
                "memory": u.memory,
                "storage": u.storage,
                "seconds": u.seconds,
            }
            for u in rows
        ]


@router.get("/bill")
def bill(
    start: datetime = Query(..., alias="from"),
    end: datetime = Query(..., alias="to"),
    vdc: str | None = Query(None, description="a VDC subtree (default: all you may see)"),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    _period(start, end)
    _scope_vdc(p, vdc)
    with rt.db.session() as s, s.begin():
        return svc.bill(s, p.scope("bill.read"), vdc, start, end)
