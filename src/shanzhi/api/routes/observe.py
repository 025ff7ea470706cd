"""/instances, /events, /status: what runs where, what happened, and the server itself."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi import __version__
from shanzhi.api import schemas, views
from shanzhi.api.auth import principal
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import MAX_ID
from shanzhi.domain.errors import Conflict, NotFound, ShanzhiError
from shanzhi.domain.rbac import Principal
from shanzhi.services.apps import find_app
from shanzhi.services.clouds import get_cloud
from shanzhi.services.vdcs import scope_filter
from shanzhi.store.tables import App, Event, Instance, Vdc

router = APIRouter(tags=["observe"])


@router.get("/instances", response_model=list[schemas.InstanceOut])
def list_instances(
    app: str | None = Query(None),
    vdc: str | None = Query(None),
    cloud: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.InstanceOut]:
    scope = p.scope("app.read")
    with rt.db.read() as s, s.begin():
        q = select(Instance).join(App).join(Vdc).where(scope_filter(scope))
        q = q.order_by(Vdc.path, App.name, Instance.component, Instance.name)
        if app is not None:
            q = q.where(Instance.app_id == find_app(s, app, vdc, scope).id)
        elif vdc is not None:
            q = q.where((Vdc.path == vdc) | Vdc.path.startswith(vdc + "/", autoescape=True))
        if cloud is not None:
            q = q.where(Instance.cloud_id == get_cloud(s, cloud).id)
        return [views.instance(r) for r in s.scalars(q)]


def _instance(s: Session, name: str, p: Principal) -> Instance:
    """The instance `name` among those the caller may read (others are exactly as missing)."""
    q = select(Instance).join(App).join(Vdc).where(Instance.name == name, scope_filter(p.scope("app.read")))
    found = s.scalar(q)
    if found is None:
        raise NotFound(f"instance {name} does not exist; see 'shanzhi instance list'", field="name")
    return found


@router.get("/instances/{name}", response_model=schemas.InstanceOut)
def get_instance(name: str, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> schemas.InstanceOut:
    """One replica: where it runs, its state and why, and why it was placed there."""
    with rt.db.read() as s, s.begin():
        inst = _instance(s, name, p)
        out = views.instance(inst, explain=True)
        cloud = (inst.cloud.name, inst.cloud.kind, dict(inst.cloud.options)) if inst.cloud else None
    if cloud is not None:
        try:
            out.provider = rt.fleet.provider(*cloud).describe(name)
        except (ShanzhiError, OSError) as err:
            out.provider = {"error": str(err)}
    return out


@router.get("/instances/{name}/logs", response_model=schemas.LogOut)
def instance_logs(
    name: str,
    tail: int = Query(64 * 1024, ge=1, le=4 * 2**20, description="at most this many bytes from the end"),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> schemas.LogOut:
    """The replica's output as its cloud keeps it (a process's stdout and stderr)."""
    with rt.db.read() as s, s.begin():
        inst = _instance(s, name, p)
        cloud = inst.cloud
        if cloud is None:
            raise Conflict(f"instance {name} is not placed yet: it has no log", field="name")
        kind, options = cloud.kind, dict(cloud.options)
        cloud_name = cloud.name
    chunk = rt.fleet.provider(cloud_name, kind, options).read_log(name, tail)
    return schemas.LogOut(instance=name, cloud=cloud_name, text=chunk.text, size=chunk.size, truncated=chunk.truncated)


@router.get("/events", response_model=list[schemas.EventOut])
def list_events(
    app: str | None = Query(None),
    vdc: str | None = Query(None),
    since: int = Query(0, ge=0, le=MAX_ID, description="only events with id greater than this"),
    limit: int = Query(200, ge=1, le=5000),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.EventOut]:
    """Events in the caller's VDCs; platform events (clouds, plans) only for those who see all."""
    scope = p.scope("app.read")
    with rt.db.read() as s, s.begin():
        q = select(Event).where(Event.id > since, scope_filter(scope, Event.vdc))
        if app is not None:
            found = find_app(s, app, vdc, scope)
            q = q.where(Event.app == found.name, Event.vdc == found.vdc.path)
        elif vdc is not None:
            q = q.where((Event.vdc == vdc) | Event.vdc.startswith(vdc + "/", autoescape=True))
        rows = list(s.scalars(q.order_by(Event.id.desc()).limit(limit)))
        return [schemas.EventOut.model_validate(e, from_attributes=True) for e in reversed(rows)]


@router.get("/status", response_model=schemas.StatusOut)
async def status(rt: Runtime = Depends(runtime)) -> schemas.StatusOut:  # no I/O: no thread hop
    c = rt.controller
    return schemas.StatusOut(
        version=__version__,
        database=rt.db.engine.dialect.name,
        leader=bool(c and c.is_leader),
        controller_passes=c.passes if c else 0,
        reconcile_passes=c.reconcile_passes if c else 0,
        shards=len(c.shards.held) if c else 0,
        replicas=c.shards.members if c else 0,
        data_dir=str(rt.settings.data_dir),
    )
