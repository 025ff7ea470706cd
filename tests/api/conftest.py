import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shanzhi.api import create_app
from shanzhi.config import Settings
from shanzhi.services.demo import HELLO


@pytest.fixture
def settings(database_url: str, data_dir: Path) -> Settings:
    return Settings.build(data_dir, database_url, controller=False)


@pytest.fixture
def api(settings: Settings) -> Iterator[TestClient]:
    """The real application in-process (no controller), authenticated as admin."""
    with TestClient(create_app(settings)) as client:
        client.headers["Authorization"] = f"Bearer {settings.token_file.read_text().strip()}"
        yield client


def hello(**changes: Any) -> dict[str, Any]:
    """The issue's example app (as the demo ships it), with component fields changed."""
    spec: dict[str, Any] = copy.deepcopy(HELLO)
    spec["spec"]["components"][0].update(changes)
    return spec


@pytest.fixture
def tokens(settings: Settings, api: TestClient) -> dict[str, str]:
    """The bootstrap administrators' tokens: admin (system), security, audit."""
    files = {"admin": "admin.token", "security": "security.token", "audit": "audit.token"}
    return {who: (settings.data_dir / f).read_text().strip() for who, f in files.items()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
