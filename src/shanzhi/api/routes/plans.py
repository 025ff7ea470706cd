"""/plans: propose a rebalance or an evacuation, review it, apply it as migrations."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api.audit import transaction
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import Id
from shanzhi.api.threads import slow
from shanzhi.services import plans as svc
from shanzhi.store.tables import PlanRecord

router = APIRouter(prefix="/plans", tags=["plans"])


class PlanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["rebalance", "evacuate"]
    cloud: str | None = None
    target_utilisation: float | None = Field(None, gt=0, le=1)
    time_limit: float = Field(10.0, gt=0, le=600)


def _out(p: PlanRecord) -> dict[str, Any]:
    return {
        "id": p.id,
        "kind": p.kind,
        "status": p.status,
        "summary": p.summary,
        "moves": p.moves.get("moves", []),
        "created_at": p.created_at,
        "applied_at": p.applied_at,
    }


class MoveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instance: str
    cloud: str


@router.post("/moves", status_code=201)
@slow
def move(request: Request, body: MoveIn, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Move one replica to another cloud now (a one-move plan, applied): a replica with volumes is
    migrated cold (stopped, its disks copied, started there, then the source deleted)."""
    request.state.target = f"instance {body.instance}"
    with transaction(request) as s:
        out = _out(svc.move(s, body.instance, body.cloud))
    rt.wake()
    return out


@router.post("", status_code=201)
@slow
def propose(request: Request, body: PlanIn) -> dict[str, Any]:
    with transaction(request) as s:
        return _out(svc.make_plan(s, body.kind, body.cloud, body.target_utilisation, body.time_limit))


@router.get("/{plan_id}")
def get(plan_id: Id, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    with rt.db.session() as s, s.begin():
        return _out(svc.get_plan(s, plan_id))


@router.post("/{plan_id}/apply")
@slow
def apply(request: Request, plan_id: Id, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    with transaction(request) as s:
        out = _out(svc.apply(s, plan_id))
    rt.wake()
    return out


@router.delete("/{plan_id}")
def drop(request: Request, plan_id: Id) -> dict[str, Any]:
    """Drop a proposed plan: nothing moves, and the cloud an evacuation fenced takes placements again."""
    with transaction(request) as s:
        return _out(svc.drop(s, plan_id))
