"""Turning store rows into response bodies."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter
from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.api import schemas
from shanzhi.domain.quota import Usage, rollup
from shanzhi.providers import credentials
from shanzhi.services.apps import AppRow
from shanzhi.store.tables import App, ApprovalRequest, Cloud, Instance, Vdc, VolumeRecord


def cloud(
    c: Cloud, used: tuple[int, int, int], hosts: bool = False, host_used: dict[str, tuple[int, int, int]] | None = None
) -> schemas.CloudOut:
    out = schemas.CloudOut(
        name=c.name,
        kind=c.kind,
        site=c.site.name,
        region=c.region,
        tags=c.tags,
        options=credentials.public(c.options),
        health=c.health,
        health_message=c.health_message,
        draining=c.draining,
        fenced_by_plan=c.fenced_by_plan,
        hosts=len(c.hosts),
        healthy_hosts=sum(1 for h in c.hosts if h.healthy),
        capacity=schemas.Resources(
            cpu=sum(h.cpu for h in c.hosts),
            memory=sum(h.memory for h in c.hosts),
            instances=sum(h.max_instances for h in c.hosts),
        ),
        used=schemas.Resources(cpu=used[0], memory=used[1], instances=used[2]),
        created_at=c.created_at,
    )
    if hosts:
        hu = host_used or {}
        out.host_list = [
            schemas.HostOut(
                name=h.name,
                cpu=h.cpu,
                memory=h.memory,
                max_instances=h.max_instances,
                healthy=h.healthy,
                used=schemas.Resources(
                    **dict(zip(("cpu", "memory", "instances"), hu.get(h.name, (0, 0, 0)), strict=True))
                ),
            )
            for h in c.hosts
        ]
    return out


def vdc(v: Vdc, parent: str | None, usage_by_vdc: dict[str, Usage], apps: int) -> schemas.VdcOut:
    u = rollup(v.path, usage_by_vdc)
    return schemas.VdcOut(
        path=v.path,
        parent=parent,
        quota=schemas.Resources(
            cpu=v.quota_cpu, memory=v.quota_memory, instances=v.quota_instances, storage=v.quota_storage
        ),
        usage=schemas.Resources(cpu=u.cpu, memory=u.memory, instances=u.instances, storage=u.storage),
        strict=v.strict,
        apps=apps,
        created_at=v.created_at,
    )


def instance(r: Instance, explain: bool = False) -> schemas.InstanceOut:
    return schemas.InstanceOut(
        name=r.name,
        app=r.app.name,
        vdc=r.app.vdc.path,
        component=r.component,
        cloud=r.cloud.name if r.cloud else None,
        site=r.cloud.site.name if r.cloud else None,
        host=r.host,
        state=r.state,
        endpoint=r.endpoint,
        reason=r.reason,
        placement=r.placement,
        restarts=r.restarts,
        created_at=r.created_at,
        explain=r.explain if explain else None,
        ordinal=r.ordinal,
    )


def app(s: Session, a: App, detail: bool = False, *, new: bool = False) -> schemas.AppOut:
    """An app's summary (`detail`: with its spec and instances); a `new` one, made in this
    transaction, has no instances yet and none are looked for."""
    rows: list[Instance] = []
    if not new:
        q = select(Instance).where(Instance.app_id == a.id).order_by(Instance.component, Instance.name)
        rows = list(s.scalars(q))
    out = schemas.AppOut.model_validate(_summary(AppRow.of(a, tuple((r.component, r.state) for r in rows))))
    if detail:
        out.spec = a.spec
        out.instances = [instance(r, explain=True) for r in rows]
    return out


#: summaries are serialised as the plain dicts they are: the same JSON as `list[AppOut]` gives,
#: without building two models per app first (two thirds of a 20-app list's serialising)
_SUMMARIES = TypeAdapter(list[dict[str, Any]])


def apps_json(listed: list[AppRow]) -> bytes:
    """The JSON of `list[AppOut]` for these apps."""
    return _SUMMARIES.dump_json([_summary(a) for a in listed])


def _summary(a: AppRow) -> dict[str, Any]:
    """An app's summary (`AppOut`'s fields, in its order) from its components (of its stored
    spec) and its instances' states."""
    comps = []
    states = a.states
    for name, replicas in a.components:
        mine = [st for comp, st in states if comp == name and st not in ("terminating", "lost", "reserved")]
        ready = sum(1 for st in mine if st == "running")
        comps.append({"name": name, "desired": replicas, "ready": ready, "instances": len(mine)})
    if a.deleting:
        status = "Deleting"
    elif all(c["ready"] == c["desired"] and c["instances"] == c["desired"] for c in comps):
        status = "Ready"
    elif any(st == "pending" for _, st in states):
        status = "Unschedulable"
    else:
        status = "Progressing"
    return {
        "name": a.name,
        "vdc": a.vdc,
        "generation": a.generation,
        "status": status,
        "deleting": a.deleting,
        "components": comps,
        "created_at": a.created_at,
        "updated_at": a.updated_at,
        "spec": None,
        "instances": None,
    }


def approval(r: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": r.id,
        "vdc": r.vdc.path,
        "app": r.app,
        "action": r.action,
        "requester": r.requester,
        "status": r.status,
        "stage": r.stage,
        "stages": r.stages["stages"],
        "reasons": r.reasons["rules"],
        "comments": r.comments["comments"],
        "outcome": r.outcome,
        "created_at": r.created_at,
        "expires_at": r.expires_at,
        "decided_at": r.decided_at,
        "document": r.document,
    }


def volume(v: VolumeRecord) -> schemas.VolumeOut:
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
