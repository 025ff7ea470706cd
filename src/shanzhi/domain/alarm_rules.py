"""Alarm rules: what to watch, and when a watched thing is in alarm.

A rule watches a metric of every replica in its scope (a VDC subtree, optionally one app and
component): above or below a threshold for a duration, or absent (no sample) for a duration.
Or it watches events by reason (`CloudDown`, `DatabaseFailover`, `Alarm` for the network's
denied flows, ...): each matching event raises an alarm at once. `Tracker` is the state of the
duration: a breach must last `for` before the alarm fires, and the alarm resolves when the
breach ends. Pure: the controller feeds it what it sampled and records what it says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shanzhi.domain.dr import parse_duration
from shanzhi.domain.metrics import SERIES, check_metric

Severity = Literal["info", "warning", "critical"]
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class RuleIn(BaseModel):
    """A rule as written: `metric` with `above`/`below` or `absent`, or `event`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=63)
    vdc: str | None = Field(None, description="a VDC subtree; none: the whole platform (system administrators)")
    metric: str | None = Field(
        None, max_length=128, description="cpu, memory, rx, tx, read, write, or a metric the workloads export"
    )
    above: float | None = None
    below: float | None = None
    absent: bool = False
    for_: str = Field("0s", alias="for", description="how long the condition must hold: 30s, 5m")
    event: str | None = Field(None, max_length=64, description="an event reason, e.g. CloudDown")
    app: str | None = Field(None, max_length=63)
    component: str | None = Field(None, max_length=63)
    severity: Severity = "warning"
    webhook: str | None = Field(None, max_length=2000, description="POST this rule's alarms here (else the server's)")

    @model_validator(mode="after")
    def _one_condition(self) -> RuleIn:
        if not _NAME.match(self.name):
            raise ValueError(f"name {self.name!r}: lowercase letters, digits and '-'")
        parse_duration(self.for_)
        if self.webhook is not None and not self.webhook.startswith(("http://", "https://")):
            raise ValueError("webhook must be an http(s) URL")
        if self.event is not None:
            if self.metric is not None or self.above is not None or self.below is not None or self.absent:
                raise ValueError("an event rule takes no metric, above, below or absent")
            return self
        if self.metric is None:
            raise ValueError(f"a rule needs a metric ({', '.join(SERIES)}, or a workload's own) or an event")
        check_metric(self.metric)
        conditions = sum(x is not None for x in (self.above, self.below)) + int(self.absent)
        if conditions != 1:
            raise ValueError("a metric rule needs exactly one of above, below or absent")
        return self

    @property
    def seconds(self) -> float:
        return parse_duration(self.for_)


def breached(value: float | None, above: float | None, below: float | None) -> bool:
    """Whether a sampled value is in alarm (a missing value is no breach: `absent` says that)."""
    if value is None:
        return False
    if above is not None and value > above:
        return True
    return below is not None and value < below


@dataclass
class Tracker:
    """Per watched key (a rule and a replica): since when it has been in breach, and whether its
    alarm is firing. `step` says what to do: "fire", "resolve" or nothing."""

    since: dict[tuple[int, str], float] = field(default_factory=dict)
    firing: set[tuple[int, str]] = field(default_factory=set)

    def step(self, key: tuple[int, str], breach: bool, hold: float, now: float) -> str | None:
        if not breach:
            self.since.pop(key, None)
            if key in self.firing:
                self.firing.discard(key)
                return "resolve"
            return None
        start = self.since.setdefault(key, now)
        if key not in self.firing and now - start >= hold:
            self.firing.add(key)
            return "fire"
        return None

    def forget(self, keep: set[tuple[int, str]]) -> list[tuple[int, str]]:
        """Drop keys no longer watched; return the firing ones among them (to resolve)."""
        gone = [k for k in self.firing if k not in keep]
        for k in [k for k in self.since if k not in keep]:
            del self.since[k]
        self.firing -= set(gone)
        return gone
