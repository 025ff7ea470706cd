"""Evaluating alarm rules each controller pass: metric rules against every replica's latest
sample (from the metrics collector), event rules against the events recorded since the last pass.

A metric rule's breach must last its `for` before an alarm fires (one per rule and replica); the
alarm resolves, with an `AlarmResolved` event, when the breach ends or the replica goes. An
`absent` rule is in breach while a placed replica has no sample. An event rule raises an alarm
per matching event. Alarms matching an active silence are recorded as silenced and never
notified. After a restart the open alarms are picked up again, so each still resolves once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from shanzhi.controllers.alarms import raise_alarm
from shanzhi.controllers.metrics import Latest, NewRound
from shanzhi.domain.alarm_rules import Tracker, breached
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import Alarm, AlarmRule, AlarmSilence, App, Event, Instance, Vdc, utcnow

log = logging.getLogger("shanzhi.alarms")
WATCHED = ("running", "unhealthy", "starting", "lost", "exited", "failed")
RULE_PREFIX = "rule:"


def within(path: str | None, subtree: str | None) -> bool:
    return subtree is None or (path is not None and (path == subtree or path.startswith(subtree + "/")))


class RuleEvaluator:
    def __init__(
        self, db: Database, latest: Callable[[], dict[str, Latest]], rounds: Callable[[], int] | None = None
    ) -> None:
        self.db = db
        self.latest = latest
        self.fresh = NewRound(rounds)  # metric rules wait for new samples
        self.tracker = Tracker()
        self._cursor: int | None = None  # the last event id looked at
        self._resumed = False

    def run_once(self) -> int:
        """Evaluate every rule once; return how many alarms fired."""
        with self.db.session() as s, s.begin():
            if not self._resumed:
                self._resume(s)
            rules = list(s.scalars(select(AlarmRule).order_by(AlarmRule.id)))
            fired = 0
            if self.fresh():
                fired += self._metric_rules(s, [r for r in rules if r.metric is not None])
            fired += self._event_rules(s, [r for r in rules if r.event is not None])
        return fired

    def _resume(self, s: Session) -> None:
        """Open alarms of rules (from before a restart) resolve like those fired by this process."""
        now = time.monotonic()
        for rule_id, instance in s.execute(
            select(Alarm.rule_id, Alarm.instance).where(
                Alarm.rule_id.is_not(None), Alarm.instance.is_not(None), Alarm.resolved_at.is_(None)
            )
        ):
            key = (int(rule_id or 0), str(instance))
            self.tracker.firing.add(key)
            self.tracker.since[key] = now
        self._cursor = s.scalar(select(func.max(Event.id))) or 0
        self._resumed = True

    # ---------------------------------------------------------------- metrics
    def _metric_rules(self, s: Session, rules: list[AlarmRule]) -> int:
        if not rules and not self.tracker.firing:
            return 0
        replicas = s.execute(
            select(Instance.name, Instance.component, App.name, Vdc.path)
            .join(App, App.id == Instance.app_id)
            .join(Vdc, Vdc.id == App.vdc_id)
            .where(Instance.cloud_id.is_not(None), Instance.state.in_(WATCHED))
        ).all()
        latest = self.latest()
        now = time.monotonic()
        watched: set[tuple[int, str]] = set()
        fired = 0
        for rule in rules:
            for name, component, app, vdc in replicas:
                if not (within(vdc, rule.vdc) and rule.app in (None, app) and rule.component in (None, component)):
                    continue
                key = (rule.id, name)
                watched.add(key)
                sample = latest.get(name)
                if rule.absent:
                    breach, value = sample is None, None
                else:
                    value = sample.point.get(str(rule.metric)) if sample is not None else None
                    breach = breached(value, rule.above, rule.below)
                action = self.tracker.step(key, breach, rule.hold, now)
                if action == "fire":
                    self._fire_metric(s, rule, name, vdc, app, value)
                    fired += 1
                elif action == "resolve":
                    self._resolve(s, rule.id, name, vdc, app)
        for rule_id, name in self.tracker.forget(watched):
            found = s.execute(
                select(Alarm.vdc, Alarm.app).where(Alarm.rule_id == rule_id, Alarm.instance == name)
            ).first()
            self._resolve(s, rule_id, name, found[0] if found else None, found[1] if found else None)
        return fired

    def _fire_metric(self, s: Session, rule: AlarmRule, instance: str, vdc: str, app: str, value: float | None) -> None:
        if rule.absent:
            what = f"no {rule.metric} sample from {instance} for {rule.hold:g}s"
        else:
            limit = f"above {rule.above:g}" if rule.above is not None else f"below {rule.below:g}"
            what = f"{instance} {rule.metric} {value:.4g} {limit} for {rule.hold:g}s"
        detail = {"rule": rule.name, "metric": rule.metric, "value": value, "above": rule.above, "below": rule.below}
        self._raise(s, rule, f"{rule.name}: {what}", vdc, app, instance, detail)

    def _resolve(self, s: Session, rule_id: int, instance: str, vdc: str | None, app: str | None) -> None:
        now = utcnow()
        for alarm in s.scalars(
            select(Alarm).where(Alarm.rule_id == rule_id, Alarm.instance == instance, Alarm.resolved_at.is_(None))
        ):
            alarm.resolved_at = now
            record_event(s, "AlarmResolved", "alarm", alarm.kind, f"resolved: {alarm.message}", vdc=vdc, app=app)

    # ---------------------------------------------------------------- events
    def _event_rules(self, s: Session, rules: list[AlarmRule]) -> int:
        last = self._cursor or 0
        events = list(s.scalars(select(Event).where(Event.id > last).order_by(Event.id).limit(5000)))
        if events:
            self._cursor = events[-1].id
        fired = 0
        for e in events:
            if e.object_kind == "alarm" and e.object_name.startswith(RULE_PREFIX):
                continue  # a rule's own alarm is no event to alarm on
            for rule in rules:
                if rule.event == e.reason and within(e.vdc, rule.vdc) and rule.app in (None, e.app):
                    detail = {"rule": rule.name, "event": e.id, "reason": e.reason, "object": e.object_name}
                    message = f"{rule.name}: {e.reason} {e.object_name}: {e.message}"
                    self._raise(s, rule, message, e.vdc, e.app, None, detail)
                    fired += 1
        return fired

    # ---------------------------------------------------------------- both
    def _raise(
        self,
        s: Session,
        rule: AlarmRule,
        message: str,
        vdc: str | None,
        app: str | None,
        instance: str | None,
        detail: dict[str, Any],
    ) -> None:
        alarm = raise_alarm(
            s, f"{RULE_PREFIX}{rule.name}"[:32], message, vdc=vdc, app=app, severity=rule.severity, detail=detail
        )
        alarm.rule_id, alarm.instance = rule.id, instance
        if silenced(s, rule.id, vdc, app, utcnow()):
            alarm.silenced, alarm.notified = True, True
        log.info("alarm%s: %s", " (silenced)" if alarm.silenced else "", message)


def silenced(s: Session, rule_id: int, vdc: str | None, app: str | None, now: datetime) -> bool:
    for silence in s.scalars(
        select(AlarmSilence).where(
            AlarmSilence.until > now, or_(AlarmSilence.rule_id.is_(None), AlarmSilence.rule_id == rule_id)
        )
    ):
        if within(vdc, silence.vdc) and silence.app in (None, app):
            return True
    return False
