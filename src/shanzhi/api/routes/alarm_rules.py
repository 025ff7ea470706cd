"""/alarm-rules and /alarm-silences: what raises alarms, and quieting them for a while."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import Id
from shanzhi.domain.alarm_rules import RuleIn
from shanzhi.domain.errors import Forbidden, NotFound
from shanzhi.domain.rbac import Principal
from shanzhi.services import alarm_rules as svc
from shanzhi.store.tables import AlarmSilence, utcnow

router = APIRouter(tags=["alarms"])


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    rule: int | None = Field(None, ge=1, description="only this rule's alarms")
    vdc: str | None = Field(None, description="only alarms in this VDC subtree (required for departments)")
    app: str | None = Field(None, max_length=63)
    for_: str = Field("1h", alias="for", max_length=16, description="how long: 30m, 4h, 7d (at most 30d)")
    comment: str = Field("", max_length=2000)


def _may_write(p: Principal, vdc: str | None) -> None:
    if vdc is None:
        if not p.scope("app.write").everywhere:
            raise Forbidden(f"{p.user} ({p.label}) may only act on alarms of their VDCs: give vdc", field="vdc")
        return
    require(p, "app.write", vdc, visible="app.read")


@router.get("/alarm-rules")
def list_rules(p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    """Rules in the caller's VDCs (platform rules: for those who see everything)."""
    with rt.db.session() as s, s.begin():
        return [svc.rule_out(r) for r in svc.list_rules(s, p.scope("app.read"))]


@router.post("/alarm-rules", status_code=201)
def add_rule(request: Request, body: RuleIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    """A rule on a metric of the replicas in a VDC subtree (`above`/`below`/`absent` for a duration)
    or on events by reason."""
    request.state.target = f"alarm rule {body.name}" + (f" in {body.vdc}" if body.vdc else "")
    _may_write(p, body.vdc)
    with transaction(request) as s:
        return svc.rule_out(svc.add_rule(s, body, p.user))


@router.delete("/alarm-rules/{rule_id}")
def delete_rule(request: Request, rule_id: Id, p: Principal = Depends(principal)) -> dict[str, Any]:
    with transaction(request) as s:
        rule = svc.get_rule(s, rule_id, p.scope("app.read"))
        request.state.target = f"alarm rule {rule.name}"
        _may_write(p, rule.vdc)
        s.delete(rule)
        return {"deleted": rule_id}


@router.get("/alarm-silences")
def list_silences(p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    """Silences still in force, in the caller's VDCs."""
    with rt.db.session() as s, s.begin():
        return [svc.silence_out(x) for x in svc.list_silences(s, p.scope("app.read"), utcnow())]


@router.post("/alarm-silences", status_code=201)
def add_silence(request: Request, body: SilenceIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    """Record matching alarms without notifying anyone, until the silence ends."""
    request.state.target = f"alarm silence for {body.for_}"
    _may_write(p, body.vdc)
    with transaction(request) as s:
        rule = svc.get_rule(s, body.rule, p.scope("app.read")) if body.rule is not None else None
        silence = svc.add_silence(
            s, rule=rule, vdc=body.vdc, app=body.app, duration=body.for_, comment=body.comment, by=p.user
        )
        return svc.silence_out(silence)


@router.delete("/alarm-silences/{silence_id}")
def delete_silence(request: Request, silence_id: Id, p: Principal = Depends(principal)) -> dict[str, Any]:
    """End a silence now."""
    with transaction(request) as s:
        silence = s.get(AlarmSilence, silence_id)
        if silence is None or not (p.scope("app.read").everywhere or p.scope("app.read").contains(silence.vdc)):
            raise NotFound(f"no alarm silence {silence_id}", field="silence_id")
        _may_write(p, silence.vdc)
        silence.until = utcnow()
        return svc.silence_out(silence)
