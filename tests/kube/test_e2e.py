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


def registered(server: Server, cluster: StandIn, tmp_path: Path, quota: str) -> Cli:
    """A CLI on a server with the stand-in registered as k8s-gz (healthy) and VDC gz with `quota`."""
    cli = Cli(server)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(cluster.kubeconfig())
    args = ["--kind", "kubernetes", "--site", "a", "--region", "gz", "--credentials-file", str(kubeconfig)]
    cli.ok("cloud", "add", "k8s-gz", *args)
    wait_for(lambda: cli.json("cloud", "get", "k8s-gz")["health"] == "healthy", 30, "healthy")
    cli.ok("vdc", "create", "gz", "--quota", quota)
    return cli


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
    cli = registered(server, cluster, tmp_path, "cpu=4,memory=4Gi,instances=10,storage=20Gi")
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


def test_a_deployment_made_by_hand_is_adopted_whole_without_a_restart_then_managed(
    server: Server, cluster: StandIn, tmp_path: Path
) -> None:
    cli = registered(server, cluster, tmp_path, "cpu=4,memory=4Gi,instances=10")
    # a legacy system someone deployed by hand: two replicas, its own selector and names
    legacy = {
        "metadata": {"name": "permits", "labels": {"team": "legacy"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"run": "permits"}},
            "template": {
                "metadata": {"labels": {"run": "permits"}},
                "spec": {
                    "containers": [
                        {
                            "name": "permits",
                            "image": "registry.gz.gov.cn/permits:3.1",
                            "ports": [{"containerPort": 8080}],
                            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                        }
                    ]
                },
            },
        },
    }
    httpx.post(f"{cluster.url}/api/v1/namespaces", json={"metadata": {"name": "old"}}).raise_for_status()
    httpx.post(f"{cluster.url}/apis/apps/v1/namespaces/old/deployments", json=legacy).raise_for_status()
    path = "/apis/apps/v1/namespaces/old/deployments/permits"
    before = cluster.get(path)
    cli.ok("inventory", "sync", "--cloud", "k8s-gz")
    wait_for(
        lambda: [
            r
            for r in cli.json("inventory", "list", "--cloud", "k8s-gz", "--unmanaged")
            if r["external_id"] == "old/permits"
        ],
        30,
        "the legacy Deployment in the inventory",
    )
    base = ["adopt", "old/permits", "--cloud", "k8s-gz", "--vdc", "gz", "--app", "permits", "--component", "web"]
    (comp,) = cli.json(*base, "--dry-run")["spec"]["spec"]["components"]
    assert comp["replicas"] == 2 and comp["image"] == "registry.gz.gov.cn/permits:3.1"  # one server, two replicas
    assert comp["resources"] == {"cpu": "250m", "memory": "256Mi"} and comp["ports"] == [
        {"name": "p8080", "port": 8080}
    ]
    names = cli.json(*base)["instances"]
    assert len(names) == 2
    wait_for(
        lambda: all(cli.json("instance", "get", n)["state"] == "running" for n in names),
        30,
        "both adopted replicas running",
    )
    after = cluster.get(path)
    assert sorted(json.loads(after["metadata"]["annotations"]["shanzhi.io/instances"])) == sorted(names)
    assert (
        after["metadata"]["labels"]["team"] == "legacy" and after["metadata"]["labels"]["shanzhi.io/app"] == "permits"
    )
    assert after["spec"]["template"] == before["spec"]["template"]  # its pods were not touched: nothing restarted
    assert after["spec"]["replicas"] == 2 and after["metadata"]["uid"] == before["metadata"]["uid"]
    # managed like any other: scaled up through the same Deployment (its own selector kept)
    cli.ok("app", "scale", "permits", "web", "3")
    wait_for(lambda: cluster.get(path)["spec"]["replicas"] == 3, 30, "a third slot")
    grown = cluster.get(path)
    assert grown["spec"]["selector"] == {"matchLabels": {"run": "permits"}}
    assert grown["spec"]["template"]["metadata"]["labels"]["run"] == "permits"  # still selects its pods
    assert cluster.get("/apis/apps/v1/namespaces/shz-gz/deployments/permits-web").get("code") == 404  # no second one
    wait_for(
        lambda: len([i for i in cli.json("instance", "list", "--app", "permits") if i["state"] == "running"]) == 3,
        30,
        "three running",
    )
    r = cli.run(*base[:-4], "--app", "again", "--component", "web")
    assert r.returncode != 0 and "already" in r.stderr
    cli.ok("app", "delete", "permits", "--wait", "--timeout", "60")
    wait_for(lambda: cluster.get(path).get("code") == 404, 30, "the Deployment gone with its app")
