"""VDCs: the organisation tree, its nested quotas and usage roll-up."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import ColumnElement, bindparam, false, func, or_, select, true
from sqlalchemy.orm import QueryableAttribute, Session

from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.domain.quota import (
    Quota,
    Usage,
    ancestors,
    check_child_quota,
    check_descendants_fit,
    check_strict,
    check_usage,
    check_usage_fits,
    parent_of,
)
from shanzhi.domain.rbac import EVERYWHERE, Scope
from shanzhi.domain.spec import VDC_PATH_RE
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, Vdc


def _quota(v: Vdc) -> Quota:
    return Quota(v.quota_cpu, v.quota_memory, v.quota_instances, v.quota_storage)


def scope_filter(
    scope: Scope, column: ColumnElement[Any] | QueryableAttribute[Any] | None = None
) -> ColumnElement[bool]:
    """SQL for "`column` (default: Vdc.path) lies in `scope`"."""
    col = Vdc.path if column is None else column
    roots = scope.minimal_roots()
    if scope.everywhere:
        return true()
    if not roots:
        return false()
    return or_(*(or_(col == r, col.startswith(r + "/", autoescape=True)) for r in roots))


def subtree_pattern(path: str) -> str:
    """A LIKE pattern (escape `/`) for the paths strictly under `path`: what
    `startswith(path + "/", autoescape=True)` builds, as a value to bind."""
    return (path + "/").replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"


def bound_subtrees(n: int, prefix: str, column: ColumnElement[Any] | QueryableAttribute[Any]) -> ColumnElement[bool]:
    """SQL for "`column` lies in one of `n` subtrees" whose roots and patterns are bound
    parameters `<prefix><i>` and `<prefix><i>l` (see `subtree_params`): a statement built once
    per shape and kept, so a request neither builds nor adapts one."""
    if n == 0:
        return false()
    names = [(f"{prefix}{i}", f"{prefix}{i}l") for i in range(n)]
    return or_(*(or_(column == bindparam(e), column.like(bindparam(u), escape="/")) for e, u in names))


def subtree_params(roots: list[str], prefix: str) -> dict[str, str]:
    """The bound values `bound_subtrees(len(roots), prefix, ...)` reads."""
    out: dict[str, str] = {}
    for i, r in enumerate(roots):
        out[f"{prefix}{i}"], out[f"{prefix}{i}l"] = r, subtree_pattern(r)
    return out


def strict_paths(s: Session) -> set[str]:
    return set(s.scalars(select(Vdc.path).where(Vdc.strict.is_(True))))


def quotas(s: Session) -> dict[str, Quota]:
    return {v.path: _quota(v) for v in s.scalars(select(Vdc))}


def usage_by_vdc(s: Session, under: str | None = None) -> dict[str, Usage]:
    """Desired usage of each VDC's own apps (apps being deleted no longer count); with `under`,
    of that VDC's subtree only."""
    q = (
        select(Vdc.path, func.sum(App.cpu), func.sum(App.memory), func.sum(App.instances), func.sum(App.storage))
        .join(App, App.vdc_id == Vdc.id)
        .where(App.deleting.is_(False))
        .group_by(Vdc.path)
    )
    if under is not None:
        q = q.where((Vdc.path == under) | Vdc.path.startswith(under + "/", autoescape=True))
    return {p: Usage(int(c or 0), int(m or 0), int(n or 0), int(d or 0)) for p, c, m, n, d in s.execute(q)}


_QUOTA_COLUMNS = (Vdc.path, Vdc.quota_cpu, Vdc.quota_memory, Vdc.quota_instances, Vdc.quota_storage)


def check_apply_usage(s: Session, path: str, delta: Usage, *, lock: bool = True) -> None:
    """Refuse adding `delta` to VDC `path` where it or an ancestor would go over quota. Reads
    only the quotas on the way to the root, and the usage of the highest limited one's subtree
    (an apply does not scan every VDC's apps).

    `lock` (PostgreSQL; on SQLite a write transaction holds the whole database): each VDC on
    the way is locked root first, as `lock_path` does (so the two never deadlock): exclusively
    where a quota decides (applies under it queue, so two cannot both take the last of it),
    shared where none does (applies there run side by side; a quota being set there waits for
    them, and one set just before the lock sends the apply back to be made again)."""
    on_path = [*ancestors(path), path]
    found = {r[0]: Quota(*r[1:]) for r in s.execute(select(*_QUOTA_COLUMNS).where(Vdc.path.in_(on_path)))}
    if lock and s.get_bind().dialect.name == "postgresql":
        for p in sorted(found, key=len):  # ancestors: root first
            shared = not found[p].limits_anything
            row = s.execute(select(*_QUOTA_COLUMNS).where(Vdc.path == p).with_for_update(read=shared)).one()
            found[p] = Quota(*row[1:])  # as committed when the lock was granted
            if shared and found[p].limits_anything:
                raise Conflict(f"a quota was set on VDC {p} during this apply; apply again", field="metadata.vdc")
    limited = {p: q for p, q in found.items() if q.limits_anything}
    if not limited:
        return
    top = min(limited, key=len)
    check_usage(path, delta, limited, usage_by_vdc(s, under=top))


