"""Users, passwords (argon2id), API tokens, role grants, login with lock-out, and bootstrap.

Tokens are random (`szt_` + 256 bits) and stored only as SHA-256 hashes: a token is a
high-entropy secret, so a fast hash is the right one; passwords are low-entropy and get
argon2id (argon2-cffi's defaults, RFC 9106's second recommended setting).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection, bindparam, select, update
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, Forbidden, InvalidInput, Locked, NotFound, Unauthorized
from shanzhi.domain.rbac import PLATFORM_ROLES, ROLES, VDC_ROLES, Principal, Scope
from shanzhi.files import write_private
from shanzhi.sealing import Vault
from shanzhi.services import mfa
from shanzhi.services.vdcs import get_vdc, scope_filter
from shanzhi.store.tables import Grant, LoginFailure, Token, User, Vdc, utcnow

USER_RE = r"^[a-z][a-z0-9._-]{1,63}$"
MIN_PASSWORD = 10
MIN_KINDS = 3
_hasher = PasswordHasher()
# Bootstrap identities: one per separated platform role, each with a token file in the data dir.
BOOTSTRAP = (
    ("admin", "System administrator", "system-admin", "admin.token"),
    ("security", "Security administrator", "security-admin", "security.token"),
    ("auditor", "Audit administrator", "audit-admin", "audit.token"),
)


@dataclass(frozen=True)
class Policy:
    """Login and token policy (from Settings)."""

    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)
    session_ttl: timedelta = timedelta(hours=12)
    session_idle: timedelta | None = timedelta(minutes=30)  # None: sessions never end for idleness
    password_max_age: timedelta | None = timedelta(days=90)  # None: passwords never expire
    max_token_ttl: timedelta = timedelta(days=365)
    require_mfa: bool = False  # everyone needs a second factor (platform roles always do)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_password(password: str, user: str) -> None:
    """Length, at least MIN_KINDS kinds of character, and not the user's name (MLPS 2.0's
    complexity requirement for level 3)."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"the password is too short: use at least {MIN_PASSWORD} characters", field="password")
    kinds = [
        any(c.islower() for c in password),
        any(c.isupper() for c in password),
        any(c.isdigit() for c in password),
        any(not c.isalnum() for c in password),
    ]
    if sum(kinds) < MIN_KINDS:
        raise InvalidInput(
            f"the password needs at least {MIN_KINDS} of: lowercase letters, uppercase letters, digits, "
            f"symbols (it has {sum(kinds)})",
            field="password",
        )
    if user.lower() in password.lower():
        raise InvalidInput("the password may not contain the user name", field="password")


def get_user(s: Session, name: str) -> User:
    u = s.scalar(select(User).where(User.name == name))
    if u is None:
        raise NotFound(f"user {name} does not exist; see 'shanzhi user list'", field="name")
    return u


def create_user(s: Session, name: str, password: str | None, display_name: str = "") -> User:
    if not re.match(USER_RE, name):
        raise InvalidInput(
            f"invalid user name {name!r}: 2-64 lowercase letters, digits, '.', '_' or '-', starting with a letter",
            field="name",
        )
    if s.scalar(select(User.id).where(User.name == name)) is not None:
        raise Conflict(f"user {name} already exists", field="name")
    if password is not None:
        _check_password(password, name)
    u = User(
        name=name,
        display_name=display_name,
        password_hash=_hasher.hash(password) if password else None,
        password_changed_at=utcnow() if password else None,
    )
    s.add(u)
    s.flush()
    return u


def check_password(u: User, password: str) -> None:
    """Raise Unauthorized unless `password` is `u`'s."""
    try:
        _hasher.verify(u.password_hash or "", password)
    except (VerificationError, InvalidHashError):
        raise Unauthorized("the current password is wrong", field="old_password") from None


def set_password(s: Session, name: str, password: str, *, keep_token: int | None = None) -> User:
    """Set a password. Every session and API token of the user ends, except `keep_token` (the
    caller's own session when users change their own password)."""
    _check_password(password, name)
    u = get_user(s, name)
    u.password_hash = _hasher.hash(password)
    u.password_changed_at = utcnow()
    u.failed_logins, u.locked_until = 0, None
    revoke_all(s, u, keep=keep_token)
    return u


def set_locked(s: Session, name: str, locked: bool) -> User:
    """Lock a user out (every session and token of theirs ends) or unlock them (and clear failures)."""
    u = get_user(s, name)
    u.disabled = locked
    if locked:
        revoke_all(s, u)
    else:
        u.failed_logins, u.locked_until = 0, None
    return u


