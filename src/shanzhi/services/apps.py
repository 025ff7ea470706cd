"""Applying, finding and deleting apps; the quota check happens here, at apply time."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Connection, Select, bindparam, func, select
from sqlalchemy.orm import Session

from shanzhi.domain.diff import Change, Roll, changes, rolls
from shanzhi.domain.errors import Conflict, NotFound
from shanzhi.domain.quota import Usage
from shanzhi.domain.rbac import EVERYWHERE, Scope
from shanzhi.domain.spec import AppSpec, Component, warnings
from shanzhi.services import dr
from shanzhi.services.vdcs import (
    bound_subtrees,
    check_apply_usage,
    get_vdc,
    lock_app,
    scope_filter,
    subtree_params,
)
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, AppRevision, Instance, Vdc, utcnow


def desired_usage(spec: AppSpec) -> Usage:
    total = Usage()
    for c in spec.spec.components:
        r, n = c.resources, c.replicas
        total = total + Usage(r.cpu_millis * n, r.memory_bytes * n, n, c.storage_bytes * n)
    return total


def apply_app(s: Session, spec: AppSpec, author: str = "", cause: str = "") -> tuple[App, str]:
    """Create or update an app. Returns the app and `created`, `configured` or `unchanged`.

    Each new generation is kept as a revision (who, why) for `rollout history` and `undo`.
    """
    path = spec.metadata.vdc
    vdc = get_vdc(s, path)
    lock_app(s, path, spec.metadata.name)
    body = spec.to_json()
    app = s.scalar(select(App).where(App.vdc_id == vdc.id, App.name == spec.metadata.name))
    if app is not None and app.deleting:
        raise Conflict(f"app {spec.metadata.name} is being deleted; wait until it is gone", field="metadata.name")
    if app is not None and app.spec == body:
        return app, "unchanged"
    dr.check_tier(s, spec, AppSpec.model_validate(app.spec) if app is not None else None)
    want = desired_usage(spec)
    have = Usage(app.cpu, app.memory, app.instances, app.storage) if app is not None else Usage()
    check_apply_usage(s, path, want - have)
    outcome = "configured"
    if app is None:
        app = App(vdc=vdc, name=spec.metadata.name, spec=body, generation=1)
        s.add(app)
        outcome = "created"
    else:
        app.spec = body
        app.generation += 1
        app.updated_at = utcnow()
    app.cpu, app.memory, app.instances, app.storage = want.cpu, want.memory, want.instances, want.storage
    s.flush()
    dr.ensure_clusters(s, app, spec)
    s.add(AppRevision(app_id=app.id, generation=app.generation, spec=body, author=author, cause=cause[:256]))
    record_event(
        s,
        "AppApplied",
        "app",
        app.name,
        f"app {app.name} {outcome} (generation {app.generation})",
        vdc=path,
        app=app.name,
    )
    return app, outcome


@dataclass
class Preview:
    """What applying a spec would do, computed in a transaction that is then thrown away."""

    outcome: str  # create | configure | unchanged | held
    stored: dict[str, Any] | None
    changes: list[Change]
    rolls: list[Roll]
    held_by: list[tuple[str, str]]  # (rule, why) of each approval rule that would hold it
    warnings: list[str]


def preview(s: Session, spec: AppSpec) -> Preview:
    """Validate and check quota (raising as apply would); change nothing. The caller adds the
    approval rules that would hold it (`approvals.matching_rules`)."""
    path = spec.metadata.vdc
    vdc = get_vdc(s, path)
    body = spec.to_json()
    app = s.scalar(select(App).where(App.vdc_id == vdc.id, App.name == spec.metadata.name))
    if app is not None and app.deleting:
        raise Conflict(f"app {spec.metadata.name} is being deleted; wait until it is gone", field="metadata.name")
    old = AppSpec.model_validate(app.spec) if app is not None else None
    found = Preview(
        "unchanged" if app is not None and app.spec == body else "configure" if app is not None else "create",
        app.spec if app is not None else None,
        changes(app.spec if app is not None else {}, body),
        rolls(old, spec),
        [],
        warnings(spec),
    )
    if found.outcome == "unchanged":
        found.changes, found.rolls = [], []
        return found
    dr.check_tier(s, spec, old)
    want = desired_usage(spec)
    have = Usage(app.cpu, app.memory, app.instances, app.storage) if app is not None else Usage()
    check_apply_usage(s, path, want - have, lock=False)  # a preview is thrown away: it holds no lock
    return found


def revisions(s: Session, app: App) -> list[AppRevision]:
    q = select(AppRevision).where(AppRevision.app_id == app.id).order_by(AppRevision.generation)
    return list(s.scalars(q))


def find_app(s: Session, name: str, vdc: str | None = None, scope: Scope = EVERYWHERE) -> App:
    """The app `name` (in `vdc`), among those in `scope`: others are never confirmed or named."""
    q = select(App).join(Vdc).where(App.name == name, scope_filter(scope))
    if vdc is not None:
        q = q.where(Vdc.path == vdc)
    found = list(s.scalars(q))
    if not found:
        where = f" in VDC {vdc}" if vdc else ""
        raise NotFound(f"app {name}{where} does not exist; see 'shanzhi app list'", field="name")
    if len(found) > 1:
        paths = ", ".join(sorted(a.vdc.path for a in found))
        raise Conflict(f"app {name} exists in several VDCs ({paths}); pass --vdc", field="vdc")
    return found[0]


class AppRow(NamedTuple):
    """What an app's summary needs, read as plain columns (a list builds no ORM objects)."""

    id: int
    name: str
    vdc: str
    generation: int
    deleting: bool
    components: Components
    created_at: datetime
    updated_at: datetime
    states: States  # each instance's component and state

    @classmethod
    def of(cls, a: App, states: States) -> AppRow:
        spec = _components(a.spec)
        return cls(a.id, a.name, a.vdc.path, a.generation, a.deleting, spec, a.created_at, a.updated_at, states)


