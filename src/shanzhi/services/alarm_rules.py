"""Alarm rules and silences: define, list and remove them within the caller's VDCs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.alarm_rules import RuleIn
from shanzhi.domain.dr import parse_duration
from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.domain.rbac import Scope
from shanzhi.services.vdcs import get_vdc, scope_filter
from shanzhi.store.tables import AlarmRule, AlarmSilence, utcnow

MAX_SILENCE = timedelta(days=30)


def rule_out(r: AlarmRule) -> dict[str, Any]:
    return {
        "id": r.id,
        "name": r.name,
        "vdc": r.vdc,
        "metric": r.metric,
        "above": r.above,
        "below": r.below,
        "absent": r.absent,
        "for": r.hold,
        "event": r.event,
        "app": r.app,
        "component": r.component,
        "severity": r.severity,
        "webhook": r.webhook,
        "created_by": r.created_by,
        "created_at": r.created_at,
    }


def silence_out(x: AlarmSilence) -> dict[str, Any]:
    return {
        "id": x.id,
        "rule": x.rule_id,
        "vdc": x.vdc,
        "app": x.app,
        "until": x.until,
        "comment": x.comment,
        "created_by": x.created_by,
        "created_at": x.created_at,
    }


def add_rule(s: Session, body: RuleIn, by: str) -> AlarmRule:
    if body.vdc is not None:
        get_vdc(s, body.vdc)
    same = select(AlarmRule).where(AlarmRule.name == body.name, AlarmRule.vdc.is_not_distinct_from(body.vdc))
    if s.scalar(same) is not None:
        where = f"VDC {body.vdc}" if body.vdc else "the platform"
        raise Conflict(f"{where} already has an alarm rule {body.name}; delete it first", field="name")
    rule = AlarmRule(
        name=body.name,
        vdc=body.vdc,
        metric=body.metric,
        above=body.above,
        below=body.below,
        absent=body.absent,
        hold=body.seconds,
        event=body.event,
        app=body.app,
        component=body.component,
        severity=body.severity,
        webhook=body.webhook,
        created_by=by,
    )
    s.add(rule)
    s.flush()
    return rule


def list_rules(s: Session, scope: Scope) -> list[AlarmRule]:
    q = select(AlarmRule).order_by(AlarmRule.id)
    if not scope.everywhere:
        q = q.where(scope_filter(scope, AlarmRule.vdc))
    return list(s.scalars(q))


def get_rule(s: Session, rule_id: int, scope: Scope) -> AlarmRule:
    rule = s.get(AlarmRule, rule_id)
    if rule is None or not (scope.everywhere or (rule.vdc is not None and scope.contains(rule.vdc))):
        raise NotFound(f"no alarm rule {rule_id}; see 'shanzhi alarm rules'", field="rule_id")
    return rule


def add_silence(
    s: Session, *, rule: AlarmRule | None, vdc: str | None, app: str | None, duration: str, comment: str, by: str
) -> AlarmSilence:
    try:
        span = timedelta(seconds=parse_duration(duration))
    except ValueError as err:
        raise InvalidInput(f"for: {err}", field="for") from None
    if not timedelta(0) < span <= MAX_SILENCE:
        raise InvalidInput(f"for: {duration} must be more than 0 and at most {MAX_SILENCE.days}d", field="for")
    if vdc is not None:
        get_vdc(s, vdc)
    silence = AlarmSilence(
        rule_id=rule.id if rule else None, vdc=vdc, app=app, until=utcnow() + span, comment=comment, created_by=by
    )
    s.add(silence)
    s.flush()
    return silence


def list_silences(s: Session, scope: Scope, now: datetime) -> list[AlarmSilence]:
    q = select(AlarmSilence).where(AlarmSilence.until > now).order_by(AlarmSilence.id)
    if not scope.everywhere:
        q = q.where(scope_filter(scope, AlarmSilence.vdc))
    return list(s.scalars(q))
