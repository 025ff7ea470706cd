"""/auth/oidc: single sign-on through an OpenID Connect provider (see services.oidc).

A client (the CLI) starts a login with the challenge of a secret verifier and sends the user's
browser to the provider. The provider sends the browser back to the callback, which hands a
one-time code to the client's loopback address, or shows it to paste. The client trades code
and verifier for a session token.
"""

from __future__ import annotations

import html
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import Field

from shanzhi.api import cookies
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.routes.identity import _In, _policy, token_out
from shanzhi.api.schemas import Id
from shanzhi.api.threads import slow
from shanzhi.domain.errors import InvalidInput, NotFound, ShanzhiError, Unauthorized
from shanzhi.domain.rbac import Principal
from shanzhi.services import oidc as sso
from shanzhi.services import oidc_groups as groups
from shanzhi.store.tables import OidcGroupMap

router = APIRouter(tags=["identity"])


class StartIn(_In):
    challenge: str = Field(description="base64url(sha256(verifier)), unpadded: the client keeps the verifier")
    return_to: str | None = Field(
        None, description="a loopback URL (http://127.0.0.1:PORT/...) the code is sent to; null: shown in the browser"
    )


class GroupMapIn(_In):
    group: str = Field(description="the group's name as the provider sends it in the groups claim")
    role: str
    vdc: str | None = None


class ExchangeIn(_In):
    code: str = Field(min_length=1, max_length=128)
    verifier: str = Field(min_length=43, max_length=128)
    otp: str | None = Field(None, max_length=32, description="the second factor, when the login owes one")
    cookie: bool = Field(False, description="for the console: the session in an HttpOnly cookie, not in the body")


def _rp(rt: Runtime) -> sso.RelyingParty:
    if rt.oidc is None:
        raise NotFound("single sign-on is not configured on this server; log in with a password ('shanzhi login')")
    return rt.oidc


@router.get("/auth/oidc")
def info(rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Whether single sign-on is on, and through which provider."""
    if rt.oidc is None:
        return {"enabled": False}
    return {"enabled": True, "issuer": rt.oidc.config.issuer, "name": rt.oidc.config.name}


@router.post("/auth/oidc/start", status_code=201)
@slow
def start(request: Request, body: StartIn, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Begin a login: the URL to send the user's browser to (valid for 10 minutes)."""
    rp = _rp(rt)
    rp.metadata()  # any network wait happens here, before the write transaction opens
    source = request.client.host if request.client else "?"
    with transaction(request) as s:
        url, flow = sso.begin(s, rp, body.challenge, body.return_to, source)
        return {"authorization_url": url, "state": flow.state, "expires_at": flow.expires_at}


@router.get("/auth/oidc/callback", response_class=HTMLResponse)
@slow
def callback(
    request: Request,
    state: str = Query(..., max_length=128),
    code: str | None = Query(None, max_length=2048),
    error: str | None = Query(None, max_length=256),
    error_description: str | None = Query(None, max_length=1024),
    iss: str | None = Query(None, max_length=1024, description="the answering issuer (RFC 9207), checked if sent"),
    rt: Runtime = Depends(runtime),
) -> Response:
    """Where the provider sends the browser back: finish the login and hand it to the client."""
    rp = _rp(rt)
    with rt.db.session() as s:
        flow = sso.pending(s, state)
        return_to, verifier, nonce = flow.return_to, flow.code_verifier, flow.nonce
    try:
        if iss is not None and iss != rp.config.issuer:  # RFC 9207: an answer meant for another provider
            raise Unauthorized(f"the answer names issuer {iss}, not {rp.config.issuer}; log in again")
        if error is not None:
            reason = error_description or "no reason given"
            raise Unauthorized(f"the OIDC provider refused the login: {error}: {reason}")
        if not code:
            raise InvalidInput("the provider's answer has neither a code nor an error", field="code")
        claims = rp.claims(code, verifier, nonce)  # network: outside any transaction
        if return_to is not None:
            request.state.audit_status = 303
        with transaction(request) as s:
            handoff, user = sso.finish(s, rp.config, sso.pending(s, state), claims)
            request.state.login_user = request.state.target = user.name
    except ShanzhiError as err:
        request.state.audit_status = err.status
        with transaction(request) as s:  # recorded; the login cannot be finished again
            sso.discard(s, state)
        if return_to is None:
            return _page(err.title, err.detail, err.status)
        return RedirectResponse(f"{return_to}?{urlencode({'state': state, 'error': err.detail})}", 303)
    if return_to is not None:
        return RedirectResponse(f"{return_to}?{urlencode({'state': state, 'code': handoff})}", 303)
    return _page(
        f"Logged in as {user.name}",
        f"Paste this code where 'shanzhi login --oidc' asks for it (it works once, within 2 minutes): {handoff}",
        200,
        code=handoff,
    )


@router.post("/auth/oidc/exchange", status_code=201)
@slow
def exchange(request: Request, response: Response, body: ExchangeIn, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Trade the one-time code and the client's verifier for a session token."""
    _rp(rt)
    failure: Unauthorized | None = None
    with transaction(request) as s:
        try:
            secret, t = sso.redeem(s, body.code, body.verifier, _policy(rt), body.otp, rt.vault)
            request.state.login_user = request.state.target = t.user.name
            out = token_out(t, secret)
        except Unauthorized as err:  # the code is burnt either way: commit, then refuse
            failure = err
            request.state.audit_status = err.status
    if failure is not None:
        raise failure
    if body.cookie:
        out["csrf"] = cookies.set_session(response, out.pop("token"), secure=bool(rt.settings.tls_cert))
    return out


# ------------------------------------------------------------------ group maps (security admins)
def group_map_out(m: OidcGroupMap) -> dict[str, Any]:
    return {
        "id": m.id,
        "group": m.group,
        "role": m.role,
        "vdc": m.vdc.path if m.vdc else None,
        "by": m.created_by,
        "created_at": m.created_at,
    }


@router.get("/oidc-group-maps")
def list_group_maps(rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    """Which provider groups give which roles at single sign-on."""
    with rt.db.session() as s:
        return [group_map_out(m) for m in groups.list_maps(s)]


@router.post("/oidc-group-maps", status_code=201)
def add_group_map(request: Request, body: GroupMapIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    """Members of `group` get `role` (on `vdc`) at their next single sign-on login."""
    request.state.target = f"group {body.group[:128]}"
    with transaction(request) as s:
        return group_map_out(groups.add_map(s, body.group, body.role, body.vdc, p.user))


@router.delete("/oidc-group-maps/{map_id}")
def remove_group_map(request: Request, map_id: Id) -> dict[str, Any]:
    """Remove a group map, and the grants it gave, at once."""
    with transaction(request) as s:
        return group_map_out(groups.remove_map(s, map_id))


def _page(title: str, text: str, status: int, code: str | None = None) -> HTMLResponse:
    code_html = f'<p><code id="code">{html.escape(code)}</code></p>' if code else ""
    t, d = html.escape(title), html.escape(text)
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Shanzhi: {t}</title></head>"
        f"<body><h1>{t}</h1><p id='detail'>{d}</p>{code_html}</body></html>"
    )
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(body, status_code=status, headers=headers)
