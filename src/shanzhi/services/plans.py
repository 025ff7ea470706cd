"""Re-placement plans over the live store: rebalance or evacuate, review, then apply.

The fleet as the store sees it (clouds, hosts, every placed replica of every app) becomes a
`FleetState`; the CP-SAT planner proposes moves; a plan is stored for review. Applying it
creates, for each move, a new replica on the target host that `replaces` the old one: the
reconciler starts it, waits until it is healthy, and only then stops the old one, so a
migration never loses service.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.domain.spec import AppSpec
from shanzhi.scheduler.fast import AppRequest, CloudInfo, FleetState, HostSpec
from shanzhi.scheduler.optimize import plan as optimise
from shanzhi.services.clouds import get_cloud
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, Cloud, Instance, PlanRecord, utcnow

PLACED = ("scheduled", "starting", "running", "unhealthy", "exited")


@dataclass
class _Snapshot:
    state: FleetState
    hosts: list[tuple[str, str]]  # host index -> (cloud, host name)
    replicas: dict[str, list[str]]  # app key -> instance names, in placement order


def snapshot(s: Session) -> _Snapshot:
    clouds = list(s.scalars(select(Cloud).order_by(Cloud.name)))
    infos = [CloudInfo(c.name, c.site.name, c.region, {str(k): str(v) for k, v in c.tags.items()}) for c in clouds]
    specs, names = [], []
    for c in clouds:
        for h in c.hosts:
            specs.append(HostSpec(c.name, h.cpu, h.memory, h.max_instances))
            names.append((c.name, h.name))
    state = FleetState(infos, specs)
    index = {key: i for i, key in enumerate(names)}  # FleetState keeps the cloud order given
    for i, c in enumerate(clouds):
        state.cloud_healthy[i] = c.health == "healthy" and not c.draining and c.fenced_by_plan is None
        for h in c.hosts:
            state.host_healthy[index[(c.name, h.name)]] = h.healthy and bool(state.cloud_healthy[i])
    replicas: dict[str, list[str]] = {}
    rows = list(s.scalars(select(Instance).join(App).where(App.deleting.is_(False), Instance.state.in_(PLACED))))
    in_flight = {r.replaces for r in rows if r.replaces}  # old replicas whose successor already exists
    by_key: dict[str, list[Instance]] = {}
    for r in rows:
        if r.name in in_flight:
            continue
        if r.cloud is not None and r.host is not None and (r.cloud.name, r.host) in index:
            by_key.setdefault(f"{r.app.vdc.path}/{r.app.name}/{r.component}", []).append(r)
    for key, insts in sorted(by_key.items()):
        spec = AppSpec.model_validate(insts[0].app.spec)
        comp = next(c for c in spec.spec.components if c.name == insts[0].component)
        p = spec.spec.placement
        req = AppRequest(
            key,
            comp.resources.cpu_millis,
            comp.resources.memory_bytes,
            len(insts),
            regions=frozenset(p.regions) if p.regions else None,
            tags=dict(p.clouds.tags),
            clouds=frozenset(p.clouds.names) if p.clouds.names else None,
            spread_over=p.spread.over if p.spread else None,
            min_groups=p.spread.min_groups if p.spread else 1,
            anti_affinity=p.anti_affinity is not None,
            strategy="binpack" if p.strategy == "binpack" else "least-allocated",
        )
        hosts = [index[(r.cloud.name, r.host)] for r in insts if r.cloud is not None and r.host is not None]
        state.apps[key] = req
        state.placement[key] = hosts
        state.charge(hosts, req.cpu, req.memory)
        replicas[key] = [r.name for r in insts]
    for r in s.scalars(select(Instance).where(Instance.state == "reserved")):  # standby room: held, never moved
        if r.cloud is not None and r.host is not None and (r.cloud.name, r.host) in index:
            state.charge([index[(r.cloud.name, r.host)]], r.cpu, r.memory)
    return _Snapshot(state, names, replicas)


def make_plan(
    s: Session, kind: str, cloud: str | None = None, target: float | None = None, time_limit: float = 10.0
) -> PlanRecord:
    if kind not in ("rebalance", "evacuate"):
        raise InvalidInput(f"unknown plan kind {kind!r}: rebalance or evacuate", field="kind")
    if kind == "evacuate":
        if cloud is None:
            raise InvalidInput("an evacuation plan needs the cloud to empty", field="cloud")
        get_cloud(s, cloud)
    if target is not None and not 0 < target <= 1:
        raise InvalidInput("target utilisation must be in (0, 1]", field="target_utilisation")
    if not 0 < time_limit <= 600:
        raise InvalidInput("time limit must be between 0 and 600 seconds", field="time_limit")
    snap = snapshot(s)
    p = optimise(
        snap.state,
        evacuate=[cloud] if cloud else (),
        target_utilisation=target if target is not None else (0.75 if kind == "rebalance" else None),
        time_limit=time_limit,
    )
    moves: list[dict[str, Any]] = []
    for mv in p.moves:
        src, dst = snap.hosts[mv.source], snap.hosts[mv.target]
        moves.append(
            {
                "instance": snap.replicas[mv.app][mv.replica],
                "app": mv.app,
                "from": {"cloud": src[0], "host": src[1]},
                "to": {"cloud": dst[0], "host": dst[1]},
                "reason": mv.reason,
            }
        )
    moving = {m["instance"] for m in moves}
    stranded = sorted(
        name
        for key, names in snap.replicas.items()
        for i, name in enumerate(names)
        if kind == "evacuate" and snap.hosts[snap.state.placement[key][i]][0] == cloud and name not in moving
    )
    record = PlanRecord(
        kind=kind,
        summary={
            "solver": p.status,
            "seconds": round(p.seconds, 3),
            "moves": len(moves),
            "stranded": p.stuck,
            "stranded_instances": stranded,  # replicas that must leave and have nowhere to go
            "cloud": cloud,
            "target_utilisation": target,
        },
        moves={"moves": moves},
    )
    s.add(record)
    s.flush()
    if kind == "evacuate":  # nothing new lands on a cloud being emptied while the plan is reviewed
        fenced = get_cloud(s, str(cloud))
        fenced.fenced_by_plan = record.id
    record_event(s, "PlanProposed", "plan", str(record.id), f"{kind} plan {record.id}: {len(moves)} moves ({p.status})")
    return record


def get_plan(s: Session, plan_id: int) -> PlanRecord:
    p = s.get(PlanRecord, plan_id)
    if p is None:
        raise NotFound(f"plan {plan_id} does not exist", field="id")
    return p


def apply(s: Session, plan_id: int) -> PlanRecord:
    """Start every move as a migration: a new replica on the target that replaces the old one."""
    p = get_plan(s, plan_id)
    if p.status != "proposed":
        raise Conflict(f"plan {plan_id} is already {p.status}", field="id")
    clouds = {c.name: c for c in s.scalars(select(Cloud))}
    for mv in p.moves.get("moves", []):
        old = s.scalar(select(Instance).where(Instance.name == mv["instance"]))
        target = clouds.get(mv["to"]["cloud"])
        if old is None or target is None or old.state not in PLACED:
            raise Conflict(f"plan {plan_id} is stale: {mv['instance']} changed since; make a new plan", field="id")
        new = Instance(
            name=f"{old.app.name}-{old.component}-{secrets.token_hex(3)}",
            app=old.app,
            component=old.component,
            spec_hash=old.spec_hash,
            cloud=target,
            host=mv["to"]["host"],
            cpu=old.cpu,
            memory=old.memory,
            storage=old.storage,
            state="scheduled",
            placement=f"plan {plan_id}: moved from {mv['from']['cloud']}/{mv['from']['host']} ({mv['reason']})",
            replaces=old.name,
            ordinal=old.ordinal,  # the same identity: its volumes move with it
        )
        s.add(new)
        record_event(
            s,
            "Migrating",
            "instance",
            old.name,
            f"moving to {target.name}/{new.host} as {new.name}",
            vdc=old.app.vdc.path,
            app=old.app.name,
        )
    p.status = "applied"
    p.applied_at = utcnow()
    _unfence(s, p)
    s.flush()
    return p


def move(s: Session, instance: str, cloud: str) -> PlanRecord:
    """Move one replica to `cloud` now: a one-move plan, applied at once (start new, wait healthy,
    stop old; for a replica with volumes: stop old, copy its disks, start new, then delete the source)."""
    old = s.scalar(select(Instance).where(Instance.name == instance))
    if old is None:
        raise NotFound(f"instance {instance} does not exist; see 'shanzhi instance list'", field="name")
    if old.state not in PLACED or old.cloud is None:
        raise Conflict(f"instance {instance} is {old.state}: only a placed replica moves", field="name")
    target = get_cloud(s, cloud)
    if target.id == old.cloud_id:
        raise InvalidInput(f"instance {instance} already runs on {cloud}", field="cloud")
    placement = AppSpec.model_validate(old.app.spec).spec.placement
    refused = placement.refuses_cloud(target.name, target.region, {str(k): str(v) for k, v in target.tags.items()})
    if refused is not None:
        raise InvalidInput(f"app {old.app.name}'s placement rules out {cloud}: {refused}", field="cloud")
    if target.health != "healthy" or target.draining or target.fenced_by_plan is not None:
        raise Conflict(f"cloud {cloud} takes no new placements now ({target.health_message or target.health})")
    used: dict[str, tuple[int, int, int]] = {}
    for r in s.scalars(select(Instance).where(Instance.cloud_id == target.id, Instance.state != "lost")):
        c, m, n = used.get(r.host or "", (0, 0, 0))
        used[r.host or ""] = (c + r.cpu, m + r.memory, n + 1)
    fits = [
        h
        for h in target.hosts
        if h.healthy
        and h.cpu - used.get(h.name, (0, 0, 0))[0] >= old.cpu
        and h.memory - used.get(h.name, (0, 0, 0))[1] >= old.memory
        and h.max_instances > used.get(h.name, (0, 0, 0))[2]
    ]
    if not fits:
        raise Conflict(f"cloud {cloud} has no host with room for {instance}", field="cloud")
    host = max(fits, key=lambda h: h.cpu - used.get(h.name, (0, 0, 0))[0])
    record = PlanRecord(
        kind="move",
        summary={"solver": "direct", "seconds": 0, "moves": 1, "stranded": 0, "cloud": cloud},
        moves={
            "moves": [
                {
                    "instance": old.name,
                    "app": f"{old.app.vdc.path}/{old.app.name}/{old.component}",
                    "from": {"cloud": old.cloud.name, "host": old.host},
                    "to": {"cloud": cloud, "host": host.name},
                    "reason": "moved by request",
                }
            ]
        },
    )
    s.add(record)
    s.flush()
    return apply(s, record.id)


def drop(s: Session, plan_id: int) -> PlanRecord:
    """Set a proposed plan aside: nothing moves, and the cloud it fenced takes placements again."""
    p = get_plan(s, plan_id)
    if p.status != "proposed":
        raise Conflict(f"plan {plan_id} is already {p.status}", field="id")
    p.status = "dropped"
    _unfence(s, p)
    record_event(s, "PlanDropped", "plan", str(p.id), f"{p.kind} plan {p.id} dropped")
    s.flush()
    return p


def _unfence(s: Session, p: PlanRecord) -> None:
    for c in s.scalars(select(Cloud).where(Cloud.fenced_by_plan == p.id)):
        c.fenced_by_plan = None
