"""Health probes (HTTP GET or TCP connect) and per-instance probe history."""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from shanzhi.domain.spec import Component, Health


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
    ref = check.port
    if isinstance(ref, int):
        names = [p.name for p in component.ports if p.port == ref]
        return ports.get(names[0]) if names else None
    return ports.get(ref)


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
