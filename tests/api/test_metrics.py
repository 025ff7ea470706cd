"""/api/v1/metrics in Prometheus's format, an app's metrics, and Prometheus service discovery, on a
server whose controller runs (a simulated cloud: its use is synthetic but sampled for real)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from shanzhi.api import create_app
from shanzhi.config import Settings
from tests.api.conftest import LENIENT


@pytest.fixture
def live(database_url: str, data_dir: Path) -> Iterator[TestClient]:
    st = Settings.build(data_dir, database_url, controller=True, interval=0.2, metrics_interval=1.0, **LENIENT)
    with TestClient(create_app(st)) as client:
        client.headers["Authorization"] = f"Bearer {st.token_file.read_text().strip()}"
        r = client.post(
            "/api/v1/clouds",
            json={"name": "sim-a", "kind": "sim", "site": "s1", "region": "gz", "options": {"hosts": 2, "boot": 0}},
        )
        assert r.status_code == 201, r.text
        assert client.post("/api/v1/vdcs", json={"path": "gz", "quota": {}}).status_code == 201
        spec = {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": "api", "vdc": "gz"},
            "spec": {
                "components": [{"name": "web", "replicas": 2, "resources": {"cpu": 1, "memory": "1Gi"}, "image": "x"}]
            },
        }
        assert client.post("/api/v1/apps", json=spec).status_code in (200, 201)
        yield client


def scrape(client: TestClient) -> dict[str, list[Any]]:
    r = client.get("/api/v1/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def until(cond: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = cond()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_the_exposition_has_instances_clouds_and_the_control_plane(live: TestClient) -> None:
    families = until(lambda: (f := scrape(live)) and len(f.get("shanzhi_instance_cpu_cores", [])) == 2 and f)
    cpu = families["shanzhi_instance_cpu_cores"]
    assert {s.labels["app"] for s in cpu} == {"api"} and {s.labels["cloud"] for s in cpu} == {"sim-a"}
    assert all(0 < s.value < 1 for s in cpu)
    assert all(s.value > 2**20 for s in families["shanzhi_instance_memory_bytes"])
    capacity = {s.labels["resource"]: s.value for s in families["shanzhi_cloud_capacity"]}
    used = {s.labels["resource"]: s.value for s in families["shanzhi_cloud_used"]}
    assert capacity["cpu_cores"] == 32.0 and used["cpu_cores"] == 2.0 and used["instances"] == 2.0
    assert [s.value for s in families["shanzhi_cloud_up"]] == [1.0]
    assert {s.labels["state"]: s.value for s in families["shanzhi_instances"]} == {"running": 2.0}
    routes = {s.labels["route"] for s in families["shanzhi_http_request_seconds"]}
    assert "/api/v1/clouds" in routes and "/api/v1/apps" in routes  # by template, not by raw path
    passes = [s for s in families["shanzhi_reconcile_pass_seconds"] if s.name.endswith("_count")]
    assert passes and passes[0].value > 0
    # one replica on its own: it reconciles every shard, and a settled fleet is left alone
    assert [s.value for s in families["shanzhi_reconcile_shards"]] == [64.0]
    assert [s.value for s in families["shanzhi_reconcile_replicas"]] == [1.0]
    settled = until(lambda: (f := scrape(live)) and f["shanzhi_reconcile_apps_reconciled"][0].value == 0 and f)
    assert settled["shanzhi_reconcile_apps_settled"][0].value == 1.0
    assert "process_resident_memory_bytes" in families
    # the alias where Prometheus looks by default
    r = live.get("/metrics", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/api/v1/metrics"
    assert TestClient(live.app).get("/api/v1/metrics").status_code == 401


def test_an_apps_metrics_and_the_prometheus_targets(live: TestClient) -> None:
    got = until(lambda: (r := live.get("/api/v1/apps/api/metrics?since=15m").json()) and len(r["latest"]) == 2 and r)
    assert got["app"] == "api" and got["vdc"] == "gz" and got["resolution"] == 60 and got["units"]["cpu"] == "cores"
    assert {p["component"] for p in got["latest"]} == {"web"} and all(p["cpu"] > 0 for p in got["latest"])
    one = got["latest"][0]["instance"]
    only = live.get(f"/api/v1/apps/api/metrics?instance={one}").json()
    assert [p["instance"] for p in only["latest"]] == [one]
    for bad in ("forever", "0s", "91d"):
        r = live.get(f"/api/v1/apps/api/metrics?since={bad}")
        assert r.status_code == 422 and "since" in r.json()["detail"], bad
    assert live.get("/api/v1/apps/nope/metrics").status_code == 404
    targets = live.get("/api/v1/prometheus/targets").json()
    assert targets[0]["labels"] == {"job": "shanzhi", "__metrics_path__": "/api/v1/metrics"}
    # the simulated VMs export no metrics of their own: they are no targets (a local replica that
    # does is one: tests/controllers/test_custom_metrics.py, tests/e2e/test_prometheus.py)
    assert [t for t in targets if t["labels"]["job"] == "workloads"] == []
