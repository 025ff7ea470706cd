"""Single sign-on through an OpenID Connect provider: the authorization code flow with PKCE.

Shanzhi is the relying party. authlib speaks OAuth 2.0 to the provider (the authorization URL
with its PKCE challenge, the code exchange with client authentication); joserfc, authlib's JOSE
library, checks the ID token: its signature against the provider's published keys (asymmetric
algorithms only), issuer, audience, authorized party, expiry and nonce. Claims the ID token
leaves out (many providers put the profile only in userinfo) come from the userinfo endpoint,
whose subject must be the same.

A login in progress lives in the database (`OidcFlow`), not in a cookie, so that any replica
finishes what another began. A login reaches its client without a token ever appearing in a
URL: the client begins with the SHA-256 of a secret of its own (its verifier); the callback
leaves a one-time handoff code, sent to the client's loopback address or shown in the browser
to paste; the client trades code and verifier for a session token, once, within minutes.

Users are matched by issuer and subject. A subject seen for the first time is linked to the
local user its username claim names (a security administrator creates users ahead and grants
them roles), never to a bootstrap administrator; with `auto_create` an unknown name becomes a
new user with no roles, which default deny leaves seeing nothing. Roles can also come from the
provider's groups (see services.oidc_groups), brought up to date at every login.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc6749.errors import OAuth2Error
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Forbidden, IdentityProviderError, InvalidInput, Locked, Unauthorized
from shanzhi.sealing import Vault
from shanzhi.services.identity import (
    BOOTSTRAP,
    USER_RE,
    Policy,
    create_user,
    issue_token,
    second_factor,
    token_hash,
)
from shanzhi.services.mfa import MfaRequired
from shanzhi.services.oidc_groups import groups_of, sync_grants
from shanzhi.store.tables import OidcFlow, Token, User, utcnow

log = logging.getLogger("shanzhi.oidc")
FLOW_TTL = timedelta(minutes=10)  # from start to the provider's callback
HANDOFF_TTL = timedelta(minutes=2)  # from the callback to the client's exchange
ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
CLOCK_SKEW = 60  # seconds of leeway on exp/iat


def challenge_of(verifier: str) -> str:
    """The S256 challenge of a verifier (RFC 7636): base64url(sha256(verifier)), unpadded."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_uri: str
    scopes: str = "openid profile email"
    username_claim: str = "preferred_username"
    groups_claim: str = "groups"
    auto_create: bool = False
    name: str = "single sign-on"
    mfa_amr: tuple[str, ...] = ()  # `amr` values (RFC 8176: "mfa", "otp", "hwk"...) that are a second factor


