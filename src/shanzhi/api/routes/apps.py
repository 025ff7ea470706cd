"""/apps: apply (create, update, or hold for approval), list, inspect with placement reasons, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from shanzhi.api import schemas, views
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.rbac import Principal
from shanzhi.domain.spec import parse_app
from shanzhi.services import approvals
from shanzhi.services import apps as svc

router = APIRouter(prefix="/apps", tags=["apps"])


@router.post("", response_model=schemas.ApplyOut)
def apply_app(
    request: Request,
    response: Response,
    document: dict[str, Any] = Body(..., description="An App spec (apiVersion shanzhi.io/v1, kind App)"),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> schemas.ApplyOut:
    """Apply an app. If an approval rule of its VDC matches, nothing changes yet: the answer is
    202 with the approval request, and approving it applies the spec."""
    spec = parse_app(document)
    path = spec.metadata.vdc
    request.state.target = f"app {path}/{spec.metadata.name}"
    require(p, "app.write", path, visible="app.read")
    with transaction(request, response) as s:
        held = approvals.hold_if_needed(s, spec, p.user)
        if held is not None:
            response.status_code = 202
            request.state.audit_outcome = "held"
            return schemas.ApplyOut(app=None, outcome="held", approval=views.approval(held))
        app, outcome = svc.apply_app(s, spec)
        response.status_code = 201 if outcome == "created" else 200
        out = schemas.ApplyOut(app=views.app(s, app), outcome=outcome)
    if outcome != "unchanged":
        rt.wake()
    return out


@router.get("", response_model=list[schemas.AppOut])
def list_apps(
    vdc: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> list[schemas.AppOut]:
    with rt.db.session() as s, s.begin():
        return views.apps(s, svc.list_apps(s, vdc, p.scope("app.read")))


@router.get("/{name}", response_model=schemas.AppOut)
def get_app(
    name: str, vdc: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> schemas.AppOut:
    with rt.db.session() as s, s.begin():
        return views.app(s, svc.find_app(s, name, vdc, p.scope("app.read")), detail=True)


@router.delete("/{name}", status_code=202, response_model=schemas.ApplyOut)
def delete_app(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> schemas.ApplyOut:
    """Mark an app for deletion (its replicas stop, then it goes), or, where an approval rule
    covers deletes, hold the delete for approval (`outcome: held`) and change nothing."""
    with transaction(request) as s:
        app = svc.find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        request.state.target = f"app {app.vdc.path}/{app.name}"
        held = approvals.hold_delete_if_needed(s, app, p.user)
        if held is not None:
            request.state.audit_outcome = "held"
            return schemas.ApplyOut(app=views.app(s, app), outcome="held", approval=views.approval(held))
        out = schemas.ApplyOut(app=views.app(s, svc.delete_app(s, name, app.vdc.path)), outcome="deleting")
    rt.wake()
    return out
