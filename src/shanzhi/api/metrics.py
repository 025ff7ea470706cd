"""The server's metrics in Prometheus's exposition format (prometheus-client), at /api/v1/metrics.

One registry per application (not the library's global one: tests run many servers in one
process). What it exposes, read when scraped:
- every instance's latest use (`shanzhi_instance_*`), as the metrics collector last sampled it;
- every cloud's health, capacity and what is placed on it, and instances by state (the
  reconciler's backlog is what is not `running`);
- disaster recovery: each quorum etcd member's health as the DR controller last checked it, and
  each managed database member's state and replication lag as it last read them from etcd;
- the control plane: API latency by route (`shanzhi_http_request_seconds`), reconcile pass
  time, apps left alone as settled, metrics sampling time, the ledger's size and the age of its
  latest checkpoint; and this process's own cpu, memory and file descriptors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shanzhi.api.policy import PREFIX
from shanzhi.domain.metrics import SERIES, UNITS
from shanzhi.services.clouds import usage
from shanzhi.store.tables import Cloud, DrCluster, DrEtcdMember, Host, Instance, LedgerCheckpoint, utcnow

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_NAMES = {"cpu": "cpu_cores", "memory": "memory_bytes"} | {
    s: f"{s}_bytes_per_second" for s in ("rx", "tx", "read", "write")
}
_HELP = {
    "rx": "received over the network",
    "tx": "sent over the network",
    "read": "read from disk",
    "write": "written to disk",
}


class RequestTimer:
    """ASGI middleware: each API request's time by method, route template and status class."""

    def __init__(self, app: ASGIApp, histogram: Histogram) -> None:
        self.app = app
        self.histogram = histogram

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def watched(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watched)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if template.startswith("/") and not template.startswith("/api/"):
                template = PREFIX + template  # a route of a router included under the API's prefix
            self.histogram.labels(scope["method"], template, f"{status // 100}xx").observe(
                time.perf_counter() - started
            )


def request_histogram() -> Histogram:
    return Histogram(
        "shanzhi_http_request_seconds",
        "API request time by method, route and status class",
        ["method", "route", "status"],
        buckets=BUCKETS,
        registry=None,
    )


class Platform(Collector):
    """Reads the runtime and the store when scraped."""

    def __init__(self, app: Any, requests: Histogram) -> None:
        self.app = app
        self.requests = requests

    def collect(self) -> Iterator[Metric]:
        yield from self.requests.collect()
        rt = getattr(self.app.state, "runtime", None)
        if rt is None:
            return
        controller = rt.controller
        if controller is not None:
            yield from controller.pass_seconds.collect()
            yield from controller.metrics.sample_seconds.collect()
            skipped = GaugeMetricFamily(
                "shanzhi_reconcile_apps_settled", "Apps the last reconcile pass left alone (settled, unchanged)"
            )
            skipped.add_metric([], controller.reconciler.skipped)
            yield skipped
            looked = GaugeMetricFamily("shanzhi_reconcile_apps_reconciled", "Apps the last reconcile pass looked at")
            looked.add_metric([], controller.reconciler.reconciled)
            yield looked
            shards = GaugeMetricFamily("shanzhi_reconcile_shards", "Shards of the apps this replica reconciles (of 64)")
            shards.add_metric([], len(controller.shards.held))
            yield shards
            members = GaugeMetricFamily("shanzhi_reconcile_replicas", "Live serve replicas sharing the apps")
            members.add_metric([], controller.shards.members)
            yield members
            yield from _instances(controller.metrics.latest.values())
        with Session(rt.db.reader) as s, s.begin():
            yield from _clouds(s)
            yield from _dr(s)
            yield from _ledger(s, rt.ledger)


def _instances(latest: Any) -> Iterator[Metric]:
    labels = ["replica", "app", "vdc", "component", "cloud"]  # not "instance": Prometheus sets that
    families = {
        name: GaugeMetricFamily(
            f"shanzhi_instance_{_NAMES[name]}",
            f"Instance {_HELP.get(name, name)} ({UNITS[name]}), last sample",
            labels=labels,
        )
        for name in SERIES
    }
    for item in latest:
        lab = item.labels
        values = [lab.instance, lab.app, lab.vdc, lab.component, lab.cloud]
        for name in SERIES:
            v = item.point.get(name)
            if v is not None:
                families[name].add_metric(values, v)
    yield from families.values()


