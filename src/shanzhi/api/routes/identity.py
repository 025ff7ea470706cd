"""/auth, /tokens, /users, /grants: logging in, API tokens, users and their roles."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import segno
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api import cookies
from shanzhi.api.audit import transaction
from shanzhi.api.auth import principal, require
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import Id
from shanzhi.api.threads import slow
from shanzhi.domain.errors import Conflict, Forbidden, InvalidInput, Unauthorized
from shanzhi.domain.rbac import PLATFORM_ROLES, Principal
from shanzhi.services import identity as svc
from shanzhi.services import mfa
from shanzhi.store.tables import Grant, Token, User

router = APIRouter(tags=["identity"])


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    user: str
    password: str
    new_password: str | None = Field(None, description="replaces the password (required once it has expired)")
    otp: str | None = Field(None, max_length=32, description="the second factor: a TOTP code or a recovery code")
    cookie: bool = Field(
        False, description="for a browser: the session in an HttpOnly cookie (and a CSRF token), not in the body"
    )


class CodeIn(_In):
    code: str = Field(min_length=6, max_length=32, description="a TOTP code (or, to disable, a recovery code)")


class PasswordIn(_In):
    password: str
    old_password: str | None = Field(None, description="required when changing your own password")


class TokenIn(_In):
    name: str = Field(min_length=1, max_length=128)
    expires_in_days: float = Field(90, gt=0, description="every token expires: at most `serve --token-max-days`")


class UserIn(_In):
    name: str
    password: str | None = None
    display_name: str = ""


class GrantIn(_In):
    user: str
    role: str
    vdc: str | None = None


def _policy(rt: Runtime) -> svc.Policy:
    st = rt.settings
    return svc.Policy(
        max_failures=st.max_login_failures,
        lockout=timedelta(minutes=st.lockout_minutes),
        session_ttl=timedelta(hours=st.session_hours),
        session_idle=st.session_idle,
        password_max_age=timedelta(days=st.password_max_age_days) if st.password_max_age_days > 0 else None,
        require_mfa=st.require_mfa,
        max_token_ttl=timedelta(days=st.token_max_days),
    )


def token_out(t: Token, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": t.id,
        "name": t.name,
        "user": t.user.name,
        "created_at": t.created_at,
        "expires_at": t.expires_at,
        "revoked_at": t.revoked_at,
        "last_used_at": t.last_used_at,
    }
    if secret is not None:
        out["token"] = secret
    if t.restricted:
        out["restricted"] = t.restricted
        out["next"] = "a second factor is required for this account: enrol one with 'shanzhi mfa enroll'"
    return out


def user_out(u: User, grants: list[Grant] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": u.name,
        "display_name": u.display_name,
        "password": u.password_hash is not None,
        "locked": u.disabled,
        "locked_until": u.locked_until,
        "failed_logins": u.failed_logins,
        "created_at": u.created_at,
        "last_login_at": u.last_login_at,
        "oidc_subject": u.oidc_subject,
        "mfa": u.mfa_enabled,
    }
    if grants is not None:
        out["roles"] = [grant_out(g) for g in grants]
    return out


def grant_out(g: Grant) -> dict[str, Any]:
    return {"id": g.id, "user": g.user.name, "role": g.role, "vdc": g.vdc.path if g.vdc else None, "by": g.granted_by}


# ------------------------------------------------------------------ auth
@router.post("/auth/login", status_code=201)
@slow
def login(request: Request, response: Response, body: LoginIn, rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Exchange a user name and password for a session token (expires after `session_hours`)."""
    request.state.login_user = body.user[:64]
    request.state.target = f"user {body.user[:64]}"
    source = request.client.host if request.client else "?"
    failure: Exception | None = None
    with transaction(request) as s:
        try:
            secret, t = svc.login(
                s, body.user, body.password, source, _policy(rt), body.new_password, otp=body.otp, vault=rt.vault
            )
            out = token_out(t, secret)
        except Unauthorized as err:  # keep the failure count: commit, then refuse
            failure = err
            request.state.audit_status = err.status
    if failure is not None:
        raise failure
    if body.cookie:
        out["csrf"] = cookies.set_session(response, out.pop("token"), secure=bool(rt.settings.tls_cert))
    return out


@router.post("/auth/logout")
def logout(request: Request, response: Response, p: Principal = Depends(principal)) -> dict[str, Any]:
    with transaction(request) as s:
        t = svc.revoke_token(s, request.state.token_id, owner=p.user)
    cookies.clear(response, secure=bool(request.app.state.runtime.settings.tls_cert))
    return {"revoked": t.id}


