"""ORM tables. Quantities are integers (millicores, bytes); times are aware UTC datetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from shanzhi.sealing import Vault

DR_KEY = "dr.key"  # seals the passwords of managed databases (`DrCluster.keys`)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, int: BigInteger}


class Site(Base):
    __tablename__ = "sites"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    # production | same-city | remote | arbiter (one site each), or none
    dr_role: Mapped[str | None] = mapped_column(String(16), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Cloud(Base):
    __tablename__ = "clouds"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    region: Mapped[str] = mapped_column(String(63))
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    health: Mapped[str] = mapped_column(String(16), default="unknown")  # unknown|healthy|down
    health_message: Mapped[str] = mapped_column(Text, default="")
    health_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    # draining: no new placements; the controller moves its instances away, then removes it
    draining: Mapped[bool] = mapped_column(default=False)
    # fenced by a proposed evacuation plan: no new placements until the plan is applied or dropped
    fenced_by_plan: Mapped[int | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    site: Mapped[Site] = relationship(lazy="joined")
    hosts: Mapped[list[Host]] = relationship(cascade="all, delete-orphan", order_by="Host.name")


class Host(Base):
    __tablename__ = "hosts"
    __table_args__ = (UniqueConstraint("cloud_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cloud_id: Mapped[int] = mapped_column(ForeignKey("clouds.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    cpu: Mapped[int] = mapped_column()
    memory: Mapped[int] = mapped_column()
    max_instances: Mapped[int] = mapped_column()
    healthy: Mapped[bool] = mapped_column(default=True)


class Vdc(Base):
    __tablename__ = "vdcs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(String(512), unique=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("vdcs.id"))
    quota_cpu: Mapped[int | None] = mapped_column()
    quota_memory: Mapped[int | None] = mapped_column()
    quota_instances: Mapped[int | None] = mapped_column()
    quota_storage: Mapped[int | None] = mapped_column()
    # strict: the children's quotas together may not exceed this VDC's own
    strict: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (UniqueConstraint("vdc_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vdc_id: Mapped[int] = mapped_column(ForeignKey("vdcs.id"))
    name: Mapped[str] = mapped_column(String(63))
    spec: Mapped[dict[str, Any]] = mapped_column()
    generation: Mapped[int] = mapped_column(default=1)
    deleting: Mapped[bool] = mapped_column(default=False)
    # desired totals, kept for quota roll-up without re-parsing specs
    cpu: Mapped[int] = mapped_column(default=0)
    memory: Mapped[int] = mapped_column(default=0)
    instances: Mapped[int] = mapped_column(default=0)
    storage: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    vdc: Mapped[Vdc] = relationship(lazy="joined")


class AppRevision(Base):
    """One stored generation of an app's spec: what `rollout history` lists and `undo` re-applies."""

    __tablename__ = "app_revisions"
    __table_args__ = (UniqueConstraint("app_id", "generation"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column()
    spec: Mapped[dict[str, Any]] = mapped_column()
    author: Mapped[str] = mapped_column(String(128), default="")
    cause: Mapped[str] = mapped_column(String(256), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Instance(Base):
    """One replica. The row exists before the provider creates it (the intent)."""

    __tablename__ = "instances"
    __table_args__ = (Index("ix_instances_app", "app_id"), Index("ix_instances_cloud", "cloud_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    component: Mapped[str] = mapped_column(String(63))
    spec_hash: Mapped[str] = mapped_column(String(32))
    cloud_id: Mapped[int | None] = mapped_column(ForeignKey("clouds.id"))
    host: Mapped[str | None] = mapped_column(String(128))
    cpu: Mapped[int] = mapped_column()
    memory: Mapped[int] = mapped_column()
    storage: Mapped[int] = mapped_column(default=0)
    # pending (no host yet) | scheduled | starting | running | unhealthy | exited | failed |
    # lost (cloud down) | terminating
    state: Mapped[str] = mapped_column(String(16), default="pending")
    endpoint: Mapped[str | None] = mapped_column(String(255))
    # where it exports its own metrics (its component's `metrics`, on the port it was given)
    metrics_url: Mapped[str | None] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(Text, default="")  # why it is in its current state
    placement: Mapped[str] = mapped_column(Text, default="")  # why it is where it is (or unplaced)
    explain: Mapped[dict[str, Any]] = mapped_column(default=dict)
    restarts: Mapped[int] = mapped_column(default=0)
    # the replica's stable identity within its component (0, 1, ...): its volumes follow it
    ordinal: Mapped[int] = mapped_column(default=0)
    # set on a migration's new replica: the old one stops once this one is healthy
    replaces: Mapped[str | None] = mapped_column(String(128))
    # set on a replica adopted from what a cloud already ran (`shanzhi adopt`): the cloud's id
    # of it; the replica is `adopting` until its cloud knows it by this name
    adopted_from: Mapped[str | None] = mapped_column(String(255))
    # its address on the tenant fabric (clouds with tenant networks), in its VDC's subnet there
    address: Mapped[str | None] = mapped_column(String(45), unique=True)
    state_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    app: Mapped[App] = relationship(lazy="joined")
    cloud: Mapped[Cloud | None] = relationship(lazy="joined")


class VdcSubnet(Base):
    """A VDC's subnet in one site, from the server's network pool (never two that overlap)."""

    __tablename__ = "vdc_subnets"
    __table_args__ = (UniqueConstraint("vdc_id", "site_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vdc_id: Mapped[int] = mapped_column(ForeignKey("vdcs.id", ondelete="CASCADE"))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    cidr: Mapped[str] = mapped_column(String(45), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    vdc: Mapped[Vdc] = relationship(lazy="joined")
    site: Mapped[Site] = relationship(lazy="joined")


class Flow(Base):
    """One connection (verdict `forwarded`) or the packets of one 5-tuple the policy dropped
    within half a second (`dropped`), with both ends' VDC, app and instance when they are ours."""

    __tablename__ = "flows"
    __table_args__ = (
        Index("ix_flows_started", "started_at"),
        Index("ix_flows_src_vdc", "src_vdc"),
        Index("ix_flows_dst_vdc", "dst_vdc"),
        Index("ix_flows_open", "host", "ct_id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    host: Mapped[str] = mapped_column(String(160))  # the host namespace that saw it
    ct_id: Mapped[int | None] = mapped_column()  # conntrack's id there (forwarded flows)
    verdict: Mapped[str] = mapped_column(String(16))  # forwarded | dropped
    rule: Mapped[str] = mapped_column(String(255), default="")  # the rule that let it in or dropped it
    proto: Mapped[int] = mapped_column()
    src: Mapped[str] = mapped_column(String(45))
    sport: Mapped[int] = mapped_column()
    dst: Mapped[str] = mapped_column(String(45))
    dport: Mapped[int] = mapped_column()
    src_vdc: Mapped[str | None] = mapped_column(String(512))
    src_app: Mapped[str | None] = mapped_column(String(63))
    src_instance: Mapped[str | None] = mapped_column(String(128))
    dst_vdc: Mapped[str | None] = mapped_column(String(512))
    dst_app: Mapped[str | None] = mapped_column(String(63))
    dst_instance: Mapped[str | None] = mapped_column(String(128))
    packets_out: Mapped[int] = mapped_column(default=0)
    bytes_out: Mapped[int] = mapped_column(default=0)
    packets_in: Mapped[int] = mapped_column(default=0)
    bytes_in: Mapped[int] = mapped_column(default=0)
    started_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class FlowHour(Base):
    """Flows summed per hour (of their start), app pair, verdict, protocol and port: what stays
    once the records themselves are past their retention ('' where an end is not an app)."""

    __tablename__ = "flow_hours"
    __table_args__ = (
        UniqueConstraint("hour", "src_vdc", "src_app", "dst_vdc", "dst_app", "verdict", "proto", "dport"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hour: Mapped[datetime] = mapped_column()
    src_vdc: Mapped[str] = mapped_column(String(512), default="")
    src_app: Mapped[str] = mapped_column(String(63), default="")
    dst_vdc: Mapped[str] = mapped_column(String(512), default="")
    dst_app: Mapped[str] = mapped_column(String(63), default="")
    verdict: Mapped[str] = mapped_column(String(16))
    proto: Mapped[int] = mapped_column()
    dport: Mapped[int] = mapped_column()
    flows: Mapped[int] = mapped_column(default=0)
    packets: Mapped[int] = mapped_column(default=0)
    bytes: Mapped[int] = mapped_column(default=0)


class FlowEdge(Base):
    """An app-to-app edge ever seen (the baseline alarms compare against)."""

    __tablename__ = "flow_edges"
    __table_args__ = (UniqueConstraint("src_vdc", "src_app", "dst_vdc", "dst_app"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    src_vdc: Mapped[str] = mapped_column(String(512))
    src_app: Mapped[str] = mapped_column(String(63))
    dst_vdc: Mapped[str] = mapped_column(String(512))
    dst_app: Mapped[str] = mapped_column(String(63))
    flows: Mapped[int] = mapped_column(default=0)
    bytes: Mapped[int] = mapped_column(default=0)
    rate: Mapped[float] = mapped_column(Float, default=0.0)  # bytes/s, moving average per minute
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Alarm(Base):
    """Something a person should look at: a denied cross-VDC attempt, a new edge, a spike."""

    __tablename__ = "alarms"
    __table_args__ = (Index("ix_alarms_at", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    vdc: Mapped[str | None] = mapped_column(String(512))  # whose it is (the receiving side)
    app: Mapped[str | None] = mapped_column(String(63))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    notified: Mapped[bool] = mapped_column(default=False)
    # raised by a rule (alarm rules): which, for which replica, when it ended, whether silenced
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alarm_rules.id", ondelete="SET NULL"))
    instance: Mapped[str | None] = mapped_column(String(128))
    resolved_at: Mapped[datetime | None] = mapped_column()
    silenced: Mapped[bool] = mapped_column(default=False)


class VolumeRecord(Base):
    """A replica's disk on one cloud, keyed by app, component, ordinal and volume name. It outlives
    the replica (a replacement on the same cloud gets it back) and, with `retain`, the app."""

    __tablename__ = "volumes"
    __table_args__ = (Index("ix_volumes_app", "app_id"), UniqueConstraint("cloud_id", "key"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(255))  # the disk's name on its cloud
    vdc_id: Mapped[int] = mapped_column(ForeignKey("vdcs.id"))
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="SET NULL"))
    app_name: Mapped[str] = mapped_column(String(63))
    component: Mapped[str] = mapped_column(String(63))
    ordinal: Mapped[int] = mapped_column()
    name: Mapped[str] = mapped_column(String(63))
    cloud_id: Mapped[int] = mapped_column(ForeignKey("clouds.id"))
    size: Mapped[int] = mapped_column()
    mount_path: Mapped[str] = mapped_column(String(255))
    reclaim: Mapped[str] = mapped_column(String(16), default="delete")  # delete | retain
    # attached (a replica of that ordinal is on its cloud) | released (none) | deleting
    state: Mapped[str] = mapped_column(String(16), default="attached")
    instance: Mapped[str | None] = mapped_column(String(128))  # the replica using it now
    released_at: Mapped[datetime | None] = mapped_column()  # when its last replica stopped
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    vdc: Mapped[Vdc] = relationship(lazy="joined")
    cloud: Mapped[Cloud] = relationship(lazy="joined")


class PlanRecord(Base):
    """A reviewable re-placement plan (rebalance or evacuation) and whether it was applied."""

    __tablename__ = "plans"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="proposed")  # proposed | applied | dropped
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    moves: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"moves": [...]}
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    applied_at: Mapped[datetime | None] = mapped_column()


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_app", "app"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(16), default="Normal")  # Normal|Warning
    reason: Mapped[str] = mapped_column(String(64))
    object_kind: Mapped[str] = mapped_column(String(32))
    object_name: Mapped[str] = mapped_column(String(255))
    vdc: Mapped[str | None] = mapped_column(String(512))
    app: Mapped[str | None] = mapped_column(String(63))
    message: Mapped[str] = mapped_column(Text)


class AuditRecord(Base):
    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(255), default="")
    action: Mapped[str] = mapped_column(String(32), default="")
    target: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(64), default="")
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))  # success|denied|error
    detail: Mapped[str] = mapped_column(Text, default="")
    # hash chain: each record commits to the one before it (see shanzhi.store.audit)
    prev_hash: Mapped[str] = mapped_column(String(64), default="")
    hash: Mapped[str] = mapped_column(String(64), default="")
    # The directory ledger holds only a commitment to each record: sha256(salt || hash). The salt
    # stays here, readable by the audit administrator alone, so the public ledger discloses nothing.
    commit_salt: Mapped[str] = mapped_column(String(64), default="")
    # the index of this record's commitment in the directory ledger, once the outbox delivered it
    ledger_index: Mapped[int | None] = mapped_column()


class AuditOutbox(Base):
    """Audit records whose ledger commitment is still to be appended (written in the record's
    own transaction, so a crash never loses one; drained into the ledger, exactly once)."""

    __tablename__ = "audit_outbox"
    audit_id: Mapped[int] = mapped_column(ForeignKey("audit.id", ondelete="CASCADE"), primary_key=True)


class AuditAnchor(Base):
    """Where the audit chain starts after records older than the retention period were pruned."""

    __tablename__ = "audit_anchor"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_id: Mapped[int] = mapped_column()  # the oldest record kept
    prev_hash: Mapped[str] = mapped_column(String(64))  # the hash of the newest record pruned
    pruned: Mapped[int] = mapped_column(default=0)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (Index("uq_users_oidc_identity", "oidc_issuer", "oidc_subject", unique=True),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str | None] = mapped_column(String(255))  # argon2id; None: tokens only
    password_changed_at: Mapped[datetime | None] = mapped_column()  # passwords expire after a while
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column()
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column()
    # The OpenID Connect identity this user logs in as (issuer + subject), once linked.
    oidc_issuer: Mapped[str | None] = mapped_column(String(255))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))
    # the second factor: a TOTP secret (encrypted with the data dir's mfa.key), once enrolled
    mfa_secret: Mapped[str | None] = mapped_column(Text)
    mfa_enabled: Mapped[bool] = mapped_column(default=False)
    mfa_last_step: Mapped[int] = mapped_column(default=0)  # a code's time step is accepted once


class RecoveryCode(Base):
    """A one-time code that stands in for the second factor (shown once, kept hashed)."""

    __tablename__ = "mfa_recovery_codes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime | None] = mapped_column()


class LoginFailure(Base):
    """Failed logins for names that are no user: counted and locked like real users, so that the
    answers never tell who exists (pruned by housekeeping once the lock-out has passed)."""

    __tablename__ = "login_failures"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column()
    last_at: Mapped[datetime] = mapped_column(default=utcnow)


class OidcGroupMap(Base):
    """A provider group whose members get a role (on a VDC, or a platform role) at each login."""

    __tablename__ = "oidc_group_maps"
    __table_args__ = (UniqueConstraint("group", "role", "vdc_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    group: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(32))
    vdc_id: Mapped[int | None] = mapped_column(ForeignKey("vdcs.id", ondelete="CASCADE"))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    vdc: Mapped[Vdc | None] = relationship(lazy="joined")


class OidcFlow(Base):
    """An OpenID Connect login in progress: begun by a client, finished by the provider's
    callback, then traded once by the same client (who proves it with its verifier)."""

    __tablename__ = "oidc_flows"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    state: Mapped[str] = mapped_column(String(64), unique=True)
    nonce: Mapped[str] = mapped_column(String(64))
    code_verifier: Mapped[str] = mapped_column(String(128))  # PKCE towards the provider
    client_challenge: Mapped[str] = mapped_column(String(64))  # SHA-256 of the client's verifier
    return_to: Mapped[str | None] = mapped_column(String(255))  # a loopback URL, or None: show the code
    source: Mapped[str] = mapped_column(String(64), default="")
    expires_at: Mapped[datetime] = mapped_column()
    handoff_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    mfa_done: Mapped[bool] = mapped_column(default=False)  # the provider's amr says it asked a second factor
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Grant(Base):
    """A role for a user: a platform role (`vdc_id` None) or a VDC role on a VDC subtree."""

    __tablename__ = "grants"
    __table_args__ = (UniqueConstraint("user_id", "role", "vdc_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(32))
    vdc_id: Mapped[int | None] = mapped_column(ForeignKey("vdcs.id", ondelete="CASCADE"))
    granted_by: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    user: Mapped[User] = relationship(lazy="joined")
    vdc: Mapped[Vdc | None] = relationship(lazy="joined")


class Token(Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()
    session: Mapped[bool] = mapped_column(default=False)  # from a login (idle sessions end), not an API token
    # "mfa-enroll": a login that still owes its second factor may only enrol one
    restricted: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    user: Mapped[User] = relationship(lazy="joined")


class ApprovalRule(Base):
    """Applies to apps in a VDC's subtree: which applies need approval, and by whom, in order."""

    __tablename__ = "approval_rules"
    __table_args__ = (UniqueConstraint("vdc_id", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vdc_id: Mapped[int] = mapped_column(ForeignKey("vdcs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(63))
    # {"cpuOver": millicores, "sites": [...], "always": bool}: any condition that holds triggers it
    conditions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    stages: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"stages": [["alice", "role:vdc-admin"], ...]}
    expire_hours: Mapped[int] = mapped_column(Integer, default=72)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    vdc: Mapped[Vdc] = relationship(lazy="joined")


class ApprovalRequest(Base):
    """A held apply or delete: nothing changes until every stage approves; then it is carried out."""

    __tablename__ = "approval_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    vdc_id: Mapped[int] = mapped_column(ForeignKey("vdcs.id", ondelete="CASCADE"))
    app: Mapped[str] = mapped_column(String(63))
    action: Mapped[str] = mapped_column(String(16), default="apply")  # apply | delete
    document: Mapped[dict[str, Any]] = mapped_column()
    requester: Mapped[str] = mapped_column(String(64))
    # pending | approved | rejected | expired | failed
    status: Mapped[str] = mapped_column(String(16), default="pending")
    reasons: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"rules": [{"rule":..., "why":...}]}
    stages: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"stages": [{"approvers": [...], ...}]}
    # every stage's approvers as "|alice|role:system-admin|": what lets lists filter in SQL
    approvers: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[int] = mapped_column(Integer, default=0)
    comments: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"comments": [{"by","at","text"}]}
    outcome: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    decided_at: Mapped[datetime | None] = mapped_column()
    vdc: Mapped[Vdc] = relationship(lazy="joined")


class Rate(Base):
    """Prices of one cloud, in micro-yuan per unit-hour (integers: no float money)."""

    __tablename__ = "rates"
    cloud: Mapped[str] = mapped_column(String(63), primary_key=True)
    cpu: Mapped[int] = mapped_column(default=0)  # per core-hour
    memory: Mapped[int] = mapped_column(default=0)  # per GiB-hour
    storage: Mapped[int] = mapped_column(default=0)  # per GiB-hour
    currency: Mapped[str] = mapped_column(String(8), default="CNY")


class UsageRecord(Base):
    """Metered use of one instance during one clock hour."""

    __tablename__ = "usage_records"
    __table_args__ = (UniqueConstraint("hour", "instance"), Index("ix_usage_vdc_hour", "vdc", "hour"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hour: Mapped[datetime] = mapped_column()
    instance: Mapped[str] = mapped_column(String(128))
    app: Mapped[str] = mapped_column(String(63))
    vdc: Mapped[str] = mapped_column(String(512))
    cloud: Mapped[str] = mapped_column(String(63))
    cpu: Mapped[int] = mapped_column()  # millicores while running
    memory: Mapped[int] = mapped_column()  # bytes
    storage: Mapped[int] = mapped_column(default=0)  # bytes
    seconds: Mapped[int] = mapped_column(default=0)  # running seconds within the hour


class MeterState(Base):
    __tablename__ = "meter_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    metered_to: Mapped[datetime] = mapped_column()


class LedgerTile(Base):
    """A C2SP tlog-tiles Merkle tile: up to 256 hashes of one level (partial while growing)."""

    __tablename__ = "ledger_tiles"
    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerBundle(Base):
    """Up to 256 entries, each prefixed by its big-endian uint16 length (a tlog-tiles bundle)."""

    __tablename__ = "ledger_bundles"
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerState(Base):
    """The tree size and root, updated in the same transaction as the tiles."""

    __tablename__ = "ledger_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column()
    root: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerCheckpoint(Base):
    __tablename__ = "ledger_checkpoints"
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    note: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerKey(Base):
    """Public keys the ledger trusts: departments that submit entries, the log, witnesses."""

    __tablename__ = "ledger_keys"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    role: Mapped[str] = mapped_column(String(16))  # department | log | witness
    vkey: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DrEtcdMember(Base):
    """One etcd member the DR controller runs: of the `quorum` (production, same-city, arbiter)
    or of the `remote` centre's own cluster (its standby clusters' DCS). It runs on its centre's
    `cloud` as a platform workload (so losing the cloud loses the member), or beside the server
    on the centre's address where the centre has no cloud that runs processes."""

    __tablename__ = "dr_etcd_members"
    __table_args__ = (UniqueConstraint("cluster", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(63))
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"))
    address: Mapped[str] = mapped_column(String(45))
    client_port: Mapped[int] = mapped_column(Integer)
    peer_port: Mapped[int] = mapped_column(Integer)
    cloud_id: Mapped[int | None] = mapped_column(ForeignKey("clouds.id"))
    health: Mapped[str] = mapped_column(String(255), default="", server_default="")
    health_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    site: Mapped[Site] = relationship(lazy="joined")
    cloud: Mapped[Cloud | None] = relationship(lazy="joined")

    @property
    def instance(self) -> str:
        """Its name as a workload of its cloud (a dot: never an app's replica name)."""
        return f"etcd.{self.name}"

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{self.client_port}"


RESTORE_ACTIVE = ("approved", "copying", "stopping", "starting")


class DrCluster(Base):
    """A managed PostgreSQL (an app's `kind: postgres` component): its secrets, whether its etcd
    user exists yet (members wait for it), and the last status the DR controller read."""

    __tablename__ = "dr_clusters"
    __table_args__ = (UniqueConstraint("app_id", "component"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    component: Mapped[str] = mapped_column(String(63))
    secrets: Mapped[dict[str, Any]] = mapped_column()
    prepared: Mapped[bool] = mapped_column(default=False)
    leader: Mapped[str | None] = mapped_column(String(128))
    timeline: Mapped[int | None] = mapped_column()
    status: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # activating the remote centre and coming back from it: {"request", "state", "by", "at", "note",
    # "fenced_at", "generation"}; state approved -> running -> succeeded | failed | refused, then
    # (`dr reprotect`) rebuilding -> standby, then (`dr failback`) failed-back; written by the
    # approval, the DR operations and the DR controller's activation, never by its status reads
    activation: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    # the last restore in place: {"request", "state", "to", "by", "at", "count", "report", "copy"};
    # state approved -> copying -> stopping -> starting -> succeeded | failed (see
    # controllers.dr_restore); "count": how many were carried out (members' data in `-p<count>`)
    restore: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    app: Mapped[App] = relationship(lazy="joined")

    def keys(self, data_dir: Path, vault: Vault | None = None) -> dict[str, str]:
        """Its passwords (superuser, replication, app, etcd), sealed at rest with the data
        directory's `dr.key` (the DR controller makes and seals them before any member starts).
        A row from before they were sealed holds them plain until the controller seals them."""
        sealed = self.secrets.get("sealed")
        if not sealed:
            return {str(k): str(v) for k, v in self.secrets.items()}
        vault = vault or Vault.for_data_dir(data_dir, DR_KEY)
        keys: dict[str, str] = vault.open_json(sealed, f"the passwords of database {self.component}")
        return keys

    @property
    def fenced(self) -> bool:
        """Its main cluster was fenced for an activation of the remote centre, and is not (yet)
        rebuilt as the remote cluster's standby."""
        act = self.activation or {}
        return bool(act.get("fenced_at")) and act.get("state") not in ("standby", "failed-back")

    @property
    def remote_leads(self) -> bool:
        """The remote centre's cluster is the primary one (activated, not failed back yet)."""
        act = self.activation or {}
        return bool(act.get("fenced_at")) and act.get("state") != "failed-back"

    @property
    def generation(self) -> int:
        """How many times the main cluster was rebuilt: its members' data is in `pgdata-r<n>`."""
        return int((self.activation or {}).get("generation", 0))

    @property
    def restoring(self) -> str | None:
        """The state of a restore in place under way (its members stop, then start on the
        restored data), or None."""
        state = (self.restore or {}).get("state")
        return str(state) if state in RESTORE_ACTIVE else None

    def data_subdir(self, remote: bool) -> str:
        """Where in a member's volume its data directory is: a main cluster rebuilt after an
        activation starts afresh in `pgdata-r<n>`, and every member after a restore in place in
        `...-p<n>`; the old data stays beside it."""
        base, restored = self._subdir_base(remote)
        return f"{base}-p{restored}" if restored else base

    def superseded_subdirs(self, remote: bool) -> list[str]:
        """The data directories of this generation that restores in place left behind, all but
        the last one's (the data just before the latest restore, kept to go back to)."""
        base, restored = self._subdir_base(remote)
        return [f"{base}-p{k}" if k else base for k in range(restored - 1)]

    def _subdir_base(self, remote: bool) -> tuple[str, int]:
        base = f"pgdata-r{self.generation}" if self.generation and not remote else "pgdata"
        return base, int((self.restore or {}).get("count", 0))


class DrReport(Base):
    """What a DR operation or an automatic failover did: steps, timings, measured RTO and RPO."""

    __tablename__ = "dr_reports"
    __table_args__ = (Index("ix_dr_reports_app", "vdc", "app"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int | None] = mapped_column(ForeignKey("apps.id", ondelete="SET NULL"))
    vdc: Mapped[str] = mapped_column(String(512))
    app: Mapped[str] = mapped_column(String(63))
    kind: Mapped[str] = mapped_column(String(32))  # failover | switchover | drill | ...
    outcome: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
    summary: Mapped[str] = mapped_column(Text)
    body: Mapped[dict[str, Any]] = mapped_column()
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


class InventoryItem(Base):
    """One thing a cloud has (`providers.Resource`), as last synced: Shanzhi's own and what it
    found there. `digest` is a hash of the rest, so a sync writes only what changed."""

    __tablename__ = "inventory_items"
    __table_args__ = (
        UniqueConstraint("cloud_id", "kind", "external_id"),
        Index("ix_inventory_kind", "kind", "managed"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cloud_id: Mapped[int] = mapped_column(ForeignKey("clouds.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    external_id: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(32), default="")
    managed: Mapped[bool] = mapped_column(default=False)
    instance: Mapped[str | None] = mapped_column(String(128))
    attrs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    digest: Mapped[str] = mapped_column(String(32))
    first_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    cloud: Mapped[Cloud] = relationship(lazy="joined")


class InventorySync(Base):
    """A cloud's inventory sync: when it last ran, what it found and changed, its last error
    and when it runs next (backing off while the cloud fails)."""

    __tablename__ = "inventory_syncs"
    cloud_id: Mapped[int] = mapped_column(ForeignKey("clouds.id", ondelete="CASCADE"), primary_key=True)
    synced_at: Mapped[datetime | None] = mapped_column()
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    items: Mapped[int] = mapped_column(default=0)
    changed: Mapped[int] = mapped_column(default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    failures: Mapped[int] = mapped_column(default=0)
    next_at: Mapped[datetime] = mapped_column(default=utcnow)
    mode: Mapped[str] = mapped_column(String(16), default="full", server_default="full")  # full | changes


class MetricPoint(Base):
    """An instance's average use over a minute or an hour (`resolution` in seconds, `at` the
    bucket's start): cores, bytes resident, bytes per second (None where its cloud cannot tell)."""

    __tablename__ = "metric_points"
    __table_args__ = (
        UniqueConstraint("instance", "resolution", "at"),
        Index("ix_metric_points_app", "app_id", "resolution", "at"),
        Index("ix_metric_points_at", "resolution", "at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[int] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    component: Mapped[str] = mapped_column(String(63))
    instance: Mapped[str] = mapped_column(String(128))
    resolution: Mapped[int] = mapped_column()
    at: Mapped[datetime] = mapped_column()
    samples: Mapped[int] = mapped_column()
    cpu: Mapped[float] = mapped_column(Float)
    memory: Mapped[float | None] = mapped_column(Float)  # None: its cloud cannot tell (EC2 without an agent)
    rx: Mapped[float | None] = mapped_column(Float)
    tx: Mapped[float | None] = mapped_column(Float)
    read: Mapped[float | None] = mapped_column(Float)
    write: Mapped[float | None] = mapped_column(Float)
    # the workload's own metrics, by name (SQL NULL when it exports none)
    custom: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))


class AlarmRule(Base):
    """What to watch (see `shanzhi.domain.alarm_rules`): a metric of the replicas in a VDC
    subtree (or one app/component) above/below a threshold or absent for a duration, or events
    by reason. No VDC: a platform rule."""

    __tablename__ = "alarm_rules"
    __table_args__ = (UniqueConstraint("vdc", "name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    vdc: Mapped[str | None] = mapped_column(String(512))
    metric: Mapped[str | None] = mapped_column(String(128))
    above: Mapped[float | None] = mapped_column(Float)
    below: Mapped[float | None] = mapped_column(Float)
    absent: Mapped[bool] = mapped_column(default=False)
    hold: Mapped[float] = mapped_column(Float, default=0.0)  # seconds the condition must last
    event: Mapped[str | None] = mapped_column(String(64))
    app: Mapped[str | None] = mapped_column(String(63))
    component: Mapped[str | None] = mapped_column(String(63))
    severity: Mapped[str] = mapped_column(String(16), default="warning")
    webhook: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlarmSilence(Base):
    """Alarms matching this (a rule, a VDC subtree, an app) are recorded but not notified until
    `until`."""

    __tablename__ = "alarm_silences"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("alarm_rules.id", ondelete="CASCADE"))
    vdc: Mapped[str | None] = mapped_column(String(512))
    app: Mapped[str | None] = mapped_column(String(63))
    until: Mapped[datetime] = mapped_column()
    comment: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
