"""Errors that carry enough to become an RFC 9457 problem document in the API."""

from __future__ import annotations


class ShanzhiError(Exception):
    """Base error. `status` is the HTTP status the API answers with."""

    status = 400
    title = "Bad request"

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidInput(ShanzhiError):
    status = 422
    title = "Invalid input"


class UnsupportedMediaType(ShanzhiError):
    status = 415
    title = "Unsupported media type"


class NotFound(ShanzhiError):
    status = 404
    title = "Not found"


class Conflict(ShanzhiError):
    status = 409
    title = "Conflict"


class QuotaExceeded(ShanzhiError):
    status = 403
    title = "Quota exceeded"

    def __init__(self, detail: str, *, vdc: str, resource: str, limit: int, requested: int) -> None:
        super().__init__(detail, field=resource)
        self.vdc = vdc
        self.resource = resource
        self.limit = limit
        self.requested = requested


class ProviderError(ShanzhiError):
    """A cloud could not do what was asked (bad options, unreachable, refused)."""

    status = 502
    title = "Provider error"


class CloudUnavailable(ProviderError):
    status = 503
    title = "Cloud unavailable"


class IdentityProviderError(ShanzhiError):
    """The OpenID Connect provider did not answer, or answered something that does not hold."""

    status = 502
    title = "Identity provider error"


class Unauthorized(ShanzhiError):
    """No valid credentials (missing, wrong, expired or revoked token; wrong password)."""

    status = 401
    title = "Unauthorized"


class Forbidden(ShanzhiError):
    """Authenticated, but no role allows this (only said where the target is visible anyway)."""

    status = 403
    title = "Forbidden"


class Locked(ShanzhiError):
    status = 423
    title = "Locked"
