"""Roles from the OpenID Connect provider's groups.

A security administrator maps a provider group to a role: a VDC role on a VDC, or a platform
role. At every single sign-on login the user's grants that came from groups are brought in line
with the groups the provider lists for them now: new groups add grants, groups left take them
away. Grants given by hand are never touched. A set of groups that would give one person two
platform roles refuses the login, naming the groups: the roles stay separated.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from shanzhi.services.identity import check_role
from shanzhi.services.vdcs import get_vdc
from shanzhi.store.tables import Grant, OidcGroupMap, User

PREFIX = "oidc:"  # granted_by of a grant that came from a group: "oidc:<group>"


def add_map(s: Session, group: str, role: str, vdc: str | None, by: str) -> OidcGroupMap:
    group = group.strip()
    if not group or len(group) > 255:
        raise InvalidInput("group must be 1-255 characters, as the provider names it", field="group")
    check_role(role, vdc)
    v = get_vdc(s, vdc) if vdc is not None else None
    q = select(OidcGroupMap.id).where(OidcGroupMap.group == group, OidcGroupMap.role == role)
    q = q.where(OidcGroupMap.vdc_id == v.id) if v is not None else q.where(OidcGroupMap.vdc_id.is_(None))
    if s.scalar(q) is not None:
        raise Conflict(f"group {group} already maps to {role}" + (f" on {vdc}" if vdc else ""), field="group")
    m = OidcGroupMap(group=group, role=role, vdc_id=v.id if v else None, created_by=by)
    s.add(m)
    s.flush()
    s.refresh(m)
    return m


def list_maps(s: Session) -> list[OidcGroupMap]:
    return list(s.scalars(select(OidcGroupMap).order_by(OidcGroupMap.group, OidcGroupMap.id)))


def remove_map(s: Session, map_id: int) -> OidcGroupMap:
    """Remove a group map and the grants it gave (at once, not at its members' next login)."""
    m = s.get(OidcGroupMap, map_id)
    if m is None:
        raise NotFound(f"group map {map_id} does not exist; see 'shanzhi sso list'", field="id")
    q = delete(Grant).where(Grant.granted_by == PREFIX + m.group, Grant.role == m.role)
    q = q.where(Grant.vdc_id == m.vdc_id) if m.vdc_id is not None else q.where(Grant.vdc_id.is_(None))
    s.execute(q)
    s.delete(m)
    return m


def groups_of(claims: dict[str, Any], claim: str) -> list[str]:
    """The provider's groups for a user: a list of names (or one name) under `claim`."""
    raw = claims.get(claim)
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list):
        return [g for g in raw if isinstance(g, str)]
    return []


def sync_grants(s: Session, user: User, groups: list[str]) -> list[str]:
    """Make the user's group-given grants match `groups`; what changed, as lines for the log."""
    maps = list(s.scalars(select(OidcGroupMap).where(OidcGroupMap.group.in_(groups)))) if groups else []
    want: dict[tuple[str, int | None], str] = {}
    for m in maps:
        want.setdefault((m.role, m.vdc_id), m.group)
    have = list(s.scalars(select(Grant).where(Grant.user_id == user.id)))
    manual = {(g.role, g.vdc_id) for g in have if not g.granted_by.startswith(PREFIX)}
    platform = {r for r, v in want if v is None} | {r for r, v in manual if v is None}
    if len(platform) > 1:
        why = ", ".join(
            f"group {want[(r, None)]} gives {r}" if (r, None) in want else f"{r} by hand" for r in sorted(platform)
        )
        raise Forbidden(
            f"this login would give {user.name} the platform roles {', '.join(sorted(platform))} ({why}): "
            "platform roles are separated; ask a security administrator to fix the group maps"
        )
    if platform and any(v is not None for _, v in (*want, *manual)):
        raise Forbidden(
            f"this login would give {user.name} both the platform role {', '.join(sorted(platform))} and VDC roles: "
            "a platform administrator may hold no VDC role; ask a security administrator to fix the group maps"
        )
    changes = []
    for g in have:
        if g.granted_by.startswith(PREFIX) and (g.role, g.vdc_id) not in want:
            changes.append(f"-{g.role}" + (f"@{g.vdc.path}" if g.vdc else ""))
            s.delete(g)
    given = {(g.role, g.vdc_id) for g in have}
    for (role, vdc_id), group in want.items():
        if (role, vdc_id) not in given:
            grant = Grant(user_id=user.id, role=role, vdc_id=vdc_id, granted_by=PREFIX + group)
            s.add(grant)
            changes.append(f"+{role} (group {group})")
    s.flush()
    return changes
