"""The one table that says which action every API route needs. A route without a rule is
refused (default deny), and the server will not start with one (`check_routes`).

Kinds:
- `platform`: a platform role must allow the action.
- `vdc`: any grant allowing the action somewhere lets the call through; the route then works
  only inside the caller's scope for that action (outside it, objects do not exist: 404).
- `self`: any authenticated user, acting on their own things (the route checks which).
- `public`: no authentication (only logging in, by password or single sign-on).
- a rule with `public_if`: as its kind says, unless that setting is on; then no authentication
  (the ledger's read-only, verifiable resources under `serve --ledger-public`, the default).

`privileged` reads are written to the audit trail like changes are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import compile_path

from shanzhi.domain.rbac import ACTIONS

Kind = Literal["platform", "vdc", "self", "public"]
PREFIX = "/api/v1"


@dataclass(frozen=True)
class Rule:
    kind: Kind
    action: str = ""
    privileged: bool = False
    # open to anyone, without a token, when this setting is on (the ledger's tlog-tiles reads:
    # standard clients fetch them with plain GETs, `serve --ledger-public`)
    public_if: str = ""

    def is_public(self, settings: object | None) -> bool:
        return self.kind == "public" or bool(self.public_if and getattr(settings, self.public_if, False))


def _p(action: str, privileged: bool = False) -> Rule:
    return Rule("platform", action, privileged)


def _v(action: str, privileged: bool = False) -> Rule:
    return Rule("vdc", action, privileged)


SELF = Rule("self")
#: all that a session owing its second factor may do (see shanzhi.services.mfa)
ENROLL_ONLY_ROUTES = {
    ("POST", "/auth/mfa/enroll"),
    ("POST", "/auth/mfa/confirm"),
    ("GET", "/auth/whoami"),
    ("POST", "/auth/logout"),
}
PUBLIC = Rule("public")
LEDGER_READ = Rule("platform", "ledger.read", public_if="ledger_public")

RULES: dict[tuple[str, str], Rule] = {
    # identity
    ("POST", "/auth/login"): PUBLIC,
    ("GET", "/auth/oidc"): PUBLIC,
    ("POST", "/auth/oidc/start"): PUBLIC,
    ("GET", "/auth/oidc/callback"): PUBLIC,
    ("POST", "/auth/oidc/exchange"): PUBLIC,
    ("POST", "/auth/logout"): SELF,
    ("GET", "/auth/whoami"): SELF,
    ("PUT", "/auth/password"): SELF,
    ("POST", "/auth/mfa/enroll"): SELF,
    ("POST", "/auth/mfa/confirm"): SELF,
    ("POST", "/auth/mfa/disable"): SELF,
    ("GET", "/tokens"): SELF,
    ("POST", "/tokens"): SELF,
    ("DELETE", "/tokens/{token_id}"): SELF,
    ("GET", "/users"): _p("user.read", privileged=True),
    ("POST", "/users"): _p("user.write"),
    ("GET", "/users/{name}"): _p("user.read", privileged=True),
    ("DELETE", "/users/{name}"): _p("user.write"),
    ("PUT", "/users/{name}/password"): _p("user.write"),
    ("DELETE", "/users/{name}/mfa"): _p("user.write"),
    ("POST", "/users/{name}/lock"): _p("user.write"),
    ("DELETE", "/users/{name}/oidc"): _p("user.write"),
    ("GET", "/oidc-group-maps"): _p("user.read", privileged=True),
    ("POST", "/oidc-group-maps"): _p("user.write"),
    ("DELETE", "/oidc-group-maps/{map_id}"): _p("user.write"),
    ("POST", "/users/{name}/unlock"): _p("user.write"),
    ("GET", "/grants"): _v("grant.read", privileged=True),
    ("POST", "/grants"): _v("grant.write"),
    ("DELETE", "/grants/{grant_id}"): _v("grant.write"),
    # the platform
    ("GET", "/status"): SELF,
    ("GET", "/clouds"): _v("cloud.read"),
    ("POST", "/clouds"): _p("cloud.write"),
    ("GET", "/clouds/{name}"): _v("cloud.read"),
    ("DELETE", "/clouds/{name}"): _p("cloud.write"),
    ("PUT", "/clouds/{name}/credentials"): _p("cloud.write"),
    ("GET", "/metrics"): _p("cloud.read"),
    ("GET", "/prometheus/targets"): _p("cloud.read"),
    ("GET", "/apps/{name}/metrics"): _v("app.read"),
    ("GET", "/inventory"): _p("cloud.read"),
    ("GET", "/inventory/syncs"): _p("cloud.read"),
    ("POST", "/inventory/sync"): _p("cloud.write"),
    ("POST", "/adopt"): _p("cloud.write"),
    ("POST", "/clouds/{name}/fail"): _p("cloud.write"),
    ("POST", "/clouds/{name}/recover"): _p("cloud.write"),
    ("GET", "/images"): _v("cloud.read"),
    ("GET", "/images/{name}"): _v("cloud.read"),
    ("POST", "/images"): _p("cloud.write"),
    ("POST", "/images/import"): _p("cloud.write"),
    ("DELETE", "/images/{name}"): _p("cloud.write"),
    ("GET", "/vdcs"): _v("vdc.read"),
    ("POST", "/vdcs"): _v("vdc.write"),
    ("GET", "/vdcs/{path}"): _v("vdc.read"),
    ("PUT", "/vdcs/{path}/quota"): _v("vdc.write"),
    ("DELETE", "/vdcs/{path}"): _v("vdc.write"),
    ("GET", "/apps"): _v("app.read"),
    ("POST", "/apps"): _v("app.write"),
    ("POST", "/apps/dry-run"): _v("app.write"),
    ("GET", "/apps/{name}/revisions"): _v("app.read"),
    ("GET", "/apps/{name}"): _v("app.read"),
    ("DELETE", "/apps/{name}"): _v("app.write"),
    ("GET", "/volumes"): _v("app.read"),
    ("GET", "/volumes/{key}"): _v("app.read"),
    ("DELETE", "/volumes/{key}"): _v("app.write"),
    ("POST", "/volumes/{key}/snapshots"): _v("app.write"),
    ("GET", "/volumes/{key}/snapshots"): _v("app.read"),
    ("POST", "/volumes/{key}/restore"): _v("app.write"),
    ("GET", "/instances"): _v("app.read"),
    ("GET", "/instances/{name}"): _v("app.read"),
    ("GET", "/instances/{name}/logs"): _v("app.read"),
    ("GET", "/events"): _v("app.read"),
    ("GET", "/dr/topology"): _v("cloud.read"),
    ("PUT", "/sites/{name}/dr-role"): _p("cloud.write"),
    ("GET", "/apps/{name}/dr"): _v("app.read"),
    ("GET", "/apps/{name}/dr/plans"): _v("app.read"),
    ("GET", "/apps/{name}/dr/credentials"): _v("app.write", privileged=True),
    ("GET", "/dr/reports"): _v("app.read"),
    ("POST", "/apps/{name}/dr/switchover"): _v("app.write"),
    ("POST", "/apps/{name}/dr/failback"): _v("app.write"),
    ("POST", "/apps/{name}/dr/reprotect"): _v("app.write"),
    ("POST", "/apps/{name}/dr/activate-remote"): _v("app.write"),
    ("POST", "/apps/{name}/dr/backups"): _v("app.write"),
    ("GET", "/apps/{name}/dr/backups"): _v("app.read"),
    ("POST", "/apps/{name}/dr/restore"): _v("app.write"),
    ("POST", "/apps/{name}/dr/restore-in-place"): _v("app.write"),
    ("POST", "/apps/{name}/dr/cleanup"): _v("app.write"),
    ("POST", "/apps/{name}/dr/test"): _v("app.write"),
    ("GET", "/flows"): _v("app.read"),
    ("GET", "/flows/hourly"): _v("app.read"),
    ("GET", "/alarms"): _v("app.read"),
    ("GET", "/alarm-rules"): _v("app.read"),
    ("POST", "/alarm-rules"): _v("app.write"),
    ("DELETE", "/alarm-rules/{rule_id}"): _v("app.write"),
    ("GET", "/alarm-silences"): _v("app.read"),
    ("POST", "/alarm-silences"): _v("app.write"),
    ("DELETE", "/alarm-silences/{silence_id}"): _v("app.write"),
    ("POST", "/alarms/{alarm_id}/ack"): _v("app.write"),
    ("POST", "/plans"): _p("plan.write"),
    ("GET", "/plans/{plan_id}"): _p("plan.read"),
    ("POST", "/plans/{plan_id}/apply"): _p("plan.write"),
    ("DELETE", "/plans/{plan_id}"): _p("plan.write"),
    ("POST", "/plans/moves"): _p("plan.write"),
    # approvals
    ("GET", "/approvals"): SELF,
    ("GET", "/approvals/{request_id}"): SELF,
    ("POST", "/approvals/{request_id}/approve"): SELF,
    ("POST", "/approvals/{request_id}/reject"): SELF,
    ("POST", "/approvals/{request_id}/comment"): SELF,
    ("GET", "/approval-rules"): _v("approval.read"),
    ("POST", "/approval-rules"): _v("approval.rules"),
    ("DELETE", "/approval-rules/{rule_id}"): _v("approval.rules"),
    # metering
    ("GET", "/rates"): _v("cloud.read"),
    ("PUT", "/rates/{cloud}"): _p("rate.write"),
    ("GET", "/usage"): _v("bill.read", privileged=True),
    ("GET", "/bill"): _v("bill.read", privileged=True),
    # audit
    ("GET", "/audit"): _p("audit.read", privileged=True),
    ("GET", "/audit/verify"): _p("audit.read", privileged=True),
    ("POST", "/audit/prune"): _p("audit.prune"),
    # ledger
    ("GET", "/ledger/status"): LEDGER_READ,
    ("GET", "/ledger/checkpoint"): LEDGER_READ,
    ("GET", "/ledger/checkpoints"): LEDGER_READ,
    ("GET", "/ledger/tile/{path}"): LEDGER_READ,
    ("POST", "/ledger/entries"): _v("ledger.submit"),
    ("GET", "/ledger/entries/{index}"): LEDGER_READ,
    ("GET", "/ledger/proof/inclusion"): LEDGER_READ,
    ("GET", "/ledger/proof/consistency"): LEDGER_READ,
    ("GET", "/ledger/keys"): LEDGER_READ,
    ("POST", "/ledger/keys"): _p("ledger.keys"),
    ("GET", "/ledger/watch"): _p("ledger.read"),
}


def route_key(route: APIRoute, method: str) -> tuple[str, str]:
    path = route.path_format.removeprefix(PREFIX)
    return method, path


def rule_for(route: APIRoute, method: str) -> Rule | None:
    return RULES.get(route_key(route, method))


class RouteTable:
    """Every API route's rule, found from a method and a path before FastAPI routes the request
    (the guard needs it before the body is read). Built from the routers we include, so it does
    not depend on how FastAPI keeps included routers."""

    def __init__(self, routers: Iterable[APIRouter], app: FastAPI | None = None) -> None:
        self._routes: list[tuple[re.Pattern[str], frozenset[str], str]] = []
        found: list[tuple[str, APIRoute]] = [
            (PREFIX, r) for router in routers for r in router.routes if isinstance(r, APIRoute)
        ]
        if app is not None:  # routes put straight on the application
            found += [("", r) for r in app.router.routes if isinstance(r, APIRoute)]
        for prefix, route in found:
            full = prefix + route.path_format
            if not full.startswith(PREFIX):
                continue
            regex, _, _ = compile_path(full)
            self._routes.append((regex, frozenset(route.methods or ()), full.removeprefix(PREFIX)))

    def rule(self, method: str, path: str) -> Rule | None:
        for regex, methods, key in self._routes:
            if method in methods and regex.match(path):
                return RULES.get((method, key))
        return None

    def missing(self) -> list[str]:
        """Routes without a rule, or whose rule names an unknown action."""
        out = []
        for _, methods, key in self._routes:
            for method in sorted(methods - {"HEAD", "OPTIONS"}):
                rule = RULES.get((method, key))
                if rule is None or (rule.action and rule.action not in ACTIONS):
                    out.append(f"{method} {PREFIX}{key}")
        return out


def check_routes(app: FastAPI, routers: Iterable[APIRouter] = ()) -> RouteTable:
    """Refuse to build an application with an API route that has no rule (or names an unknown
    action): a forgotten rule must fail at start-up, not open a hole. Returns the table."""
    table = RouteTable(routers, app)
    missing = table.missing()
    if missing:
        raise RuntimeError(f"API routes without an authorization rule: {', '.join(missing)}")
    return table
