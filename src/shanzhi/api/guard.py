"""What is checked before a request's body is read: who is calling, how often, how much.

FastAPI reads and parses a body before it runs any dependency, so the authorization
dependency alone would let anyone make the server buffer a 50 MB body before its 401. This
ASGI middleware, in front of the application, finds the route's rule, authenticates the bearer
token (the dependency then reuses the result), refuses bodies over the limit with 413 (from
Content-Length, or by counting a chunked body as it arrives), and limits each client address:
logins per minute, and failed requests per minute (429 with Retry-After). The limits are per
server process and kept in memory (bounded), the way a reverse proxy's would be.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shanzhi.api import cookies
from shanzhi.api.errors import DATABASE_AWAY, RETRY, database_away
from shanzhi.api.policy import RouteTable
from shanzhi.domain.errors import Unauthorized
from shanzhi.services import identity

LOGIN_PATHS = ("/api/v1/auth/login", "/api/v1/auth/oidc/exchange")
MAX_CLIENTS = 10_000  # addresses remembered by each limiter (least recently seen forgotten first)


@dataclass
class Limits:
    max_body: int = 4 * 2**20
    logins_per_minute: int = 10
    failures_per_minute: int = 30


class _Buckets:
    """A token bucket per client address: `rate` per minute, bursts of up to `rate`."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def _level(self, key: str, now: float) -> float:
        tokens, at = self._b.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - at) * self.rate)

    def take(self, key: str) -> float:
        """Take one token; 0 if there was one, else the seconds until there will be."""
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1:
            return (1 - tokens) / self.rate
        self._b[key] = (tokens - 1, now)
        self._b.move_to_end(key)
        while len(self._b) > MAX_CLIENTS:
            self._b.popitem(last=False)
        return 0.0

    def empty(self, key: str) -> float:
        """Seconds until `key` may act again (0: it may now), without taking anything."""
        tokens = self._level(key, time.monotonic())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


async def _problem(send: Send, status: int, title: str, detail: str, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail}).encode()
    hs = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(raw)).encode())]
    hs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hs})
    await send({"type": "http.response.body", "body": raw})


class Guard:
    def __init__(self, app: ASGIApp, table: RouteTable, limits: Limits | None = None) -> None:
        self.app = app
        self.table = table
        self.limits = limits or Limits()
        self.logins = _Buckets(self.limits.logins_per_minute)
        self.failures = _Buckets(self.limits.failures_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("?", 0))[0]
        rule = self.table.rule(scope["method"], scope["path"])
        runtime = getattr(scope["app"].state, "runtime", None)
        public = rule is None or rule.is_public(runtime.settings if runtime is not None else None)
        authorization = _header(scope, b"authorization")
        cookie = None if authorization else cookies.session_of(scope)
        if public or not (authorization or cookie):  # a client that keeps failing waits before it may try again
            wait = self.failures.empty(client)
            if wait:
                await self._slow_down(send, wait, "too many failed requests from your address")
                return
        if scope["path"] in LOGIN_PATHS and scope["method"] == "POST":
            wait = self.logins.take(client)
            if wait:
                await self._slow_down(send, wait, "too many logins from your address")
                return
        if not public:
            try:
                failed = await self._authenticate(scope, authorization, cookie)
            except (OperationalError, InterfaceError) as err:  # the database is away: 503, retry
                database_away(err)
                await _problem(send, 503, *DATABASE_AWAY, RETRY)
                return
            if failed is not None:
                self.failures.take(client)
                await _problem(send, 401, "Unauthorized", failed, {"WWW-Authenticate": "Bearer"})
                return
            refused = cookies.csrf_refusal(scope, cookie) if cookie is not None else None
            if refused is not None:
                self.failures.take(client)
                await _problem(send, 403, "Forbidden", refused)
                return
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limits.max_body):
            await self._too_large(send)
            return
        if length is None and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            body = await self._read_limited(receive)  # chunked: counted as it arrives
            if body is None:
                await self._too_large(send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, self._watch(send, client))

    async def _authenticate(self, scope: Scope, authorization: str | None, cookie: str | None) -> str | None:
        """None when the bearer token (or the browser's session cookie) is good (kept for the
        route), else why not."""
        scheme, _, secret = (authorization or "").partition(" ")
        if cookie is not None:
            secret = cookie
        elif scheme.lower() != "bearer" or not secret.strip():
            return "missing bearer token: log in with 'shanzhi login', or send 'Authorization: Bearer <token>'"
        app = scope["app"]
        runtime = getattr(app.state, "runtime", None)
        idle = runtime.settings.session_idle if runtime is not None else None

        def check() -> identity.Caller:
            with app.state.db.lookup() as conn:  # a read: never queue behind writers
                return identity.caller(conn, secret.strip(), idle)

        try:
            scope.setdefault("state", {})["authenticated"] = await run_in_threadpool(check)
        except Unauthorized as err:
            return err.detail
        return None

    async def _read_limited(self, receive: Receive) -> bytes | None:
        """The whole body of a request without Content-Length, or None past the limit."""
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks)
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.limits.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _watch(self, send: Send, client: str) -> Callable[[Message], Awaitable[None]]:
        async def watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                self.failures.take(client)
            await send(message)

        return watched

    async def _too_large(self, send: Send) -> None:
        await _problem(
            send,
            413,
            "Request body too large",
            f"the body is over the {self.limits.max_body} bytes this server accepts",
        )

    async def _slow_down(self, send: Send, wait: float, why: str) -> None:
        seconds = max(1, math.ceil(wait))
        await _problem(
            send, 429, "Too many requests", f"{why}: try again in {seconds} s", {"Retry-After": str(seconds)}
        )


def _replay(body: bytes, then: Receive) -> Receive:
    """The body read already, then whatever the client does next (a disconnect, in the end)."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return await then()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return str(v.decode("latin-1"))
    return None
