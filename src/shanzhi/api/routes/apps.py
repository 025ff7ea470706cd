"""/apps: apply (create, update, or hold for approval), list, inspect with placement reasons, delete."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response

from shanzhi.api import schemas, views
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.domain.errors import InvalidInput, UnsupportedMediaType
from shanzhi.domain.rbac import Principal
from shanzhi.domain.spec import AppSpec, SpecInvalid, load_app_text, parse_app, warnings
from shanzhi.services import approvals
from shanzhi.services import apps as svc

router = APIRouter(prefix="/apps", tags=["apps"])
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
#: the body an apply or a dry run takes: an App spec as JSON or as YAML (the console's editor)
SPEC_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "An App spec (apiVersion shanzhi.io/v1, kind App), as JSON or YAML",
        "content": {kind: {"schema": {"type": "object"}} for kind in ("application/json", *YAML_TYPES)},
    }
}


async def spec_body(request: Request) -> AppSpec:
    """The App spec in the body: JSON, or YAML when the content type says so (one document; no
    alias may expand past the limits the CLI's reader keeps)."""
    kind = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    raw = await request.body()
    if kind in YAML_TYPES:
        try:
            return load_app_text(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInput("the YAML document is not UTF-8 text") from None
    if kind != "application/json":
        raise UnsupportedMediaType(f"send the spec as application/json or application/yaml, not {kind or 'nothing'}")
    try:
        document = json.loads(raw)
    except ValueError as err:
        raise SpecInvalid([{"field": "(document)", "message": f"not valid JSON: {err}"}]) from None
    return parse_app(document)


@router.post("", response_model=schemas.ApplyOut, openapi_extra=SPEC_BODY)
def apply_app(
    request: Request,
    response: Response,
    cause: str = Query("", max_length=256, description="Why (kept with the revision: rollout history)"),
    p: Principal = Depends(principal),  # before the body: a bad token is a 401 whatever it sent
    spec: AppSpec = Depends(spec_body),
    rt: Runtime = Depends(runtime),
) -> schemas.ApplyOut:
    """Apply an app (JSON, or YAML with `Content-Type: application/yaml`). If an approval rule
    of its VDC matches, nothing changes yet: the answer is 202 with the approval request, and
    approving it applies the spec."""
    notes = warnings(spec)
    path = spec.metadata.vdc
    request.state.target = f"app {path}/{spec.metadata.name}"
    require(p, "app.write", path, visible="app.read")
    with transaction(request, response) as s:
        held = approvals.hold_if_needed(s, spec, p.user)
        if held is not None:
            response.status_code = 202
            request.state.audit_outcome = "held"
            return schemas.ApplyOut(app=None, outcome="held", approval=views.approval(held), warnings=notes)
        app, outcome = svc.apply_app(s, spec, p.user, cause)
        response.status_code = 201 if outcome == "created" else 200
        out = schemas.ApplyOut(app=views.app(s, app, new=outcome == "created"), outcome=outcome, warnings=notes)
    if outcome != "unchanged":
        rt.wake()
    return out


@router.post("/dry-run", response_model=schemas.PreviewOut, openapi_extra=SPEC_BODY)
def dry_run(
    request: Request,
    p: Principal = Depends(principal),
    spec: AppSpec = Depends(spec_body),
) -> schemas.PreviewOut:
    """What applying would do (create, configure, unchanged, or held for approval), the fields
    that would change and the replicas that would roll; a quota it would exceed is the same 4xx
    an apply gets. Nothing changes."""
    request.state.target = f"app {spec.metadata.vdc}/{spec.metadata.name}"
    require(p, "app.write", spec.metadata.vdc, visible="app.read")
    with transaction(request) as s:
        found = svc.preview(s, spec)
        held = approvals.matching_rules(s, spec) if found.outcome != "unchanged" else []
        request.state.audit_outcome = "dry-run"
        return schemas.PreviewOut(
            outcome="held" if held else found.outcome,
            stored=found.stored,
            spec=spec.to_json(),
            changes=[schemas.ChangeOut(path=c.path, old=c.old, new=c.new) for c in found.changes],
            rolls=[schemas.RollOut(**asdict(r)) for r in found.rolls],
            held_by=[schemas.HeldBy(rule=r.name, why=why) for r, why in held],
            warnings=found.warnings,
        )


@router.get("/{name}/revisions", response_model=list[schemas.RevisionOut])
def revisions(
    name: str, vdc: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> list[schemas.RevisionOut]:
    """The app's stored generations, oldest first, each with its spec, author and cause."""
    with rt.db.read() as s, s.begin():
        app = svc.find_app(s, name, vdc, p.scope("app.read"))
        return [
            schemas.RevisionOut(
                generation=r.generation,
                spec=r.spec,
                author=r.author,
                cause=r.cause,
                created_at=r.created_at,
                current=r.generation == app.generation,
            )
            for r in svc.revisions(s, app)
        ]


@router.get("", response_model=list[schemas.AppOut])
def list_apps(
    vdc: str | None = Query(None),
    limit: int | None = Query(None, ge=1, le=5000, description="a page of this many (by VDC, then name)"),
    offset: int = Query(0, ge=0, le=10_000_000, description="skip this many first"),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> Response:
    with rt.db.view() as conn:  # no ORM session
        listed = svc.list_apps(conn, vdc, p.scope("app.read"), limit=limit, offset=offset)
    # serialised here, as `response_model` (kept for the schema) would, without its validation
    return Response(views.apps_json(listed), media_type="application/json")


@router.get("/{name}", response_model=schemas.AppOut)
def get_app(
    name: str, vdc: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> schemas.AppOut:
    with rt.db.read() as s, s.begin():
        return views.app(s, svc.find_app(s, name, vdc, p.scope("app.read")), detail=True)


@router.delete("/{name}", status_code=202, response_model=schemas.ApplyOut)
def delete_app(
    request: Request,
    name: str,
    vdc: str | None = Query(None),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> schemas.ApplyOut:
    """Mark an app for deletion (its replicas stop, then it goes), or, where an approval rule
    covers deletes, hold the delete for approval (`outcome: held`) and change nothing."""
    with transaction(request) as s:
        app = svc.find_app(s, name, vdc, p.scope("app.read"))
        require(p, "app.write", app.vdc.path, visible="app.read")
        request.state.target = f"app {app.vdc.path}/{app.name}"
        held = approvals.hold_delete_if_needed(s, app, p.user)
        if held is not None:
            request.state.audit_outcome = "held"
            return schemas.ApplyOut(app=views.app(s, app), outcome="held", approval=views.approval(held))
        out = schemas.ApplyOut(app=views.app(s, svc.delete_app(s, name, app.vdc.path)), outcome="deleting")
    rt.wake()
    return out
