"""Approvals: per-VDC rules that hold an apply or a delete until named approvers agree, stage
by stage; and activating a remote DR centre, which is always held.

A rule on a VDC covers its subtree. It matches an apply when any of its conditions holds:
`cpuOver` (the app's total cpu is above it), `sites` (the app may be placed in one of these
sites), `always`; a delete when it says `deletes`; activating the remote centre of a protected
app's database when it says `activations` (with no such rule, a system administrator other
than the requester approves). A matching apply or delete becomes a pending request and changes
nothing; each stage is passed by any one of its approvers (`alice`, or `role:vdc-admin` for
whoever holds that role on the app's VDC, or `role:system-admin`); the last approval carries it
out (an apply with the quota checked then; an activation handed to the DR controller). Requests
expire; requesters never approve their own.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, Forbidden, InvalidInput, NotFound, ShanzhiError
from shanzhi.domain.quantity import format_cpu, parse_cpu
from shanzhi.domain.quota import ancestors
from shanzhi.domain.rbac import ROLES, Principal, Scope
from shanzhi.domain.spec import NAME_RE, AppSpec, parse_app
from shanzhi.services import dr
from shanzhi.services.apps import apply_app, delete_app, desired_usage
from shanzhi.services.vdcs import get_vdc, scope_filter
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, ApprovalRequest, ApprovalRule, Cloud, Vdc, utcnow

CONDITIONS = ("cpuOver", "sites", "always", "deletes", "activations")
#: who approves activating a remote centre when no rule says
DEFAULT_ACTIVATION_STAGES = [["role:system-admin"]]
ACTIVATION_EXPIRE_HOURS = 24


# ------------------------------------------------------------------ rules
def _check_approver(a: str) -> str:
    kind, sep, name = a.partition(":")
    if sep and kind == "role":
        if name not in ROLES:
            raise InvalidInput(
                f"unknown role {name!r} in approver {a!r}; use one of {', '.join(ROLES)}", field="stages"
            )
    elif sep or not a:
        raise InvalidInput(f"approver {a!r} must be a user name or role:<role>", field="stages")
    return a


def add_rule(
    s: Session, vdc: str, name: str, conditions: dict[str, Any], stages: list[list[str]], expire_hours: int
) -> ApprovalRule:
    v = get_vdc(s, vdc)
    if not re.match(NAME_RE, name):
        raise InvalidInput(f"invalid rule name {name!r}: lowercase letters, digits and '-'", field="name")
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise InvalidInput(f"unknown condition {sorted(unknown)[0]!r}; use {', '.join(CONDITIONS)}", field="conditions")
    if not conditions:
        raise InvalidInput(
            "a rule needs at least one condition (cpuOver, sites, always, deletes or activations)",
            field="conditions",
        )
    clean: dict[str, Any] = {}
    if "cpuOver" in conditions:
        try:
            clean["cpuOver"] = parse_cpu(conditions["cpuOver"])
        except (ValueError, TypeError) as err:
            raise InvalidInput(str(err), field="conditions.cpuOver") from None
    if "sites" in conditions:
        sites = conditions["sites"]
        if not isinstance(sites, list) or not sites or not all(isinstance(x, str) and x for x in sites):
            raise InvalidInput("sites must be a non-empty list of site names", field="conditions.sites")
        clean["sites"] = sorted(set(sites))
    for flag in ("always", "deletes", "activations"):
        if flag in conditions:
            if not isinstance(conditions[flag], bool):
                raise InvalidInput(f"{flag} must be true or false", field=f"conditions.{flag}")
            clean[flag] = conditions[flag]
    if not stages or not all(stage for stage in stages):
        raise InvalidInput("give at least one stage, each with at least one approver", field="stages")
    if s.scalar(select(ApprovalRule.id).where(ApprovalRule.vdc_id == v.id, ApprovalRule.name == name)):
        raise Conflict(f"VDC {vdc} already has an approval rule {name}", field="name")
    rule = ApprovalRule(
        vdc_id=v.id,
        name=name,
        conditions=clean,
        stages={"stages": [[_check_approver(a) for a in stage] for stage in stages]},
        expire_hours=expire_hours,
    )
    s.add(rule)
    s.flush()
    s.refresh(rule)
    return rule


def list_rules(s: Session, scope: Scope) -> list[ApprovalRule]:
    q = select(ApprovalRule).join(Vdc).where(scope_filter(scope)).order_by(Vdc.path, ApprovalRule.name)
    return list(s.scalars(q))


def get_rule(s: Session, rule_id: int, scope: Scope) -> ApprovalRule:
    r = s.get(ApprovalRule, rule_id)
    if r is None or not scope.contains(r.vdc.path):
        raise NotFound(f"approval rule {rule_id} does not exist; see 'shanzhi approval rules'", field="id")
    return r


# ------------------------------------------------------------------ holding an apply
def _why(s: Session, rule: ApprovalRule, spec: AppSpec) -> str | None:
    c = rule.conditions
    if c.get("always"):
        return "every apply needs approval"
    cpu = desired_usage(spec).cpu
    if "cpuOver" in c and cpu > c["cpuOver"]:
        return f"asks for {format_cpu(cpu)} cpu, more than {format_cpu(c['cpuOver'])}"
    if "sites" in c:
        placement = spec.spec.placement
        hits = {
            cloud.site.name
            for cloud in s.scalars(select(Cloud))
            if cloud.site.name in c["sites"] and placement.refuses_cloud(cloud.name, cloud.region, cloud.tags) is None
        }
        if hits:
            return f"may be placed in site {', '.join(sorted(hits))}"
    return None


def _rules_over(s: Session, path: str) -> list[ApprovalRule]:
    """The rules of `path` and its ancestors, the root's first."""
    q = select(ApprovalRule).join(Vdc).where(Vdc.path.in_([*ancestors(path), path]))
    return list(s.scalars(q.order_by(Vdc.path, ApprovalRule.id)))


