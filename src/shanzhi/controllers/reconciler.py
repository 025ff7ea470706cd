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

from sqlalchemy import func, select, tuple_
from sqlalchemy.orm import Session

from shanzhi.controllers import dr_members, health, heap
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
    HostInfo,
    InstanceRequest,
    NetworkAttachment,
    ObservedInstance,
    Provider,
    VolumeRequest,
)
from shanzhi.scheduler import Decision, HostState, Replica, Request
from shanzhi.scheduler.engine import Engine
from shanzhi.store import Database
from shanzhi.store.changes import ChangeFeed, mark, quiet
from shanzhi.store.events import record_event
from shanzhi.store.shards import Shards, placing
from shanzhi.store.tables import App, Cloud, Host, Instance, VdcSubnet, VolumeRecord, utcnow

log = logging.getLogger("shanzhi.reconciler")

ACTIVE_EXCLUDED = ("terminating", "lost")
RESERVED = "reserved"  # standby capacity held for a cold component: placed, counted, never run
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


class _Stale(Exception):
    """The fleet state this pass placed by is out of date: place again."""


def _replaced(s: Session, comp: Component, r: Instance) -> bool:
    """Whether a lost replica has a successor placed: one on its ordinal (a replica with disks, a
    database member), else as many others as the component wants (those still waiting for room
    are surplus once it is back, and go first)."""
    others = [
        o.ordinal
        for o in s.scalars(
            select(Instance).where(
                Instance.app_id == r.app_id, Instance.component == r.component, Instance.id != r.id,
                Instance.state.not_in((*ACTIVE_EXCLUDED, RESERVED)), Instance.cloud_id.is_not(None),
            )
        )
    ]  # fmt: skip
    if comp.volumes:  # a database member's too: kind postgres always has its data volume
        return r.ordinal in others
    return len(others) >= comp.replicas


def _backoff(restarts: int) -> timedelta:
    return timedelta(seconds=min(2 ** min(restarts, 6), 60))


