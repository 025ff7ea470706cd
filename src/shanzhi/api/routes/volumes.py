"""/volumes: the disks that follow replicas' ordinals: list, inspect, delete once released."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from shanzhi.api import schemas
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.rbac import Principal
from shanzhi.services import volumes as svc
from shanzhi.store.tables import VolumeRecord

router = APIRouter(prefix="/volumes", tags=["volumes"])


def _out(v: VolumeRecord) -> schemas.VolumeOut:
    return schemas.VolumeOut(
        key=v.key,
        vdc=v.vdc.path,
        app=v.app_name,
        component=v.component,
        ordinal=v.ordinal,
        name=v.name,
        cloud=v.cloud.name,
        size=v.size,
        mount_path=v.mount_path,
        reclaim=v.reclaim,
        state=v.state,
        instance=v.instance,
        created_at=v.created_at,
    )


@router.get("", response_model=list[schemas.VolumeOut])
def list_volumes(
    app: str | None = Query(None),
    vdc: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.VolumeOut]:
    with rt.db.session() as s, s.begin():
        return [_out(v) for v in svc.list_volumes(s, app, vdc, p.scope("app.read"))]


@router.get("/{key}", response_model=list[schemas.VolumeOut])
def get_volume(key: str, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> list[schemas.VolumeOut]:
    """A volume on every cloud its ordinal has a disk on."""
    with rt.db.session() as s, s.begin():
        return [_out(v) for v in svc.get_volume(s, key, p.scope("app.read"))]


@router.delete("/{key}", status_code=202, response_model=list[schemas.VolumeOut])
def delete_volume(
    request: Request,
    key: str,
    cloud: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.VolumeOut]:
    """Delete a released volume (no replica uses it): its disk goes at the next pass."""
    with transaction(request) as s:
        found = svc.get_volume(s, key, p.scope("app.read"))
        require(p, "app.write", found[0].vdc.path, visible="app.read")
        request.state.target = f"volume {key}"
        out = [_out(v) for v in svc.delete_volume(s, key, cloud, p.scope("app.write"))]
    rt.wake()
    return out