def hold_if_needed(s: Session, spec: AppSpec, requester: str) -> ApprovalRequest | None:
    """A pending request if an approval rule matches this apply (nothing else changes), else None."""
    path = spec.metadata.vdc
    rules = _rules_over(s, path)
    if not rules:
        return None  # no rule over the VDC (the common apply): one query
    v = get_vdc(s, path)
    body = spec.to_json()
    app = s.scalar(select(App).where(App.vdc_id == v.id, App.name == spec.metadata.name))
    if app is not None and app.spec == body:
        return None  # unchanged: nothing to approve
    matched = matching_rules(s, spec, rules)
    return _hold(s, v, spec.metadata.name, "apply", body, matched, requester) if matched else None


def matching_rules(
    s: Session, spec: AppSpec, rules: list[ApprovalRule] | None = None
) -> list[tuple[ApprovalRule, str]]:
    """The approval rules over the spec's VDC (`rules` when read already) that would hold
    applying it, each with why."""
    over = _rules_over(s, spec.metadata.vdc) if rules is None else rules
    return [(r, why) for r in over if (why := _why(s, r, spec)) is not None]


def hold_delete_if_needed(s: Session, app: App, requester: str) -> ApprovalRequest | None:
    """A pending request if an approval rule with `deletes` covers this app, else None."""
    if app.deleting:
        return None  # already going: nothing to approve
    matched = [
        (r, "deleting an app needs approval") for r in _rules_over(s, app.vdc.path) if r.conditions.get("deletes")
    ]
    return _hold(s, app.vdc, app.name, "delete", app.spec, matched, requester) if matched else None


def _activation_rules(s: Session, path: str) -> list[tuple[ApprovalRule, str]]:
    return [
        (r, "activating the remote centre needs approval")
        for r in _rules_over(s, path)
        if r.conditions.get("activations")
    ]


def activation_stages(s: Session, path: str) -> list[list[str]]:
    """Who approves activating a remote centre for an app in VDC `path`, stage by stage."""
    rules = _activation_rules(s, path)
    return [list(st) for r, _ in rules for st in r.stages["stages"]] if rules else DEFAULT_ACTIVATION_STAGES