@router.get("/auth/whoami")
def whoami(request: Request, p: Principal = Depends(principal)) -> dict[str, Any]:
    return {
        "user": p.user,
        "platform_roles": sorted(p.platform),
        "vdc_roles": [{"vdc": v, "role": r} for v, roles in sorted(p.vdc.items()) for r in sorted(roles)],
        "token_id": request.state.token_id,
        "restricted": getattr(request.state, "restricted", None),
    }


@router.put("/auth/password")
@slow
def change_password(request: Request, body: PasswordIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    with transaction(request) as s:
        u = svc.get_user(s, p.user)
        if u.password_hash is not None:
            svc.check_password(u, body.old_password or "")
        svc.set_password(s, p.user, body.password, keep_token=request.state.token_id)
    return {"user": p.user, "changed": True, "other_sessions": "ended"}


# ------------------------------------------------------------------ second factor
@router.post("/auth/mfa/enroll", status_code=201)
def mfa_enroll(request: Request, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    """Start enrolling a second factor: the secret and its otpauth:// URI (show it as a QR code)."""
    assert rt.vault is not None
    with transaction(request) as s:
        secret, uri = mfa.start(s, svc.get_user(s, p.user), rt.vault)
    qr = segno.make(uri, error="m").svg_data_uri(scale=4)  # for a page: an <img> of the URI
    return {
        "user": p.user,
        "secret": secret,
        "uri": uri,
        "qr": qr,
        "next": "confirm with a code from the app: /auth/mfa/confirm",
    }


@router.post("/auth/mfa/confirm")
def mfa_confirm(
    request: Request, body: CodeIn, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    """Turn the second factor on with a first code. The recovery codes are shown this once. A
    session that was restricted to enrolling ends: log in again with the code."""
    assert rt.vault is not None
    with transaction(request) as s:
        codes = mfa.confirm(s, svc.get_user(s, p.user), body.code, rt.vault)
        if getattr(request.state, "restricted", None):
            svc.revoke_token(s, request.state.token_id, owner=p.user)
    return {"user": p.user, "mfa": True, "recovery_codes": codes}


@router.post("/auth/mfa/disable")
def mfa_disable(
    request: Request, body: CodeIn, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> dict[str, Any]:
    """Turn your own second factor off (a current code or a recovery code proves it is you);
    refused where one is required."""
    assert rt.vault is not None
    with transaction(request) as s:
        u = svc.get_user(s, p.user)
        if mfa.required(s, u, rt.settings.require_mfa):
            raise Conflict(f"{p.user} must keep a second factor (required for platform roles, or by the server)")
        if not u.mfa_enabled:
            raise Conflict(f"{p.user} has no second factor to disable")
        failure: Unauthorized | None = None
        try:
            mfa.verify(s, u, body.code, rt.vault)
        except Unauthorized as err:
            failure = err
        else:
            mfa.disable(s, u)
        if failure is not None:  # counted like a wrong password, then refused (after the commit)
            svc.count_failure(u, _policy(rt))
            request.state.audit_status = 422
    if failure is not None:
        raise InvalidInput(failure.detail, field="code")
    return {"user": p.user, "mfa": False}


@router.delete("/users/{name}/mfa")
def reset_mfa(request: Request, name: str) -> dict[str, Any]:
    """A security administrator removes a user's second factor (a lost phone): every session of
    theirs ends, and the next login enrols again where one is required."""
    request.state.target = f"second factor of user {name}"
    with transaction(request) as s:
        u = svc.get_user(s, name)
        mfa.disable(s, u)
        svc.revoke_all(s, u)
    return {"user": name, "mfa": False}


# ------------------------------------------------------------------ tokens
@router.get("/tokens")
def list_tokens(
    user: str | None = Query(None, description="another user's tokens (security administrators)"),
    all_users: bool = Query(False, alias="all", description="every user's tokens (security administrators)"),
    p: Principal = Depends(principal),
    rt: Runtime = Depends(runtime),
) -> list[dict[str, Any]]:
    if (all_users or (user is not None and user != p.user)) and not p.platform_allows("token.admin"):
        raise Forbidden(f"{p.user} may list only their own tokens")
    with rt.db.session() as s, s.begin():
        return [token_out(t) for t in svc.list_tokens(s, None if all_users else (user or p.user))]


@router.post("/tokens", status_code=201)
def create_token(request: Request, body: TokenIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    """A new API token for yourself; its secret is shown once."""
    most = _policy(request.app.state.runtime).max_token_ttl
    if body.expires_in_days > most.days:
        raise InvalidInput(
            f"expires_in_days {body.expires_in_days:g} is longer than the {most.days} days this server allows "
            "(serve --token-max-days); every token expires",
            field="expires_in_days",
        )
    ttl = timedelta(days=body.expires_in_days)
    request.state.target = f"token {body.name} of {p.user}"
    with transaction(request) as s:
        secret, t = svc.issue_token(s, svc.get_user(s, p.user), body.name, ttl)
        return token_out(t, secret)


@router.delete("/tokens/{token_id}")
def revoke_token(request: Request, token_id: Id, p: Principal = Depends(principal)) -> dict[str, Any]:
    owner = None if p.platform_allows("token.admin") else p.user
    with transaction(request) as s:
        return token_out(svc.revoke_token(s, token_id, owner=owner))


# ------------------------------------------------------------------ users
@router.get("/users")
def list_users(rt: Runtime = Depends(runtime)) -> list[dict[str, Any]]:
    with rt.db.session() as s, s.begin():
        return [user_out(u) for u in svc.list_users(s)]


@router.post("/users", status_code=201)
@slow
def create_user(request: Request, body: UserIn) -> dict[str, Any]:
    request.state.target = f"user {body.name}"
    with transaction(request) as s:
        return user_out(svc.create_user(s, body.name, body.password, body.display_name), [])


@router.get("/users/{name}")
def get_user(name: str, p: Principal = Depends(principal), rt: Runtime = Depends(runtime)) -> dict[str, Any]:
    with rt.db.session() as s, s.begin():
        u = svc.get_user(s, name)
        return user_out(u, svc.list_grants(s, p.scope("user.read"), name))


@router.delete("/users/{name}")
def delete_user(request: Request, name: str) -> dict[str, Any]:
    with transaction(request) as s:
        svc.delete_user(s, name)
    return {"name": name, "outcome": "deleted"}


@router.put("/users/{name}/password")
@slow
def reset_password(request: Request, name: str, body: PasswordIn) -> dict[str, Any]:
    with transaction(request) as s:
        return user_out(svc.set_password(s, name, body.password))


@router.post("/users/{name}/lock")
def lock_user(request: Request, name: str) -> dict[str, Any]:
    with transaction(request) as s:
        return user_out(svc.set_locked(s, name, True))


@router.post("/users/{name}/unlock")
def unlock_user(request: Request, name: str) -> dict[str, Any]:
    with transaction(request) as s:
        return user_out(svc.set_locked(s, name, False))


@router.delete("/users/{name}/oidc")
def unlink_user_oidc(request: Request, name: str) -> dict[str, Any]:
    """Forget the single sign-on identity linked to the user: a wrong link is mended this way."""
    with transaction(request) as s:
        return user_out(svc.unlink_oidc(s, name))


# ------------------------------------------------------------------ grants
@router.get("/grants")
def list_grants(
    user: str | None = Query(None), p: Principal = Depends(principal), rt: Runtime = Depends(runtime)
) -> list[dict[str, Any]]:
    """Role grants: all of them for security administrators, those in their subtree for VDC admins."""
    with rt.db.session() as s, s.begin():
        return [grant_out(g) for g in svc.list_grants(s, p.scope("grant.read"), user)]


@router.post("/grants", status_code=201)
def add_grant(request: Request, body: GrantIn, p: Principal = Depends(principal)) -> dict[str, Any]:
    request.state.target = f"user {body.user}: {body.role}" + (f"@{body.vdc}" if body.vdc else "")
    scope = p.scope("grant.write")
    if body.role in PLATFORM_ROLES and not scope.everywhere:
        raise Forbidden(f"{p.user} ({p.label}) may not grant platform roles", field="role")
    if body.vdc is not None:
        require(p, "grant.write", body.vdc, visible="vdc.read")
    with transaction(request) as s:
        return grant_out(svc.grant(s, body.user, body.role, body.vdc, p.user))


@router.delete("/grants/{grant_id}")
def remove_grant(request: Request, grant_id: Id, p: Principal = Depends(principal)) -> dict[str, Any]:
    with transaction(request) as s:
        g = svc.revoke_grant(s, grant_id, p.scope("grant.write"))
        return grant_out(g)
