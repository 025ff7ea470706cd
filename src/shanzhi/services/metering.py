"""Chargeback: rates per cloud, metered records, bills per VDC subtree and period.

The records are written by the controller (`shanzhi.controllers.housekeeping.meter`). Money
is integer micro-yuan per unit-hour in the database and `Decimal` in reports.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import InvalidInput
from shanzhi.domain.rbac import Scope
from shanzhi.services.clouds import get_cloud
from shanzhi.services.vdcs import scope_filter
from shanzhi.store.tables import Rate, UsageRecord

GIB = 1 << 30
MICRO = Decimal(1_000_000)
MAX_RATE = Decimal(1_000_000)  # yuan per unit-hour: keeps every bill inside 64-bit micro-yuan


# ------------------------------------------------------------------ rates
def _micro(value: str | float | int, field: str) -> int:
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise InvalidInput(f"{field} must be a price like 0.05, not {value!r}", field=field) from None
    if not d.is_finite() or d < 0:
        raise InvalidInput(f"{field} must be a non-negative price, not {str(value)[:40]}", field=field)
    if d > MAX_RATE:
        raise InvalidInput(f"{field} is more than {MAX_RATE} per unit-hour: surely a mistake", field=field)
    return int(d * MICRO)


def set_rate(
    s: Session, cloud: str, cpu: str | float, memory: str | float, storage: str | float, currency: str
) -> Rate:
    get_cloud(s, cloud)
    r = s.get(Rate, cloud) or Rate(cloud=cloud)
    r.cpu, r.memory, r.storage = _micro(cpu, "cpu"), _micro(memory, "memory"), _micro(storage, "storage")
    r.currency = currency
    s.add(r)
    s.flush()
    return r


def rate_out(r: Rate) -> dict[str, Any]:
    return {
        "cloud": r.cloud,
        "cpu_core_hour": str(Decimal(r.cpu) / MICRO),
        "memory_gib_hour": str(Decimal(r.memory) / MICRO),
        "storage_gib_hour": str(Decimal(r.storage) / MICRO),
        "currency": r.currency,
    }


def list_rates(s: Session) -> list[Rate]:
    return list(s.scalars(select(Rate).order_by(Rate.cloud)))


# ------------------------------------------------------------------ reports
def _records(scope: Scope, vdc: str | None, start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    """Records of the hours in [start, end), in the caller's scope and in the subtree `vdc`."""
    where = [UsageRecord.hour >= start, UsageRecord.hour < end, scope_filter(scope, UsageRecord.vdc)]
    if vdc is not None:
        where.append(scope_filter(Scope(frozenset({vdc})), UsageRecord.vdc))
    return where


def usage_records(
    s: Session, scope: Scope, vdc: str | None, start: datetime, end: datetime, limit: int
) -> list[UsageRecord]:
    q = select(UsageRecord).where(*_records(scope, vdc, start, end))
    return list(s.scalars(q.order_by(UsageRecord.hour, UsageRecord.instance).limit(limit)))


@dataclass
class BillLine:
    vdc: str
    cloud: str
    instance_hours: Decimal
    cpu_core_hours: Decimal
    memory_gib_hours: Decimal
    storage_gib_hours: Decimal
    cost: Decimal
    currency: str

    def to_json(self) -> dict[str, Any]:
        return {k: (str(v.quantize(Decimal("0.0001"))) if isinstance(v, Decimal) else v) for k, v in vars(self).items()}


def bill(s: Session, scope: Scope, vdc: str | None, start: datetime, end: datetime) -> dict[str, Any]:
    """Chargeback for the VDC subtree `vdc` (or everything in scope) over [start, end):
    one line per VDC and cloud, and the total."""
    if end <= start:
        raise InvalidInput("the period is empty: 'to' must be after 'from'", field="to")
    q = (
        select(
            UsageRecord.vdc,
            UsageRecord.cloud,
            func.sum(UsageRecord.seconds),
            func.sum(UsageRecord.cpu * UsageRecord.seconds),
            func.sum(UsageRecord.memory * UsageRecord.seconds),
            func.sum(UsageRecord.storage * UsageRecord.seconds),
        )
        .where(*_records(scope, vdc, start, end))
        .group_by(UsageRecord.vdc, UsageRecord.cloud)
        .order_by(UsageRecord.vdc, UsageRecord.cloud)
    )
    rates = {r.cloud: r for r in list_rates(s)}
    lines = []
    hour = Decimal(3600)
    for path, cloud, secs, cpu_s, mem_s, sto_s in s.execute(q):
        core_h = Decimal(int(cpu_s or 0)) / 1000 / hour
        mem_h = Decimal(int(mem_s or 0)) / GIB / hour
        sto_h = Decimal(int(sto_s or 0)) / GIB / hour
        r = rates.get(cloud)
        cost = Decimal(0)
        if r is not None:
            cost = (core_h * r.cpu + mem_h * r.memory + sto_h * r.storage) / MICRO
        lines.append(
            BillLine(
                path, cloud, Decimal(int(secs or 0)) / hour, core_h, mem_h, sto_h, cost, r.currency if r else "CNY"
            )
        )
    totals: dict[str, Decimal] = defaultdict(Decimal)
    for ln in lines:
        for k in ("instance_hours", "cpu_core_hours", "memory_gib_hours", "storage_gib_hours", "cost"):
            totals[k] += getattr(ln, k)
    unpriced = sorted({ln.cloud for ln in lines if ln.cloud not in rates})
    return {
        "vdc": vdc,
        "from": start,
        "to": end,
        "lines": [ln.to_json() for ln in lines],
        "total": {k: str(v.quantize(Decimal("0.0001"))) for k, v in totals.items()},
        "unpriced_clouds": unpriced,
    }
