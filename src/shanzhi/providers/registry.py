"""Provider kinds by name, imported only when first used (as libcloud's driver registry)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shanzhi.domain.errors import InvalidInput
from shanzhi.providers.base import Provider

_KINDS: dict[str, str] = {
    "local": "shanzhi.providers.local:LocalProvider",
    "sim": "shanzhi.providers.sim:SimProvider",
    "libvirt": "shanzhi.providers.libvirt.provider:LibvirtProvider",
    "netns": "shanzhi.providers.netns.provider:NetnsProvider",
    "ec2": "shanzhi.providers.ec2:Ec2Provider",
    "kubernetes": "shanzhi.providers.kube:KubernetesProvider",
    "openstack": "shanzhi.providers.openstack_cloud:OpenStackProvider",
}


def kinds() -> list[str]:
    return sorted(_KINDS)


def provider_class(kind: str) -> type[Provider]:
    target = _KINDS.get(kind)
    if target is None:
        raise InvalidInput(f"unknown cloud kind {kind!r}; known kinds: {', '.join(kinds())}", field="kind")
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    assert isinstance(cls, type) and issubclass(cls, Provider)
    return cls


def load_provider(
    kind: str, name: str, options: Mapping[str, Any], state_dir: Path, credentials: Mapping[str, str] | None = None
) -> Provider:
    return provider_class(kind)(name, options, state_dir, credentials)
