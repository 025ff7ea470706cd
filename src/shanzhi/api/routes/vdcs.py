"""/vdcs: the organisation tree and its quotas. Paths contain '/', so they are path params.

A VDC admin changes VDCs *below* their own (create, re-quota, delete), never their own quota."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shanzhi.api import schemas, views
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.errors import Forbidden, NotFound
from shanzhi.domain.quota import parent_of, parse_quota
from shanzhi.domain.rbac import Principal
from shanzhi.services import vdcs as svc
from shanzhi.store.tables import App, Vdc

router = APIRouter(prefix="/vdcs", tags=["vdcs"])


def _out(s: Session, v: Vdc) -> schemas.VdcOut:
    n = s.scalar(select(func.count()).select_from(App).where(App.vdc_id == v.id)) or 0
    return views.vdc(v, parent_of(v.path), svc.usage_by_vdc(s, under=v.path), n)


def _may_change(p: Principal, path: str) -> None:
    """vdc.write on `path` needs it on the parent's subtree: VDC admins manage what is below them."""
    parent = parent_of(path)
    seen = p.scope("vdc.read")
    if not seen.contains(path) and not (parent is not None and seen.contains(parent)):
        raise NotFound(f"VDC {path} does not exist; see 'shanzhi vdc list'", field="path")
    if not p.scope("vdc.write").contains(parent):
        where = f"VDCs below {parent}" if parent else "top-level VDCs"
        raise Forbidden(f"{p.user} ({p.label}) may not change {where}", field="path")


@router.post("", status_code=201, response_model=schemas.VdcOut)
def create_vdc(
    request: Request, body: schemas.VdcIn, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> schemas.VdcOut:
    request.state.target = f"vdc {body.path}"
    _may_change(p, body.path)
    with transaction(request) as s:
        v = svc.create_vdc(s, body.path, parse_quota(body.quota), parents=body.parents, strict=body.strict)
        return _out(s, v)


@router.get("", response_model=list[schemas.VdcOut])
def list_vdcs(p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> list[schemas.VdcOut]:
    with rt.db.read() as s, s.begin():
        usage = svc.usage_by_vdc(s)
        counts = dict(s.execute(select(App.vdc_id, func.count()).group_by(App.vdc_id)).all())
        return [
            views.vdc(v, parent_of(v.path), usage, counts.get(v.id, 0)) for v in svc.list_vdcs(s, p.scope("vdc.read"))
        ]


@router.get("/{path:path}", response_model=schemas.VdcOut)
def get_vdc(path: str, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> schemas.VdcOut:
    with rt.db.read() as s, s.begin():
        return _out(s, svc.get_vdc(s, path, p.scope("vdc.read")))


@router.put("/{path:path}/quota", response_model=schemas.VdcOut)
def set_quota(
    request: Request,
    path: str,
    body: schemas.QuotaIn,
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> schemas.VdcOut:
    request.state.target = f"vdc {path}"
    _may_change(p, path)
    with transaction(request) as s:
        return _out(s, svc.set_quota(s, path, parse_quota(body.quota), strict=body.strict))


@router.delete("/{path:path}", response_model=schemas.RemoveOut)
def delete_vdc(
    request: Request, path: str, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> schemas.RemoveOut:
    request.state.target = f"vdc {path}"
    _may_change(p, path)
    with transaction(request) as s:
        svc.delete_vdc(s, path)
    return schemas.RemoveOut(name=path, outcome="deleted")