Components = tuple[tuple[str, int], ...]  # each component's name and desired replicas
States = tuple[tuple[str, str], ...]
REPLICAS_DEFAULT = Component.model_fields["replicas"].default
#: the components of each app (id, created, generation) listed lately: a spec never changes
#: within a generation, so a list decodes only the specs it has not seen (decoding every spec
#: was a tenth of a list's time); forgotten all at once past `_SEEN_MAX`
_SEEN: dict[tuple[int, datetime, int], Components] = {}
_SEEN_MAX = 50_000


def _components(spec: dict[str, Any]) -> Components:
    return tuple((c["name"], c.get("replicas", REPLICAS_DEFAULT)) for c in spec["spec"]["components"])


#: each app's instances as `component:state,...` (names are DNS labels, states words), read
#: in the list's own statement: one statement per list, not two
_STATES = (
    select(func.aggregate_strings(Instance.component + ":" + Instance.state, ","))
    .where(Instance.app_id == App.id)
    .scalar_subquery()
)
_LISTED = (App.id, App.name, Vdc.path, App.generation, App.deleting, App.created_at, App.updated_at, _STATES)
_SPECS = select(App.id, App.created_at, App.generation, App.spec).where(App.id.in_(bindparam("ids", expanding=True)))


_Listed = Select[int, str, str, int, bool, datetime, datetime, str | None]


@functools.lru_cache(maxsize=64)
def _list_statement(roots: int | None, under: bool, page: bool) -> _Listed:
    """The list's statement for one shape: `roots` scope roots (None: everywhere), a VDC's
    subtree or not, a page or not; the values are bound. Built once per shape and kept, so that
    a request neither builds one nor has SQLAlchemy adapt the cached compilation to a new one
    (together a third of a list's time)."""
    q = select(*_LISTED).join(Vdc).order_by(Vdc.path, App.name)
    if roots is not None:
        q = q.where(bound_subtrees(roots, "r", Vdc.path))
    if under:
        q = q.where(bound_subtrees(1, "v", Vdc.path))
    if page:
        q = q.limit(bindparam("limit")).offset(bindparam("offset"))
    return q


def list_apps(
    conn: Connection, vdc: str | None = None, scope: Scope = EVERYWHERE, *, limit: int | None = None, offset: int = 0
) -> list[AppRow]:
    """Apps in `scope` (and `vdc`'s subtree), by VDC and name; a page of them with `limit`.
    Plain rows, no ORM objects (the ORM's loading was a seventh of a list's time)."""
    roots = None if scope.everywhere else scope.minimal_roots()
    params: dict[str, Any] = subtree_params(roots or [], "r")
    if vdc is not None:
        params.update(subtree_params([vdc], "v"))
    if limit is not None:
        params.update(limit=limit, offset=offset)
    q = _list_statement(None if roots is None else len(roots), vdc is not None, limit is not None)
    rows = list(conn.execute(q, params))
    # what this list knows already, taken once (another thread may forget it all meanwhile)
    known = {r.id: _SEEN.get((r.id, r.created_at, r.generation)) for r in rows}
    new = [app_id for app_id, components in known.items() if components is None]
    if len(_SEEN) + len(new) > _SEEN_MAX:
        _SEEN.clear()
    for i in range(0, len(new), 500):
        for app_id, created, generation, spec in conn.execute(_SPECS, {"ids": new[i : i + 500]}):
            # read again: a newer generation (committed in between) is kept under its own key
            known[app_id] = _SEEN[(app_id, created, generation)] = _components(spec)
    return [AppRow(i, n, path, g, d, known[i] or (), c, u, _states(states)) for i, n, path, g, d, c, u, states in rows]


def _states(joined: str | None) -> States:
    if not joined:
        return ()
    return tuple((c, st) for c, _, st in (each.partition(":") for each in joined.split(",")))


def delete_app(s: Session, name: str, vdc: str | None = None, scope: Scope = EVERYWHERE) -> App:
    app = find_app(s, name, vdc, scope)
    if not app.deleting:
        app.deleting = True
        app.updated_at = utcnow()
        record_event(
            s, "AppDeleting", "app", app.name, f"app {app.name} marked for deletion", vdc=app.vdc.path, app=app.name
        )
    return app