@dataclass
class RelyingParty:
    """Speaks to one provider. Thread-safe: discovery and keys are cached under a lock; the
    discovery document is fetched again after `cache_seconds`, the keys whenever a token names
    a key not yet seen (the provider rotated its keys). Each code exchange gets its own OAuth
    client (authlib's keeps the last token on the instance, so one shared client could hand one
    user's tokens to another's login); they share one TLS context, built once from the system's
    trust store (where a government CA is installed; `SSL_CERT_FILE` points elsewhere), which
    makes a new client cost under a millisecond instead of tens."""

    config: OidcConfig
    timeout: float = 10.0
    cache_seconds: float = 3600.0
    _http: httpx.Client = field(init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _meta: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _meta_at: float = field(default=0.0, init=False, repr=False)
    _keys: KeySet | None = field(default=None, init=False, repr=False)
    _tls: ssl.SSLContext = field(default_factory=ssl.create_default_context, init=False, repr=False)

    def __post_init__(self) -> None:
        self._http = httpx.Client(timeout=self.timeout, verify=self._tls)

    def close(self) -> None:
        self._http.close()

    # -------------------------------------------------------------- provider documents
    def _get_json(self, url: str, what: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
        try:
            r = self._http.get(url, headers=headers)
        except httpx.HTTPError as e:
            raise IdentityProviderError(f"the OIDC provider's {what} at {url} did not answer: {e}") from None
        if r.status_code != 200:
            raise IdentityProviderError(f"the OIDC provider's {what} at {url} answered HTTP {r.status_code}")
        try:
            data = r.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise IdentityProviderError(f"the OIDC provider's {what} at {url} is not a JSON object")
        return data

    def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (OpenID Connect Discovery 1.0), checked and cached."""
        with self._lock:
            if self._meta is not None and time.monotonic() - self._meta_at < self.cache_seconds:
                return self._meta
            issuer = self.config.issuer
            meta = self._get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", "discovery document")
            if meta.get("issuer") != issuer:  # Discovery 4.3: must be exactly the configured issuer
                raise IdentityProviderError(
                    f"the discovery document names issuer {meta.get('issuer')!r}, not {issuer!r} as configured"
                )
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(meta.get(key), str):
                    raise IdentityProviderError(f"the discovery document of {issuer} has no {key}")
            self._meta, self._meta_at = meta, time.monotonic()
            return meta

    def _keyset(self, refresh: bool) -> KeySet:
        meta = self.metadata()
        with self._lock:
            if self._keys is None or refresh:
                data = self._get_json(meta["jwks_uri"], "signing keys")
                try:
                    self._keys = KeySet.import_key_set(data)  # type: ignore[arg-type]
                except (JoseError, ValueError, KeyError, TypeError) as e:
                    raise IdentityProviderError(f"the OIDC provider's signing keys do not parse: {e}") from None
            return self._keys

    def _oauth(self) -> OAuth2Client:
        methods = self.metadata().get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        method = "client_secret_basic" if "client_secret_basic" in methods else "client_secret_post"
        cfg = self.config
        return OAuth2Client(
            client_id=cfg.client_id,
            client_secret=cfg.client_secret,
            scope=cfg.scopes,
            redirect_uri=cfg.redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method=method,
            timeout=self.timeout,
            verify=self._tls,
        )

    # -------------------------------------------------------------- the flow
    def authorization_url(self, state: str, nonce: str, verifier: str) -> str:
        endpoint = self.metadata()["authorization_endpoint"]
        with self._oauth() as c:
            url, _ = c.create_authorization_url(endpoint, state=state, code_verifier=verifier, nonce=nonce)
        return str(url)

    def claims(self, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        """Trade an authorization code for tokens; the checked ID token's claims, with userinfo's."""
        meta = self.metadata()
        with self._oauth() as c:
            try:
                tokens = c.fetch_token(meta["token_endpoint"], code=code, code_verifier=verifier)
            except OAuth2Error as e:
                raise Unauthorized(
                    f"the OIDC provider refused the login code ({e.error}: {e.description or 'no reason given'}); "
                    "log in again"
                ) from None
            except (httpx.HTTPError, ValueError) as e:
                raise IdentityProviderError(f"the OIDC provider's token endpoint failed: {e}") from None
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise IdentityProviderError("the OIDC provider answered without an ID token (is 'openid' in the scopes?)")
        claims = self.verify_id_token(id_token, nonce)
        userinfo = meta.get("userinfo_endpoint")
        access = tokens.get("access_token")
        wanted = (self.config.username_claim, self.config.groups_claim)
        if any(c not in claims for c in wanted) and isinstance(userinfo, str) and isinstance(access, str):
            info = self._get_json(userinfo, "userinfo", {"Authorization": f"Bearer {access}"})
            if info.get("sub") != claims["sub"]:  # Core 5.3.2: must match the ID token's subject
                raise IdentityProviderError("the userinfo answer is about another subject than the ID token")
            claims = info | claims
        return claims

    def verify_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """Check an ID token (OpenID Connect Core 3.1.3.7) and return its claims."""
        cfg = self.config
        supported = self.metadata().get("id_token_signing_alg_values_supported") or ["RS256"]
        algorithms = [a for a in supported if a in ASYMMETRIC]
        if not algorithms:
            raise IdentityProviderError(
                f"the OIDC provider signs ID tokens only with {supported}; Shanzhi needs a public-key algorithm"
            )
        try:
            try:
                token = jwt.decode(id_token, self._keyset(False), algorithms=algorithms)
            except InvalidKeyIdError:  # no key with the token's kid: the provider rotated its keys
                token = jwt.decode(id_token, self._keyset(True), algorithms=algorithms)
            jwt.JWTClaimsRegistry(
                leeway=CLOCK_SKEW,
                iss={"essential": True, "value": cfg.issuer},
                aud={"essential": True, "value": cfg.client_id},
                sub={"essential": True},
                exp={"essential": True},
                iat={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(token.claims)
        except (JoseError, ValueError) as e:
            raise Unauthorized(f"the ID token from {cfg.issuer} does not verify ({e}); log in again") from None
        claims = dict(token.claims)
        aud = claims["aud"]
        if isinstance(aud, list) and len(aud) > 1 and claims.get("azp") != cfg.client_id:
            raise Unauthorized("the ID token names several audiences but another authorized party; log in again")
        return claims


# ------------------------------------------------------------------ flows (database)
CALLBACK_PATH = "/api/v1/auth/oidc/callback"


def _loopback(return_to: str | None, console: str | None = None) -> str | None:
    """Where the handoff code may go: the CLI's loopback listener, or this server's own console."""
    if return_to is None or return_to == console:
        return return_to
    u = urlsplit(return_to)
    if u.scheme != "http" or u.hostname not in LOOPBACK_HOSTS or u.port is None or u.query or u.fragment:
        raise InvalidInput(
            "return_to must be a loopback address with a port and no query, like http://127.0.0.1:PORT/callback "
            "(the CLI listens there), or this server's console; leave it out to have the code shown in the browser",
            field="return_to",
        )
    return return_to


def begin(s: Session, rp: RelyingParty, challenge: str, return_to: str | None, source: str) -> tuple[str, OidcFlow]:
    """Start a login for a client that holds the verifier of `challenge`: the provider's URL."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{43}", challenge):
        raise InvalidInput(
            "challenge must be base64url(sha256(verifier)) without padding: 43 characters", field="challenge"
        )
    console = rp.config.redirect_uri.removesuffix(CALLBACK_PATH) + "/"  # the web console, served at /
    target = _loopback(return_to, console)
    state, nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    url = rp.authorization_url(state, nonce, verifier)
    flow = OidcFlow(
        state=state,
        nonce=nonce,
        code_verifier=verifier,
        client_challenge=challenge,
        return_to=target,
        source=source[:64],
        expires_at=utcnow() + FLOW_TTL,
    )
    s.add(flow)
    s.flush()
    return url, flow


def pending(s: Session, state: str) -> OidcFlow:
    """The login in progress that `state` names, if the provider may still finish it."""
    flow = s.scalar(select(OidcFlow).where(OidcFlow.state == state))
    if flow is None or flow.handoff_hash is not None or flow.expires_at <= utcnow():
        raise Unauthorized(
            "this login is unknown, expired or already finished; start again with 'shanzhi login --oidc'"
        )
    return flow


def discard(s: Session, state: str) -> None:
    """Forget a login that failed at the provider or here."""
    s.execute(delete(OidcFlow).where(OidcFlow.state == state))


def finish(s: Session, cfg: OidcConfig, flow: OidcFlow, claims: dict[str, Any]) -> tuple[str, User]:
    """The provider vouched for `claims` (see `RelyingParty.claims`): find the user, leave a handoff."""
    user = link_user(s, cfg, claims)
    if user.disabled:
        raise Locked(f"user {user.name} is locked by an administrator; ask a security administrator to unlock it")
    for change in sync_grants(s, user, groups_of(claims, cfg.groups_claim)):
        log.info("single sign-on: %s %s", user.name, change)
    handoff = secrets.token_urlsafe(32)
    flow.handoff_hash = token_hash(handoff)
    flow.user_id = user.id
    amr = claims.get("amr")
    flow.mfa_done = isinstance(amr, list) and bool({a for a in amr if isinstance(a, str)} & set(cfg.mfa_amr))
    flow.expires_at = utcnow() + HANDOFF_TTL
    return handoff, user


def redeem(
    s: Session, handoff: str, verifier: str, policy: Policy, otp: str | None = None, vault: Vault | None = None
) -> tuple[str, Token]:
    """Trade a handoff code and the client's verifier for a session token, once. The second
    factor is owed as for a password login, unless the provider said (`amr`) it asked for one;
    a login only missing its code keeps the handoff, so the client can send it."""
    flow = s.scalar(select(OidcFlow).where(OidcFlow.handoff_hash == token_hash(handoff)))
    if flow is None or flow.user_id is None or flow.expires_at <= utcnow():
        raise Unauthorized("this login code is unknown, used or expired; log in again with 'shanzhi login --oidc'")
    if not secrets.compare_digest(challenge_of(verifier), flow.client_challenge):
        s.delete(flow)  # one try: a wrong verifier burns the code
        raise Unauthorized("this login code was issued to another client (the verifier does not match); log in again")
    user = s.get(User, flow.user_id)
    if user is None or user.disabled:
        s.delete(flow)
        raise Unauthorized("this user was locked or removed during the login; ask a security administrator")
    restricted = None
    if not flow.mfa_done:
        try:
            restricted = second_factor(s, user, otp, vault, policy)
        except MfaRequired:
            raise  # the handoff stays: the client asks for the code and sends it with the same one
        except Unauthorized:
            s.delete(flow)
            raise
    s.delete(flow)
    user.last_login_at = utcnow()
    return issue_token(
        s, user, f"oidc login from {flow.source}"[:128], policy.session_ttl, session=True, restricted=restricted
    )


def link_user(s: Session, cfg: OidcConfig, claims: dict[str, Any]) -> User:
    """The Shanzhi user for a verified identity: linked before, linked now by name, or created."""
    subject = str(claims["sub"])
    u = s.scalar(select(User).where(User.oidc_issuer == cfg.issuer, User.oidc_subject == subject))
    display = claims.get("name") if isinstance(claims.get("name"), str) else None
    if u is None:
        u = _link_by_name(s, cfg, claims, subject)
    if display:
        u.display_name = display[:128]
    return u


def _link_by_name(s: Session, cfg: OidcConfig, claims: dict[str, Any], subject: str) -> User:
    claim = cfg.username_claim
    raw = claims.get(claim)
    if not isinstance(raw, str) or not raw:
        raise Forbidden(
            f"the OIDC provider sent no {claim!r} claim for subject {subject}; "
            "configure --oidc-username-claim with a claim it sends"
        )
    name = raw.strip().lower()
    if not re.match(USER_RE, name):
        raise Forbidden(f"{claim} {raw!r} is not a valid Shanzhi user name; ask an administrator to map another claim")
    if name in {b[0] for b in BOOTSTRAP}:
        raise Forbidden(f"{name} is a bootstrap administrator and never logs in through {cfg.name}")
    u = s.scalar(select(User).where(User.name == name))
    if u is None:
        if not cfg.auto_create:
            raise Forbidden(
                f"there is no Shanzhi user {name}; ask a security administrator to create it "
                f"('shanzhi user create {name}') and grant it a role, then log in again"
            )
        u = create_user(s, name, None)
    elif u.oidc_subject is not None:
        raise Forbidden(f"user {name} is already linked to another {cfg.name} identity; ask a security administrator")
    u.oidc_issuer, u.oidc_subject = cfg.issuer, subject
    s.flush()
    return u
