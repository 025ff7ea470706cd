"""The loopback OpenStack stand-in (`tests/openstack/standin.py`) as a process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.harness import free_port, reap, spawn

PASSWORD = "standin-password-7f3a"


class StandIn:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.auth_url = f"{self.url}/identity/v3"
        self.proc = spawn(
            [sys.executable, "-m", "tests.openstack.standin", "--port", str(self.port), "--password", PASSWORD],
            log,
            lambda: httpx.get(f"{self.url}/identity/v3", timeout=1).status_code == 200,
            "the OpenStack stand-in",
        )

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=5).json()

    def post(self, path: str, body: Any = None) -> Any:
        r = httpx.post(f"{self.url}{path}", json=body, timeout=5)
        r.raise_for_status()
        return r.json() if r.content else None

    def servers(self) -> list[dict[str, Any]]:
        return list(self.get("/compute/v2.1/servers/detail")["servers"])

    def volumes(self) -> list[dict[str, Any]]:
        return list(self.get("/volume/v3/p-gz-tax/volumes/detail")["volumes"])

    def groups(self) -> list[dict[str, Any]]:
        return list(self.get("/network/v2.0/security-groups")["security_groups"])

    def stop(self) -> None:
        reap(self.proc)