_Outcome = Literal["settled", "acted", "waiting"]  # of reconciling one app


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
        feed: ChangeFeed | None = None,
        shards: Shards | None = None,
        recheck: float = 0.0,
    ) -> None:
        self.db = db
        # every app is reconciled in a full pass, every `full_resync` seconds (0: every pass is
        # full). Between full passes, with a `feed` of what changed, a pass reconciles only what
        # the feed names, what was not settled after its last pass, and what the clouds or the
        # probes show changed; when something changed that concerns every app (a cloud, a host,
        # a lost listener) it also reads every app's fingerprint. Without a feed it reads the
        # fingerprints in every pass.
        self.full_resync = full_resync
        self.feed = feed
        self.shards = shards  # which apps are this replica's (None: all)
        self.leader = True  # writes the clouds' health and hosts, removes orphans and finished removals
        self._settled: dict[int, tuple[Any, ...]] = {}
        # apps not settled after their last pass, and since when each has waited (time.monotonic;
        # -inf: it acted or failed, so it is looked at in the next pass). One waiting (no action
        # taken, nothing failed: a replica starting, a placement without room) is looked at
        # after `recheck` seconds, for what time alone brings (a grace period, a back-off), or
        # sooner when something about it changes. Passes come with every write the feed hears:
        # without this, every app still starting was reconciled in each of them, ten times on
        # average during a run of applies.
        self.recheck = recheck
        self._unsettled: dict[int, float] = {}
        self._specs: dict[int, tuple[int, AppSpec]] = {}  # app id -> (generation, parsed spec)
        self._roster: dict[int, dict[str, tuple[str, str]]] = {}  # app id -> probed replica -> (component, cloud)
        self._held: frozenset[int] | None = None
        self._sick: set[tuple[int, str]] = set()  # (cloud id, host) of the hosts that failed, read each pass
        self._last_full = float("-inf")
        self.skipped = 0  # apps left alone in the last pass
        self.reconciled = 0  # apps reconciled in the last pass
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

    def _owns(self, app_id: int) -> bool:
        return self.shards is None or self.shards.owns(app_id)

    # ----------------------------------------------------------------- pass
    def run_once(self) -> None:
        self._engine = None  # the fleet state of this pass, built at its first placement
        held = self.shards.held if self.shards is not None else None
        handed = held != self._held  # this replica's share changed (its start, a takeover, a hand-off)
        self._held = held
        fleet_changed, moved = self._sync_clouds()
        with self.db.session() as s, s.begin():  # failed hosts, for this pass (not each app's ORM hosts)
            self._sick = {(c, h) for c, h in s.execute(select(Host.cloud_id, Host.name).where(Host.healthy.is_(False)))}
        dirty, everything = self.feed.take() if self.feed is not None else (set(), True)
        now = time.monotonic()
        full = handed or now - self._last_full >= self.full_resync
        resync = full or everything or fleet_changed
        if resync:
            app_ids = self._load()
        checks = self._probe()
        if full:
            targets = set(app_ids)
        else:
            due = {a for a, since in self._unsettled.items() if now - since >= self.recheck}
            targets = dirty | due | checks | self._apps_of(moved)
            if resync:
                prints = self._settled_apps()
                targets |= {a for a in app_ids if a not in prints or self._settled.get(a) != prints[a]}
            targets = {a for a in targets if self._owns(a)}
        for app_id in sorted(targets):
            outcome: _Outcome | None
            try:
                outcome = self._reconcile_app(app_id)
            except _Stale as why:
                log.info("app id %s placed again next pass: %s", app_id, why)
                outcome = "acted"
            except Exception:
                log.exception("reconciling app id %s failed; will retry next pass", app_id)
                outcome = "acted"
            if outcome == "acted":
                self._unsettled[app_id] = float("-inf")
            elif outcome == "waiting":
                self._unsettled[app_id] = now
            else:
                self._unsettled.pop(app_id, None)
        self._unsettled = {a: at for a, at in self._unsettled.items() if self._owns(a)}
        self.reconciled = len(targets)
        self.skipped = max(0, len(self._specs) - len(targets))
        if full:
            self._last_full = now
        if resync and self.full_resync:
            self._settled = self._settled_apps()
        if full and self.full_resync:  # between full passes the collector leaves the big heap alone
            heap.settle()
        if self.leader:  # orphans: all in a resync, else among what the listing shows new
            sweep_orphans(self.db, self.fleet, self._observed, None if resync else moved)
            reclaim_volumes(self.db, self.fleet)
            finish_removals(self.db, self.fleet)

    def _settled_apps(self) -> dict[int, tuple[Any, ...]]:
        """This replica's apps whose every replica runs, on a healthy host of a healthy cloud
        that is neither draining nor fenced, observed running, not failing its checks: each with
        a fingerprint of all of that (and its generation). Columns only, four queries: no ORM
        objects, no specs parsed."""
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
                if not deleting and self._owns(aid)
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
            ok = cloud is not None and cloud[1] and (cloud_id, host or "") not in self._sick
            if not self._row_settled(name, state, replaces, cloud[0] if cloud else None, ok):
                unsettled.add(app_id)
                continue
            obs = (self._observed.get(cloud[0]) or {}).get(name) if cloud else None
            probe = self._probes.get(name)
            checks = (probe.successes > 0, probe.failures) if probe else None
            per_app[app_id].append((name, spec_hash, cloud_id, host, obs.endpoint if obs else None, checks))
        return {a: (apps[a], tuple(sorted(r))) for a, r in per_app.items() if a not in unsettled}

    def _row_settled(self, name: str, state: str, replaces: str | None, cloud: str | None, cloud_ok: bool) -> bool:
        """A replica with nothing left to do: running as its cloud (healthy, open, on a healthy
        host) reports it, not replacing another, not failing its checks."""
        if state == RESERVED:
            return cloud is not None and cloud_ok
        if state != "running" or replaces or cloud is None or not cloud_ok:
            return False
        obs = (self._observed.get(cloud) or {}).get(name)
        probe = self._probes.get(name)
        return obs is not None and obs.state == "running" and (probe is None or probe.failures == 0)

    def _apps_of(self, names: set[str]) -> set[int]:
        """The apps of these replicas (by name)."""
        out: set[int] = set()
        if not names:
            return out
        listed = sorted(names)
        with self.db.session() as s, s.begin():
            for i in range(0, len(listed), 500):
                q = select(Instance.app_id).where(Instance.name.in_(listed[i : i + 500]))
                out.update(s.scalars(q))
        return out

    def _provider(self, ref: _CloudRef) -> Provider:
        return self.fleet.provider(ref.name, ref.kind, dict(ref.options))

    # --------------------------------------------------------------- clouds
    def _sync_clouds(self) -> tuple[bool, set[str]]:
        """List every cloud; the leader records their health and hosts. Returns whether a cloud
        came, went, or became reachable or unreachable, and the replicas whose observation
        changed since the last pass."""
        with self.db.session() as s, s.begin():
            refs = [_CloudRef(c.name, c.kind, dict(c.options)) for c in s.scalars(select(Cloud))]
        before = self._observed.copy()
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
        fleet_changed = set(before) != set(self._observed)
        moved: set[str] = set()
        for name, now in self._observed.items():
            was = before.get(name)
            if (was is None) != (now is None):
                fleet_changed = True
            elif was is not None and now is not None and was != now:
                moved.update(n for n in was.keys() | now.keys() if was.get(n) != now.get(n))
        if self.leader:
            self._record_clouds(results)
        return fleet_changed, moved

    def _record_clouds(self, results: dict[str, tuple[CloudStatus, list[HostInfo] | None]]) -> None:
        """Write the clouds whose health, message or hosts differ from their rows (columns are
        compared first: a pass where nothing changed writes, and loads, nothing)."""
        with self.db.session() as s, s.begin():
            rows = {n: (h, m) for n, h, m in s.execute(select(Cloud.name, Cloud.health, Cloud.health_message))}
            known: dict[str, dict[str, tuple[int, int, int, bool]]] = {n: {} for n in rows}
            for cname, hname, cpu, mem, most, ok in s.execute(
                select(Cloud.name, Host.name, Host.cpu, Host.memory, Host.max_instances, Host.healthy).join(
                    Cloud, Host.cloud_id == Cloud.id
                )
            ):
                known[cname][hname] = (cpu, mem, most, ok)
        stale = {
            name
            for name, (status, hosts) in results.items()
            if name in rows
            and (
                rows[name] != ("healthy" if status.healthy else "down", status.message)
                or (
                    hosts is not None
                    and known[name] != {i.name: (i.cpu, i.memory, i.max_instances, i.healthy) for i in hosts}
                )
            )
        }
        if not stale:
            return
        with self.db.session() as s, s.begin():
            quiet(s)  # a new message is no news; a new health or host is, to every replica
            news = False
            for cloud in s.scalars(select(Cloud).where(Cloud.name.in_(sorted(stale)))):
                status, hosts = results[cloud.name]
                new_health = "healthy" if status.healthy else "down"
                if cloud.health != new_health:
                    news = True
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
                        news = news or row.id is None or s.is_modified(row)
                    for gone in existing.values():
                        cloud.hosts.remove(gone)
                        news = True
            if news:
                mark(s, everything=True)

    def _down_long_enough(self, cloud: Cloud, now: datetime) -> bool:
        return cloud.health == "down" and now - cloud.health_changed_at >= self.failover_grace

    # ----------------------------------------------------------------- apps
    def _reconcile_app(self, app_id: int) -> _Outcome | None:
        """One app, one transaction, then its provider calls. Returns whether it is settled,
        acted (provider calls made or rows changed for them), or waits for its replicas (None:
        it is gone, or not this replica's)."""
        actions: list[_Action] = []
        with self.db.session() as s, s.begin():
            quiet(s)
            if self.shards is not None and not self.shards.fence(s, app_id):
                return None  # another replica's now: it acts, never both
            app = s.get(App, app_id)
            if app is None:
                self._forget(app_id)
                return None
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
                    self._forget(app_id)
                settled = None if not rows else False
            else:
                spec = self._spec(app.id, app.generation, app.spec)
                names = {c.name for c in spec.spec.components}
                for r in rows:
                    if r.component not in names:
                        actions += self._terminate(s, r, f"component {r.component} removed from the spec")
                for comp in spec.spec.components:
                    comp_rows = [r for r in rows if r.component == comp.name]
                    actions += self._reconcile_component(s, app, spec, comp, comp_rows)
                final = list(s.scalars(select(Instance).where(Instance.app_id == app_id)))
                self._enroll(
                    app.id, spec, [(r.name, r.component, r.state, r.cloud.name if r.cloud else None) for r in final]
                )
                settled = not actions and all(
                    self._row_settled(r.name, r.state, r.replaces, r.cloud.name if r.cloud else None, self._open(r))
                    for r in final
                )
        self._execute(actions)
        if settled is None:
            return None
        return "settled" if settled else "acted" if actions else "waiting"

    def _open(self, r: Instance) -> bool:
        c = r.cloud
        if c is None or c.health != "healthy" or c.draining or c.fenced_by_plan is not None:
            return False
        return (c.id, r.host or "") not in self._sick

    def _spec(self, app_id: int, generation: int, body: Any) -> AppSpec:
        """The app's parsed spec (parsed once per generation)."""
        cached = self._specs.get(app_id)
        if cached is None or cached[0] != generation:
            cached = self._specs[app_id] = (generation, AppSpec.model_validate(body))
        return cached[1]

    def _forget(self, app_id: int) -> None:
        self._specs.pop(app_id, None)
        self._roster.pop(app_id, None)
        self._unsettled.pop(app_id, None)

    def _watch(self, app_id: int, name: str, component: str, cloud: str) -> None:
        """A replica just started: probe it from the next pass on (when its component has checks)."""
        spec = self._specs.get(app_id)
        if spec is not None and any(c.name == component and c.health for c in spec[1].spec.components):
            self._roster.setdefault(app_id, {})[name] = (component, cloud)

    def _enroll(self, app_id: int, spec: AppSpec, rows: Sequence[tuple[str, str, str, str | None]]) -> None:
        """Which of the app's replicas the probes watch: (name, component, state, cloud) each."""
        checked = {c.name for c in spec.spec.components if c.health is not None}
        self._roster[app_id] = {
            name: (comp, cloud)
            for name, comp, state, cloud in rows
            if comp in checked and cloud is not None and state in PROBED_STATES
        }

    def _load(self) -> list[int]:
        """This replica's apps: their ids, their specs (parsed once per generation, not once per
        pass), and which of their replicas the probes watch. Column queries only."""
        with self.db.session() as s, s.begin():
            heads = [
                (aid, gen, deleting)
                for aid, gen, deleting in s.execute(select(App.id, App.generation, App.deleting).order_by(App.id))
                if self._owns(aid)
            ]
            stale = [aid for aid, gen, deleting in heads if not deleting and self._specs.get(aid, (None,))[0] != gen]
            for i in range(0, len(stale), 500):
                chunk = select(App.id, App.generation, App.spec).where(App.id.in_(stale[i : i + 500]))
                for aid, gen, body in s.execute(chunk):
                    self._spec(aid, gen, body)
            probed = (
                select(Instance.name, Instance.app_id, Instance.component, Instance.state, Cloud.name)
                .outerjoin(Cloud, Instance.cloud_id == Cloud.id)
                .where(Instance.state.in_(PROBED_STATES))
            )
            rows = s.execute(probed).all()
        live = {aid for aid, _, deleting in heads if not deleting}
        self._specs = {aid: v for aid, v in self._specs.items() if aid in live}
        per_app: dict[int, list[tuple[str, str, str, str | None]]] = {aid: [] for aid in self._specs}
        for name, app_id, comp, state, cloud in rows:
            if app_id in per_app:
                per_app[app_id].append((name, comp, state, cloud))
        self._roster = {}
        for aid, replicas in per_app.items():
            self._enroll(aid, self._specs[aid][1], replicas)
        return [aid for aid, _, _ in heads]

    def _probe(self) -> set[int]:
        """Run the due health probes of this replica's apps at once, outside any transaction.
        Returns the apps whose checks changed (first pass, first failure, recovery)."""
        now = time.monotonic()
        jobs = []
        for app_id, replicas in self._roster.items():
            spec = self._specs.get(app_id)
            if spec is None:
                continue
            for name, (comp_name, cloud) in replicas.items():
                comp = next((c for c in spec[1].spec.components if c.name == comp_name), None)
                obs = (self._observed.get(cloud) or {}).get(name)
                if comp is None or comp.health is None or obs is None or obs.state != "running":
                    continue
                port = health.probe_port(comp, obs.ports)
                state = self._probes.setdefault(name, health.ProbeState())
                if port is None or now - state.last < comp.health.period_seconds:
                    continue
                host = (obs.endpoint or "127.0.0.1:0").rsplit(":", 1)[0]
                jobs.append((app_id, state, self._pool.submit(health.probe, comp.health, host, port)))
        changed = set()
        for app_id, state, fut in jobs:
            was = (state.successes > 0, state.failures)
            health.update(state, fut.result())
            if (state.successes > 0, state.failures) != was:
                changed.add(app_id)
        return changed

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
            command, env = dr_members.member_command(
                s, app, AppSpec.model_validate(app.spec), comp, r, self.fleet.data_dir
            )
        return InstanceRequest(
            generation=app.generation,
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
            if _replaced(s, comp, r):
                return self._terminate(s, r, f"cloud {cloud.name} is back; a replacement already runs elsewhere")
            # nothing took its place (its centre's only cloud, or no room elsewhere): it starts again
            # there under its own name, on its own disks (a database member stays the member Patroni knows)
            r.restarts += 1
            self._probes.pop(r.name, None)
            self._set_state(s, r, "scheduled", f"cloud {cloud.name} is back and nothing replaced it: started again")
            record_event(s, "InstanceRecovered", "instance", r.name, r.reason, **ev)
            if comp.volumes:
                self._attach_volumes(s, app, comp, r)
            return [_Action("create", r.name, cloud.name, self._request(app, comp, r, s))]
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
        self._reserve(s, app, spec, comp, [r for r in rows if r.state == RESERVED])
        rows = [r for r in rows if r.state != RESERVED]
        cluster = dr_members.cluster_of(s, app, comp) if comp.kind == "postgres" else None
        for r in rows:
            fence = (
                dr_members.member_fence(cluster, spec, r.ordinal)
                if cluster is not None and r.cloud is not None and r.state not in ("terminating", "lost")
                else None
            )
            if r.state == "terminating":
                actions += self._terminate(s, r, r.reason)
            elif fence:
                actions += self._terminate(s, r, fence)  # the remote centre was activated, or a restore in place
            elif r.cloud is not None:
                actions += self._observe_row(s, app, comp, r, now)

        placement = spec.spec.placement
        want = comp.spec_hash(placement)
        active = [r for r in rows if r.state not in ACTIVE_EXCLUDED]

        replaced = {r.replaces for r in active if r.replaces}  # migrations: these stop once their successor runs
        left = dr_members.left_site(s, spec, app.id) if comp.kind != "postgres" else None

        def current(r: Instance) -> bool:
            return (
                r.spec_hash == want
                and r.name not in replaced
                and not (r.cloud is not None and (r.cloud.draining or r.cloud.site.name == left))
            )

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
        held = {r.ordinal for r in rows if not (comp.kind == "postgres" and dr_members.replaceable(s, r))}
        free = [o for o in range(desired + len(rows)) if o not in held]
        if comp.volumes:
            free = [o for o in free if o < desired]
            to_add = min(to_add, len(free))
        unplaced = [r for r in cur if r.cloud is None]
        if not unplaced and not to_add:
            return actions
        engine = self._ready_engine(s)
        req = _placing_request(comp, placement, desired, cur)
        key = f"{app.id}/{comp.name}"
        todo: list[tuple[Instance | None, int]] = [(r, r.ordinal) for r in unplaced]
        todo += [(None, o) for o in free[:to_add]]
        decided: list[tuple[Instance | None, int, Decision]] = []
        if comp.kind == "postgres":  # each member in its own centre, once what it needs is there
            todo, decided = self._place_members(s, app, spec, comp, key, req, todo)
        elif (sites := dr_members.stateless_sites(s, spec, app.id)) is not None:
            req = _only(req, dr_members.clouds_in(s, sites))
        if comp.volumes:  # a replica goes back to the cloud that holds its ordinal's disk, where it can
            homes = self._homes(s, app, comp, placement)
            rest = []
            for r0, o in todo:
                home = homes.get(o)
                d0 = engine.decide(key, _only(req, home), 1)[0] if home else None
                if d0 is not None and d0.placed and d0.cloud and d0.site:
                    decided.append((r0, o, d0))
                    req = replace(req, existing=(*req.existing, Replica(d0.cloud, d0.site, d0.host or "")))
                else:
                    rest.append((r0, o))
            todo = rest
        decisions = engine.decide(key, req, len(todo)) if todo else []
        decided += [(r0, o, d) for (r0, o), d in zip(todo, decisions, strict=True)]
        clouds = {c.name: c for c in s.scalars(select(Cloud))}
        failed: list[str] = []
        news = 0
        placed: list[Instance] = []
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
                placed.append(r)
                self._attach_volumes(s, app, comp, r)
                record_event(s, "Scheduled", "instance", r.name, d.reason, vdc=app.vdc.path, app=app.name)
                actions.append(_Action("create", r.name, d.cloud, self._request(app, comp, r, s)))
            else:
                self._set_state(s, r, "pending", d.reason)
                s.flush()
                failed.append(d.reason)
                news += changed
        if self.shards is not None and self.shards.members > 1:
            self._check_room(s, {(r.cloud_id, r.host or "") for r in placed if r.cloud_id is not None})
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

    def _reserve(self, s: Session, app: App, spec: AppSpec, comp: Component, held: list[Instance]) -> None:
        """Standby capacity for a cold component: while its replicas run in production, as much
        as they use is held in the same-city centre, as rows in state `reserved` placed like
        replicas (so every host's use counts them and no other app is given that room) that no
        cloud ever runs. When production is lost they go first, then the replicas start there."""
        sites = [] if comp.kind == "postgres" else dr_members.standby_sites(s, spec, app.id)  # members: each centre
        if not sites and not held:
            return
        clouds = {c.name: c for c in s.scalars(select(Cloud)) if c.site.name in sites}
        want = comp.replicas if sites else 0
        keep: list[Instance] = []
        for r in held:
            c = r.cloud
            fits = r.cpu == comp.resources.cpu_millis and r.memory == comp.resources.memory_bytes
            if c is not None and c.name in clouds and self._open(r) and fits and len(keep) < want:
                keep.append(r)
            else:
                s.delete(r)
                self._engine = None  # the room it held is free for this pass's placements
        if len(keep) >= want:
            return
        engine = self._ready_engine(s)
        req = _placing_request(comp, spec.spec.placement, want, keep)
        site = sites[0]
        short = []
        for d in engine.decide(f"{app.id}/{comp.name}/standby", _only(req, list(clouds)), want - len(keep)):
            if not d.placed or d.cloud is None:
                short.append(d.reason)
                continue
            r = Instance(
                name=f"{app.name}-{comp.name}-standby-{secrets.token_hex(3)}", app=app, component=comp.name,
                spec_hash=comp.spec_hash(spec.spec.placement), cpu=req.cpu, memory=req.memory, storage=0,
                state=RESERVED, ordinal=-1, cloud=clouds[d.cloud], host=d.host, placement=d.reason,
                reason=f"standby capacity held in {site} for when production is lost", explain=d.explain,
            )  # fmt: skip
            s.add(r)
        if short:
            record_event(s, "StandbyShort", "app", f"{app.name}/{comp.name}",
                         f"{len(short)} of {want} standby replicas find no room in {site}: {short[0]}",
                         warning=True, vdc=app.vdc.path, app=app.name)  # fmt: skip
        s.flush()

    def _ready_engine(self, s: Session) -> Engine:
        """Take the placement lock (one placement at a time across replicas: each sees the last
        one's hosts) and the pass's fleet state, built at its first placement."""
        placing(s)
        if self._engine is None:
            self._engine = Engine(self._host_states(s))
        return self._engine

    def _check_room(self, s: Session, hosts: set[tuple[int, str]]) -> None:
        """With other replicas placing too, this pass's fleet state may be older than their
        last placement: after taking the placement lock, the hosts just chosen must still have
        room, else the transaction rolls back and the app is placed again on a fresh state."""
        if not hosts:
            return
        cap: dict[tuple[Any, Any], tuple[int, int, int]] = {
            (cid, name): (cpu, mem, n)
            for cid, name, cpu, mem, n in s.execute(
                select(Host.cloud_id, Host.name, Host.cpu, Host.memory, Host.max_instances).where(
                    tuple_(Host.cloud_id, Host.name).in_(sorted(hosts))
                )
            )
        }
        used = s.execute(
            select(Instance.cloud_id, Instance.host, func.sum(Instance.cpu), func.sum(Instance.memory), func.count())
            .where(tuple_(Instance.cloud_id, Instance.host).in_(sorted(hosts)), Instance.state != "lost")
            .group_by(Instance.cloud_id, Instance.host)
        )
        for cid, host, cpu, mem, n in used:
            c = cap.get((cid, host))
            if c is not None and (cpu > c[0] or mem > c[1] or n > c[2]):
                self._engine = None
                raise _Stale(f"host {host} filled up meanwhile (another replica placed there)")

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
            gone = {r.cloud.name for r in s.scalars(select(Instance).where(  # where this ordinal's member was lost
                Instance.app_id == app.id, Instance.component == comp.name, Instance.ordinal == o,
                Instance.state.in_(ACTIVE_EXCLUDED))) if r.cloud is not None}  # fmt: skip
            clouds = [c for c in dr_members.clouds_in(s, [site]) if c not in gone]
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
            quiet(s)
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
                        self._roster.get(row.app_id, {}).pop(a.name, None)
                elif observed is not None and row.state == "scheduled":
                    self._set_state(s, row, "starting", f"created on {a.cloud}/{row.host}")
                    row.endpoint = observed.endpoint
                    self._watch(row.app_id, row.name, row.component, a.cloud)
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


def _placing_request(comp: Component, placement: Placement, total: int, placed: Sequence[Instance]) -> Request:
    """What placing more of `comp` asks, with the replicas `placed` already counted."""
    return Request(
        cpu=comp.resources.cpu_millis,
        memory=comp.resources.memory_bytes,
        runtime=comp.runtime,
        placement=placement,
        total_replicas=total,
        existing=tuple(Replica(r.cloud.name, r.cloud.site.name, r.host or "") for r in placed if r.cloud is not None),
    )


def _only(req: Request, clouds: str | list[str] | None) -> Request:
    """`req` restricted to one cloud or some (the rest of its placement rules still hold)."""
    p = req.placement
    names = [clouds] if isinstance(clouds, str) or clouds is None else clouds
    if p.clouds.names:
        names = [n for n in names if n in p.clouds.names]
    if not names:  # an empty list would mean any cloud; no cloud is named "-" (names start with [a-z0-9])
        names = ["-"]
    return replace(req, placement=p.model_copy(update={"clouds": p.clouds.model_copy(update={"names": names})}))
