"""/apps: apply (create or update), list, inspect with placement reasons, delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Response

from shanzhi.api import schemas, views
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.spec import parse_app
from shanzhi.services import apps as svc

router = APIRouter(prefix="/apps", tags=["apps"])


@router.post("", response_model=schemas.ApplyOut)
def apply_app(
    response: Response,
    document: dict[str, Any] = Body(..., description="An App spec (apiVersion shanzhi.io/v1, kind App)"),
    rt: Runtime = Depends(runtime),
) -> schemas.ApplyOut:
    spec = parse_app(document)
    with rt.db.session() as s, s.begin():
        app, outcome = svc.apply_app(s, spec)
        out = schemas.ApplyOut(app=views.app(s, app), outcome=outcome)
    response.status_code = 201 if outcome == "created" else 200
    if outcome != "unchanged":
        rt.wake()
    return out


@router.get("", response_model=list[schemas.AppOut])
def list_apps(vdc: str | None = Query(None), rt: Runtime = Depends(runtime)) -> list[schemas.AppOut]:
    with rt.db.session() as s, s.begin():
        return [views.app(s, a) for a in svc.list_apps(s, vdc)]


@router.get("/{name}", response_model=schemas.AppOut)
def get_app(name: str, vdc: str | None = Query(None), rt: Runtime = Depends(runtime)) -> schemas.AppOut:
    with rt.db.session() as s, s.begin():
        return views.app(s, svc.find_app(s, name, vdc), detail=True)


@router.delete("/{name}", status_code=202, response_model=schemas.AppOut)
def delete_app(name: str, vdc: str | None = Query(None), rt: Runtime = Depends(runtime)) -> schemas.AppOut:
    with rt.db.session() as s, s.begin():
        out = views.app(s, svc.delete_app(s, name, vdc))
    rt.wake()
    return out
