"""The inventory as users see it (listing, per-cloud sync state) and adopting what it found.

Adopting turns servers a cloud already runs, which Shanzhi did not create (a legacy system
moving onto the platform), into an app in a VDC without restarting them: the app's spec is
written from what the inventory knows of them (image, size, open ports, zone), its replicas
are recorded as `adopting` with the cloud's id of each, and the reconciler then has the cloud
name them (EC2: tags), after which they are healed, metered and audited like any replica.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.domain.spec import AppSpec
from shanzhi.services.apps import apply_app
from shanzhi.services.clouds import get_cloud
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, Cloud, Instance, InventoryItem, InventorySync, Vdc, utcnow

MAX_PAGE = 1000


def list_items(
    s: Session,
    *,
    cloud: str | None = None,
    kind: str | None = None,
    unmanaged: bool = False,
    after: int = 0,
    limit: int = 200,
) -> list[InventoryItem]:
    q = select(InventoryItem).where(InventoryItem.id > after).order_by(InventoryItem.id).limit(limit)
    if cloud is not None:
        q = q.where(InventoryItem.cloud_id == get_cloud(s, cloud).id)
    if kind is not None:
        q = q.where(InventoryItem.kind == kind)
    if unmanaged:
        q = q.where(InventoryItem.managed.is_(False))
    return list(s.scalars(q))


def syncs(s: Session) -> list[tuple[Cloud, InventorySync | None]]:
    held = {r.cloud_id: r for r in s.scalars(select(InventorySync))}
    return [(c, held.get(c.id)) for c in s.scalars(select(Cloud).order_by(Cloud.name))]


def request_sync(s: Session, cloud: str | None) -> list[str]:
    """Make clouds due for a sync now (all of them, or one); return their names."""
    clouds = [get_cloud(s, cloud)] if cloud else list(s.scalars(select(Cloud).order_by(Cloud.name)))
    now = utcnow()
    for c in clouds:
        row = s.get(InventorySync, c.id)
        if row is None:
            s.add(InventorySync(cloud_id=c.id, seconds=0.0, items=0, changed=0, error="", failures=0, next_at=now))
        else:
            row.next_at = now
    return [c.name for c in clouds]


def _servers(s: Session, cloud: Cloud, ids: Sequence[str]) -> list[InventoryItem]:
    if not ids:
        raise InvalidInput("name at least one server to adopt (its id on the cloud)", field="ids")
    if len(set(ids)) != len(ids):
        raise InvalidInput("a server is named twice", field="ids")
    rows = {
        r.external_id: r
        for r in s.scalars(
            select(InventoryItem).where(
                InventoryItem.cloud_id == cloud.id, InventoryItem.kind == "server", InventoryItem.external_id.in_(ids)
            )
        )
    }
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFound(
            f"cloud {cloud.name}'s inventory has no server {', '.join(missing)}; "
            "see 'shanzhi inventory list --unmanaged' (or 'shanzhi inventory sync' first)",
            field="ids",
        )
    managed = [i for i in ids if rows[i].managed]
    if managed:
        raise Conflict(f"{', '.join(managed)} on {cloud.name} already belong to Shanzhi", field="ids")
    adopting = sorted(str(i) for i in s.scalars(select(Instance.adopted_from).where(Instance.adopted_from.in_(ids))))
    if adopting:
        raise Conflict(f"{', '.join(adopting)} already adopted by an app", field="ids")
    return [rows[i] for i in ids]


def _same(rows: list[InventoryItem], key: str) -> Any:
    values = {repr(r.attrs.get(key)) for r in rows}
    if len(values) > 1:
        raise InvalidInput(
            f"the servers differ in {key} ({', '.join(sorted(values))}): adopt them as separate apps",
            field="ids",
        )
    return rows[0].attrs.get(key)


def _slots(row: InventoryItem) -> int:
    """How many replicas one server stands for: a Kubernetes Deployment's replicas, else one."""
    return max(1, int(row.attrs.get("replicas") or 1))


def _largest(rows: list[InventoryItem], key: str) -> int | None:
    values = [int(r.attrs[key]) for r in rows if r.attrs.get(key) is not None]
    return max(values) if values else None


