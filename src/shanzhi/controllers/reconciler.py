"""The reconciler: one pass brings every app and cloud a step closer to its desired state.

A pass: sync clouds (health, hosts, instance listings) -> per app: probe health (outside any
transaction), then in one transaction update instance states, schedule new replicas and mark
surplus ones `terminating` -> call providers for what was decided -> remove orphans (provider
instances with no row) -> finish removals of drained clouds.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shanzhi.controllers import dr_members, health
from shanzhi.controllers.cleanup import finish_removals, reclaim_volumes, sweep_orphans
from shanzhi.controllers.fleet import Fleet
from shanzhi.domain.errors import ShanzhiError
from shanzhi.domain.spec import AppSpec, Component, Placement, volume_key
from shanzhi.network.addressing import (
    DEFAULT_POOL,
    DEFAULT_PREFIX,
    allocate_address,
    allocate_subnet,
    management_address,
)
from shanzhi.providers import (
    CloudStatus,
    InstanceRequest,
    NetworkAttachment,
    ObservedInstance,
    Provider,
    VolumeRequest,
)
from shanzhi.scheduler import Decision, HostState, Replica, Request
from shanzhi.scheduler.engine import Engine
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, Cloud, Host, Instance, VdcSubnet, VolumeRecord, utcnow

log = logging.getLogger("shanzhi.reconciler")

ACTIVE_EXCLUDED = ("terminating", "lost")
PROBED_STATES = ("starting", "running", "unhealthy")
STARTUP_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class _Action:
    kind: Literal["create", "delete", "restart", "adopt"]
    name: str
    cloud: str
    request: InstanceRequest | None = None
    source: str | None = None  # adopt: the cloud's id of what becomes this replica


@dataclass(frozen=True)
class _CloudRef:
    name: str
    kind: str
    options: dict[str, object]


def _backoff(restarts: int) -> timedelta:
    return timedelta(seconds=min(2 ** min(restarts, 6), 60))


class Reconciler:
    def __init__(
        self,
        db: Database,
        fleet: Fleet,
        *,
        failover_grace: float = 3.0,
        network_pool: str = DEFAULT_POOL,
        network_prefix: int = DEFAULT_PREFIX,
        full_resync: float = 0.0,
    ) -> None:
        self.db = db
        # an app whose replicas all run, as observed, with nothing changed since the last pass is
        # left alone, except in a full pass every `full_resync` seconds (0: every pass is full)
        self.full_resync = full_resync
        self._settled: dict[int, tuple[Any, ...]] = {}
        self._specs: dict[int, tuple[int, AppSpec]] = {}  # app id -> (generation, parsed spec)
        self._last_full = 0.0
        self.skipped = 0  # apps left alone in the last pass
        self.network_pool = network_pool
        self.network_prefix = network_prefix
        self.fleet = fleet
        self.failover_grace = timedelta(seconds=failover_grace)
        self._observed: dict[str, dict[str, ObservedInstance] | None] = {}
        self._probes: dict[str, health.ProbeState] = {}
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="probe")
        self._engine: Engine | None = None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ----------------------------------------------------------------- pass
    def run_once(self) -> None:
        self._engine = None  # the fleet state of this pass, built at its first placement
        self._sync_clouds()
        app_ids = self._probe_all()
        full = time.monotonic() - self._last_full >= self.full_resync
        now_settled = {} if full else self._settled_apps()
        self.skipped = 0
        for app_id in app_ids:
            if not full and app_id in now_settled and self._settled.get(app_id) == now_settled[app_id]:
                self.skipped += 1
                continue
            try:
                self._reconcile_app(app_id)
            except Exception:
                log.exception("reconciling app id %s failed; will retry next pass", app_id)
        if full:
            self._last_full = time.monotonic()
        if self.full_resync:
            self._settled = self._settled_apps()
        sweep_orphans(self.db, self.fleet, self._observed)
        reclaim_volumes(self.db, self.fleet)
        finish_removals(self.db, self.fleet)

    def _settled_apps(self) -> dict[int, tuple[Any, ...]]:
        """Apps whose every replica runs, on a healthy cloud that is neither draining nor fenced,
        observed running, passing its checks: each with a fingerprint of all of that (and its
        generation). Columns only, three queries: no ORM objects, no specs parsed."""
        with self.db.session() as s, s.begin():
            clouds = {
                cid: (name, health == "healthy" and not draining and fenced is None)
                for cid, name, health, draining, fenced in s.execute(
                    select(Cloud.id, Cloud.name, Cloud.health, Cloud.draining, Cloud.fenced_by_plan)
                )
            }
            apps = {
                aid: gen
                for aid, gen, deleting in s.execute(select(App.id, App.generation, App.deleting))
                if not deleting
            }
            rows = s.execute(
                select(
                    Instance.app_id,
                    Instance.name,
                    Instance.state,
                    Instance.spec_hash,
                    Instance.cloud_id,
                    Instance.host,
                    Instance.replaces,
                )
            ).all()
        per_app: dict[int, list[tuple[Any, ...]]] = {a: [] for a in apps}
        unsettled: set[int] = set()
        for app_id, name, state, spec_hash, cloud_id, host, replaces in rows:
            if app_id not in per_app:
                continue
            cloud = clouds.get(cloud_id) if cloud_id is not None else None
            obs = (self._observed.get(cloud[0]) or {}).get(name) if cloud else None
            probe = self._probes.get(name)
            if state != "running" or replaces or cloud is None or not cloud[1] or obs is None or obs.state != "running":
                unsettled.add(app_id)
                continue
            checks = (probe.successes > 0, probe.failures) if probe else None
            per_app[app_id].append((name, spec_hash, cloud_id, host, obs.endpoint, checks))
        return {a: (apps[a], tuple(sorted(r))) for a, r in per_app.items() if a not in unsettled}

    def _provider(self, ref: _CloudRef) -> Provider:
        return self.fleet.provider(ref.name, ref.kind, dict(ref.options))

    # --------------------------------------------------------------- clouds
    def _sync_clouds(self) -> None:
        with self.db.session() as s, s.begin():
            refs = [_CloudRef(c.name, c.kind, dict(c.options)) for c in s.scalars(select(Cloud))]
        results = {}
        for ref in refs:
            observed: dict[str, ObservedInstance] | None = None
            hosts = None
            try:  # building the provider opens its sealed credentials, which may fail too
                p = self._provider(ref)
                status = p.status()
                hosts = p.hosts()
                if status.healthy:
                    observed = {o.name: o for o in p.list_instances()}
            except (ShanzhiError, OSError, sqlite3.Error) as err:
                status = CloudStatus(False, str(err))
            self._observed[ref.name] = observed
            results[ref.name] = (status, hosts)
        for gone in set(self._observed) - {r.name for r in refs}:
            del self._observed[gone]
        with self.db.session() as s, s.begin():
            for cloud in s.scalars(select(Cloud)):
                if cloud.name not in results:
                    continue
                status, hosts = results[cloud.name]
                new_health = "healthy" if status.healthy else "down"
                if cloud.health != new_health:
                    record_event(
                        s,
                        "CloudHealthy" if status.healthy else "CloudDown",
                        "cloud",
                        cloud.name,
                        f"cloud {cloud.name} is {new_health}: {status.message}",
                        warning=not status.healthy,
                    )
                    cloud.health = new_health
                    cloud.health_changed_at = utcnow()
                cloud.health_message = status.message
                if hosts is not None:
                    existing = {h.name: h for h in cloud.hosts}
                    for info in hosts:
                        row = existing.pop(info.name, None)
                        if row is None:
                            row = Host(name=info.name, cpu=0, memory=0, max_instances=0)
                            cloud.hosts.append(row)
                        row.cpu, row.memory = info.cpu, info.memory
                        row.max_instances, row.healthy = info.max_instances, info.healthy
                    for stale in existing.values():
                        cloud.hosts.remove(stale)

    def _down_long_enough(self, cloud: Cloud, now: datetime) -> bool:
        return cloud.health == "down" and now - cloud.health_changed_at >= self.failover_grace

    # ----------------------------------------------------------------- apps
    def _reconcile_app(self, app_id: int) -> None:
        actions: list[_Action] = []
        with self.db.session() as s, s.begin():
            app = s.get(App, app_id)
            if app is None:
                return
            rows = list(s.scalars(select(Instance).where(Instance.app_id == app_id).order_by(Instance.id)))
            if app.deleting:
                for r in rows:
                    actions += self._terminate(s, r, "app deleted")
                if not rows:
                    record_event(
                        s, "AppDeleted", "app", app.name, f"app {app.name} deleted", vdc=app.vdc.path, app=app.name
                    )
                    for v in s.scalars(select(VolumeRecord).where(VolumeRecord.app_id == app.id)):
                        v.state = "deleting" if v.reclaim == "delete" else "released"
                        v.instance = None
                    s.delete(app)
            else:
                spec = AppSpec.model_validate(app.spec)
                names = {c.name for c in spec.spec.components}
                for r in rows:
                    if r.component not in names:
                        actions += self._terminate(s, r, f"component {r.component} removed from the spec")
                for comp in spec.spec.components:
                    comp_rows = [r for r in rows if r.component == comp.name]
                    actions += self._reconcile_component(s, app, spec, comp, comp_rows)
        self._execute(actions)

    def _probe_all(self) -> list[int]:
        """Run the due health probes of every app at once, outside any transaction.

        Returns the ids of all apps, read in the same snapshot.
        """
        with self.db.session() as s, s.begin():
            heads = s.execute(select(App.id, App.generation, App.deleting).order_by(App.id)).all()
            stale = [aid for aid, gen, deleting in heads if not deleting and self._specs.get(aid, (None,))[0] != gen]
            for i in range(0, len(stale), 500):  # specs parsed once per generation, not once per pass
                chunk = select(App.id, App.generation, App.spec).where(App.id.in_(stale[i : i + 500]))
                for aid, gen, body in s.execute(chunk):
                    self._specs[aid] = (gen, AppSpec.model_validate(body))
            probed = (
                select(Instance.name, Instance.app_id, Instance.component, Cloud.name)
                .outerjoin(Cloud, Instance.cloud_id == Cloud.id)
                .where(Instance.state.in_(PROBED_STATES))
            )
            rows = s.execute(probed).all()
        live = {aid for aid, _, deleting in heads if not deleting}
        known = {aid for aid, _, _ in heads}
        self._specs = {aid: v for aid, v in self._specs.items() if aid in known}
        specs = {aid: self._specs[aid][1] for aid in live if aid in self._specs}
        now = time.monotonic()
        jobs = []
        for name, app_id, comp_name, cloud in rows:
            spec = specs.get(app_id)
            comp = next((c for c in spec.spec.components if c.name == comp_name), None) if spec else None
            obs = (self._observed.get(cloud) or {}).get(name) if cloud else None
            if comp is None or comp.health is None or obs is None or obs.state != "running":
                continue
            port = health.probe_port(comp, obs.ports)
            state = self._probes.setdefault(name, health.ProbeState())
            if port is None or now - state.last < comp.health.period_seconds:
                continue
            host = (obs.endpoint or "127.0.0.1:0").rsplit(":", 1)[0]
            jobs.append((state, self._pool.submit(health.probe, comp.health, host, port)))
        for state, fut in jobs:
            health.update(state, fut.result())
        return [aid for aid, _, _ in heads]

    def _set_state(self, s: Session, r: Instance, state: str, reason: str | None = None) -> None:
        if r.state != state:
            r.state = state
            r.state_changed_at = utcnow()
        if reason is not None:
            r.reason = reason

    def _terminate(self, s: Session, r: Instance, why: str) -> list[_Action]:
        if r.state != "terminating":
            self._set_state(s, r, "terminating", why)
            record_event(s, "Terminating", "instance", r.name, why, vdc=r.app.vdc.path, app=r.app.name)
        if r.cloud is None:
            _release_volumes(s, r)
            s.delete(r)
            return []
        if self._observed.get(r.cloud.name) is None:
            return []  # cloud unreachable: delete once it answers again
        return [_Action("delete", r.name, r.cloud.name)]

    def _attach_volumes(self, s: Session, app: App, comp: Component, r: Instance) -> None:
        """The replica's volumes on its cloud: those its ordinal had there, else new ones (intent
        first: the provider creates the disk when it creates the replica)."""
        assert r.cloud is not None
        for v in comp.volumes:
            key = volume_key(app.vdc.path, app.name, comp.name, r.ordinal, v.name)
            rec = s.scalar(select(VolumeRecord).where(VolumeRecord.cloud_id == r.cloud.id, VolumeRecord.key == key))
            if rec is None:
                rec = VolumeRecord(
                    key=key,
                    vdc_id=app.vdc_id,
                    app_name=app.name,
                    component=comp.name,
                    ordinal=r.ordinal,
                    name=v.name,
                    cloud_id=r.cloud.id,
                    size=v.size_bytes,
                    mount_path=v.mount_path,
                    reclaim=v.reclaim_policy,
                )
                s.add(rec)
                record_event(
                    s,
                    "VolumeCreated",
                    "volume",
                    key,
                    f"{v.size} on {r.cloud.name} for {r.name}",
                    vdc=app.vdc.path,
                    app=app.name,
                )
            rec.app_id, rec.state, rec.instance, rec.reclaim = app.id, "attached", r.name, v.reclaim_policy

    def _homes(self, s: Session, app: App, comp: Component, placement: Placement) -> dict[int, str]:
        """Ordinal -> the healthy cloud, still allowed by the placement, holding its newest released disk."""
        q = (
            select(VolumeRecord)
            .where(VolumeRecord.app_id == app.id, VolumeRecord.component == comp.name)
            .where(VolumeRecord.state == "released")
            .order_by(VolumeRecord.released_at)
        )
        return {
            v.ordinal: v.cloud.name
            for v in s.scalars(q)
            if v.cloud.health == "healthy"
            and placement.refuses_cloud(v.cloud.name, v.cloud.region, {str(k): str(x) for k, x in v.cloud.tags.items()})
            is None
        }

    def _sources(self, s: Session, app: App, comp: Component, r: Instance) -> list[VolumeRecord]:
        """The released disks of this replica's ordinal on other clouds (where it ran before)."""
        keys = [volume_key(app.vdc.path, app.name, comp.name, r.ordinal, v.name) for v in comp.volumes]
        q = select(VolumeRecord).where(
            VolumeRecord.key.in_(keys), VolumeRecord.cloud_id != r.cloud_id, VolumeRecord.state == "released"
        )
        return list(s.scalars(q.order_by(VolumeRecord.released_at.desc())))

    def _finish_migration(self, s: Session, app: App, comp: Component, r: Instance) -> None:
        """The moved replica answers its health check: the source disks go, the downtime is told."""
        sources = self._sources(s, app, comp, r)
        if not sources:
            return
        target = r.cloud.name if r.cloud else "?"
        stopped = min((v.released_at for v in sources if v.released_at), default=None)
        downtime = f"; down {(utcnow() - stopped).total_seconds():.1f}s" if stopped else ""
        for v in sources:
            v.state = "deleting"
        record_event(
            s,
            "Migrated",
            "instance",
            r.name,
            f"{r.replaces} moved to {target} as {r.name} with its volumes "
            f"({', '.join(sorted({v.cloud.name for v in sources}))} -> {target}){downtime}",
            vdc=app.vdc.path,
            app=app.name,
        )
        r.replaces = None

    def _attachment(self, s: Session | None, app: App, r: Instance) -> NetworkAttachment | None:
        """The replica's place on the tenant fabric, when its cloud has one: its address (given
        once, from its VDC's subnet for the cloud's site, and kept while the row lives)."""
        cloud = r.cloud
        if cloud is None or not self.fleet.provider(cloud.name, cloud.kind, dict(cloud.options)).tenant_network:
            return None
        pool = self.network_pool
        if r.address is None:
            if s is None:
                return None
            subnet = s.scalar(
                select(VdcSubnet).where(VdcSubnet.vdc_id == app.vdc_id, VdcSubnet.site_id == cloud.site_id)
            )
            if subnet is None:
                cidr = allocate_subnet(pool, self.network_prefix, s.scalars(select(VdcSubnet.cidr)))
                subnet = VdcSubnet(vdc_id=app.vdc_id, site_id=cloud.site_id, cidr=cidr)
                s.add(subnet)
                record_event(
                    s,
                    "SubnetAllocated",
                    "vdc",
                    app.vdc.path,
                    f"VDC {app.vdc.path} gets {cidr} in site {cloud.site.name}",
                )
            net = ipaddress.ip_network(subnet.cidr)
            taken = [a for a in s.scalars(select(Instance.address).where(Instance.address.is_not(None))) if a]
            r.address = allocate_address(subnet.cidr, (a for a in taken if ipaddress.ip_address(a) in net))
            s.flush()
        return NetworkAttachment(r.address, pool, management_address(pool))

    def _request(self, app: App, comp: Component, r: Instance, s: Session | None = None) -> InstanceRequest:
        copy_from: dict[str, str] = {}
        if s is not None and comp.volumes:
            for v in self._sources(s, app, comp, r):
                copy_from.setdefault(v.key, v.cloud.name)  # the newest released copy
        command = tuple(comp.run.command) if comp.run else None
        env = dict(comp.run.env) if comp.run else dict(comp.env)
        if comp.kind == "postgres" and s is not None:
            command, env = dr_members.member_command(s, app, AppSpec.model_validate(app.spec), comp, r)
        return InstanceRequest(
            network=self._attachment(s, app, r),
            name=r.name,
            app=app.name,
            component=comp.name,
            vdc=app.vdc.path,
            host=r.host or "",
            cpu=r.cpu,
            memory=r.memory,
            command=command,
            env=env,
            ports=tuple((p.name, p.port) for p in comp.ports),
            image=comp.image,
            flavor=comp.flavor,
            health=comp.health,
            volumes=tuple(
                VolumeRequest(
                    key := volume_key(app.vdc.path, app.name, comp.name, r.ordinal, v.name),
                    v.name,
                    v.size_bytes,
                    v.mount_path,
                    copy_from.get(key),
                )
                for v in comp.volumes
            ),
        )

    def _observe_row(self, s: Session, app: App, comp: Component, r: Instance, now: datetime) -> list[_Action]:
        """Update one placed row from what its cloud reports; return provider actions."""
        cloud = r.cloud
        assert cloud is not None
        ev: dict[str, Any] = {"vdc": app.vdc.path, "app": app.name}
        obs = self._observed.get(cloud.name)
        if obs is None:
            if r.state != "lost" and self._down_long_enough(cloud, now):
                self._set_state(s, r, "lost", f"cloud {cloud.name} unreachable: {cloud.health_message}")
                record_event(s, "InstanceLost", "instance", r.name, r.reason, warning=True, **ev)
            return []
        o = obs.get(r.name)
        if r.state == "lost":
            return self._terminate(s, r, f"cloud {cloud.name} is back; a replacement already runs elsewhere")
        if r.state == "adopting" and o is None:  # its cloud does not know it by its name yet
            return [_Action("adopt", r.name, cloud.name, self._request(app, comp, r, s), r.adopted_from)]
        if o is None and comp.volumes and r.replaces:
            # a cold migration: the replica it replaces stops first, so its disks are copied consistent
            old = s.scalar(select(Instance).where(Instance.name == r.replaces))
            if old is not None:
                if old.state != "terminating":
                    r.reason = f"waiting for {old.name} to stop: its volumes move with it (cold migration)"
                return self._terminate(s, old, f"cold migration to {cloud.name} as {r.name}")
        if o is None and comp.volumes:
            self._attach_volumes(s, app, comp, r)
        create = _Action("create", r.name, cloud.name, self._request(app, comp, r, s))
        if o is None:
            if r.state in ("scheduled", "pending"):
                return [create]
            r.restarts += 1
            self._probes.pop(r.name, None)
            self._set_state(s, r, "scheduled", "instance vanished from its cloud; recreating it")
            record_event(s, "InstanceVanished", "instance", r.name, r.reason, warning=True, **ev)
            return [create]
        probes = self.fleet.provider(cloud.name, cloud.kind, dict(cloud.options)).probes_endpoints
        r.endpoint = o.endpoint
        r.metrics_url = health.metrics_url(comp, o) if probes else None
        if o.state == "failed":
            return self._terminate(s, r, f"instance failed: {o.detail}")
        if o.state == "exited":
            if r.state != "exited":
                self._set_state(s, r, "exited", f"process exited ({o.detail})")
                record_event(s, "InstanceExited", "instance", r.name, r.reason, warning=True, **ev)
            if now - r.state_changed_at >= _backoff(r.restarts):
                r.restarts += 1
                self._probes.pop(r.name, None)  # a new process: its start-up is judged afresh
                self._set_state(s, r, "scheduled", f"restarting (restart #{r.restarts})")
                record_event(s, "InstanceRestarting", "instance", r.name, r.reason, **ev)
                return [_Action("restart", r.name, cloud.name, create.request)]
            return []
        if o.state == "starting":
            self._set_state(s, r, "starting", "booting")
            return []
        if comp.health is None or not probes:
            if r.state != "running":
                self._set_state(s, r, "running", "process is running" if probes else "running")
                if comp.volumes and r.replaces:
                    self._finish_migration(s, app, comp, r)
            return []
        ps = self._probes.get(r.name)
        if ps is None or (ps.successes == 0 and ps.failures == 0):
            if r.state not in ("running", "starting"):
                self._set_state(s, r, "starting", "waiting for the first health check")
            return []
        if ps.successes > 0:
            if r.state != "running":
                self._set_state(s, r, "running", "health check passing")
                record_event(s, "InstanceReady", "instance", r.name, f"{r.name} is healthy at {r.endpoint}", **ev)
                if comp.volumes and r.replaces:
                    self._finish_migration(s, app, comp, r)
            return []
        too_long = not ps.ever_ok and now - r.created_at > STARTUP_TIMEOUT
        if ps.failures >= comp.health.failure_threshold and (ps.ever_ok or too_long):
            self._set_state(s, r, "unhealthy", f"health check failed {ps.failures} times")
            record_event(s, "InstanceUnhealthy", "instance", r.name, r.reason, warning=True, **ev)
            if now - r.state_changed_at >= _backoff(r.restarts) or ps.ever_ok:
                r.restarts += 1
                self._probes.pop(r.name, None)
                self._set_state(s, r, "scheduled", f"restarting after failed health checks (restart #{r.restarts})")
                return [_Action("restart", r.name, cloud.name, create.request)]
        elif r.state == "running" and ps.failures:
            r.reason = f"health check failing ({ps.failures}/{comp.health.failure_threshold})"
        return []

    def _reconcile_component(
        self,
        s: Session,
        app: App,
        spec: AppSpec,
        comp: Component,
        rows: list[Instance],
    ) -> list[_Action]:
        now = utcnow()
        actions: list[_Action] = []
        for r in rows:
            if r.state == "terminating":
                actions += self._terminate(s, r, r.reason)
            elif r.cloud is not None:
                actions += self._observe_row(s, app, comp, r, now)

        placement = spec.spec.placement
        want = comp.spec_hash(placement)
        active = [r for r in rows if r.state not in ACTIVE_EXCLUDED]

        replaced = {r.replaces for r in active if r.replaces}  # migrations: these stop once their successor runs

        def current(r: Instance) -> bool:
            return r.spec_hash == want and r.name not in replaced and not (r.cloud is not None and r.cloud.draining)

        def ready(r: Instance) -> bool:
            return r.state == "running"

        cur = [r for r in active if current(r)]
        old = [r for r in active if not current(r)]
        desired = comp.replicas
        if len(cur) > desired:
            surplus = sorted(cur, key=lambda r: (r.cloud is not None, ready(r), -r.id))[: len(cur) - desired]
            for r in surplus:
                actions += self._terminate(s, r, f"scaled down to {desired} replicas")
            cur = [r for r in cur if r not in surplus]
        old_ready = [r for r in old if ready(r)]
        for r in old:
            if not ready(r):
                actions += self._terminate(s, r, "replaced by the new version (old one was not ready)")
        n_remove = max(0, sum(1 for r in cur if ready(r)) + len(old_ready) - desired)
        if comp.volumes and old_ready and all(ready(r) for r in cur):
            n_remove = max(n_remove, 1)  # no surge: the old replica gives its disks to its successor
        for r in old_ready[:n_remove]:
            actions += self._terminate(s, r, "rolled over to the new version")
        remaining_old = len(old_ready) - n_remove
        surge = 1 if remaining_old and not comp.volumes else 0
        to_add = max(0, min(desired - len(cur), desired + surge - len(cur) - remaining_old))
        # ordinals: a new replica takes the lowest free one; with volumes only 0..replicas-1, and
        # only once the replica that held it (and its disks) is gone
        held = {r.ordinal for r in rows}
        free = [o for o in range(desired + len(rows)) if o not in held]
        if comp.volumes:
            free = [o for o in free if o < desired]
            to_add = min(to_add, len(free))
        unplaced = [r for r in cur if r.cloud is None]
        if not unplaced and not to_add:
            return actions
        if self._engine is None:
            self._engine = Engine(self._host_states(s))
        req = Request(
            cpu=comp.resources.cpu_millis,
            memory=comp.resources.memory_bytes,
            runtime=comp.runtime,
            placement=placement,
            total_replicas=desired,
            existing=tuple(Replica(r.cloud.name, r.cloud.site.name, r.host or "") for r in cur if r.cloud is not None),
        )
        key = f"{app.id}/{comp.name}"
        todo: list[tuple[Instance | None, int]] = [(r, r.ordinal) for r in unplaced]
        todo += [(None, o) for o in free[:to_add]]
        decided: list[tuple[Instance | None, int, Decision]] = []
        if comp.kind == "postgres":  # each member in its own centre, once what it needs is there
            todo, decided = self._place_members(s, app, spec, comp, key, req, todo)
        elif (sites := dr_members.stateless_sites(s, spec)) is not None:
            req = _only(req, dr_members.clouds_in(s, sites))
        if comp.volumes:  # a replica goes back to the cloud that holds its ordinal's disk, where it can
            homes = self._homes(s, app, comp, placement)
            rest = []
            for r0, o in todo:
                home = homes.get(o)
                d0 = self._engine.decide(key, _only(req, home), 1)[0] if home else None
                if d0 is not None and d0.placed and d0.cloud and d0.site:
                    decided.append((r0, o, d0))
                    req = replace(req, existing=(*req.existing, Replica(d0.cloud, d0.site, d0.host or "")))
                else:
                    rest.append((r0, o))
            todo = rest
        decisions = self._engine.decide(key, req, len(todo)) if todo else []
        decided += [(r0, o, d) for (r0, o), d in zip(todo, decisions, strict=True)]
        clouds = {c.name: c for c in s.scalars(select(Cloud))}
        failed: list[str] = []
        news = 0
        for existing_row, ordinal, d in decided:
            if existing_row is not None:
                r = existing_row
            else:
                r = Instance(
                    name=f"{app.name}-{comp.name}-{secrets.token_hex(3)}",
                    app=app,
                    component=comp.name,
                    spec_hash=want,
                    cpu=req.cpu,
                    memory=req.memory,
                    storage=comp.storage_bytes,
                    state="pending",
                    ordinal=ordinal,
                )
                s.add(r)
            changed = r.placement != d.reason
            r.placement = d.reason
            r.explain = d.explain
            if d.placed:
                assert d.cloud is not None
                r.cloud = clouds[d.cloud]
                r.host = d.host
                self._set_state(s, r, "scheduled", d.reason)
                s.flush()
                self._attach_volumes(s, app, comp, r)
                record_event(s, "Scheduled", "instance", r.name, d.reason, vdc=app.vdc.path, app=app.name)
                actions.append(_Action("create", r.name, d.cloud, self._request(app, comp, r, s)))
            else:
                self._set_state(s, r, "pending", d.reason)
                s.flush()
                failed.append(d.reason)
                news += changed
        if news:  # one event per component and new reason, not one per replica
            first = failed[0]
            more = f" ({len(failed)} replicas)" if len(failed) > 1 else ""
            record_event(
                s,
                "FailedScheduling",
                "app",
                f"{app.name}/{comp.name}",
                f"{first}{more}",
                warning=True,
                vdc=app.vdc.path,
                app=app.name,
            )
        return actions

    def _place_members(
        self,
        s: Session,
        app: App,
        spec: AppSpec,
        comp: Component,
        key: str,
        req: Request,
        todo: list[tuple[Instance | None, int]],
    ) -> tuple[list[tuple[Instance | None, int]], list[tuple[Instance | None, int, Decision]]]:
        """A managed database's members: each pinned to its centre's clouds (its disk's home
        first), one decision at a time. Returns nothing left for the common path."""
        assert self._engine is not None
        decided: list[tuple[Instance | None, int, Decision]] = []
        homes = self._homes(s, app, comp, spec.spec.placement)
        for r0, o in todo:
            why = dr_members.waiting_for(s, app, spec, comp, o)
            site = dr_members.member_site(s, spec, o)
            if why is None and site is None:
                why = f"no site has the DR role {dr_members.member_role(spec, o)}"
            if why is not None:
                decided.append((r0, o, Decision(None, None, None, why, {})))
                continue
            assert site is not None
            clouds = dr_members.clouds_in(s, [site])
            if not clouds:
                decided.append((r0, o, Decision(None, None, None, f"site {site} has no cloud", {})))
                continue
            home = homes.get(o)
            d = self._engine.decide(key, _only(req, [home] if home in clouds else clouds), 1)[0]
            if d.placed and d.cloud and d.site:
                req = replace(req, existing=(*req.existing, Replica(d.cloud, d.site, d.host or "")))
            decided.append((r0, o, d))
        return [], decided

    def _host_states(self, s: Session) -> list[HostState]:
        usage = {
            (cid, host): (cpu, mem, n)
            for cid, host, cpu, mem, n in s.execute(
                select(
                    Instance.cloud_id,
                    Instance.host,
                    func.sum(Instance.cpu),
                    func.sum(Instance.memory),
                    func.count(),
                )
                .where(Instance.cloud_id.is_not(None), Instance.state != "lost")
                .group_by(Instance.cloud_id, Instance.host)
            )
        }
        out = []
        for cloud in s.scalars(select(Cloud).order_by(Cloud.name)):
            runtimes = self.fleet.provider(cloud.name, cloud.kind, dict(cloud.options)).runtimes
            for h in cloud.hosts:
                cpu, mem, n = usage.get((cloud.id, h.name), (0, 0, 0))
                out.append(
                    HostState(
                        cloud=cloud.name,
                        site=cloud.site.name,
                        region=cloud.region,
                        host=h.name,
                        cpu=h.cpu,
                        memory=h.memory,
                        max_instances=h.max_instances,
                        used_cpu=int(cpu),
                        used_memory=int(mem),
                        used_instances=int(n),
                        healthy=h.healthy and cloud.health == "healthy",
                        closed="draining (being removed)"
                        if cloud.draining
                        else f"fenced by evacuation plan {cloud.fenced_by_plan} (until it is applied or dropped)"
                        if cloud.fenced_by_plan is not None
                        else "",
                        cloud_tags={str(k): str(v) for k, v in cloud.tags.items()},
                        runtimes=runtimes,
                    )
                )
        return out

    # -------------------------------------------------------------- actions
    def _execute(self, actions: Sequence[_Action]) -> None:
        """Call the providers for what the pass decided, then record every outcome at once.

        The intent is already committed, so a crash here loses nothing: the next pass
        sees the same rows and repeats the (idempotent) calls.
        """
        if not actions:
            return
        with self.db.session() as s, s.begin():
            refs = {c.name: _CloudRef(c.name, c.kind, dict(c.options)) for c in s.scalars(select(Cloud))}
        outcomes: list[tuple[_Action, ObservedInstance | None, str | None]] = []
        for a in actions:
            ref = refs.get(a.cloud)
            if ref is None:
                continue
            try:
                p = self._provider(ref)
                observed = None
                if a.kind in ("delete", "restart"):
                    p.delete_instance(a.name)
                if a.kind in ("create", "restart"):
                    assert a.request is not None
                    observed = p.create_instance(a.request)
                if a.kind == "adopt":
                    assert a.request is not None and a.source is not None
                    observed = p.adopt(a.source, a.request)
                outcomes.append((a, observed, None))
            except (ShanzhiError, OSError, sqlite3.Error) as err:
                outcomes.append((a, None, f"{a.kind} failed on cloud {a.cloud}: {err}"))
        with self.db.session() as s, s.begin():
            rows = {
                r.name: r
                for r in s.scalars(select(Instance).where(Instance.name.in_([a.name for a, _, _ in outcomes])))
            }
            for a, observed, error in outcomes:
                row = rows.get(a.name)
                if error is not None:
                    if row is not None:
                        row.reason = error
                    record_event(
                        s,
                        f"{a.kind.capitalize()}Failed",
                        "instance",
                        a.name,
                        error,
                        warning=True,
                        app=row.app.name if row else None,
                        vdc=row.app.vdc.path if row else None,
                    )
                elif row is None:
                    continue
                elif a.kind == "delete":
                    if row.state == "terminating":
                        _release_volumes(s, row)
                        s.delete(row)
                        self._probes.pop(a.name, None)
                elif observed is not None and row.state == "scheduled":
                    self._set_state(s, row, "starting", f"created on {a.cloud}/{row.host}")
                    row.endpoint = observed.endpoint
                elif observed is not None and row.state == "adopting":
                    self._set_state(s, row, "starting", f"adopted {row.adopted_from} on {a.cloud}/{observed.host}")
                    row.endpoint, row.host = observed.endpoint, observed.host
                    record_event(
                        s, "InstanceAdopted", "instance", row.name, row.reason, app=row.app.name, vdc=row.app.vdc.path
                    )


def _release_volumes(s: Session, r: Instance) -> None:
    """A replica that is gone leaves its volumes for the next replica of its ordinal."""
    for v in s.scalars(select(VolumeRecord).where(VolumeRecord.instance == r.name)):
        v.state, v.instance, v.released_at = "released", None, utcnow()


def _only(req: Request, clouds: str | list[str] | None) -> Request:
    """`req` restricted to one cloud or some (the rest of its placement rules still hold)."""
    p = req.placement
    names = [clouds] if isinstance(clouds, str) or clouds is None else clouds
    if p.clouds.names:
        names = [n for n in names if n in p.clouds.names]
    if not names:  # an empty list would mean any cloud; no cloud is named "-" (names start with [a-z0-9])
        names = ["-"]
    return replace(req, placement=p.model_copy(update={"clouds": p.clouds.model_copy(update={"names": names})}))
