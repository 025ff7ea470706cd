"""End to end on a kubernetes cloud: a real server and CLI against the loopback API stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cli, Server, wait_for
from tests.kube.cluster import StandIn

pytestmark = pytest.mark.e2e


def slots(cluster: StandIn) -> list[str]:
    d = httpx.get(f"{cluster.url}/apis/apps/v1/namespaces/shz-gz/deployments/portal-web", timeout=5)
    if d.status_code == 404:
        return []
    return list(json.loads(d.json()["metadata"]["annotations"]["shanzhi.io/instances"]))


def test_register_apply_heal_and_delete_on_a_kubernetes_cloud(server: Server, cluster: StandIn, tmp_path: Path) -> None:
    cli = Cli(server)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig())
    cli.ok(
        "cloud",
        "add",
        "k8s-gz",
        "--kind",
        "kubernetes",
        "--site",
        "city-a",
        "--region",
        "gz",
        "--credentials-file",
        str(kubeconfig),
    )
    cloud = wait_for(lambda: (c := cli.json("cloud", "get", "k8s-gz"))["health"] == "healthy" and c, 30, "healthy")
    assert cloud["options"]["credentials"] == {"fields": ["kubeconfig"], "sealed": True}
    assert cloud["capacity"] == {"cpu": 8000, "memory": 16 * 2**30, "instances": 220, "storage": None}
    assert "standin-token" not in cli.ok("cloud", "get", "k8s-gz", "-o", "json")
    cli.ok("vdc", "create", "gz", "--quota", "cpu=4,memory=4Gi,instances=10")
    spec = {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": "portal", "vdc": "gz"},
        "spec": {
            "components": [
                {
                    "name": "web",
                    "replicas": 3,
                    "image": "nginx:1.27",
                    "resources": {"cpu": "0.25", "memory": "128Mi"},
                    "ports": [{"name": "http", "port": 8080}],
                }
            ],
            "placement": {"clouds": {"names": ["k8s-gz"]}},
        },
    }
    path = tmp_path / "portal.json"
    path.write_text(json.dumps(spec))
    assert "app/portal ready" in cli.ok("apply", "-f", str(path), "--wait", "--timeout", "60")
    rows = cli.json("instance", "list", "--app", "portal")
    assert sorted(r["name"] for r in rows) == sorted(slots(cluster)) and len(rows) == 3
    assert {r["endpoint"] for r in rows} == {"portal-web.shz-gz.svc:8080"}
    # scaled to 1 through the CLI: the Deployment keeps one slot
    cli.ok("app", "scale", "portal", "web", "1")
    wait_for(lambda: len(slots(cluster)) == 1, 30, "one slot")
    (left,) = slots(cluster)
    # someone deletes the Deployment behind Shanzhi's back: the replica is recreated
    httpx.delete(f"{cluster.url}/apis/apps/v1/namespaces/shz-gz/deployments/portal-web", timeout=5).raise_for_status()
    wait_for(lambda: slots(cluster) == [left], 30, "the Deployment recreated")
    assert "InstanceVanished" in [e["reason"] for e in cli.json("events", "--app", "portal")]
    wait_for(lambda: cli.json("instance", "get", left)["state"] == "running", 30, "running again")
    cli.ok("app", "delete", "portal", "--wait", "--timeout", "60")
    wait_for(lambda: cluster.get("/apis/apps/v1/deployments")["items"] == [], 30, "no Deployment left")
    assert cluster.get("/api/v1/services")["items"] == []
