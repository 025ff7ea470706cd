"""Request and response bodies. Quantities are integers: cpu in millicores, memory in bytes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.domain.spec import NAME_RE

#: ids, cursors and indices are 64-bit signed integers in the database: anything larger is a 422
MAX_ID = 2**63 - 1
Id = Annotated[int, Path(ge=0, le=MAX_ID)]
Cursor = Annotated[int, Query(ge=0, le=MAX_ID, description="only items with an id greater than this")]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CloudIn(_In):
    name: str = Field(pattern=NAME_RE)
    kind: str
    site: str
    region: str
    tags: dict[str, str] = Field(default_factory=dict)
    options: dict[str, str | int | float] = Field(default_factory=dict)
    credentials: dict[str, str] | None = Field(
        None, description="the provider's credentials: sealed at rest, never shown again (only their field names)"
    )


class CredentialsIn(_In):
    credentials: dict[str, str]


class SyncIn(_In):
    cloud: str | None = Field(None, description="one cloud (default: every cloud)")


class AdoptIn(_In):
    cloud: str
    ids: list[str] = Field(min_length=1, max_length=100, description="the servers' ids on the cloud")
    vdc: str = Field(max_length=512)
    app: str = Field(pattern=NAME_RE)
    component: str = Field("main", pattern=NAME_RE)
    dry_run: bool = Field(False, description="show the spec adopting would write; change nothing")


class FailureIn(_In):
    host: str | None = None


class VdcIn(_In):
    path: str
    quota: dict[str, str | int | float | None] = Field(default_factory=dict)
    parents: bool = False
    strict: bool = Field(False, description="the children's quotas together may not exceed this VDC's")


class QuotaIn(_In):
    quota: dict[str, str | int | float | None] = Field(default_factory=dict)
    strict: bool | None = Field(None, description="turn strict mode on or off (unchanged if absent)")


class Resources(BaseModel):
    cpu: int | None
    memory: int | None
    instances: int | None
    storage: int | None = None


class HostOut(BaseModel):
    name: str
    cpu: int
    memory: int
    max_instances: int
    healthy: bool
    used: Resources


class CloudOut(BaseModel):
    name: str
    kind: str
    site: str
    region: str
    tags: dict[str, Any]
    options: dict[str, Any]
    health: str
    health_message: str
    draining: bool
    fenced_by_plan: int | None = None  # a proposed evacuation keeps new placements off
    hosts: int
    healthy_hosts: int
    capacity: Resources
    used: Resources
    created_at: datetime
    host_list: list[HostOut] | None = None


class VdcOut(BaseModel):
    path: str
    parent: str | None
    quota: Resources
    usage: Resources
    strict: bool = False
    apps: int
    created_at: datetime


class InstanceOut(BaseModel):
    name: str
    app: str
    vdc: str
    component: str
    cloud: str | None
    site: str | None
    host: str | None
    state: str
    endpoint: str | None
    reason: str
    placement: str
    restarts: int
    created_at: datetime
    explain: dict[str, Any] | None = None
    ordinal: int = 0
    provider: dict[str, Any] | None = None  # GET /instances/{name}: what its cloud says (domain, pid, disks)


class ComponentStatus(BaseModel):
    name: str
    desired: int
    ready: int
    instances: int


class AppOut(BaseModel):
    name: str
    vdc: str
    generation: int
    status: str
    deleting: bool
    components: list[ComponentStatus]
    created_at: datetime
    updated_at: datetime
    spec: dict[str, Any] | None = None
    instances: list[InstanceOut] | None = None


class ApplyOut(BaseModel):
    app: AppOut | None
    # apply: created | configured | unchanged; delete: deleting; either: held (see `approval`)
    outcome: str
    approval: dict[str, Any] | None = None
    warnings: list[str] = []  # valid but surely not meant (e.g. decimal megabytes)


class ChangeOut(BaseModel):
    path: str
    old: Any = None
    new: Any = None


class RollOut(BaseModel):
    component: str
    action: str  # create | roll | scale | remove
    replicas: int
    detail: str


class HeldBy(BaseModel):
    rule: str
    why: str


class PreviewOut(BaseModel):
    outcome: str  # create | configure | unchanged | held
    stored: dict[str, Any] | None
    spec: dict[str, Any]
    changes: list[ChangeOut]
    rolls: list[RollOut]
    held_by: list[HeldBy]
    warnings: list[str]


class RevisionOut(BaseModel):
    generation: int
    spec: dict[str, Any]
    author: str
    cause: str
    created_at: datetime
    current: bool


class VolumeOut(BaseModel):
    key: str
    vdc: str
    app: str
    component: str
    ordinal: int
    name: str
    cloud: str
    size: int
    mount_path: str
    reclaim: str
    state: str  # attached | released | deleting
    instance: str | None
    created_at: datetime


class LogOut(BaseModel):
    instance: str
    cloud: str
    text: str
    size: int
    truncated: bool


class EventOut(BaseModel):
    id: int
    at: datetime
    type: str
    reason: str
    object_kind: str
    object_name: str
    vdc: str | None
    app: str | None
    message: str


class RemoveOut(BaseModel):
    name: str
    outcome: str


class StatusOut(BaseModel):
    version: str
    database: str
    leader: bool
    controller_passes: int  # passes led: reconcile plus the leader's other controllers
    reconcile_passes: int  # passes over this server's share of the apps (led or not)
    shards: int  # this server's share of the apps, of 64 (servers on one PostgreSQL split them)
    replicas: int  # servers sharing the apps
    data_dir: str


class FlowOut(BaseModel):
    id: int
    verdict: str
    rule: str
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    src_vdc: str | None
    src_app: str | None
    src_instance: str | None
    dst_vdc: str | None
    dst_app: str | None
    dst_instance: str | None
    packets_out: int
    bytes_out: int
    packets_in: int
    bytes_in: int
    started_at: datetime
    ended_at: datetime | None
    updated_at: datetime
    host: str


class AlarmOut(BaseModel):
    id: int
    at: datetime
    kind: str
    severity: str
    vdc: str | None
    app: str | None
    message: str
    detail: dict[str, Any]
    acknowledged_by: str | None
    acknowledged_at: datetime | None
    rule_id: int | None = None  # raised by an alarm rule: which, for which replica, when it ended
    instance: str | None = None
    resolved_at: datetime | None = None
    silenced: bool = False


class FlowHourOut(BaseModel):
    hour: datetime
    src_vdc: str
    src_app: str
    dst_vdc: str
    dst_app: str
    verdict: str
    proto: str
    dport: int
    flows: int
    packets: int
    bytes: int
