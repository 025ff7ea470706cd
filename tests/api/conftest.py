from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from shanzhi.api import create_app
from shanzhi.config import Settings


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
    spec: dict[str, Any] = {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": "hello", "vdc": "gz/health"},
        "spec": {
            "components": [
                {
                    "name": "web",
                    "replicas": 4,
                    "resources": {"cpu": 0.1, "memory": "64Mi"},
                    "run": {"command": ["python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"]},
                    "ports": [{"name": "http", "port": 8080}],
                    "health": {"http": {"path": "/", "port": "http"}},
                }
            ],
            "placement": {"clouds": {"tags": {"level": "city"}}, "spread": {"over": "site", "minGroups": 2}},
        },
    }
    spec["spec"]["components"][0].update(changes)
    return spec
