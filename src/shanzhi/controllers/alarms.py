"""Alarms: a record people acknowledge, an event beside it, and a webhook notification.

`raise_alarm` writes both in the caller's transaction. The `Notifier` thread posts each alarm
not yet notified to the configured webhook as JSON, three tries with backoff; what still fails is
marked with the error (an alarm is never lost, only its notification).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.controllers.loop import LeaderThread
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import Alarm, AlarmRule

log = logging.getLogger("shanzhi.alarms")
TRIES = 3


def raise_alarm(
    s: Session,
    kind: str,
    message: str,
    *,
    vdc: str | None = None,
    app: str | None = None,
    severity: str = "warning",
    detail: dict[str, Any] | None = None,
) -> Alarm:
    alarm = Alarm(kind=kind, severity=severity, vdc=vdc, app=app, message=message, detail=detail or {})
    s.add(alarm)
    record_event(s, "Alarm", "alarm", kind, message, vdc=vdc, app=app, warning=severity != "info")
    return alarm


def as_json(a: Alarm) -> dict[str, Any]:
    return {
        "id": a.id,
        "at": a.at.isoformat(),
        "kind": a.kind,
        "severity": a.severity,
        "vdc": a.vdc,
        "app": a.app,
        "message": a.message,
        "detail": a.detail,
        "instance": a.instance,
    }


class Notifier:
    """Posts each new alarm to its rule's webhook, else the server's (`--alarm-webhook`); an alarm
    with neither is marked notified at once."""

    def __init__(self, db: Database, url: str | None, is_leader: Callable[[], bool], *, interval: float = 1.0) -> None:
        self.db = db
        self.url = url
        self.is_leader = is_leader
        self.interval = interval
        self._thread = LeaderThread("alarm-notifier", self.run_once, is_leader, interval)
        self.start, self.stop = self._thread.start, self._thread.stop

    def run_once(self) -> int:
        with self.db.session() as s, s.begin():
            todo = [
                (as_json(a), (rule.webhook if rule is not None else None) or self.url)
                for a, rule in s.execute(
                    select(Alarm, AlarmRule)
                    .outerjoin(AlarmRule, AlarmRule.id == Alarm.rule_id)
                    .where(Alarm.notified.is_(False))
                    .order_by(Alarm.id)
                )
            ]
        for body, url in todo:
            error = self._post(url, body) if url else None
            with self.db.session() as s, s.begin():
                alarm = s.get(Alarm, body["id"])
                if alarm is not None:
                    alarm.notified = True
                    if error:
                        alarm.detail = {**alarm.detail, "notify_error": error}
        return len(todo)

    def _post(self, url: str, body: dict[str, Any]) -> str | None:
        error = ""
        for attempt in range(TRIES):
            try:
                r = httpx.post(url, json=body, timeout=5)
                if r.status_code < 300:
                    return None
                error = f"HTTP {r.status_code}"
            except httpx.HTTPError as err:
                error = str(err) or type(err).__name__
            if attempt + 1 < TRIES:
                time.sleep(0.5 * 2**attempt)
        log.warning("alarm %s: webhook %s failed %d times: %s", body["id"], url, TRIES, error)
        return error
