"""Resource use: what a cloud reports of an instance, turned into rates, kept at two resolutions.

A provider reports counters (cpu seconds, bytes in and out, bytes read and written since the
instance started) and the memory resident now; `rate` turns two readings into a `Point` (cores,
bytes, bytes per second). Points are averaged into minute buckets, minutes into hours; the store
keeps minutes for a day and hours for 90 days (the embedded default's retention; a Prometheus
server scraping `/metrics` is the path for more).

A workload may also export its own metrics (a component's `metrics` endpoint, Prometheus text):
its gauges are kept as read, its counters become rates per second, under their own names
(`queue_depth`, `http_requests_total`); an autoscaler or an alarm rule may name them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta

MINUTE = 60
HOUR = 3600
RETENTION = {MINUTE: timedelta(days=1), HOUR: timedelta(days=90)}
#: the metrics an instance has (and an autoscaler or an alarm rule may name)
SERIES = ("cpu", "memory", "rx", "tx", "read", "write")
UNITS = {"cpu": "cores", "memory": "bytes", "rx": "B/s", "tx": "B/s", "read": "B/s", "write": "B/s"}
#: a workload's own metric: a Prometheus metric name
CUSTOM = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,127}$")
#: at most this many of a workload's own series are kept per replica (the rest are dropped)
MAX_CUSTOM = 64


def check_metric(name: str) -> str:
    """`name` if it is a metric an instance can have (one of SERIES or a workload's own)."""
    if name in SERIES or CUSTOM.match(name):
        return name
    raise ValueError(
        f"metric {name!r} is neither one of {', '.join(SERIES)} nor a Prometheus metric name "
        "(letters, digits, '_' and ':', not starting with a digit)"
    )


@dataclass(frozen=True)
class Usage:
    """One reading of an instance: counters since it started, memory resident now. None: the
    cloud cannot tell (a local process has no network counters of its own)."""

    cpu_seconds: float
    memory: int
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    read_bytes: int | None = None
    write_bytes: int | None = None
    #: the workload's own metrics, as exported: gauges as they are, counters since it started
    gauges: Mapping[str, float] = field(default_factory=dict)
    counters: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    """Use over an interval: cores busy, bytes resident, bytes per second; and the workload's
    own metrics (gauges as read, counters as rates per second). A cloud that measures use
    itself (CloudWatch, the Kubernetes metrics API) reports a Point, its own average over its
    last period, instead of a Usage; memory is None where it cannot tell (EC2 without an agent)."""

    cpu: float
    memory: float | None
    rx: float | None = None
    tx: float | None = None
    read: float | None = None
    write: float | None = None
    custom: Mapping[str, float] = field(default_factory=dict)

    def get(self, series: str) -> float | None:
        if series in SERIES:
            value: float | None = getattr(self, series)
            return value
        return self.custom.get(series)


def _per_second(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None:
        return None
    return max(0.0, (after - before) / seconds)  # a counter that went back: the instance restarted


def rate(before: Usage, after: Usage, seconds: float) -> Point:
    """The use between two readings `seconds` apart."""
    seconds = max(seconds, 1e-3)
    return Point(
        cpu=max(0.0, (after.cpu_seconds - before.cpu_seconds) / seconds),
        memory=float(after.memory),
        rx=_per_second(before.rx_bytes, after.rx_bytes, seconds),
        tx=_per_second(before.tx_bytes, after.tx_bytes, seconds),
        read=_per_second(before.read_bytes, after.read_bytes, seconds),
        write=_per_second(before.write_bytes, after.write_bytes, seconds),
        custom=dict(after.gauges)
        | {
            name: max(0.0, (value - before.counters[name]) / seconds)
            for name, value in after.counters.items()
            if name in before.counters
        },
    )


def mean(points: list[Point]) -> Point:
    """The average of points (each series over the points that have it)."""
    if not points:
        raise ValueError("no points to average")
    out: dict[str, float | None] = {}
    for f in fields(Point):
        if f.name != "custom":
            values = [v for p in points if (v := getattr(p, f.name)) is not None]
            out[f.name] = sum(values) / len(values) if values else None
    cpu = out.pop("cpu")
    return Point(cpu=cpu or 0.0, custom=mean_custom([p.custom for p in points]), **out)


def mean_custom(readings: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Each custom series averaged over the readings that have it."""
    sums: dict[str, list[float]] = {}
    for reading in readings:
        for name, value in reading.items():
            sums.setdefault(name, []).append(value)
    return {name: sum(values) / len(values) for name, values in sums.items()}


def bucket(at: datetime, resolution: int) -> datetime:
    """The start of the bucket `at` falls in."""
    return datetime.fromtimestamp(int(at.timestamp()) // resolution * resolution, tz=at.tzinfo or UTC)
