"""Metrics collection: every instance's use, read from its cloud without an agent.

A thread of its own samples each cloud's instances every `interval` seconds (`Provider.usage`:
the cgroup and /proc for local and netns, libvirt's domain statistics for VMs, synthetic for
sim), turns two readings into a rate, keeps the latest point of every instance (for `/metrics`,
alarm rules and the autoscaler) and writes minute averages as each minute closes, hour
averages as each hour closes, and removes what is past its retention (a day of minutes, 90 days
of hours). Only the leader collects; a cloud that fails to answer is skipped for that round.
A replica that exports its own metrics (`metrics` in its component) is read in the same round
(`shanzhi.controllers.scrape`), all of them at once; one that does not answer has none that round.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Histogram
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from shanzhi.controllers.fleet import Fleet
from shanzhi.controllers.loop import LeaderThread
from shanzhi.controllers.scrape import ScrapeError, scrape
from shanzhi.domain.errors import ShanzhiError
from shanzhi.domain.metrics import HOUR, MINUTE, RETENTION, SERIES, Point, Usage, bucket, mean, mean_custom, rate
from shanzhi.store import Database
from shanzhi.store.tables import App, Cloud, Instance, MetricPoint, Vdc, utcnow

log = logging.getLogger("shanzhi.metrics")
LIVE = ("running", "unhealthy", "starting")


@dataclass(frozen=True)
class Labels:
    instance: str
    app_id: int
    app: str
    vdc: str
    component: str
    cloud: str


@dataclass
class Latest:
    labels: Labels
    point: Point
    at: datetime


class NewRound:
    """Whether the collector finished a round of samples since this was last asked (with no
    round count to go by: always). What reads `latest` need not look again before it moves."""

    def __init__(self, rounds: Callable[[], int] | None) -> None:
        self.rounds = rounds
        self._seen = -1

    def __call__(self) -> bool:
        if self.rounds is None:
            return True
        now = self.rounds()
        fresh, self._seen = now != self._seen, now
        return fresh


class MetricsCollector:
    def __init__(self, db: Database, fleet: Fleet, is_leader: Callable[[], bool], *, interval: float = 15.0) -> None:
        self.db = db
        self.fleet = fleet
        self.is_leader = is_leader
        self.interval = interval
        self.latest: dict[str, Latest] = {}
        self.rounds = 0  # sampling rounds done: what reads `latest` need not look again before it moves
        self.sample_seconds = Histogram(
            "shanzhi_metrics_sample_seconds", "Time to sample one cloud's instances", ["cloud"], registry=None
        )
        self._readings: dict[str, tuple[float, Usage]] = {}
        self._pending: dict[tuple[str, datetime], tuple[Labels, list[Point]]] = {}  # open minutes
        self._rolled: datetime | None = None  # the last hour rolled up
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="scrape")
        self._thread = LeaderThread("metrics", self.run_once, is_leader, interval)
        self.start = self._thread.start

    def stop(self) -> None:
        self._thread.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ a round
    def run_once(self, now: datetime | None = None) -> int:
        """Sample every cloud, write what closed; return how many instances were sampled."""
        now = now or utcnow()
        by_cloud, urls = self._live_instances()
        own = self._scrape(urls)
        sampled = 0
        seen: set[str] = set()
        for name, (kind, options, labels) in by_cloud.items():
            started = time.monotonic()
            try:
                found = self.fleet.provider(name, kind, options).usage()
            except (ShanzhiError, OSError, sqlite3.Error) as err:
                log.debug("no usage from cloud %s: %s", name, err)
                continue
            self.sample_seconds.labels(name).observe(time.monotonic() - started)
            at = time.monotonic()
            for lab in labels:
                reading = found.get(lab.instance)
                if reading is None:
                    continue
                seen.add(lab.instance)
                if isinstance(reading, Point):  # the cloud's own average over its last period
                    point = reading
                else:
                    if lab.instance in own:
                        gauges, counters = own[lab.instance]
                        reading = replace(reading, gauges=gauges, counters=counters)
                    before = self._readings.get(lab.instance)
                    self._readings[lab.instance] = (at, reading)
                    if before is None:
                        continue
                    point = rate(before[1], reading, at - before[0])
                self.latest[lab.instance] = Latest(lab, point, now)
                key = (lab.instance, bucket(now, MINUTE))
                self._pending.setdefault(key, (lab, []))[1].append(point)
                sampled += 1
        for gone in set(self._readings) - seen:
            self._readings.pop(gone, None)
            self.latest.pop(gone, None)
        self.flush(now)
        self.rounds += 1
        return sampled

    def _scrape(self, urls: dict[str, str]) -> dict[str, tuple[dict[str, float], dict[str, float]]]:
        """The own metrics of every replica that exports them, read all at once."""
        jobs = {name: self._pool.submit(scrape, url) for name, url in urls.items()}
        out: dict[str, tuple[dict[str, float], dict[str, float]]] = {}
        for name, job in jobs.items():
            try:
                out[name] = job.result()
            except ScrapeError as err:
                log.debug("no metrics from %s: %s", name, err)
        return out

    def _live_instances(self) -> tuple[dict[str, tuple[str, dict[str, Any], list[Labels]]], dict[str, str]]:
        """The live instances by cloud, and where those that export their own metrics do."""
        with Session(self.db.reader) as s, s.begin():
            rows = s.execute(
                select(
                    Instance.name,
                    Instance.app_id,
                    App.name,
                    Vdc.path,
                    Instance.component,
                    Cloud.name,
                    Cloud.kind,
                    Cloud.options,
                    Instance.metrics_url,
                )
                .join(App, App.id == Instance.app_id)
                .join(Vdc, Vdc.id == App.vdc_id)
                .join(Cloud, Cloud.id == Instance.cloud_id)
                .where(Instance.state.in_(LIVE), Cloud.health != "down")
            ).all()
        out: dict[str, tuple[str, dict[str, Any], list[Labels]]] = {}
        urls: dict[str, str] = {}
        for inst, app_id, app, vdc, comp, cloud, kind, options, url in rows:
            out.setdefault(cloud, (kind, options, []))[2].append(Labels(inst, app_id, app, vdc, comp, cloud))
            if url is not None:
                urls[inst] = url
        return out, urls

    # ------------------------------------------------------------------ storing
    def flush(self, now: datetime) -> None:
        """Write the minutes that have closed, roll up the hours that have, prune."""
        current = bucket(now, MINUTE)
        closed = [key for key in self._pending if key[1] < current]
        with self.db.session() as s, s.begin():
            if closed:
                self._write_minutes(s, {key: self._pending.pop(key) for key in closed})
            self._roll_hours(s, bucket(now, HOUR))
            for resolution, keep in RETENTION.items():
                s.execute(delete(MetricPoint).where(MetricPoint.resolution == resolution, MetricPoint.at < now - keep))

    def _write_minutes(self, s: Session, minutes: dict[tuple[str, datetime], tuple[Labels, list[Point]]]) -> None:
        held = {
            (instance, at)
            for instance, at in s.execute(
                select(MetricPoint.instance, MetricPoint.at).where(
                    MetricPoint.resolution == MINUTE, MetricPoint.at.in_({at for _, at in minutes})
                )
            )
        }
        rows = [
            _row(labels, MINUTE, at, len(points), mean(points))
            for (instance, at), (labels, points) in minutes.items()
            if (instance, at) not in held  # written before a restart: keep that one
        ]
        if rows:
            s.execute(insert(MetricPoint), rows)

    def _roll_hours(self, s: Session, current_hour: datetime) -> None:
        """Average each closed hour's minutes into an hour point, once."""
        if self._rolled is None:
            last = s.scalar(select(func.max(MetricPoint.at)).where(MetricPoint.resolution == HOUR))
            first = s.scalar(select(func.min(MetricPoint.at)).where(MetricPoint.resolution == MINUTE))
            self._rolled = last if last is not None else (bucket(first, HOUR) - timedelta(hours=1) if first else None)
        if self._rolled is None:
            self._rolled = current_hour - timedelta(hours=1)
            return
        hour = self._rolled + timedelta(hours=1)
        while hour < current_hour:
            cols = [func.avg(getattr(MetricPoint, name)) for name in SERIES]
            found = s.execute(
                select(
                    MetricPoint.instance,
                    MetricPoint.app_id,
                    MetricPoint.component,
                    func.sum(MetricPoint.samples),
                    *cols,
                )
                .where(
                    MetricPoint.resolution == MINUTE,
                    MetricPoint.at >= hour,
                    MetricPoint.at < hour + timedelta(hours=1),
                )
                .group_by(MetricPoint.instance, MetricPoint.app_id, MetricPoint.component)
            ).all()
            custom: dict[str, list[dict[str, float]]] = {}
            for instance, values in s.execute(
                select(MetricPoint.instance, MetricPoint.custom).where(
                    MetricPoint.resolution == MINUTE,
                    MetricPoint.at >= hour,
                    MetricPoint.at < hour + timedelta(hours=1),
                    MetricPoint.custom.is_not(None),
                )
            ):
                if values:
                    custom.setdefault(instance, []).append(values)
            rows = [
                {"instance": i, "app_id": a, "component": c, "resolution": HOUR, "at": hour, "samples": int(n)}
                | {name: (float(v) if v is not None else None) for name, v in zip(SERIES, values, strict=True)}
                | {"custom": mean_custom(custom[i]) if i in custom else None}
                for i, a, c, n, *values in found
            ]
            if rows:
                s.execute(insert(MetricPoint), rows)
            self._rolled = hour
            hour += timedelta(hours=1)


def _row(labels: Labels, resolution: int, at: datetime, samples: int, p: Point) -> dict[str, Any]:
    return {
        "instance": labels.instance,
        "app_id": labels.app_id,
        "component": labels.component,
        "resolution": resolution,
        "at": at,
        "samples": samples,
        **{name: p.get(name) for name in SERIES},
        "custom": dict(p.custom) or None,
    }
