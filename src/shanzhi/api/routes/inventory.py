"""/inventory: what every cloud has (Shanzhi's and found there), each cloud's sync, and /adopt."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import MAX_ID, AdoptIn, SyncIn
from shanzhi.api.threads import slow
from shanzhi.domain.rbac import Principal
from shanzhi.providers.base import RESOURCE_KINDS
from shanzhi.services import inventory as svc

router = APIRouter(tags=["inventory"])
Kind = Literal["host", "server", "volume", "network", "image", "flavor"]
assert set(Kind.__args__) == set(RESOURCE_KINDS)  # type: ignore[attr-defined]


@router.get("/inventory")
def list_inventory(
    cloud: str | None = Query(None),
    kind: Kind | None = Query(None),
    unmanaged: bool = Query(False, description="only what Shanzhi did not create"),
    after: int = Query(0, ge=0, le=MAX_ID, description="page on: items with id greater than this"),
    limit: int = Query(200, ge=1, le=svc.MAX_PAGE),
    rt: Runtime = Depends(runtime),
) -> list[dict[str, Any]]:
    with rt.db.read() as s, s.begin():
        rows = svc.list_items(s, cloud=cloud, kind=kind, unmanaged=unmanaged, after=after, limit=limit)
        return [svc.as_json(r) for r in rows]


@router.get("/inventory/syncs")
def list_syncs(rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    """Per cloud: when its inventory was last synced (a whole listing, or by change), its size,
    what changed, its last error."""
    with rt.db.read() as s, s.begin():
        return [
            {
                "cloud": c.name,
                "kind": c.kind,
                "synced_at": r.synced_at.isoformat() if r and r.synced_at else None,
                "seconds": r.seconds if r else None,
                "items": r.items if r else 0,
                "changed": r.changed if r else 0,
                "mode": r.mode if r else None,  # full, or changes: only what changed since the last sync
                "error": r.error if r else "",
                "failures": r.failures if r else 0,
                "next_at": r.next_at.isoformat() if r else None,
            }
            for c, r in svc.syncs(s)
        ]


@router.post("/inventory/sync", status_code=202)
@slow
def sync_inventory(request: Request, body: SyncIn, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    with transaction(request) as s:
        clouds = svc.request_sync(s, body.cloud)
    rt.wake()
    return {"clouds": clouds}


@router.post("/adopt")
@slow
def adopt(
    request: Request, body: AdoptIn, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    with transaction(request) as s:
        out = svc.adopt(
            s, body.cloud, body.ids, body.vdc, body.app, body.component, dry_run=body.dry_run, author=p.user
        )
    if not body.dry_run:
        rt.wake()
    return out