def _clouds(s: Session) -> Iterator[Metric]:
    labels = ["cloud", "kind", "site"]
    up = GaugeMetricFamily("shanzhi_cloud_up", "1 if the cloud answers and is healthy", labels=labels)
    per = [*labels, "resource"]
    cap = GaugeMetricFamily("shanzhi_cloud_capacity", "Capacity of a cloud's healthy hosts", labels=per)
    used = GaugeMetricFamily("shanzhi_cloud_used", "What is placed on a cloud", labels=per)
    hosts = {
        cid: (int(c or 0), int(m or 0), int(n or 0))
        for cid, c, m, n in s.execute(
            select(Host.cloud_id, func.sum(Host.cpu), func.sum(Host.memory), func.sum(Host.max_instances))
            .where(Host.healthy)
            .group_by(Host.cloud_id)
        )
    }
    placed = usage(s)
    for cloud in s.scalars(select(Cloud)):
        values = [cloud.name, cloud.kind, cloud.site.name]
        up.add_metric(values, 1.0 if cloud.health == "healthy" else 0.0)
        for resource, have, put in zip(
            ("cpu_cores", "memory_bytes", "instances"),
            hosts.get(cloud.id, (0, 0, 0)),
            placed.get(cloud.id, (0, 0, 0)),
            strict=True,
        ):
            scale = 1000.0 if resource == "cpu_cores" else 1.0  # millicores in the store
            cap.add_metric([*values, resource], have / scale)
            used.add_metric([*values, resource], put / scale)
    states = GaugeMetricFamily("shanzhi_instances", "Instances by state (not running: the backlog)", labels=["state"])
    for state, n in s.execute(select(Instance.state, func.count()).group_by(Instance.state)):
        states.add_metric([state], n)
    yield from (up, cap, used, states)


def _dr(s: Session) -> Iterator[Metric]:
    etcd = GaugeMetricFamily(
        "shanzhi_dr_etcd_member_up", "1 if the DR quorum's etcd member answered healthy at the last check",
        labels=["member", "cluster", "site", "cloud"],
    )  # fmt: skip
    for m in s.scalars(select(DrEtcdMember).order_by(DrEtcdMember.name)):
        etcd.add_metric([m.name, m.cluster, m.site.name, m.cloud.name if m.cloud else ""], float(m.health == "healthy"))
    labels = ["vdc", "app", "component", "member", "cluster", "site", "role"]
    up = GaugeMetricFamily("shanzhi_dr_database_member_up", "1 if a managed database's member runs", labels=labels)
    lag = GaugeMetricFamily(
        "shanzhi_dr_database_member_lag_bytes", "WAL a managed database's member has yet to replay", labels=labels
    )
    for c in s.scalars(select(DrCluster).order_by(DrCluster.id)):
        for m in c.status.get("members", []):
            values = [c.app.vdc.path, c.app.name, c.component, str(m.get("name")), str(m.get("cluster")),
                      str(m.get("site") or ""), str(m.get("role"))]  # fmt: skip
            up.add_metric(values, float(m.get("state") == "running"))
            if m.get("lag_bytes") is not None:
                lag.add_metric(values, float(m["lag_bytes"]))
    yield from (etcd, up, lag)


def _ledger(s: Session, ledger: Any) -> Iterator[Metric]:
    size, at = s.execute(
        select(LedgerCheckpoint.size, LedgerCheckpoint.at).order_by(LedgerCheckpoint.size.desc()).limit(1)
    ).one_or_none() or (None, None)
    entries = GaugeMetricFamily("shanzhi_ledger_entries", "Entries in the directory ledger")
    entries.add_metric([], ledger.log.size if ledger is not None else (size or 0))
    yield entries
    if at is not None:
        age = GaugeMetricFamily("shanzhi_ledger_checkpoint_age_seconds", "Age of the latest signed checkpoint")
        age.add_metric([], (utcnow() - at).total_seconds())
        yield age
        checked = GaugeMetricFamily("shanzhi_ledger_checkpoint_size", "Entries the latest checkpoint covers")
        checked.add_metric([], size or 0)
        yield checked


def registry(app: Any, requests: Histogram) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(Platform(app, requests))
    ProcessCollector(registry=reg)
    return reg
