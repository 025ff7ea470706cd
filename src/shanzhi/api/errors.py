"""Every error as an RFC 9457 `application/problem+json` document naming the field or limit."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from shanzhi.domain.errors import QuotaExceeded, ShanzhiError
from shanzhi.domain.spec import SpecInvalid

log = logging.getLogger("shanzhi.api")
PROBLEM = "application/problem+json"
#: what a request gets while the database is away (a failover, a restart): title, detail; when to retry
DATABASE_AWAY = ("Database unavailable", "the platform's database is not reachable now; retry shortly")
RETRY = {"Retry-After": "2"}


def database_away(err: BaseException) -> None:
    """Say, in one line, why a request got DATABASE_AWAY (the guard's and the routes' alike)."""
    log.warning("database unavailable: %s", str(err).splitlines()[0])


def problem(status: int, title: str, detail: str, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [p for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(request)"


def install(app: FastAPI) -> None:
    @app.exception_handler(ShanzhiError)
    async def _shanzhi(_: Request, err: ShanzhiError) -> JSONResponse:
        extra: dict[str, Any] = {"field": err.field}
        if isinstance(err, SpecInvalid):
            extra["errors"] = err.problems
        if isinstance(err, QuotaExceeded):
            extra.update(vdc=err.vdc, resource=err.resource, limit=err.limit, requested=err.requested)
        resp = problem(err.status, err.title, err.detail, **extra)
        if err.status == 401:
            resp.headers["WWW-Authenticate"] = "Bearer"
        return resp

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, err: RequestValidationError) -> JSONResponse:
        errors = []
        for e in err.errors():
            field = _loc(tuple(e["loc"]))
            msg = e["msg"] if e["type"] != "extra_forbidden" else f"unknown field '{field.rsplit('.', 1)[-1]}'"
            errors.append({"field": field, "message": msg})
        first = errors[0] if errors else {"field": "(request)", "message": "invalid"}
        return problem(
            422, "Invalid input", f"{first['field']}: {first['message']}", field=first["field"], errors=errors
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        titles = {401: "Unauthorized", 404: "Not found", 405: "Method not allowed"}
        resp = problem(err.status_code, titles.get(err.status_code, "Error"), str(err.detail))
        if err.headers:
            resp.headers.update(err.headers)
        return resp

    # the database is away (a failover, a restart): 503 and one line in the log, not a traceback
    # (a handler of its own: Starlette re-raises, and uvicorn prints, what the catch-all answers)
    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    async def _away(_: Request, err: Exception) -> JSONResponse:
        database_away(err)
        resp = problem(503, *DATABASE_AWAY)
        resp.headers.update(RETRY)
        return resp

    @app.exception_handler(Exception)
    async def _crash(_: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return problem(500, "Internal error", f"{type(err).__name__}: {err}; see the server log")
