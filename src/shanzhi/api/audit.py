"""Audit: every change, every privileged read and every refusal, recorded (who, with what role,
from where, what action on what target, outcome, when) in the hash-chained audit trail, with a
commitment to each record in the directory ledger (signed by the platform key; the record's
content stays in the trail, readable by the audit administrator only).

Fail-closed. A change is recorded by `transaction`, inside the route's own database
transaction: if the record cannot be written nothing commits and the request fails. A
privileged read's answer is held back until its record is written; if that fails, the
caller gets a 500 instead of the data. Refused and failed requests changed nothing and are
recorded afterwards by the middleware.

Plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which wraps every response in
extra streams and tasks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import Request, Response
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shanzhi.api.policy import Rule
from shanzhi.domain.rbac import Principal
from shanzhi.store import audit as chain
from shanzhi.store.tables import AuditRecord

log = logging.getLogger("shanzhi.audit")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}
SECRET_PARAMS = {"code", "state"}


def _outcome(status: int) -> str:
    if status < 300:
        return "success"
    return "denied" if status in (401, 403, 423) else "error"


def build(scope: Scope, status: int, target: str = "") -> AuditRecord:
    state = scope.get("state") or {}
    principal: Principal | None = state.get("principal")
    rule: Rule | None = state.get("rule")
    query = _redact(scope.get("query_string", b"").decode())
    client = scope.get("client")
    path = scope["path"]
    actor = principal.user if principal else "anonymous"
    if principal is not None and principal.user == "anonymous" and state.get("login_user"):
        actor = state["login_user"]
    return AuditRecord(
        actor=actor[:128],
        role=(principal.label if principal and principal.user != "anonymous" else "")[:255],
        action=(rule.action or rule.kind) if rule else "",
        target=target or state.get("target") or path.removeprefix("/api/v1"),
        source=(client[0] if client else "")[:64],
        method=scope["method"],
        path=path + (f"?{query}" if query else ""),
        status=status,
        outcome=state.get("audit_outcome") or _outcome(status),  # "held": a change waiting for approval
    )


def _redact(query: str) -> str:
    """Query values that are secrets (the single sign-on callback's code and state) stay out."""
    if "code=" not in query and "state=" not in query:
        return query
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "REDACTED" if k in SECRET_PARAMS else v) for k, v in pairs])


@contextmanager
def transaction(request: Request, response: Response | None = None) -> Iterator[Session]:
    """The route's write transaction, with its audit record appended inside it. The status
    recorded is `request.state.audit_status` where the route set one (it commits, then refuses
    or redirects: a wrong password must still count), else `response`'s, else the route's default."""
    db = request.app.state.db
    with db.session() as s, s.begin():
        yield s
        route = request.scope.get("route")
        status = (
            getattr(request.state, "audit_status", None)
            or (response.status_code if response is not None else None)
            or (route.status_code if isinstance(route, APIRoute) and route.status_code else 200)
        )
        record = chain.append(s, build(request.scope, status), to_ledger=_ledger_on(request.scope))
        s.flush()
        request.state.audited = _summary(record)


def _ledger_on(scope: Scope) -> bool:
    return getattr(getattr(scope["app"].state, "runtime", None), "ledger", None) is not None


def _summary(r: AuditRecord) -> dict[str, Any]:
    return {"id": r.id, "actor": r.actor, "action": f"{r.method} {r.path}"[:200], "outcome": r.outcome}


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        status = 500
        held: list[Message] = []
        holding = False

        def privileged() -> bool:
            rule: Rule | None = (scope.get("state") or {}).get("rule")
            return bool(rule and rule.privileged)

        async def watch(message: Message) -> None:
            nonlocal status, holding
            if message["type"] == "http.response.start":
                status = int(message["status"])
                holding = scope["method"] not in MUTATING and privileged() and status < 400
            if holding:
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            state = scope.get("state") or {}
            in_tx = state.get("audited")
            wanted = scope["method"] in MUTATING or privileged() or status in (401, 403, 423)
            body: dict[str, Any] | None = in_tx
            if in_tx is None and wanted:
                try:
                    body = await run_in_threadpool(_record, scope, status)
                except Exception:
                    log.exception("audit record for %s %s could not be written", scope["method"], scope["path"])
                    if holding:  # fail closed: the data is not released without its record
                        await _refuse(send)
                        return
                    raise
            if held:
                for m in held:
                    await send(m)
            if body is not None:
                log.info("%s %s -> %s (%s)", body["actor"], body["action"], status, body["outcome"])


async def _refuse(send: Send) -> None:
    doc = {
        "type": "about:blank",
        "title": "Audit unavailable",
        "status": 500,
        "detail": "the audit record for this request could not be written, so its answer is withheld; see the log",
    }
    raw = json.dumps(doc).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(raw)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": raw})


def _record(scope: Scope, status: int) -> dict[str, Any]:
    with scope["app"].state.db.session() as s, s.begin():
        return _summary(chain.append(s, build(scope, status), to_ledger=_ledger_on(scope)))