def proposal(s: Session, cloud: Cloud, rows: list[InventoryItem], vdc: str, app: str, component: str) -> dict[str, Any]:
    """The spec adopting `rows` writes: one component whose replicas they are."""
    comp: dict[str, Any] = {"name": component, "replicas": sum(_slots(r) for r in rows)}
    image = _same(rows, "image")
    if image:
        comp["image"] = image
    command = _same(rows, "command")
    ports = _same(rows, "ports") or []
    if command:  # a port written in the command becomes the platform's (a restart may get another)
        comp["run"] = {"command": [_port_variables(str(a), ports) for a in command]}
    itype = _same(rows, "instance_type")
    cpu, memory = _largest(rows, "cpu"), _largest(rows, "memory")  # sizes measured per server may differ
    if itype and cpu is None:
        flavor = s.scalar(
            select(InventoryItem).where(
                InventoryItem.cloud_id == cloud.id, InventoryItem.kind == "flavor", InventoryItem.external_id == itype
            )
        )
        if flavor is None:
            raise InvalidInput(f"cloud {cloud.name} lists no instance type {itype}: its size is unknown", field="ids")
        cpu, memory = flavor.attrs["cpu"], flavor.attrs["memory"]
    if cpu is not None and memory is not None:
        comp["resources"] = {"cpu": f"{int(cpu)}m", "memory": f"{int(memory) // 2**20}Mi"}
    comp["ports"] = [{"name": f"p{p}", "port": int(p)} for p in ports]
    if not image and not command:
        raise InvalidInput("the inventory knows neither the servers' image nor their command", field="ids")
    return {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": app, "vdc": vdc},
        "spec": {"components": [comp], "placement": {"clouds": {"names": [cloud.name]}}},
    }


def _port_variables(arg: str, ports: list[int]) -> str:
    for port in ports:
        arg = re.sub(rf"(?<![0-9]){int(port)}(?![0-9])", f"${{PORT_P{int(port)}}}", arg)
    return arg


def adopt(
    s: Session, cloud_name: str, ids: Sequence[str], vdc: str, app: str, component: str, *, dry_run: bool, author: str
) -> dict[str, Any]:
    """Adopt servers as a new app (or, dry run, show the spec it would write)."""
    cloud = get_cloud(s, cloud_name)
    rows = _servers(s, cloud, ids)
    body = proposal(s, cloud, rows, vdc, app, component)
    try:
        spec = AppSpec.model_validate(body)
    except ValueError as err:
        raise InvalidInput(f"the spec adopting would write is not valid: {err}", field="ids") from None
    hosts = [str(r.attrs.get("zone") or r.attrs.get("host") or "") for r in rows]
    slots = [(r, host) for r, host in zip(rows, hosts, strict=True) for _ in range(_slots(r))]
    out: dict[str, Any] = {"spec": body, "servers": [{"id": r.external_id, "name": r.name} for r in rows]}
    if dry_run:
        return out | {"outcome": "dry-run"}
    vdc_row = s.scalar(select(Vdc).where(Vdc.path == vdc))
    if vdc_row is not None and s.scalar(select(App.id).where(App.vdc_id == vdc_row.id, App.name == app)) is not None:
        raise Conflict(f"app {app} already exists in {vdc}: adopt into a new app", field="app")
    created, _ = apply_app(s, spec, author, cause=f"adopted {', '.join(ids)} from {cloud.name}")
    comp = spec.spec.components[0]
    want = comp.spec_hash(spec.spec.placement)
    names = []
    for ordinal, (r, host) in enumerate(slots):
        inst = Instance(
            name=f"{app}-{component}-{secrets.token_hex(3)}",
            app=created,
            component=component,
            spec_hash=want,
            cpu=comp.resources.cpu_millis,
            memory=comp.resources.memory_bytes,
            storage=comp.storage_bytes,
            state="adopting",
            reason=f"adopting {r.external_id} ({r.name}) from {cloud.name}",
            placement=f"adopted where it runs: {cloud.name}/{host}",
            ordinal=ordinal,
            cloud=cloud,
            host=host,
            adopted_from=r.external_id,
        )
        s.add(inst)
        names.append(inst.name)
    s.flush()
    record_event(
        s,
        "AppAdopted",
        "app",
        app,
        f"app {app} adopted {len(rows)} servers from {cloud.name}: {', '.join(ids)}",
        vdc=vdc,
        app=app,
    )
    return out | {"outcome": "adopted", "instances": names}


def as_json(item: InventoryItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "cloud": item.cloud.name,
        "kind": item.kind,
        "external_id": item.external_id,
        "name": item.name,
        "state": item.state,
        "managed": item.managed,
        "instance": item.instance,
        "attrs": item.attrs,
        "first_seen_at": _iso(item.first_seen_at),
        "updated_at": _iso(item.updated_at),
    }


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t is not None else None
