"""Reading a workload's own metrics: its `metrics` endpoint, in Prometheus's text format, parsed
by prometheus_client's parser.

Gauges (and untyped samples) are kept as read, counters as their running totals (the collector
turns two readings into a rate per second). A metric with several label sets is summed over
them (the queue depth of every queue, the requests of every route): the autoscaler and alarm
rules see one value per replica. Histograms and summaries are left out. At most `MAX_CUSTOM`
series and `LIMIT` bytes are read from one replica.
"""

from __future__ import annotations

import math

import httpx
from prometheus_client.parser import text_string_to_metric_families

from shanzhi.domain.metrics import CUSTOM, MAX_CUSTOM

LIMIT = 1 << 20
TIMEOUT = 2.0


class ScrapeError(Exception):
    """The endpoint did not answer with metrics."""


def scrape(url: str, timeout: float = TIMEOUT) -> tuple[dict[str, float], dict[str, float]]:
    """A replica's own metrics: (gauges, counters), by sample name."""
    try:
        with httpx.stream("GET", url, timeout=timeout, headers={"Accept": "text/plain"}) as r:
            if r.status_code != 200:
                raise ScrapeError(f"{url} answered {r.status_code}")
            body = bytearray()
            for chunk in r.iter_bytes():
                body += chunk
                if len(body) > LIMIT:
                    raise ScrapeError(f"{url} sent more than {LIMIT} bytes")
    except httpx.HTTPError as err:
        raise ScrapeError(f"{url}: {err}") from err
    return parse(body.decode("utf-8", "replace"))


def parse(text: str) -> tuple[dict[str, float], dict[str, float]]:
    """(gauges, counters) from Prometheus text: each sample name summed over its label sets."""
    gauges: dict[str, float] = {}
    counters: dict[str, float] = {}
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as err:
        raise ScrapeError(f"not Prometheus text: {err}") from err
    for family in families:
        if family.type in ("gauge", "untyped", "unknown"):
            into, names = gauges, {family.name}
        elif family.type == "counter":
            into, names = counters, {family.name, family.name + "_total"}
        else:
            continue
        for sample in family.samples:
            value = float(sample.value)
            if sample.name not in names or not math.isfinite(value) or not CUSTOM.match(sample.name):
                continue
            if sample.name not in into and len(gauges) + len(counters) >= MAX_CUSTOM:
                continue
            into[sample.name] = into.get(sample.name, 0.0) + value
    return gauges, counters
