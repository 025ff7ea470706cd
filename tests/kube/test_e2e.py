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


def test_a_component_with_volumes_runs_as_statefulsets_whose_claims_go_with_the_app(
    server: Server, cluster: StandIn, tmp_path: Path
) -> None:
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
        "a",
        "--region",
        "gz",
        "--credentials-file",
        str(kubeconfig),
    )
    wait_for(lambda: cli.json("cloud", "get", "k8s-gz")["health"] == "healthy", 30, "healthy")
    cli.ok("vdc", "create", "gz", "--quota", "cpu=4,memory=4Gi,instances=10,storage=20Gi")
    db = {
        "name": "db",
        "replicas": 2,
        "image": "postgres:16",
        "resources": {"cpu": "0.5", "memory": "256Mi"},
        "ports": [{"name": "pg", "port": 5432}],
        "volumes": [{"name": "data", "size": "2Gi", "mountPath": "/var/lib/postgresql"}],
    }
    spec = {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": "records", "vdc": "gz"},
        "spec": {"components": [db], "placement": {"clouds": {"names": ["k8s-gz"]}}},
    }
    path = tmp_path / "records.json"
    path.write_text(json.dumps(spec))
    assert "app/records ready" in cli.ok("apply", "-f", str(path), "--wait", "--timeout", "60")
    sets = lambda: sorted(s["metadata"]["name"] for s in cluster.get("/apis/apps/v1/statefulsets")["items"])  # noqa: E731
    claims = lambda: sorted(c["metadata"]["name"] for c in cluster.get("/api/v1/persistentvolumeclaims")["items"])  # noqa: E731
    assert sets() == ["records-db-0", "records-db-1"]
    wait_for(lambda: claims() == ["data-records-db-0-0", "data-records-db-1-0"], 30, "the claims")
    assert cli.json("vdc", "get", "gz")["usage"]["storage"] == 4 * 2**30  # counted against the quota
    # scaled down, ordinal 1's set goes and its claim stays; scaled up, it is back on the same claim
    uid = cluster.get("/api/v1/namespaces/shz-gz/persistentvolumeclaims/data-records-db-1-0")["metadata"]["uid"]
    cli.ok("app", "scale", "records", "db", "1")
    wait_for(lambda: sets() == ["records-db-0"], 30, "one set")
    assert "data-records-db-1-0" in claims()
    cli.ok("app", "scale", "records", "db", "2")
    wait_for(lambda: sets() == ["records-db-0", "records-db-1"], 30, "two sets")
    again = cluster.get("/api/v1/namespaces/shz-gz/persistentvolumeclaims/data-records-db-1-0")["metadata"]["uid"]
    assert again == uid
    # the app deleted: sets, claims (reclaimPolicy delete) and the Service go
    cli.ok("app", "delete", "records", "--wait", "--timeout", "60")
    wait_for(lambda: sets() == [] and claims() == [], 30, "nothing left")
    assert cluster.get("/api/v1/services")["items"] == []
