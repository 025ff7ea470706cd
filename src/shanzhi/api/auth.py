"""Authentication and authorization on every API route, in one dependency.

`authorize` finds the route's rule in `shanzhi.api.policy`, authenticates the bearer token
(unless the route is public) and refuses what the caller's roles do not allow. It leaves the
principal in `request.state` for the route (VDC scoping) and the audit trail.
"""

from __future__ import annotations

from datetime import timedelta

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from shanzhi.api import cookies
from shanzhi.api.policy import ENROLL_ONLY_ROUTES, Rule, route_key, rule_for
from shanzhi.domain.errors import Forbidden, NotFound, Unauthorized
from shanzhi.domain.rbac import Principal
from shanzhi.services import identity
from shanzhi.store import Database
from shanzhi.store.tables import utcnow

ANONYMOUS = Principal("anonymous")


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authorize(request: Request) -> Principal:
    """FastAPI dependency on the whole /api/v1 router: the caller, or 401/403. Async, so a request
    costs no extra thread hop: the guard authenticated it already (in a worker thread)."""
    route = request.scope.get("route")
    rule: Rule | None = rule_for(route, request.method) if isinstance(route, APIRoute) else None
    request.state.rule = rule
    if rule is None:  # check_routes makes this unreachable; deny anyway
        raise Forbidden(f"no authorization rule for {request.method} {request.url.path}: denied by default")
    runtime = getattr(request.app.state, "runtime", None)
    if rule.is_public(runtime.settings if runtime is not None else None):
        request.state.principal = ANONYMOUS
        return ANONYMOUS
    db: Database = request.app.state.db
    done: identity.Caller | None = getattr(request.state, "authenticated", None)  # the guard's, before the body
    if done is None:  # an application without the guard in front
        done = await run_in_threadpool(_authenticate, request, db)
    principal, token_id, last_used, restricted = done.principal, done.token_id, done.last_used, done.restricted
    request.state.principal = principal
    request.state.token_id = token_id
    request.state.restricted = restricted
    if restricted and (isinstance(route, APIRoute) and route_key(route, request.method)) not in ENROLL_ONLY_ROUTES:
        raise Forbidden(
            f"{principal.user} must enrol a second factor before anything else: run 'shanzhi mfa enroll' "
            "(this session may only do that)"
        )
    if last_used is None or utcnow() - last_used > timedelta(minutes=5):
        await run_in_threadpool(_touch, db, token_id)
    if rule.kind == "platform" and not principal.platform_allows(rule.action):
        raise Forbidden(_denied(principal, rule.action))
    if rule.kind == "vdc" and not principal.allows(rule.action):
        raise Forbidden(_denied(principal, rule.action))
    return principal


def _authenticate(request: Request, db: Database) -> identity.Caller:
    secret = bearer(request)
    if secret is None and (secret := cookies.session_of(request.scope)) is not None:
        refused = cookies.csrf_refusal(request.scope, secret)
        if refused is not None:
            raise Forbidden(refused)
    if secret is None:
        raise Unauthorized("missing bearer token: log in with 'shanzhi login', or send 'Authorization: Bearer <token>'")
    with db.lookup() as conn:  # a read: never queue behind writers
        return identity.caller(conn, secret, request.app.state.runtime.settings.session_idle)


def _touch(db: Database, token_id: int) -> None:
    with db.session() as s, s.begin():
        identity.touch_token(s, token_id)


def _denied(p: Principal, action: str) -> str:
    return f"{p.user} ({p.label}) may not {action}: no role of theirs allows it; ask a security administrator"


async def principal(request: Request) -> Principal:
    """The caller, as `authorize` found them (for routes). Async: a lookup, no thread hop."""
    p: Principal = request.state.principal
    return p


def require(p: Principal, action: str, path: str, *, visible: str) -> None:
    """Allow `action` on the VDC `path`: 404 if the caller cannot see it (`visible` is the action
    that would show it), 403 if they can see it but not do this."""
    if p.scope(action).contains(path):
        return
    if p.scope(visible).contains(path):
        raise Forbidden(f"{p.user} ({p.label}) may not {action} in VDC {path}", field="vdc")
    raise NotFound(f"VDC {path} does not exist; see 'shanzhi vdc list'", field="vdc")
