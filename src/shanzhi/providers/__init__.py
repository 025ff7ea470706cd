"""Clouds behind one narrow typed surface, one module per kind, loaded from a registry.

A provider reports hosts and instances and creates/deletes instances by name. Creation is
idempotent by name and deletion is idempotent, which is what lets the reconciler crash at any
point and simply run again.
"""

from shanzhi.providers.base import (
    CloudStatus,
    HostInfo,
    InstanceRequest,
    Listing,
    LogChunk,
    NetworkAttachment,
    ObservedInstance,
    Provider,
    Resource,
    VolumeRequest,
)
from shanzhi.providers.registry import kinds, load_provider, provider_class

__all__ = [
    "CloudStatus",
    "HostInfo",
    "InstanceRequest",
    "Listing",
    "LogChunk",
    "NetworkAttachment",
    "ObservedInstance",
    "Provider",
    "Resource",
    "VolumeRequest",
    "kinds",
    "load_provider",
    "provider_class",
]
