"""The loopback Kubernetes API stand-in (`tests/kube/standin.py`) as a process, with a kubeconfig for it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.harness import free_port, reap, spawn


class StandIn:
    def __init__(self, log: Path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = spawn(
            [sys.executable, "-m", "tests.kube.standin", "--port", str(self.port), *args],
            log,
            lambda: httpx.get(f"{self.url}/api/v1/nodes", timeout=1).status_code == 200,
            "the Kubernetes stand-in",
        )

    def kubeconfig(self) -> str:
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                "users": [{"name": "shanzhi", "user": {"token": "standin-token"}}],
                "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "shanzhi"}}],
                "current-context": "standin",
            }
        )

    def get(self, path: str) -> Any:
        return httpx.get(f"{self.url}{path}", timeout=5).json()

    def reset(self) -> None:
        for ns in self.get("/api/v1/namespaces")["items"]:
            httpx.delete(f"{self.url}/api/v1/namespaces/{ns['metadata']['name']}", timeout=5)

    def stop(self) -> None:
        reap(self.proc)
