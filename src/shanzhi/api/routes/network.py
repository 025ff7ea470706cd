"""/flows and /alarms: the east-west traffic between workloads, and what deserves a look.

Both are VDC-scoped like every other read: a flow shows to whoever sees either of its ends'
VDCs; an alarm to whoever sees its VDC (platform-wide ones to those who see everything).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import TypeVar

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import Session

from shanzhi.api import schemas
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import MAX_ID
from shanzhi.domain.errors import Forbidden, InvalidInput, NotFound
from shanzhi.domain.rbac import Principal, Scope
from shanzhi.services.apps import find_app
from shanzhi.services.vdcs import scope_filter
from shanzhi.store.tables import Alarm, Flow, FlowHour, utcnow

router = APIRouter(tags=["network"])
_Out = TypeVar("_Out", bound=BaseModel)
_PROTO = {1: "icmp", 6: "tcp", 17: "udp"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> timedelta:
    m = _DURATION.match(text.strip())
    if not m:
        raise InvalidInput(f"since: {text!r} is not a duration like 30s, 10m, 2h or 1d", field="since")
    return timedelta(seconds=float(m.group(1)) * _UNIT[m.group(2)])


def _out(model: type[_Out], row: Flow | FlowHour) -> _Out:
    fields = {k: getattr(row, k) for k in model.model_fields if k != "proto"}
    return model(**fields, proto=_PROTO.get(row.proto, str(row.proto)))


def _touching(
    s: Session, table: type[Flow] | type[FlowHour], scope: Scope, app: str | None, vdc: str | None
) -> ColumnElement[bool]:
    """Rows with an end the caller may see, narrowed to an app's (or a VDC subtree's) traffic."""
    ends = ((table.src_vdc, table.src_app), (table.dst_vdc, table.dst_app))
    where = or_(*(scope_filter(scope, v) for v, _ in ends))
    if app is not None:
        found = find_app(s, app, vdc, scope)
        return and_(where, or_(*((a == found.name) & (v == found.vdc.path) for v, a in ends)))
    if vdc is not None:
        return and_(where, or_(*(or_(v == vdc, v.startswith(vdc + "/", autoescape=True)) for v, _ in ends)))
    return where


@router.get("/flows", response_model=list[schemas.FlowOut])
def list_flows(
    app: str | None = Query(None, description="flows from or to this app"),
    vdc: str | None = Query(None, description="flows from or to this VDC (and its subtree)"),
    verdict: str | None = Query(None, pattern="^(forwarded|dropped)$"),
    since: str | None = Query(None, description="only flows that started this long ago or later (10m, 2h)"),
    after: int = Query(0, ge=0, le=MAX_ID, description="only flows with an id greater than this (to follow)"),
    limit: int = Query(200, ge=1, le=5000),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.FlowOut]:
    """Flow records, newest last: 5-tuple, verdict and rule, bytes and packets both ways, start
    and end, and both ends' VDC, app and instance."""
    with rt.db.session() as s, s.begin():
        q = select(Flow).where(Flow.id > after, _touching(s, Flow, p.scope("app.read"), app, vdc))
        if verdict is not None:
            q = q.where(Flow.verdict == verdict)
        if since is not None:
            q = q.where(Flow.started_at >= utcnow() - parse_since(since))
        rows = list(s.scalars(q.order_by(Flow.id.desc()).limit(limit)))
        return [_out(schemas.FlowOut, f) for f in reversed(rows)]


@router.get("/flows/hourly", response_model=list[schemas.FlowHourOut])
def list_flow_hours(
    app: str | None = Query(None, description="traffic from or to this app"),
    vdc: str | None = Query(None, description="traffic from or to this VDC (and its subtree)"),
    since: str = Query("1d", description="hours this long ago or later (12h, 7d, 90d)"),
    limit: int = Query(1000, ge=1, le=10000),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.FlowHourOut]:
    """Flows summed per hour, app pair, verdict, protocol and port: kept 90 days, after the
    records themselves are gone."""
    with rt.db.session() as s, s.begin():
        q = select(FlowHour).where(
            _touching(s, FlowHour, p.scope("app.read"), app, vdc),
            FlowHour.verdict != "",  # an hour with no traffic keeps its place with an empty row
            FlowHour.hour >= utcnow() - parse_since(since),
        )
        rows = list(s.scalars(q.order_by(FlowHour.hour.desc(), FlowHour.id).limit(limit)))
        return [_out(schemas.FlowHourOut, h) for h in reversed(rows)]


@router.get("/alarms", response_model=list[schemas.AlarmOut])
def list_alarms(
    vdc: str | None = Query(None),
    kind: str | None = Query(None, max_length=32),
    open_only: bool = Query(False, alias="open", description="only alarms not acknowledged"),
    after: int = Query(0, ge=0, le=MAX_ID),
    limit: int = Query(200, ge=1, le=5000),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.AlarmOut]:
    scope = p.scope("app.read")
    with rt.db.session() as s, s.begin():
        q = select(Alarm).where(Alarm.id > after, scope_filter(scope, Alarm.vdc))
        if vdc is not None:
            q = q.where((Alarm.vdc == vdc) | Alarm.vdc.startswith(vdc + "/", autoescape=True))
        if kind is not None:
            q = q.where(Alarm.kind == kind)
        if open_only:
            q = q.where(Alarm.acknowledged_at.is_(None))
        rows = list(s.scalars(q.order_by(Alarm.id.desc()).limit(limit)))
        return [schemas.AlarmOut.model_validate(a, from_attributes=True) for a in reversed(rows)]


@router.post("/alarms/{alarm_id}/ack", response_model=schemas.AlarmOut)
def acknowledge_alarm(request: Request, alarm_id: int, p: Principal = Depends(principal)) -> schemas.AlarmOut:
    """Acknowledge an alarm (someone is on it): it stays, with who and when."""
    with transaction(request) as s:
        alarm = s.get(Alarm, alarm_id)
        if alarm is None or not p.scope("app.read").contains(alarm.vdc):  # a platform alarm: all-seeing only
            raise NotFound(f"no alarm {alarm_id}", field="alarm_id")
        if alarm.vdc is not None:
            require(p, "app.write", alarm.vdc, visible="app.read")
        elif not p.scope("app.write").everywhere:
            raise Forbidden(f"{p.user} ({p.label}) may not acknowledge platform alarms", field="alarm_id")
        if alarm.acknowledged_at is None:
            alarm.acknowledged_by, alarm.acknowledged_at = p.user, utcnow()
        s.flush()
        return schemas.AlarmOut.model_validate(alarm, from_attributes=True)