def revoke_all(s: Session, u: User, *, keep: int | None = None) -> int:
    """End every live session and token of `u` (but `keep`); how many ended."""
    q = update(Token).where(Token.user_id == u.id, Token.revoked_at.is_(None))
    if keep is not None:
        q = q.where(Token.id != keep)
    return int(s.execute(q.values(revoked_at=utcnow())).rowcount)  # type: ignore[attr-defined]


def unlink_oidc(s: Session, name: str) -> User:
    """Forget the single sign-on identity linked to a user (the next login links again by name)."""
    u = get_user(s, name)
    u.oidc_issuer = u.oidc_subject = None
    return u


def list_users(s: Session) -> list[User]:
    return list(s.scalars(select(User).order_by(User.name)))


def delete_user(s: Session, name: str) -> None:
    u = get_user(s, name)
    if name in {b[0] for b in BOOTSTRAP}:
        raise Conflict(f"user {name} is a bootstrap administrator and cannot be deleted; lock it instead")
    s.delete(u)


# ------------------------------------------------------------------ tokens
def issue_token(
    s: Session, user: User, name: str, ttl: timedelta | None, *, session: bool = False, restricted: str | None = None
) -> tuple[str, Token]:
    """A new token for `user`; a `session` token (from a login) also ends after a while idle;
    a `restricted` one may do only that (see `shanzhi.services.mfa`)."""
    secret = "szt_" + secrets.token_urlsafe(32)
    t = Token(
        name=name[:128],
        session=session,
        restricted=restricted,
        token_hash=token_hash(secret),
        user_id=user.id,
        expires_at=utcnow() + ttl if ttl is not None else None,
    )
    s.add(t)
    s.flush()
    return secret, t


def list_tokens(s: Session, user: str | None) -> list[Token]:
    q = select(Token).join(User).order_by(User.name, Token.id)
    if user is not None:
        q = q.where(User.name == user)
    return list(s.scalars(q))


def revoke_token(s: Session, token_id: int, *, owner: str | None) -> Token:
    """Revoke token `token_id`; `owner` limits it to that user's tokens (others are 404)."""
    t = s.get(Token, token_id)
    if t is None or (owner is not None and t.user.name != owner):
        raise NotFound(f"token {token_id} does not exist; see 'shanzhi token list'", field="id")
    if t.revoked_at is None:
        t.revoked_at = utcnow()
    return t


def touch_token(s: Session, token_id: int) -> None:
    t = s.get(Token, token_id)
    if t is not None:
        t.last_used_at = utcnow()


# ------------------------------------------------------------------ login
def login(
    s: Session,
    name: str,
    password: str,
    source: str,
    policy: Policy,
    new_password: str | None = None,
    *,
    otp: str | None = None,
    vault: Vault | None = None,
) -> tuple[str, Token]:
    """Check a password; after `max_failures` wrong ones in a row the user is locked for a while.
    Unknown users and wrong passwords get the same answer. A password older than
    `password_max_age` must be replaced: the login then needs `new_password`, which it sets."""
    now = utcnow()
    u = s.scalar(select(User).where(User.name == name))
    bad = Unauthorized("wrong user name or password", field="password")
    if u is None or u.password_hash is None:
        _phantom_failure(s, name, now, policy)  # counted and locked like a user: answers never tell
        raise bad
    if u.locked_until is not None and u.locked_until > now:
        raise _locked_out(name, u.failed_logins, u.locked_until)
    try:
        _hasher.verify(u.password_hash, password)
    except (VerificationError, InvalidHashError):
        count_failure(u, policy)
        raise bad from None
    if u.disabled:  # said only to who knows the password: a stranger learns nothing
        raise Locked(f"user {name} is locked by an administrator; ask a security administrator to unlock it")
    restricted = second_factor(s, u, otp, vault, policy)
    age = policy.password_max_age
    if new_password is not None:
        if new_password == password:
            raise InvalidInput("the new password must differ from the current one", field="new_password")
        _check_password(new_password, name)
        u.password_hash, u.password_changed_at = _hasher.hash(new_password), now
    elif age is not None and (u.password_changed_at or u.created_at) + age <= now:
        raise Forbidden(
            f"the password of {name} is more than {age.days} days old and has expired: log in with a new one "
            f"('shanzhi login -u {name}' asks for it, or give --new-password)",
            field="password",
        )
    elif _hasher.check_needs_rehash(u.password_hash):
        u.password_hash = _hasher.hash(password)
    u.failed_logins, u.locked_until, u.last_login_at = 0, None, now
    return issue_token(s, u, f"login from {source}"[:128], policy.session_ttl, session=True, restricted=restricted)


