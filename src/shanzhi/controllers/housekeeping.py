"""Housekeeping the leader does besides reconciling: metering (every `meter_every` seconds, not
every pass: it touches every running instance), expiring approval requests, and, hourly, pruning
audit records past their retention and credentials that can never work again (tokens expired or
revoked a month ago, single sign-on logins that lapsed).

Metering moves a persistent mark forward by whole seconds and credits that time to every
instance holding resources (starting, running, unhealthy), split at clock-hour boundaries, in
the same transaction as the mark: a crash never counts a second twice or loses one. Between
two meterings an instance is taken to stay in the state it was seen in, so records are exact
to one metering interval.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.orm import Session

from shanzhi.controllers.flow_rollup import roll_up_flows
from shanzhi.store import Database
from shanzhi.store import audit as chain
from shanzhi.store.tables import (
    App,
    ApprovalRequest,
    AuditRecord,
    Cloud,
    Flow,
    Instance,
    LoginFailure,
    MeterState,
    OidcFlow,
    Token,
    UsageRecord,
    Vdc,
    utcnow,
)

log = logging.getLogger("shanzhi.housekeeping")

BILLABLE = ("starting", "running", "unhealthy")


def hour_of(t: datetime) -> datetime:
    return t.replace(minute=0, second=0, microsecond=0)


def _split(start: datetime, end: datetime) -> list[tuple[datetime, int]]:
    """[(hour, seconds)] covering [start, end) (whole seconds)."""
    out = []
    t = start
    while t < end:
        nxt = min(end, hour_of(t) + timedelta(hours=1))
        out.append((hour_of(t), int((nxt - t).total_seconds())))
        t = nxt
    return out


def meter(s: Session, now: datetime | None = None) -> int:
    """Credit the time since the last call to the instances holding resources now; returns the
    seconds credited per instance (0 on the first call, which only sets the mark)."""
    now = now or utcnow()
    state = s.get(MeterState, 1)
    if state is None:
        s.add(MeterState(id=1, metered_to=now.replace(microsecond=0)))
        s.flush()
        return 0
    elapsed = int((now - state.metered_to).total_seconds())
    if elapsed < 1:
        return 0
    start, end = state.metered_to, state.metered_to + timedelta(seconds=elapsed)
    state.metered_to = end
    rows = s.execute(
        select(Instance.name, Instance.cpu, Instance.memory, Instance.storage, App.name, Vdc.path, Instance.cloud_id)
        .join(App, Instance.app_id == App.id)
        .join(Vdc, App.vdc_id == Vdc.id)
        .where(Instance.state.in_(BILLABLE), Instance.cloud_id.is_not(None))
    ).all()
    if not rows:
        return elapsed
    clouds: dict[int, str] = {row.id: row.name for row in s.execute(select(Cloud.id, Cloud.name))}
    parts = _split(start, end)
    keys = [(h, r[0]) for h, _ in parts for r in rows]
    existing = {
        (u.hour, u.instance): u
        for u in s.scalars(select(UsageRecord).where(tuple_(UsageRecord.hour, UsageRecord.instance).in_(keys)))
    }
    for hour, secs in parts:
        for name, cpu, mem, storage, app, vdc, cloud_id in rows:
            u = existing.get((hour, name))
            if u is None:
                s.add(
                    UsageRecord(
                        hour=hour,
                        instance=name,
                        app=app,
                        vdc=vdc,
                        cloud=clouds.get(cloud_id or 0, "?"),
                        cpu=cpu,
                        memory=mem,
                        storage=storage,
                        seconds=secs,
                    )
                )
            else:
                u.seconds += secs
    s.flush()
    return elapsed


def expire_approvals(s: Session, now: datetime | None = None) -> int:
    """Pending approval requests past their expiry become `expired` (they never apply)."""
    now = now or utcnow()
    res = s.execute(
        update(ApprovalRequest)
        .where(ApprovalRequest.status == "pending", ApprovalRequest.expires_at <= now)
        .values(status="expired", decided_at=now, outcome="expired before every stage approved; apply again")
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def prune_audit(s: Session, retention_days: int, now: datetime | None = None) -> int:
    """Remove audit records older than the retention period, recording that in the chain."""
    before = (now or utcnow()) - timedelta(days=retention_days)
    n = chain.prune(s, before)
    if n:
        chain.append(
            s,
            AuditRecord(
                actor="system",
                role="controller",
                action="audit.prune",
                target=f"audit records before {before.isoformat()}",
                method="TASK",
                path="housekeeping/audit-retention",
                status=200,
                outcome="success",
                detail=f"pruned {n} records older than {retention_days} days",
            ),
            to_ledger=True,  # its commitment goes into the ledger like every other record's
        )
    return n


TOKEN_AFTERLIFE = timedelta(days=30)  # dead tokens stay listed this long ("revoked yesterday")


def prune_credentials(s: Session, now: datetime | None = None) -> int:
    """Delete tokens expired or revoked more than TOKEN_AFTERLIFE ago, and lapsed SSO logins."""
    now = now or utcnow()
    gone = now - TOKEN_AFTERLIFE
    tokens = s.execute(delete(Token).where(or_(Token.expires_at <= gone, Token.revoked_at <= gone)))
    flows = s.execute(delete(OidcFlow).where(OidcFlow.expires_at <= now))
    quiet = now - timedelta(days=1)  # made-up names nobody has tried for a day, lock-out over
    phantoms = s.execute(
        delete(LoginFailure).where(
            LoginFailure.last_at <= quiet, or_(LoginFailure.locked_until.is_(None), LoginFailure.locked_until <= now)
        )
    )
    return sum(int(getattr(r, "rowcount", 0) or 0) for r in (tokens, flows, phantoms))


def prune_flows(s: Session, before: datetime) -> int:
    """Delete flow records that ended (or were dropped) before `before`; open ones stay."""
    done = s.execute(delete(Flow).where(Flow.ended_at.is_not(None), Flow.ended_at < before))
    return int(getattr(done, "rowcount", 0) or 0)


class Housekeeping:
    def __init__(
        self,
        db: Database,
        *,
        audit_retention_days: int = 180,
        flow_retention_days: float = 7.0,
        meter_every: float = 5.0,
        prune_every: float = 3600.0,
    ) -> None:
        self.db = db
        self.retention = audit_retention_days
        self.flow_retention = timedelta(days=flow_retention_days)
        self.meter_every = meter_every
        self.prune_every = prune_every
        self._last_meter = self._last_prune = -float("inf")

    def run_once(self) -> None:
        now = time.monotonic()
        metering = now - self._last_meter >= self.meter_every
        with self.db.session() as s, s.begin():
            if metering:
                meter(s)
            expire_approvals(s)
        if metering:
            self._last_meter = now
        if now - self._last_prune >= self.prune_every:
            self._last_prune = now
            with self.db.session() as s, s.begin():
                n = prune_audit(s, self.retention)
                dead = prune_credentials(s)
                roll_up_flows(s)  # before the records go
                old_flows = prune_flows(s, utcnow() - self.flow_retention)
            if n:
                log.info("pruned %d audit records older than %d days", n, self.retention)
            if dead:
                log.info("removed %d dead tokens and lapsed single sign-on logins", dead)
            if old_flows:
                log.info("removed %d flow records past their retention", old_flows)
