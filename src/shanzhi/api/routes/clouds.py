"""/clouds: register, list, inspect, drain/remove, and inject failures."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select

from shanzhi.api import schemas, views
from shanzhi.api.audit import transaction
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.threads import slow
from shanzhi.services import clouds as svc
from shanzhi.store.tables import Instance

router = APIRouter(prefix="/clouds", tags=["clouds"])


@router.post("", status_code=201, response_model=schemas.CloudOut)
@slow
def add_cloud(request: Request, body: schemas.CloudIn, rt: Runtime = Depends(runtime)) -> schemas.CloudOut:
    with transaction(request) as s:
        c = svc.add_cloud(
            s, body.name, body.kind, body.site, body.region, body.tags, body.options, body.credentials, rt.fleet.vault
        )
        out = views.cloud(c, (0, 0, 0))
    rt.wake()
    return out


@router.put("/{name}/credentials", response_model=schemas.CloudOut)
@slow
def set_credentials(
    request: Request, name: str, body: schemas.CredentialsIn, rt: Runtime = Depends(runtime)
) -> schemas.CloudOut:
    with transaction(request) as s:
        c = svc.set_credentials(s, name, body.credentials, rt.fleet.vault)
        out = views.cloud(c, svc.usage(s).get(c.id, (0, 0, 0)))
    rt.wake()
    return out


@router.get("", response_model=list[schemas.CloudOut])
def list_clouds(rt: Runtime = Depends(runtime)) -> list[schemas.CloudOut]:
    with rt.db.read() as s, s.begin():
        used = svc.usage(s)
        return [views.cloud(c, used.get(c.id, (0, 0, 0))) for c in svc.list_clouds(s)]


@router.get("/{name}", response_model=schemas.CloudOut)
def get_cloud(name: str, rt: Runtime = Depends(runtime)) -> schemas.CloudOut:
    with rt.db.read() as s, s.begin():
        c = svc.get_cloud(s, name)
        host_used = {
            h: (int(cpu or 0), int(mem or 0), int(n))
            for h, cpu, mem, n in s.execute(
                select(Instance.host, func.sum(Instance.cpu), func.sum(Instance.memory), func.count())
                .where(Instance.cloud_id == c.id, Instance.state != "lost")
                .group_by(Instance.host)
            )
            if h
        }
        return views.cloud(c, svc.usage(s).get(c.id, (0, 0, 0)), hosts=True, host_used=host_used)


@router.delete("/{name}", response_model=schemas.RemoveOut)
@slow
def remove_cloud(
    request: Request, name: str, drain: bool = Query(False), rt: Runtime = Depends(runtime)
) -> schemas.RemoveOut:
    with transaction(request) as s:
        cloud = svc.get_cloud(s, name)
        kind, options = cloud.kind, dict(cloud.options)
        outcome = svc.remove_cloud(s, name, drain=drain)
    if outcome == "removed":
        rt.fleet.remove(name, kind, options)
    rt.wake()
    return schemas.RemoveOut(name=name, outcome=outcome)


@router.post("/{name}/fail", response_model=schemas.RemoveOut)
@slow
def fail_cloud(
    request: Request, name: str, body: schemas.FailureIn, rt: Runtime = Depends(runtime)
) -> schemas.RemoveOut:
    with transaction(request) as s:
        svc.inject_failure(s, rt.fleet, name, body.host, recover=False)
    rt.wake()
    return schemas.RemoveOut(name=name, outcome="failed")


@router.post("/{name}/recover", response_model=schemas.RemoveOut)
@slow
def recover_cloud(
    request: Request, name: str, body: schemas.FailureIn, rt: Runtime = Depends(runtime)
) -> schemas.RemoveOut:
    with transaction(request) as s:
        svc.inject_failure(s, rt.fleet, name, body.host, recover=True)
    rt.wake()
    return schemas.RemoveOut(name=name, outcome="recovered")