def count_failure(u: User, policy: Policy) -> None:
    """A wrong password or second-factor code: enough in a row lock the user out for a while."""
    u.failed_logins += 1
    if u.failed_logins >= policy.max_failures:
        u.locked_until = utcnow() + policy.lockout


def second_factor(s: Session, u: User, otp: str | None, vault: Vault | None, policy: Policy) -> str | None:
    """After a good password (or single sign-on): check the second factor the user has. A wrong
    code counts toward the lock-out. Returns the restriction of the session to issue: enrolment
    only, when a second factor is required and the user has none yet."""
    if u.mfa_enabled:
        if otp is None or vault is None:
            raise mfa.MfaRequired(u.name)
        try:
            mfa.verify(s, u, otp, vault)
        except Unauthorized:
            count_failure(u, policy)
            raise
        return None
    return mfa.ENROLL_ONLY if mfa.required(s, u, policy.require_mfa) else None


def _locked_out(name: str, failures: int, until: datetime) -> Locked:
    return Locked(
        f"user {name} is locked after {failures} failed logins until "
        f"{until:%Y-%m-%d %H:%M:%S} UTC; wait, or ask a security administrator to unlock it"
    )


def _phantom_failure(s: Session, name: str, now: datetime, policy: Policy) -> None:
    """A failed login for a name that is no user: the same work, count and lock-out as for a user."""
    _hasher.hash("timing: as much work as checking a real password")
    row = s.get(LoginFailure, name[:128])
    if row is None:
        row = LoginFailure(name=name[:128], failures=0, last_at=now)
        s.add(row)
    if row.locked_until is not None and row.locked_until > now:
        raise _locked_out(name, row.failures, row.locked_until)
    row.failures += 1
    row.last_at = now
    if row.failures >= policy.max_failures:
        row.locked_until = now + policy.lockout
    s.flush()


@dataclass(frozen=True)
class Caller:
    """Who a bearer token speaks for, as the API needs it for the rest of the request."""

    principal: Principal
    token_id: int
    last_used: datetime | None
    restricted: str | None


#: the token, its user and every grant of theirs (a row per grant): one round trip per request
_TOKEN_ROWS = (
    select(
        Token.id, Token.revoked_at, Token.expires_at, Token.session, Token.last_used_at, Token.created_at,
        Token.restricted, Token.user_id, User.name, User.disabled, Grant.role, Vdc.path,
    )
    .join(User, User.id == Token.user_id)
    .outerjoin(Grant, Grant.user_id == Token.user_id)
    .outerjoin(Vdc, Grant.vdc_id == Vdc.id)
    .where(Token.token_hash == bindparam("h"))
)  # fmt: skip


