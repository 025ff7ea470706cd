"""The second factor: TOTP (RFC 6238, through pyotp) and one-time recovery codes.

MLPS 2.0 level 3 asks administrators for two kinds of authentication. Here a login that
passed its password (or its single sign-on) still owes the second factor when the user has
enrolled one, and must enrol one first when it is required (the three platform roles always,
everyone with `serve --require-mfa`): such a login gets a session restricted to enrolling.

- The TOTP secret is stored encrypted (Fernet, with `mfa.key` in the data directory, 0600):
  a copy of the database alone does not give anyone the codes.
- A code's time step is accepted once: a replayed code, even within its 30 s, is refused.
- Wrong codes count toward the lock-out like wrong passwords.
- Ten recovery codes are shown once at enrolment and kept as SHA-256 hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import time

import pyotp
from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, InvalidInput, Unauthorized
from shanzhi.domain.rbac import PLATFORM_ROLES
from shanzhi.sealing import Vault
from shanzhi.store.tables import Grant, RecoveryCode, User, utcnow

ISSUER = "Shanzhi"
RECOVERY_CODES = 10
ENROLL_ONLY = "mfa-enroll"  # a session that may only enrol its second factor


class MfaRequired(Unauthorized):
    """The password was right; the second factor is still owed."""

    title = "Second factor required"

    def __init__(self, user: str) -> None:
        super().__init__(
            f"{user} has a second factor: give the 6-digit code from the authenticator app "
            "(or a recovery code) as 'otp'",
            field="otp",
        )


def required(s: Session, u: User, everyone: bool) -> bool:
    """Must `u` have a second factor? (Platform roles always; everyone when the server says so.)"""
    if everyone:
        return True
    roles = s.scalars(select(Grant.role).where(Grant.user_id == u.id, Grant.vdc_id.is_(None)))
    return any(r in PLATFORM_ROLES for r in roles)


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().replace("-", "").lower().encode()).hexdigest()


def start(s: Session, u: User, vault: Vault) -> tuple[str, str]:
    """Begin (or begin again) enrolment: a new secret, pending until a code confirms it."""
    if u.mfa_enabled:
        raise Conflict(f"{u.name} already has a second factor; disable it first ('shanzhi mfa disable')")
    secret = pyotp.random_base32()
    u.mfa_secret = vault.seal(secret)
    return secret, pyotp.TOTP(secret).provisioning_uri(name=u.name, issuer_name=ISSUER)


def confirm(s: Session, u: User, code: str, vault: Vault) -> list[str]:
    """Turn the pending secret on with a first good code; the recovery codes, shown once."""
    if u.mfa_enabled:
        raise Conflict(f"{u.name} already has a second factor")
    if u.mfa_secret is None:
        raise Conflict("no enrolment in progress: start one with 'shanzhi mfa enroll'")
    step = _totp_step(vault.open(u.mfa_secret, "this user's second factor"), code, after=0)
    if step is None:
        raise InvalidInput("that code does not match: check the authenticator app's clock and try again", field="code")
    u.mfa_enabled, u.mfa_last_step = True, step
    for old in s.scalars(select(RecoveryCode).where(RecoveryCode.user_id == u.id)):
        s.delete(old)
    codes = [f"{secrets.token_hex(3)}-{secrets.token_hex(3)}" for _ in range(RECOVERY_CODES)]
    for c in codes:
        s.add(RecoveryCode(user_id=u.id, code_hash=_hash(c)))
    return codes


def disable(s: Session, u: User) -> None:
    u.mfa_enabled, u.mfa_secret, u.mfa_last_step = False, None, 0
    for old in s.scalars(select(RecoveryCode).where(RecoveryCode.user_id == u.id)):
        s.delete(old)


def verify(s: Session, u: User, code: str, vault: Vault) -> str:
    """Check a second-factor code (TOTP, never twice; or an unused recovery code). Returns
    which kind passed; raises Unauthorized otherwise (the caller counts the failure)."""
    if not u.mfa_enabled or u.mfa_secret is None:
        raise Unauthorized(f"{u.name} has no second factor", field="otp")
    code = code.strip()
    if code.isdigit():
        step = _totp_step(vault.open(u.mfa_secret, "this user's second factor"), code, after=u.mfa_last_step)
        if step is not None:
            u.mfa_last_step = step
            return "totp"
        raise Unauthorized("wrong or already used second-factor code", field="otp")
    row = s.scalar(
        select(RecoveryCode).where(
            RecoveryCode.user_id == u.id, RecoveryCode.code_hash == _hash(code), RecoveryCode.used_at.is_(None)
        )
    )
    if row is None:
        raise Unauthorized("wrong or already used second-factor code", field="otp")
    row.used_at = utcnow()
    return "recovery"


def _totp_step(secret: str, code: str, after: int, now: float | None = None) -> int | None:
    """The time step (30 s) the code belongs to, within one step of now and later than `after`."""
    totp = pyotp.TOTP(secret)
    t = int((now if now is not None else time.time()) // totp.interval)
    for step in (t - 1, t, t + 1):
        if step > after and secrets.compare_digest(totp.generate_otp(step), code.strip()):
            return step
    return None
