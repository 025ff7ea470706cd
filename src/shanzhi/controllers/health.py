"""Health probes (HTTP GET or TCP connect) and per-instance probe history."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from shanzhi.domain.spec import Component, Health
from shanzhi.providers.base import ObservedInstance


@dataclass
class ProbeState:
    successes: int = 0
    failures: int = 0
    ever_ok: bool = False
    last: float = 0.0


def probe_port(component: Component, ports: Mapping[str, int]) -> int | None:
    """The allocated port that the component's health check targets."""
    assert component.health is not None
    check = component.health.http or component.health.tcp
    assert check is not None
    return allocated_port(component, check.port, ports)


def allocated_port(component: Component, ref: str | int, ports: Mapping[str, int]) -> int | None:
    """The port a replica was given for the component's port `ref` (by name or number)."""
    if isinstance(ref, int):
        names = [p.name for p in component.ports if p.port == ref]
        return ports.get(names[0]) if names else None
    return ports.get(ref)


def metrics_url(component: Component, observed: ObservedInstance) -> str | None:
    """Where a running replica exports its own metrics (None: it declares none, or has no address)."""
    if component.metrics is None or observed.endpoint is None:
        return None
    port = allocated_port(component, component.metrics.port, observed.ports)
    if port is None:
        return None
    host = observed.endpoint.rsplit(":", 1)[0]
    return f"http://{host}:{port}{component.metrics.path}"


def probe(health: Health, host: str, port: int) -> bool:
    """One probe; True when the check passes (HTTP 2xx/3xx, or a TCP connect)."""
    try:
        if health.http is not None:
            r = httpx.get(f"http://{host}:{port}{health.http.path}", timeout=health.timeout_seconds)
            return 200 <= r.status_code < 400
        with socket.create_connection((host, port), timeout=health.timeout_seconds):
            return True
    except (httpx.HTTPError, OSError):
        return False


def update(state: ProbeState, ok: bool) -> ProbeState:
    state.last = time.monotonic()
    if ok:
        state.successes += 1
        state.failures = 0
        state.ever_ok = True
    else:
        state.failures += 1
        state.successes = 0
    return state
