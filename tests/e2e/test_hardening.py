"""What the hardening review tried against a real server over real HTTP (uvicorn, not a test client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Server, stop_everything

pytestmark = pytest.mark.e2e


def _token(server: Server, name: str) -> dict[str, str]:
    return {"Authorization": "Bearer " + (server.data_dir / name).read_text().strip()}


def _audit(server: Server, **params: Any) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.url}/api/v1/audit", params=params, headers=_token(server, "audit.token"), timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json())


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for s in started:
        stop_everything(s.data_dir, s)


def test_forwarded_headers_are_believed_only_from_named_proxies(tmp_path: Path, servers: list[Server]) -> None:
    forged = {"X-Forwarded-For": "203.0.113.66"}
    for name, extra, source in (
        ("plain", (), "127.0.0.1"),
        ("proxied", ("--forwarded-allow-ips", "127.0.0.1"), "203.0.113.66"),
    ):
        d = tmp_path / name
        d.mkdir()
        s = Server(d, None, *extra)
        servers.append(s)
        r = httpx.post(
            f"{s.url}/api/v1/vdcs", json={"path": f"xff-{name}"}, headers={**_token(s, "admin.token"), **forged}
        )
        assert r.status_code == 201, r.text
        (rec,) = [a for a in _audit(s) if a["path"] == "/api/v1/vdcs" and a["method"] == "POST"]
        assert rec["source"] == source, name
