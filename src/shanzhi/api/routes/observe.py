"""/instances, /events, /status: what runs where, what happened, and the server itself."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from shanzhi import __version__
from shanzhi.api import schemas, views
from shanzhi.api.auth import principal
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import MAX_ID
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
    with rt.db.session() as s, s.begin():
        q = select(Instance).join(App).join(Vdc).where(scope_filter(scope))
        q = q.order_by(Vdc.path, App.name, Instance.component, Instance.name)
        if app is not None:
            q = q.where(Instance.app_id == find_app(s, app, vdc, scope).id)
        elif vdc is not None:
            q = q.where((Vdc.path == vdc) | Vdc.path.startswith(vdc + "/", autoescape=True))
        if cloud is not None:
            q = q.where(Instance.cloud_id == get_cloud(s, cloud).id)
        return [views.instance(r) for r in s.scalars(q)]


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
    with rt.db.session() as s, s.begin():
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
        data_dir=str(rt.settings.data_dir),
    )