def get_vdc(s: Session, path: str, scope: Scope = EVERYWHERE) -> Vdc:
    """The VDC at `path`; one outside `scope` is answered exactly like one that does not exist."""
    v = s.scalar(select(Vdc).where(Vdc.path == path)) if scope.contains(path) else None
    if v is None:
        raise NotFound(f"VDC {path} does not exist; see 'shanzhi vdc list'", field="vdc")
    return v


def lock_app(s: Session, path: str, name: str) -> None:
    """Serialise applies of one app (PostgreSQL: a transaction-scoped advisory lock on its VDC
    and name; on SQLite every write transaction already holds the database lock), so that two
    at once neither both create it nor both take the same next generation."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(func.pg_advisory_xact_lock(_APP_LOCKS, func.hashtext(f"{path}/{name}"))))


_APP_LOCKS = 7306103  # the advisory-lock key space of apps (migrations use 7306102)


def lock_path(s: Session, path: str) -> None:
    """Serialise quota decisions on `path` and its ancestors (row locks on PostgreSQL;
    on SQLite every write transaction already holds the database lock)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(Vdc.id).where(Vdc.path.in_([*ancestors(path), path])).order_by(Vdc.path).with_for_update())


def create_vdc(s: Session, path: str, quota: Quota, *, parents: bool = False, strict: bool = False) -> Vdc:
    if not re.match(VDC_PATH_RE, path):
        raise InvalidInput(
            f"invalid VDC path {path!r}: use lowercase names of letters, digits and '-' joined by '/'",
            field="path",
        )
    if s.scalar(select(Vdc.id).where(Vdc.path == path)) is not None:
        raise Conflict(f"VDC {path} already exists", field="path")
    parent_path = parent_of(path)
    parent = None
    if parent_path is not None:
        parent = s.scalar(select(Vdc).where(Vdc.path == parent_path))
        if parent is None:
            if not parents:
                raise NotFound(
                    f"parent VDC {parent_path} does not exist; create it first or pass --parents",
                    field="path",
                )
            parent = create_vdc(s, parent_path, Quota(), parents=True)
        lock_path(s, parent_path)
    all_quotas = quotas(s)
    check_child_quota(path, quota, all_quotas)
    check_strict(path, {**all_quotas, path: quota}, strict_paths(s))
    v = Vdc(
        path=path,
        parent_id=parent.id if parent else None,
        quota_cpu=quota.cpu,
        quota_memory=quota.memory,
        quota_instances=quota.instances,
        quota_storage=quota.storage,
        strict=strict,
    )
    s.add(v)
    s.flush()
    record_event(s, "VdcCreated", "vdc", path, f"VDC {path} created", vdc=path)
    return v


def set_quota(s: Session, path: str, quota: Quota, *, strict: bool | None = None) -> Vdc:
    v = get_vdc(s, path)
    lock_path(s, path)
    all_quotas = quotas(s)
    merged = Quota(**{k: (val if val is not None else getattr(_quota(v), k)) for k, val in quota.items()})
    check_child_quota(path, merged, all_quotas)
    prefix = path + "/"
    check_descendants_fit(path, merged, {p: q for p, q in all_quotas.items() if p.startswith(prefix)})
    check_usage_fits(path, merged, usage_by_vdc(s, under=path))
    strict_set = strict_paths(s)
    if strict is not None:
        strict_set = (strict_set | {path}) if strict else (strict_set - {path})
        v.strict = strict
    check_strict(path, {**all_quotas, path: merged}, strict_set)
    v.quota_cpu, v.quota_memory, v.quota_instances, v.quota_storage = (
        merged.cpu,
        merged.memory,
        merged.instances,
        merged.storage,
    )
    s.flush()
    mode = " (strict)" if v.strict else ""
    record_event(s, "QuotaChanged", "vdc", path, f"quota of {path} set to {merged.to_json()}{mode}", vdc=path)
    return v


def list_vdcs(s: Session, scope: Scope = EVERYWHERE) -> list[Vdc]:
    return list(s.scalars(select(Vdc).where(scope_filter(scope)).order_by(Vdc.path)))


def delete_vdc(s: Session, path: str) -> None:
    v = get_vdc(s, path)
    if s.scalar(select(func.count()).select_from(Vdc).where(Vdc.parent_id == v.id)):
        raise Conflict(f"VDC {path} has child VDCs; delete them first", field="path")
    if s.scalar(select(func.count()).select_from(App).where(App.vdc_id == v.id)):
        raise Conflict(f"VDC {path} still has apps; delete them first", field="path")
    s.delete(v)
    record_event(s, "VdcDeleted", "vdc", path, f"VDC {path} deleted", vdc=path)
