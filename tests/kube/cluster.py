"""The loopback Kubernetes API stand-in (`tests/kube/standin.py`) as a process, with a kubeconfig for it."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.e2e.harness import ROOT, free_port


class StandIn:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.kube.standin", "--port", str(self.port)],
                stdout=f,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/api/v1/nodes", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the Kubernetes stand-in did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)

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
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def standin(tmp_path_factory: Any) -> Iterator[StandIn]:
    s = StandIn(tmp_path_factory.mktemp("kube") / "standin.log")
    try:
        yield s
    finally:
        s.stop()