def hold_activation(s: Session, app: App, document: dict[str, Any], requester: str) -> ApprovalRequest:
    """Activating the remote centre of `app`'s database, held: by the stages of the rules over
    its VDC that say `activations`, else by a system administrator (never the requester)."""
    matched = _activation_rules(s, app.vdc.path)
    return _hold(s, app.vdc, app.name, "activate-remote", document, matched, requester)


def hold_restore(s: Session, app: App, document: dict[str, Any], requester: str) -> ApprovalRequest:
    """Restoring `app`'s database in place (what was written after the time is given up), held
    as an activation is: by the rules that say `activations`, else by a system administrator."""
    matched = [(r, "restoring a database in place needs approval") for r, _ in _activation_rules(s, app.vdc.path)]
    return _hold(s, app.vdc, app.name, "restore-in-place", document, matched, requester)


def _hold(
    s: Session,
    v: Vdc,
    app: str,
    action: str,
    body: dict[str, Any],
    matched: list[tuple[ApprovalRule, str]],
    requester: str,
) -> ApprovalRequest:
    pending = s.scalar(
        select(ApprovalRequest).where(
            ApprovalRequest.vdc_id == v.id,
            ApprovalRequest.app == app,
            ApprovalRequest.action == action,
            ApprovalRequest.status == "pending",
        )
    )
    if pending is not None and pending.document == body and pending.expires_at > utcnow():
        return pending  # asked again: the same request, not a second one
    stages = [
        {"rule": r.name, "vdc": r.vdc.path, "approvers": list(stage), "decision": None, "by": None, "at": None}
        for r, _ in matched
        for stage in r.stages["stages"]
    ]
    reasons = [{"rule": r.name, "vdc": r.vdc.path, "why": why} for r, why in matched]
    hours = min((r.expire_hours for r, _ in matched), default=ACTIVATION_EXPIRE_HOURS)
    if not matched:  # only activations and restores in place are held without a rule
        stages = [
            {"rule": "(platform)", "vdc": "/", "approvers": list(stage), "decision": None, "by": None, "at": None}
            for stage in DEFAULT_ACTIVATION_STAGES
        ]
        what = "restoring a database in place" if action == "restore-in-place" else "activating a remote centre"
        reasons = [{"rule": "(platform)", "vdc": "/", "why": f"{what} needs a second person"}]
    req = ApprovalRequest(
        vdc_id=v.id,
        app=app,
        action=action,
        document=body,
        requester=requester,
        status="pending",
        reasons={"rules": reasons},
        stages={"stages": stages},
        approvers=approver_keys(stages),
        stage=0,
        comments={"comments": []},
        expires_at=utcnow() + timedelta(hours=hours),
    )
    s.add(req)
    s.flush()
    s.refresh(req)
    why = "; ".join(f"{x['rule']}: {x['why']}" for x in reasons)
    msg = f"{action} held for approval {req.id} ({why})"
    record_event(s, "ApprovalRequested", "app", app, msg, vdc=v.path, app=app)
    return req


# ------------------------------------------------------------------ reading and deciding
def _approver_matches(p: Principal, approver: str, path: str) -> bool:
    _, sep, name = approver.partition(":")
    if not sep:
        return approver == p.user
    return name in p.platform or name in p.roles_at(path)


def _is_approver(p: Principal, req: ApprovalRequest) -> bool:
    return any(_approver_matches(p, a, req.vdc.path) for st in req.stages["stages"] for a in st["approvers"])


def _visible(p: Principal, req: ApprovalRequest) -> bool:
    return req.requester == p.user or p.scope("approval.read").contains(req.vdc.path) or _is_approver(p, req)


def _expire(req: ApprovalRequest) -> None:
    if req.status == "pending" and req.expires_at <= utcnow():
        req.status, req.decided_at = "expired", req.expires_at
        req.outcome = "expired before every stage approved; apply again to ask anew"


def approver_keys(stages: list[dict[str, Any]]) -> str:
    """Every approver of every stage, delimited for a LIKE search ("|alice|role:vdc-admin|")."""
    names = sorted({a for st in stages for a in st["approvers"]})
    return "|" + "|".join(names) + "|" if names else ""


