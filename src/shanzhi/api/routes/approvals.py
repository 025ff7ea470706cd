"""/approvals and /approval-rules: held applies, their stages and decisions, and the rules."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api import views
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import Id
from shanzhi.domain.rbac import Principal
from shanzhi.services import approvals as svc

router = APIRouter(tags=["approvals"])


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vdc: str
    name: str
    conditions: dict[str, Any] = Field(description="cpuOver (cpu), sites (list), always (bool): any one holding")
    stages: list[list[str]] = Field(min_length=1, description="in order; any approver of a stage passes it")
    expire_hours: int = Field(72, ge=1, le=24 * 90)


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field("", max_length=2000)


class CommentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, max_length=2000)


def _rule(r: Any) -> dict[str, Any]:
    return {
        "id": r.id,
        "vdc": r.vdc.path,
        "name": r.name,
        "conditions": r.conditions,
        "stages": r.stages["stages"],
        "expire_hours": r.expire_hours,
    }


@router.get("/approvals")
def list_requests(
    status: Literal["pending", "approved", "rejected", "expired", "failed"] | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[dict[str, Any]]:
    """Requests you made, you may decide, or that are in VDCs you can see."""
    with rt.db.session() as s, s.begin():
        return [views.approval(r) for r in svc.list_requests(s, p, status)]


@router.get("/approvals/{request_id}")
def get_request(request_id: Id, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    with rt.db.session() as s, s.begin():
        return views.approval(svc.get_request(s, p, request_id))


def _decide(request: Request, rt: Runtime, p: Principal, request_id: Id, approve: bool, note: str) -> dict[str, Any]:
    request.state.target = f"approval {request_id}"
    with transaction(request) as s:
        out = views.approval(svc.decide(s, p, request_id, approve, note))
    if out["status"] == "approved":
        rt.wake()
    return out


@router.post("/approvals/{request_id}/approve")
def approve(
    request: Request,
    request_id: Id,
    body: DecisionIn,
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    """Pass the current stage; passing the last one carries out the held apply or delete."""
    return _decide(request, rt, p, request_id, True, body.comment)


@router.post("/approvals/{request_id}/reject")
def reject(
    request: Request,
    request_id: Id,
    body: DecisionIn,
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> dict[str, Any]:
    return _decide(request, rt, p, request_id, False, body.comment)


@router.post("/approvals/{request_id}/comment")
def comment(request: Request, request_id: Id, body: CommentIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    request.state.target = f"approval {request_id}"
    with transaction(request) as s:
        return views.approval(svc.comment(s, p, request_id, body.text))


@router.get("/approval-rules")
def list_rules(p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    with rt.db.session() as s, s.begin():
        return [_rule(r) for r in svc.list_rules(s, p.scope("approval.read"))]


@router.post("/approval-rules", status_code=201)
def add_rule(request: Request, body: RuleIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    request.state.target = f"approval rule {body.vdc}/{body.name}"
    require(p, "approval.rules", body.vdc, visible="approval.read")
    with transaction(request) as s:
        return _rule(svc.add_rule(s, body.vdc, body.name, body.conditions, body.stages, body.expire_hours))


@router.delete("/approval-rules/{rule_id}")
def delete_rule(request: Request, rule_id: Id, p: Principal = Depends(principal)) -> dict[str, Any]:
    with transaction(request) as s:
        r = svc.get_rule(s, rule_id, p.scope("approval.read"))
        require(p, "approval.rules", r.vdc.path, visible="approval.read")
        out = _rule(r)
        s.delete(r)
    return out
