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
import threading
import time
from collections import OrderedDict, deque
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
    return "denied" if status in (401, 403, 423, 429) else "error"


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


class _Sampler:
    """Unauthenticated failures, counted per client address: the first of each address in a
    minute is recorded (saying how many came since its last record), and at most `per_minute`
    such records are written in all, so no one can grow the audit trail by failing."""

    def __init__(self, per_minute: int = 60, window: float = 60.0) -> None:
        self.per_minute, self.window = per_minute, window
        self._clients: OrderedDict[str, tuple[float, int]] = OrderedDict()  # last record, failures since
        self._written: deque[float] = deque()
        self._lock = threading.Lock()

    def offer(self, client: str) -> tuple[bool, str]:
        now = time.monotonic()
        with self._lock:
            last, count = self._clients.pop(client, (-float("inf"), 0))
            count += 1
            while self._written and self._written[0] <= now - self.window:
                self._written.popleft()
            if now - last < self.window or len(self._written) >= self.per_minute:
                self._clients[client] = (last, count)
                self._trim()
                return False, ""
            self._clients[client] = (now, 0)
            self._written.append(now)
            self._trim()
        return True, f"sampled: {count} unauthenticated failures from {client[:64]} since its last record"

    def _trim(self) -> None:
        while len(self._clients) > 10_000:
            self._clients.popitem(last=False)


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.sampler = _Sampler()

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
            wanted = scope["method"] in MUTATING or privileged() or status in (401, 403, 423, 429)
            detail = ""
            if wanted and status in (401, 413, 429) and not state.get("principal") and not state.get("authenticated"):
                # nobody we know: counted, and sampled into the trail (never one record each)
                wanted, detail = self.sampler.offer((scope.get("client") or ("?", 0))[0])
            body: dict[str, Any] | None = in_tx
            if in_tx is None and wanted:
                try:
                    body = await run_in_threadpool(_record, scope, status, detail)
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


def _record(scope: Scope, status: int, detail: str = "") -> dict[str, Any]:
    record = build(scope, status)
    if detail:  # a sampled stranger: no query string, a bounded path
        record.detail, record.path, record.target = detail, scope["path"][:200], record.target[:200]
    with scope["app"].state.db.session() as s, s.begin():
        return _summary(chain.append(s, record, to_ledger=_ledger_on(scope)))
