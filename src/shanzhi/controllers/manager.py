"""Runs the controllers in a background thread: the reconciler over this replica's share of
the apps, and everything else while this process holds the leader lock.

Any number of `shanzhi serve` processes may share a database. On PostgreSQL they split the apps
between them by shards (`store.shards`) and hear of changes by LISTEN/NOTIFY
(`store.changes`); one of them, the leader, also records the clouds' health, removes orphans and
runs the other controllers, and another takes over within one interval when it goes away. On
SQLite the leader does all of it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from prometheus_client import Histogram

from shanzhi.config import Settings
from shanzhi.controllers.alarm_rules import RuleEvaluator
from shanzhi.controllers.alarms import Notifier
from shanzhi.controllers.dr import DrController
from shanzhi.controllers.fleet import Fleet
from shanzhi.controllers.flows import FlowController
from shanzhi.controllers.housekeeping import Housekeeping
from shanzhi.controllers.inventory import InventoryController
from shanzhi.controllers.metrics import MetricsCollector
from shanzhi.controllers.network import NetworkController
from shanzhi.controllers.reconciler import Reconciler
from shanzhi.network.addressing import DEFAULT_POOL, DEFAULT_PREFIX
from shanzhi.store import Database
from shanzhi.store.changes import Listener
from shanzhi.store.locks import LeaderLock
from shanzhi.store.shards import Shards

log = logging.getLogger("shanzhi.controller")


class ControllerManager:
    def __init__(
        self,
        db: Database,
        fleet: Fleet,
        *,
        interval: float = 1.0,
        failover_grace: float = 3.0,
        audit_retention_days: int = 180,
        network_pool: str = DEFAULT_POOL,
        network_prefix: int = DEFAULT_PREFIX,
        alarm_webhook: str | None = None,
        flow_retention_days: float = 7.0,
        inventory_interval: float = 30.0,
        metrics_interval: float = 15.0,
        full_resync: float = 300.0,
        hears_api: bool = True,
    ) -> None:
        self.db = db
        self.interval = interval
        self.shards = Shards(db)
        # the change feed tells the reconciler what to look at when every write reaches it: on
        # PostgreSQL by NOTIFY, on SQLite only when the API runs in this process
        trusted = not db.is_sqlite or hears_api
        self.listener = None if db.is_sqlite else Listener(db.engine, db.changes)
        self.reconciler = Reconciler(
            db,
            fleet,
            failover_grace=failover_grace,
            network_pool=network_pool,
            network_prefix=network_prefix,
            full_resync=full_resync,
            feed=db.changes if trusted else None,
            shards=self.shards,
            recheck=interval,
        )
        self.network = NetworkController(db, fleet, network_pool)
        self.dr = DrController(db, fleet)
        self.flows = FlowController(db, self.network, lambda: self.is_leader)
        self.notifier = Notifier(db, alarm_webhook, lambda: self.is_leader)
        self.inventory = InventoryController(db, fleet, lambda: self.is_leader, interval=inventory_interval)
        self.metrics = MetricsCollector(db, fleet, lambda: self.is_leader, interval=metrics_interval)
        self.rules = RuleEvaluator(db, lambda: dict(self.metrics.latest), lambda: self.metrics.rounds)
        self.housekeeping = Housekeeping(
            db, audit_retention_days=audit_retention_days, flow_retention_days=flow_retention_days
        )
        self._lock = LeaderLock(db)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.is_leader = False
        self.passes = 0  # passes led
        self.reconcile_passes = 0  # passes over this replica's share of the apps
        self._passes: list[Callable[[], object]] = []
        self.pass_seconds = Histogram(
            "shanzhi_reconcile_pass_seconds",
            "Time of one reconcile pass over every app",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=None,
        )

    @classmethod
    def for_settings(cls, db: Database, fleet: Fleet, settings: Settings) -> ControllerManager:
        return cls(
            db,
            fleet,
            interval=settings.interval,
            failover_grace=settings.failover_grace,
            audit_retention_days=settings.audit_retention_days,
            network_pool=settings.network_pool,
            network_prefix=settings.network_prefix,
            alarm_webhook=settings.alarm_webhook,
            flow_retention_days=settings.flow_retention_days,
            inventory_interval=settings.inventory_interval,
            metrics_interval=settings.metrics_interval,
            full_resync=settings.full_resync,
            hears_api=settings.workers <= 1,
        )

    def add_pass(self, run_once: Callable[[], object]) -> None:
        """Run this too in every leader pass, after the reconciler (a use case of a higher layer:
        the autoscaler)."""
        self._passes.append(run_once)

    def start(self) -> None:
        self.db.changes.subscribe(self._wake.set)
        if self.listener is not None:
            self.listener.start()
        self._thread = threading.Thread(target=self._run, name="controller", daemon=True)
        self._thread.start()
        self.flows.start()
        self.notifier.start()
        self.inventory.start()
        self.metrics.start()

    def wake(self) -> None:
        self._wake.set()
        self.inventory.wake()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.flows.stop()
        self.notifier.stop()
        self.inventory.stop()
        self.metrics.stop()
        if self.listener is not None:
            self.listener.stop()
        self.shards.release()
        self._lock.release()
        self.reconciler.close()
        self.dr.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                leader = self._lock.try_acquire()
            except Exception as err:  # the database is away (a failover, a restart): stand by, retry
                log.warning("cannot reach the database for the leader lock (%s); retrying", type(err).__name__)
                leader = False
            if leader != self.is_leader:
                log.info("controller %s", "is now the leader" if leader else "lost leadership; standing by")
                self.is_leader = leader
            held = self.shards.refresh(leader)
            self.reconciler.leader = leader
            if leader or held:
                try:
                    with self.pass_seconds.time():
                        self.reconciler.run_once()
                    self.reconcile_passes += 1
                    if not leader:
                        self._wait()
                        continue
                    self.network.run_once()
                    self.dr.run_once()
                    self.housekeeping.run_once()
                    self.rules.run_once()
                    for extra in self._passes:
                        extra()
                    self.passes += 1
                except Exception:
                    log.exception("reconcile pass failed; retrying in %.1fs", self.interval)
            self._wait()

    def _wait(self) -> None:
        self._wake.wait(self.interval)
        self._wake.clear()
