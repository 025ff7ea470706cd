"""Audit: every mutating request is recorded (who, from where, what, outcome)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from shanzhi.store import Database
from shanzhi.store.tables import AuditRecord

log = logging.getLogger("shanzhi.audit")
MUTATING = {"POST", "PUT", "PATCH", "DELETE"}


def _write(db: Database, record: AuditRecord) -> None:
    with db.session() as s, s.begin():
        s.add(record)


def install(app: FastAPI) -> None:
    @app.middleware("http")
    async def audit(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        if request.method in MUTATING and request.url.path.startswith("/api/"):
            status = response.status_code
            outcome = "success" if status < 400 else ("denied" if status in (401, 403) else "error")
            record = AuditRecord(
                actor=getattr(request.state, "actor", "anonymous"),
                source=request.client.host if request.client else "",
                method=request.method,
                path=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
                status=status,
                outcome=outcome,
            )
            await run_in_threadpool(_write, request.app.state.db, record)
            ledger = getattr(getattr(request.app.state, "runtime", None), "ledger", None)
            if ledger is not None and not request.url.path.startswith("/api/v1/ledger/entries"):
                body = {
                    "actor": record.actor[:128],
                    "action": f"{record.method} {record.path}"[:4000],
                    "target": request.url.path[:4000],
                    "outcome": record.outcome,
                    "source": record.source[:128],
                }
                await run_in_threadpool(ledger.record, "audit", f"api:{request.url.path}"[:128], body)
            log.info("%s %s %s -> %s", record.actor, record.method, record.path, status)
        return response
