"""Audit: every mutating request is recorded (who, from where, what, outcome), in the audit
table and, signed by the platform key, in the directory ledger.

Plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which wraps every response in
extra streams and tasks): it only watches the response status go by.
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shanzhi.store import audit as chain
from shanzhi.store.tables import AuditRecord

log = logging.getLogger("shanzhi.audit")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


class AuditMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            await run_in_threadpool(_record, scope, status)


def _record(scope: Scope, status: int) -> None:
    app: Any = scope["app"]
    state = scope.get("state") or {}
    query = scope.get("query_string", b"").decode()
    path = scope["path"]
    client = scope.get("client")
    record = AuditRecord(
        actor=state.get("actor", "anonymous"),
        source=client[0] if client else "",
        method=scope["method"],
        path=path + (f"?{query}" if query else ""),
        status=status,
        outcome="success" if status < 400 else ("denied" if status in (401, 403) else "error"),
    )
    with app.state.db.session() as s, s.begin():
        chain.append(s, record)
    ledger = getattr(getattr(app.state, "runtime", None), "ledger", None)
    if ledger is not None and not path.startswith("/api/v1/ledger/entries"):
        body = {
            "actor": record.actor[:128],
            "action": f"{record.method} {record.path}"[:4000],
            "target": path[:4000],
            "outcome": record.outcome,
            "source": record.source[:128],
        }
        ledger.record("audit", f"api:{path}"[:128], body)
    log.info("%s %s %s -> %s", record.actor, record.method, record.path, status)