def caller(conn: Connection, secret: str, idle: timedelta | None = None) -> Caller:
    """The caller behind a bearer token, or Unauthorized saying why. A session token unused for
    `idle` has ended (its last use is recorded to within 5 minutes). One plain query and no ORM
    objects: this runs on every API request."""
    rows = conn.execute(_TOKEN_ROWS, {"h": token_hash(secret)}).all()
    t = rows[0] if rows else None
    if t is None:
        raise Unauthorized("invalid token: log in again with 'shanzhi login'")
    now = utcnow()
    expires, last, created = (_aware(x) for x in (t.expires_at, t.last_used_at, t.created_at))
    if t.revoked_at is not None:
        raise Unauthorized("this token was revoked: log in again with 'shanzhi login'")
    if expires is not None and expires <= now:
        raise Unauthorized(f"this token expired at {expires:%Y-%m-%d %H:%M} UTC: log in again")
    if t.session and idle is not None and (last or created or now) + idle <= now:
        minutes = int(idle.total_seconds() // 60)
        raise Unauthorized(f"this session ended after {minutes} minutes without use: log in again")
    if t.disabled:
        raise Unauthorized(f"user {t.name} is locked; ask a security administrator")
    grants = [(r.role, r.path) for r in rows if r.role is not None]
    return Caller(Principal.of(t.name, grants), t.id, last, t.restricted)


def _aware(value: datetime | None) -> datetime | None:
    """Core queries bypass the ORM's UTC type on SQLite: times come back naive, in UTC."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


# ------------------------------------------------------------------ grants
def check_role(role: str, vdc: str | None) -> None:
    """A known role, with a VDC exactly when it is a VDC role (grants and single sign-on group maps)."""
    if role not in ROLES:
        raise InvalidInput(f"unknown role {role!r}; use one of {', '.join(ROLES)}", field="role")
    if role in PLATFORM_ROLES and vdc is not None:
        raise InvalidInput(f"{role} is a platform role: give it without a VDC", field="vdc")
    if role in VDC_ROLES and vdc is None:
        raise InvalidInput(f"{role} is a VDC role: name the VDC it holds on", field="vdc")


def grant(s: Session, user: str, role: str, vdc: str | None, by: str) -> Grant:
    check_role(role, vdc)
    u = get_user(s, user)
    v = get_vdc(s, vdc) if vdc is not None else None
    held = {(r, vid is None) for r, vid in s.execute(select(Grant.role, Grant.vdc_id).where(Grant.user_id == u.id))}
    platform_held = sorted({r for r, platform in held if platform})
    if role in PLATFORM_ROLES and set(platform_held) - {role}:
        raise Conflict(
            f"user {user} already holds {', '.join(platform_held)}: platform roles are separated "
            "(system, security and audit administration never go to one person)",
            field="role",
        )
    if role in PLATFORM_ROLES and any(not platform for _, platform in held):
        raise Conflict(
            f"user {user} holds VDC roles; a platform administrator ({role}) may hold none, or the three-way "
            "separation could be sidestepped through a department: remove their VDC grants first",
            field="role",
        )
    if role in VDC_ROLES and platform_held:
        raise Conflict(
            f"user {user} is a platform administrator ({', '.join(platform_held)}) and may hold no VDC role: "
            "administrators act through their own role only; use a separate account for department work",
            field="role",
        )
    q = select(Grant).where(Grant.user_id == u.id, Grant.role == role)
    q = q.where(Grant.vdc_id == v.id) if v is not None else q.where(Grant.vdc_id.is_(None))
    existing = s.scalar(q)
    if existing is not None:
        return existing
    g = Grant(user_id=u.id, role=role, vdc_id=v.id if v else None, granted_by=by)
    s.add(g)
    s.flush()
    s.refresh(g)
    return g


def list_grants(s: Session, scope: Scope, user: str | None = None) -> list[Grant]:
    q = select(Grant).join(User).outerjoin(Vdc, Grant.vdc_id == Vdc.id).order_by(User.name, Grant.id)
    if not scope.everywhere:
        q = q.where(scope_filter(scope))
    if user is not None:
        q = q.where(User.name == user)
    return list(s.scalars(q))


def revoke_grant(s: Session, grant_id: int, scope: Scope) -> Grant:
    g = s.get(Grant, grant_id)
    if g is None or not scope.contains(g.vdc.path if g.vdc else None):
        raise NotFound(f"grant {grant_id} does not exist; see 'shanzhi grant list'", field="id")
    s.delete(g)
    return g


# ------------------------------------------------------------------ bootstrap
def ensure_bootstrap(s: Session, data_dir: Path, token_ttl: timedelta = timedelta(days=365)) -> None:
    """Make sure the three separated administrators exist, each with a valid token in a 0600 file
    in the data dir (admin.token, security.token, audit.token). Idempotent."""
    for name, display, role, filename in BOOTSTRAP:
        u = s.scalar(select(User).where(User.name == name))
        if u is None:
            u = create_user(s, name, None, display)
        if not s.scalar(select(Grant.id).where(Grant.user_id == u.id, Grant.role == role)):
            s.add(Grant(user_id=u.id, role=role, granted_by="bootstrap"))
        path = data_dir / filename
        if path.exists():
            secret = path.read_text().strip()
            t = s.scalar(select(Token).where(Token.token_hash == token_hash(secret)))
            fresh = t is not None and t.expires_at is not None and t.expires_at - utcnow() > token_ttl / 12
            if t is not None and t.user_id == u.id and t.revoked_at is None and fresh:
                os.chmod(path, 0o600)
                continue
            if t is not None and t.revoked_at is None:
                t.revoked_at = utcnow()  # replaced a month before it would expire
        secret, _ = issue_token(s, u, f"bootstrap {filename}", token_ttl)
        write_private(path, secret + "\n")
    s.flush()