def list_requests(s: Session, p: Principal, status: str | None = None) -> list[ApprovalRequest]:
    """The requests `p` may see (as in `_visible`), filtered in SQL: their own, those in their
    approval.read scope (every VDC role has it, so VDC-role approvers are in it too), and those
    naming them or one of their platform roles as an approver."""
    keys = [p.user, *(f"role:{r}" for r in p.platform)]
    seen = or_(
        ApprovalRequest.requester == p.user,
        scope_filter(p.scope("approval.read")),
        *(ApprovalRequest.approvers.contains(f"|{k}|", autoescape=True) for k in keys),
    )
    q = select(ApprovalRequest).join(Vdc, ApprovalRequest.vdc_id == Vdc.id).where(seen)
    now = utcnow()
    if status == "pending":
        q = q.where(ApprovalRequest.status == "pending", ApprovalRequest.expires_at > now)
    elif status == "expired":  # including those housekeeping has not marked yet
        q = q.where(
            or_(
                ApprovalRequest.status == "expired",
                and_(ApprovalRequest.status == "pending", ApprovalRequest.expires_at <= now),
            )
        )
    elif status is not None:
        q = q.where(ApprovalRequest.status == status)
    out = list(s.scalars(q.order_by(ApprovalRequest.id)))
    for r in out:
        _expire(r)
    return out


def get_request(s: Session, p: Principal, request_id: int) -> ApprovalRequest:
    r = s.get(ApprovalRequest, request_id)
    if r is None or not _visible(p, r):
        raise NotFound(f"approval request {request_id} does not exist; see 'shanzhi approval list'", field="id")
    _expire(r)
    return r


def comment(s: Session, p: Principal, request_id: int, text: str) -> ApprovalRequest:
    r = get_request(s, p, request_id)
    r.comments = {"comments": [*r.comments["comments"], {"by": p.user, "at": utcnow().isoformat(), "text": text}]}
    return r


def decide(s: Session, p: Principal, request_id: int, approve: bool, note: str = "") -> ApprovalRequest:
    """Approve or reject the current stage. The last approval carries out the held apply or delete."""
    r = get_request(s, p, request_id)
    if r.status != "pending":
        raise Conflict(f"approval request {r.id} is {r.status}: {r.outcome}".rstrip(": "), field="id")
    stages: list[dict[str, Any]] = [dict(st) for st in r.stages["stages"]]
    current = stages[r.stage]
    if not any(_approver_matches(p, a, r.vdc.path) for a in current["approvers"]):
        raise Forbidden(
            f"{p.user} is not an approver of stage {r.stage + 1} ({', '.join(current['approvers'])})", field="id"
        )
    if p.user == r.requester:
        raise Forbidden("requesters may not approve or reject their own requests", field="id")
    now = utcnow()
    current.update(decision="approved" if approve else "rejected", by=p.user, at=now.isoformat(), note=note)
    r.stages = {"stages": stages}
    path = r.vdc.path
    if not approve:
        r.status, r.decided_at, r.outcome = "rejected", now, f"rejected by {p.user} at stage {r.stage + 1}"
        record_event(s, "ApprovalRejected", "app", r.app, f"approval {r.id} {r.outcome}", vdc=path, app=r.app)
        return r
    r.stage += 1
    if r.stage < len(stages):
        return r
    r.decided_at = now
    try:
        with s.begin_nested():
            if r.action == "delete":
                delete_app(s, r.app, path)
                done = f"deleted: app {r.app} is being removed"
            elif r.action == "activate-remote":
                done = dr.approve_activation(s, r.vdc_id, r.app, r.document, r.id, p.user)
            elif r.action == "restore-in-place":
                done = dr.approve_restore(s, r.vdc_id, r.app, r.document, r.id, p.user)
            else:
                app, outcome = apply_app(s, parse_app(r.document), r.requester, f"approval {r.id}")
                done = f"applied: app {app.name} {outcome} (generation {app.generation})"
        r.status, r.outcome = "approved", done
    except ShanzhiError as err:
        r.status, r.outcome = "failed", f"approved, but the {r.action} failed: {err.detail}"
    record_event(s, "ApprovalDecided", "app", r.app, f"approval {r.id} {r.status}: {r.outcome}", vdc=path, app=r.app)
    return r
