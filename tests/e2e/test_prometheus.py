"""A real Prometheus server (Debian's `prometheus`) finds Shanzhi and its workloads through HTTP
service discovery and scrapes `/api/v1/metrics` with a bearer token: the scale-out path for
metrics. Skipped, saying why, without the package; CI requires it (SHANZHI_REQUIRE_PROMETHEUS=1)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.controllers.test_custom_metrics import WORKLOAD, poke
from tests.e2e.harness import Server, free_port, reap, spawn, stop_everything, wait_for

pytestmark = pytest.mark.e2e
PROMETHEUS = shutil.which("prometheus")
REQUIRE = os.environ.get("SHANZHI_REQUIRE_PROMETHEUS") == "1"


@pytest.fixture
def prometheus(data_dir: Path, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    if PROMETHEUS is None:
        if REQUIRE:
            pytest.fail("Prometheus tests required but prometheus is not installed (apt-get install prometheus)")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    server = Server(data_dir, None, "--metrics-interval", "1")
    token_file = tmp_path / "token"  # Prometheus 2.42 sends the file as it is: no trailing newline
    token_file.write_text((data_dir / "admin.token").read_text().strip())
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: shanzhi
    authorization: {{type: Bearer, credentials_file: {token_file}}}
    http_sd_configs:
      - url: {server.url}/api/v1/prometheus/targets
        refresh_interval: 1s
        authorization: {{type: Bearer, credentials_file: {token_file}}}
"""
    )
    port = free_port()
    args = [
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    base = f"http://127.0.0.1:{port}"
    ready = lambda: httpx.get(f"{base}/-/ready").status_code == 200  # noqa: E731
    proc = spawn(args, tmp_path / "prometheus.log", ready, "prometheus")
    try:
        yield server, base
    finally:
        reap(proc)
        stop_everything(data_dir, server)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=5)
    if r.status_code != 200:
        return []
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def test_prometheus_discovers_and_scrapes_shanzhi(prometheus: tuple[Server, str]) -> None:
    server, url = prometheus
    token = (server.data_dir / "admin.token").read_text().strip()
    with httpx.Client(base_url=f"{server.url}/api/v1", headers={"Authorization": f"Bearer {token}"}) as api:
        cloud = {"name": "sim-a", "kind": "sim", "site": "s1", "region": "gz", "options": {"hosts": 2, "boot": 0}}
        assert api.post("/clouds", json=cloud).status_code == 201
        assert api.post("/vdcs", json={"path": "gz", "quota": {}}).status_code == 201
        comp = {"name": "web", "replicas": 2, "image": "x", "resources": {"cpu": 1, "memory": "1Gi"}}
        app = {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "api", "vdc": "gz"}}
        assert api.post("/apps", json=app | {"spec": {"components": [comp]}}).status_code == 201
        # a workload on a local cloud that exports its own metrics
        local = {"name": "city", "kind": "local", "site": "s2", "region": "gz"}
        assert api.post("/clouds", json=local).status_code == 201
        queue = {
            "name": "worker",
            "run": {"command": ["python3", "-c", WORKLOAD, "${PORT}"]},
            "resources": {"cpu": 0.1, "memory": "64Mi"},
            "ports": [{"name": "http", "port": 8080}],
            "metrics": {"port": "http"},
        }
        placement = {"clouds": {"names": ["city"]}}
        doc = {
            **app,
            "metadata": {"name": "queue", "vdc": "gz"},
            "spec": {"components": [queue], "placement": placement},
        }
        assert api.post("/apps", json=doc).status_code == 201
        running = lambda app: {  # noqa: E731
            i["name"]: i for i in api.get("/instances", params={"app": app}).json() if i["state"] == "running"
        }
        names = set(wait_for(lambda: running("api") or None, 30, "replicas"))
        [(worker, row)] = wait_for(lambda: running("queue") or None, 30, "the worker").items()
        poke(row["endpoint"], "/depth=42")
        # Shanzhi reads it too (the autoscaler and alarm rules may name it)
        sampled = lambda: [  # noqa: E731
            (p["instance"], p.get("custom", {}).get("queue_depth"))
            for p in api.get("/apps/queue/metrics").json()["latest"]
        ]
        assert wait_for(lambda: sampled() == [(worker, 42.0)], 30, "a sample of the worker's queue")
    up = wait_for(lambda: query(url, 'up{job="shanzhi"}'), 60, "Prometheus to scrape Shanzhi")
    assert [float(r["value"][1]) for r in up] == [1.0]  # the token worked: scraped, not refused
    cpu = wait_for(lambda: (r := query(url, 'shanzhi_instance_cpu_cores{app="api"}')) and len(r) == 2 and r, 60, "cpu")
    assert {r["metric"]["replica"] for r in cpu} == names and all(float(r["value"][1]) > 0 for r in cpu)
    assert query(url, 'shanzhi_cloud_capacity{cloud="sim-a",resource="cpu_cores"}')[0]["value"][1] == "32"
    assert query(url, "sum(shanzhi_http_request_seconds_count)")  # the API's own latency, by route
    # a workload that exports its own metrics is discovered and scraped there, labelled with its
    # app, VDC and replica name (the simulated VMs export none: they are not targets)
    depth = wait_for(
        lambda: query(url, 'sum by (instance, app, vdc) (queue_depth{job="workloads"})'), 60, "the worker's own metrics"
    )
    assert [(r["metric"]["instance"], r["metric"]["app"], r["metric"]["vdc"]) for r in depth] == [
        (worker, "queue", "gz")
    ]
    assert float(depth[0]["value"][1]) == 42.0
    targets = httpx.get(f"{url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
    workloads = [t for t in targets if t["labels"].get("job") == "workloads"]
    assert [(w["labels"]["instance"], w["health"]) for w in workloads] == [(worker, "up")]


def test_the_discovery_endpoint_wants_a_token(prometheus: tuple[Server, str]) -> None:
    server, _ = prometheus
    assert httpx.get(f"{server.url}/api/v1/prometheus/targets").status_code == 401
    assert httpx.get(f"{server.url}/api/v1/metrics").status_code == 401
