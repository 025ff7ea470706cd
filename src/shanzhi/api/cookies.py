"""A browser's session: the token in an `HttpOnly` cookie, and a CSRF token to go with it.

`POST /auth/login` with `"cookie": true` (the console does this) sets the session token as a
cookie scripts cannot read (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS, no lifetime of
its own: the server's idle timeout and expiry apply as to any session), and a second, readable
cookie with the CSRF token. A request authenticated by the cookie that changes anything must
echo that token in `X-CSRF-Token` (a page of another site can neither read the cookie nor set
the header). The CSRF token is a one-way digest of the session's secret: it is checked without
storing anything, and knowing it gives nothing of the session.
"""

from __future__ import annotations

import hashlib
import hmac

from fastapi import Response
from starlette.requests import cookie_parser
from starlette.types import Scope

SESSION = "shanzhi_session"
CSRF = "shanzhi_csrf"
CSRF_HEADER = b"x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def csrf_for(secret: str) -> str:
    return hashlib.sha256(b"shanzhi-csrf:" + secret.encode()).hexdigest()[:40]


def session_of(scope: Scope) -> str | None:
    """The session secret in the request's cookies, if any."""
    header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"cookie"), "")
    return cookie_parser(header).get(SESSION) or None


def csrf_refusal(scope: Scope, secret: str) -> str | None:
    """Why a cookie-authenticated request may not go ahead (None: it may)."""
    if scope["method"] in SAFE_METHODS:
        return None
    sent = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == CSRF_HEADER), "")
    if not sent:
        return f"missing {CSRF_HEADER.decode()} header: a browser session must send the {CSRF} cookie's value"
    if not hmac.compare_digest(sent, csrf_for(secret)):
        return f"wrong {CSRF_HEADER.decode()} header for this session"
    return None


def set_session(response: Response, secret: str, *, secure: bool) -> str:
    """Put the session in the response's cookies; return its CSRF token."""
    csrf = csrf_for(secret)
    response.set_cookie(SESSION, secret, httponly=True, samesite="strict", secure=secure, path="/")
    response.set_cookie(CSRF, csrf, httponly=False, samesite="strict", secure=secure, path="/")
    return csrf


def clear(response: Response, *, secure: bool) -> None:
    for name in (SESSION, CSRF):
        response.delete_cookie(name, path="/", secure=secure, httponly=name == SESSION, samesite="strict")
