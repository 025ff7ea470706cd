"""Clouds' credentials, sealed at rest and never shown.

A cloud's credentials (an EC2 access key, an OpenStack password, a kubeconfig) arrive in the
request body of `cloud add` / `cloud credentials`, never on a command line or in a URL. They
are checked against the provider's declared fields, sealed with `credentials.key` in the data
directory and kept in the cloud's options under `credentials` as `{"sealed": ..., "fields":
[names]}`. The API shows only the field names; the fleet opens them when it builds the
provider object. The audit trail records requests by path, never by body, and providers
log no credential.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shanzhi.domain.errors import InvalidInput
from shanzhi.sealing import Vault

CREDENTIALS_KEY = "credentials.key"
OPTION = "credentials"
MAX_VALUE = 64 * 1024  # a kubeconfig with its certificates fits


def check(kind: str, fields: Mapping[str, str], raw: Mapping[str, Any]) -> dict[str, str]:
    """The credentials given for a `kind` cloud, refusing unknown fields and bad values by name."""
    if not fields:
        raise InvalidInput(f"a {kind} cloud takes no credentials", field="credentials")
    out: dict[str, str] = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise InvalidInput(
                f"unknown credential {key!r} for a {kind} cloud (known: {known})", field=f"credentials.{key}"
            )
        if not isinstance(value, str) or not value or len(value) > MAX_VALUE:
            raise InvalidInput(
                f"credential {key} must be a non-empty string (at most 64 KiB)", field=f"credentials.{key}"
            )
        out[key] = value
    if not out:
        raise InvalidInput(
            f"no credentials given; a {kind} cloud takes: {', '.join(sorted(fields))}", field="credentials"
        )
    return out


def seal(vault: Vault, credentials: Mapping[str, str]) -> dict[str, Any]:
    """What the cloud's options keep: the sealed credentials and the names of their fields."""
    return {"sealed": vault.seal_json(dict(credentials)), "fields": sorted(credentials)}


def split(vault: Vault, cloud: str, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str] | None]:
    """A cloud's options without its sealed credentials, and the credentials opened."""
    rest = {k: v for k, v in options.items() if k != OPTION}
    held = options.get(OPTION)
    if not isinstance(held, dict):
        return rest, None
    opened = vault.open_json(str(held["sealed"]), f"the credentials of cloud {cloud}")
    return rest, {str(k): str(v) for k, v in opened.items()}


def public(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options as the API shows them: the credentials' field names only."""
    held = options.get(OPTION)
    if not isinstance(held, dict):
        return dict(options)
    return {**options, OPTION: {"fields": list(held.get("fields", [])), "sealed": True}}
