"""Reading the metrics kept in the store: an app's or an instance's series over a window."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.dr import parse_duration
from shanzhi.domain.errors import InvalidInput
from shanzhi.domain.metrics import HOUR, MINUTE, RETENTION, SERIES
from shanzhi.store.tables import MetricPoint

MAX_POINTS = 20_000


def window(since: str) -> tuple[timedelta, int]:
    """A look-back window (`15m`, `6h`, `7d`) and the resolution that covers it."""
    try:
        seconds = parse_duration(since)
    except ValueError as err:
        raise InvalidInput(f"since: {err} (e.g. 15m, 6h, 7d)", field="since") from None
    span = timedelta(seconds=seconds)
    if span <= timedelta(0) or span > RETENTION[HOUR]:
        raise InvalidInput(f"since: {since} is outside what is kept (up to {RETENTION[HOUR].days}d)", field="since")
    return span, (MINUTE if span <= RETENTION[MINUTE] else HOUR)


def series(s: Session, *, app_id: int, since: str, now: datetime, instance: str | None = None) -> dict[str, Any]:
    """The points of an app (or one of its instances) in the window, oldest first, at the
    resolution that covers it."""
    span, resolution = window(since)
    q = (
        select(MetricPoint)
        .where(MetricPoint.app_id == app_id, MetricPoint.resolution == resolution, MetricPoint.at >= now - span)
        .order_by(MetricPoint.at, MetricPoint.instance)
        .limit(MAX_POINTS)
    )
    if instance is not None:
        q = q.where(MetricPoint.instance == instance)
    points = [
        {"instance": p.instance, "component": p.component, "at": p.at, "samples": p.samples}
        | {name: getattr(p, name) for name in SERIES}
        | ({"custom": p.custom} if p.custom else {})
        for p in s.scalars(q)
    ]
    return {"resolution": resolution, "since": now - span, "points": points}
