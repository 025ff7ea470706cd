"""/volumes: the disks that follow replicas' ordinals: list, inspect, delete once released."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api import schemas, views
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.threads import slow
from shanzhi.domain.rbac import Principal
from shanzhi.services import volumes as svc
from shanzhi.store.events import record_event

router = APIRouter(prefix="/volumes", tags=["volumes"])


@router.get("", response_model=list[schemas.VolumeOut])
def list_volumes(
    app: str | None = Query(None),
    vdc: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[schemas.VolumeOut]:
    with rt.db.read() as s, s.begin():
        return [views.volume(v) for v in svc.list_volumes(s, app, vdc, p.scope("app.read"))]


@router.get("/{key}", response_model=list[schemas.VolumeOut])
def get_volume(key: str, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> list[schemas.VolumeOut]:
    """A volume on every cloud its ordinal has a disk on."""
    with rt.db.read() as s, s.begin():
        return [views.volume(v) for v in svc.get_volume(s, key, p.scope("app.read"))]


@router.delete("/{key}", status_code=202, response_model=list[schemas.VolumeOut])
@slow
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
        out = [views.volume(v) for v in svc.delete_volume(s, key, cloud, p.scope("app.write"))]
    rt.wake()
    return out


class SnapshotIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
    cloud: str | None = None


def _snap(request: Request, key: str, body: SnapshotIn, p: Principal, rt: Runtime, restore: bool) -> dict[str, Any]:
    with transaction(request) as s:
        v = svc.one_copy(s, key, body.cloud, p.scope("app.read"))
        require(p, "app.write", v.vdc.path, visible="app.read")
        request.state.target = f"volume {key} snapshot {body.name}"
        provider = rt.fleet.provider(v.cloud.name, v.cloud.kind, dict(v.cloud.options))
        downtime = provider.snapshot_volume(key, v.instance, body.name, restore=restore)
        what = "restored from" if restore else "snapshot"
        record_event(
            s,
            "VolumeRestored" if restore else "VolumeSnapshot",
            "volume",
            key,
            f"{what} {body.name} on {v.cloud.name}; {v.instance or 'no replica'} down {downtime:.1f}s",
            vdc=v.vdc.path,
            app=v.app_name,
        )
        return {
            "key": key,
            "cloud": v.cloud.name,
            "snapshot": body.name,
            "instance": v.instance,
            "downtime_seconds": round(downtime, 3),
            "outcome": "restored" if restore else "created",
        }


@router.post("/{key}/snapshots", status_code=201)
@slow
def snapshot(
    request: Request, key: str, body: SnapshotIn, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    """Snapshot a volume's disk. The replica using it is stopped meanwhile (a consistent disk);
    the answer says for how long."""
    return _snap(request, key, body, p, rt, restore=False)


@router.post("/{key}/restore")
@slow
def restore(
    request: Request, key: str, body: SnapshotIn, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    """Put a volume's disk back to a snapshot (the replica using it is stopped meanwhile)."""
    return _snap(request, key, body, p, rt, restore=True)


@router.get("/{key}/snapshots")
def snapshots(
    key: str, cloud: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> list[dict[str, Any]]:
    with rt.db.read() as s, s.begin():
        v = svc.one_copy(s, key, cloud, p.scope("app.read"))
        ref = (v.cloud.name, v.cloud.kind, dict(v.cloud.options))
    return rt.fleet.provider(*ref).volume_snapshots(key)
