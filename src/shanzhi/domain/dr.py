"""Disaster recovery in the spec and the topology: tiers, site roles and what each tier needs.

"Two sites, three centres" (CBRC 2010 No. 114; GB/T 20988): a **production** centre, a
**same-city** centre tens of km away (synchronous, RPO 0), a **remote** centre hundreds of km
away (asynchronous). Automatic failover needs a quorum that survives the loss of any one centre:
etcd members in production, same-city and a third centre, the **arbiter** (a site of its own, or
the remote centre when there is none). The remote centre's standby cluster keeps its own
single-member etcd, so it can be activated when production and same-city are both lost (its
quorum is not theirs).

Pure rules, used by apply (refuse what the topology cannot give) and by the reconciler (which
site each member of a protected database goes to).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ROLES = ("production", "same-city", "remote", "arbiter")
Role = Literal["production", "same-city", "remote", "arbiter"]
Tier = Literal["none", "same-city", "two-sites-three-centres", "remote-backup"]

#: per tier: the centres its database members go to, in ordinal order (member 0 in production)
MEMBERS: dict[str, tuple[str, ...]] = {
    "none": ("production",),
    "same-city": ("production", "same-city"),
    "two-sites-three-centres": ("production", "same-city", "remote"),
    "remote-backup": ("production", "remote"),
}

_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | int | float) -> float:
    """`30s`, `5m`, `500ms`, `1h` or a number of seconds -> seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (write e.g. 0s, 30s, 5m, 500ms)")
    return float(m.group(1)) * _UNIT[m.group(2) or "s"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class Backups(_Model):
    """`spec.dr.backups`: base backups of the app's managed databases (their WAL is archived
    all the time), for point-in-time restores."""

    every: str | int = "24h"  # how often a base backup is taken (0: only when asked)
    keep: Annotated[int, Field(ge=1, le=365)] = 7  # how many base backups are kept

    @field_validator("every")
    @classmethod
    def _duration(cls, v: str | int) -> str | int:
        parse_duration(v)
        return v

    @property
    def every_seconds(self) -> float:
        return parse_duration(self.every)


class Dr(_Model):
    """An app's protection: `spec.dr`."""

    tier: Tier = "none"
    rpo: str | int = "0s"  # the most data it may lose (0s: synchronous)
    rto: str | int = "5m"  # how long it may be down
    # stateless components: run in production and same-city at once, or start in same-city on failover
    stateless: Literal["active-active", "cold"] = "active-active"
    backups: Backups = Field(default_factory=Backups)

    @field_validator("rpo", "rto")
    @classmethod
    def _duration(cls, v: str | int) -> str | int:
        parse_duration(v)
        return v

    @property
    def rpo_seconds(self) -> float:
        return parse_duration(self.rpo)

    @property
    def rto_seconds(self) -> float:
        return parse_duration(self.rto)


class Postgres(_Model):
    """A managed PostgreSQL (`kind: postgres`): a Patroni cluster across the tier's centres."""

    version: Literal["15"] = "15"  # the PostgreSQL on the machine
    database: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "app"
    size: int | str = "1Gi"  # its data volume, when the component names none
    parameters: dict[str, str | int] = Field(default_factory=dict, max_length=64)

    @field_validator("parameters")
    @classmethod
    def _params(cls, v: dict[str, str | int]) -> dict[str, str | int]:
        reserved = sorted(set(v) & _RESERVED_PARAMETERS)
        if reserved:
            raise ValueError(f"set by the platform, not the spec: {', '.join(reserved)}")
        bad = sorted(k for k in v if not re.fullmatch(r"[a-z_][a-z0-9_.]*", k))
        if bad:
            raise ValueError(f"not a PostgreSQL parameter name: {', '.join(bad)}")
        return v


_RESERVED_PARAMETERS = frozenset(
    {"listen_addresses", "port", "data_directory", "hba_file", "ident_file", "unix_socket_directories",
     "synchronous_standby_names", "synchronous_commit", "wal_level", "hot_standby", "primary_conninfo",
     "archive_command", "restore_command", "archive_mode", "wal_log_hints", "max_wal_senders",
     "max_replication_slots"}
)  # fmt: skip


def quorum_sites(roles: Mapping[str, str]) -> list[str]:
    """The sites of the main quorum's etcd members (`roles`: site -> role): production alone, or
    production, same-city and the arbiter (the remote centre when no site is the arbiter)."""
    by_role = sites_by_role(roles)
    prod = by_role.get("production")
    if prod is None:
        return []
    same = by_role.get("same-city")
    third = by_role.get("arbiter") or by_role.get("remote")
    return [prod, same, third] if same and third else [prod]


def sites_by_role(roles: Mapping[str, str]) -> dict[str, str]:
    return {role: site for site, role in sorted(roles.items())}


def missing_for(tier: str, roles: Mapping[str, str], healthy: Mapping[str, bool] | None = None) -> str | None:
    """Why the topology cannot give `tier` (naming what to add), or None when it can.
    `healthy`: site -> whether it has a healthy cloud (a site without one cannot host a member)."""
    if tier == "none":
        return None
    by_role = sites_by_role(roles)
    need = list(MEMBERS[tier])
    if tier == "same-city" and "remote" not in by_role:
        need.append("arbiter")  # the quorum's third centre
    lacking = [r for r in need if r not in by_role]
    if lacking:
        have = ", ".join(f"{s}={r}" for s, r in sorted(roles.items())) or "no site has a DR role"
        return (
            f"tier {tier} needs a site in each of {', '.join(need)}; missing: {', '.join(lacking)} "
            f"(have: {have}; set one with `shanzhi site role SITE ROLE`)"
        )
    if healthy is not None:
        down = [f"{by_role[r]} ({r})" for r in MEMBERS[tier] if not healthy.get(by_role[r], False)]
        if down:
            return f"tier {tier} needs a healthy cloud in {', '.join(down)}; none is"
    return None


def links(roles: Mapping[str, str]) -> list[dict[str, str]]:
    """The links between centres, as `dr topology` shows them."""
    by_role = sites_by_role(roles)
    out = []
    prod, same, remote = by_role.get("production"), by_role.get("same-city"), by_role.get("remote")
    if prod and same:
        out.append({"from": prod, "to": same, "kind": "synchronous replication (RPO 0)"})
    if remote and (same or prod):
        out.append({"from": same or prod or "", "to": remote, "kind": "asynchronous standby cluster"})
    quorum = quorum_sites(roles)
    for site in quorum:
        out.append({"from": site, "to": "quorum", "kind": f"etcd member ({len(quorum)} in the quorum)"})
    return out
