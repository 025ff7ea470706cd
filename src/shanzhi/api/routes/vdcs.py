"""/vdcs: the organisation tree and its quotas. Paths contain '/', so they are path params."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shanzhi.api import schemas, views
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.quota import parent_of, parse_quota
from shanzhi.services import vdcs as svc
from shanzhi.store.tables import App, Vdc

router = APIRouter(prefix="/vdcs", tags=["vdcs"])


def _out(s: Session, v: Vdc) -> schemas.VdcOut:
    n = s.scalar(select(func.count()).select_from(App).where(App.vdc_id == v.id)) or 0
    return views.vdc(v, parent_of(v.path), svc.usage_by_vdc(s), n)


@router.post("", status_code=201, response_model=schemas.VdcOut)
def create_vdc(body: schemas.VdcIn, rt: Runtime = Depends(runtime)) -> schemas.VdcOut:
    with rt.db.session() as s, s.begin():
        v = svc.create_vdc(s, body.path, parse_quota(body.quota), parents=body.parents)
        return _out(s, v)


@router.get("", response_model=list[schemas.VdcOut])
def list_vdcs(rt: Runtime = Depends(runtime)) -> list[schemas.VdcOut]:
    with rt.db.session() as s, s.begin():
        usage = svc.usage_by_vdc(s)
        counts = dict(s.execute(select(App.vdc_id, func.count()).group_by(App.vdc_id)).all())
        return [views.vdc(v, parent_of(v.path), usage, counts.get(v.id, 0)) for v in svc.list_vdcs(s)]


@router.get("/{path:path}", response_model=schemas.VdcOut)
def get_vdc(path: str, rt: Runtime = Depends(runtime)) -> schemas.VdcOut:
    with rt.db.session() as s, s.begin():
        return _out(s, svc.get_vdc(s, path))


@router.put("/{path:path}/quota", response_model=schemas.VdcOut)
def set_quota(path: str, body: schemas.QuotaIn, rt: Runtime = Depends(runtime)) -> schemas.VdcOut:
    with rt.db.session() as s, s.begin():
        return _out(s, svc.set_quota(s, path, parse_quota(body.quota)))


@router.delete("/{path:path}", response_model=schemas.RemoveOut)
def delete_vdc(path: str, rt: Runtime = Depends(runtime)) -> schemas.RemoveOut:
    with rt.db.session() as s, s.begin():
        svc.delete_vdc(s, path)
    return schemas.RemoveOut(name=path, outcome="deleted")
