"""The kubernetes provider through the official client against the loopback API stand-in
(no Kubernetes runs here: `tests/kube/standin.py` answers the calls it makes)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from shanzhi.domain.errors import CloudUnavailable, InvalidInput
from shanzhi.providers import InstanceRequest, VolumeRequest, provider_class
from shanzhi.providers.kube import KubernetesProvider
from tests.e2e.harness import free_port
from tests.kube.cluster import StandIn


def make(cluster: StandIn, tmp_path: Path, name: str = "k1", **options: Any) -> KubernetesProvider:
    p = provider_class("kubernetes")(
        name, KubernetesProvider.validate_options(options), tmp_path / name, {"kubeconfig": cluster.kubeconfig()}
    )
    assert isinstance(p, KubernetesProvider)
    return p


def request(name: str, **kw: Any) -> InstanceRequest:
    base: dict[str, Any] = {
        "name": name,
        "app": "web",
        "component": "api",
        "vdc": "gz/tax",
        "host": "cluster",
        "cpu": 250,
        "memory": 128 * 2**20,
        "image": "nginx:1.27",
        "ports": (("http", 8080),),
        "env": {"MODE": "production", "SELF": "http://0.0.0.0:${PORT}"},
    }
    base.update(kw)
    return InstanceRequest(**base)


def states(p: KubernetesProvider) -> dict[str, str]:
    return {o.name: o.state for o in p.list_instances()}


def wait(cond: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return value


def test_the_cluster_is_one_host_with_its_nodes_capacity(cluster: StandIn, tmp_path: Path) -> None:
    p = make(cluster, tmp_path)
    assert p.status().healthy and "2 of 2 nodes ready" in p.status().message
    (host,) = p.hosts()
    assert (host.name, host.cpu, host.memory, host.max_instances) == ("cluster", 8000, 16 * 2**30, 220)


def test_replicas_are_slots_of_one_deployment_with_its_service(cluster: StandIn, tmp_path: Path) -> None:
    p = make(cluster, tmp_path)
    first = p.create_instance(request("web-api-aaa"))
    assert first.endpoint == "web-api.shz-gz-tax.svc:8080" and first.ports == {"http": 8080}
    p.create_instance(request("web-api-bbb"))
    p.create_instance(request("web-api-bbb"))  # again (a reconciler that crashed after the call): no new slot
    d = cluster.get("/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api")
    assert d["spec"]["replicas"] == 2
    assert json.loads(d["metadata"]["annotations"]["shanzhi.io/instances"]) == ["web-api-aaa", "web-api-bbb"]
    assert d["metadata"]["labels"]["shanzhi.io/vdc"] == "gz.tax" and d["metadata"]["labels"]["shanzhi.io/cloud"] == "k1"
    (c,) = d["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "nginx:1.27" and c["resources"]["limits"] == {"cpu": "250m", "memory": str(128 * 2**20)}
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env == {"PORT": "8080", "PORT_HTTP": "8080", "MODE": "production", "SELF": "http://0.0.0.0:8080"}
    svc = cluster.get("/api/v1/namespaces/shz-gz-tax/services/web-api")
    assert [(q["port"], q["targetPort"]) for q in svc["spec"]["ports"]] == [(8080, 8080)]
    assert svc["spec"]["selector"] == {"shanzhi.io/app": "web", "shanzhi.io/component": "api"}
    # health from readiness: the stand-in's kubelets make the pods ready
    wait(lambda: states(p) == {"web-api-aaa": "running", "web-api-bbb": "running"})
    assert p.describe("web-api-bbb")["slot"] == 1
    # pods that fail readiness: the slots are not running
    d = cluster.get("/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api")
    d["metadata"]["annotations"]["standin.shanzhi.io/ready"] = "false"
    httpx.put(f"{cluster.url}/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api", json=d).raise_for_status()
    wait(lambda: set(states(p).values()) == {"starting"})

    p.delete_instance("web-api-aaa")
    d = cluster.get("/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api")
    assert d["spec"]["replicas"] == 1 and json.loads(d["metadata"]["annotations"]["shanzhi.io/instances"]) == [
        "web-api-bbb"
    ]
    p.delete_instance("web-api-bbb")
    p.delete_instance("web-api-bbb")  # gone already: fine
    assert cluster.get("/apis/apps/v1/deployments")["items"] == []
    assert cluster.get("/api/v1/services")["items"] == []


def test_a_process_component_runs_its_command_in_the_process_image(cluster: StandIn, tmp_path: Path) -> None:
    p = make(cluster, tmp_path, process_image="python:3.12-slim")
    p.create_instance(request("web-api-ccc", image=None, command=("python3", "-m", "http.server", "${PORT}")))
    (c,) = cluster.get("/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api")["spec"]["template"]["spec"][
        "containers"
    ]
    assert c["image"] == "python:3.12-slim" and c["command"] == ["python3", "-m", "http.server", "8080"]


def test_slots_added_at_once_are_never_lost(cluster: StandIn, tmp_path: Path) -> None:
    providers = [make(cluster, tmp_path, name="k1") for _ in range(4)]
    names = [f"web-api-{i:03d}" for i in range(12)]
    errors: list[BaseException] = []

    def add(p: KubernetesProvider, mine: list[str]) -> None:
        try:
            for n in mine:
                p.create_instance(request(n))
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=add, args=(p, names[i::4])) for i, p in enumerate(providers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    d = cluster.get("/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api")
    assert sorted(json.loads(d["metadata"]["annotations"]["shanzhi.io/instances"])) == names
    assert d["spec"]["replicas"] == 12


def test_inventory_and_bad_input(cluster: StandIn, tmp_path: Path) -> None:
    p = make(cluster, tmp_path)
    p.create_instance(request("web-api-aaa"))
    legacy = {
        "metadata": {"name": "legacy"},
        "spec": {
            "replicas": 2,
            "template": {"spec": {"containers": [{"name": "x", "image": "old:1", "ports": [{"containerPort": 9000}]}]}},
        },
    }
    httpx.post(f"{cluster.url}/api/v1/namespaces", json={"metadata": {"name": "old"}}).raise_for_status()
    httpx.post(f"{cluster.url}/apis/apps/v1/namespaces/old/deployments", json=legacy).raise_for_status()
    found = {(r.kind, r.id): r for r in p.inventory()}
    assert found[("server", "shz-gz-tax/web-api")].managed
    old = found[("server", "old/legacy")]
    assert not old.managed and old.attrs["image"] == "old:1" and old.attrs["ports"] == [9000]
    assert {k for k, _ in found} == {"host", "server", "network"} and ("host", "node-1") in found
    bare = KubernetesProvider("k2", KubernetesProvider.validate_options({}), tmp_path / "k2", None)
    assert not bare.status().healthy and "no kubeconfig" in bare.status().message
    gone = StandIn.__new__(StandIn)
    gone.url = f"http://127.0.0.1:{free_port()}"
    away = KubernetesProvider(
        "k3", KubernetesProvider.validate_options({}), tmp_path / "k3", {"kubeconfig": gone.kubeconfig()}
    )
    assert not away.status().healthy and "list nodes" in away.status().message
    with pytest.raises(CloudUnavailable, match="list deployments"):
        away.list_instances()
    with pytest.raises(InvalidInput, match="in_cluster"):
        KubernetesProvider.validate_options({"in_cluster": "maybe"})


def test_the_health_check_becomes_the_readiness_probe(cluster: StandIn, tmp_path: Path) -> None:
    from shanzhi.domain.spec import Health

    p = make(cluster, tmp_path)
    http = Health.model_validate(
        {"http": {"path": "/healthz", "port": "http"}, "periodSeconds": 5, "failureThreshold": 2}
    )
    p.create_instance(request("web-api-aaa", health=http))
    (c,) = cluster.get("/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api")["spec"]["template"]["spec"][
        "containers"
    ]
    assert c["readinessProbe"] == {
        "httpGet": {"path": "/healthz", "port": 8080},
        "periodSeconds": 5,
        "timeoutSeconds": 1,
        "failureThreshold": 2,
    }
    tcp = Health.model_validate({"tcp": {"port": 9090}})
    p.create_instance(request("api-x", component="rpc", health=tcp))
    (c,) = cluster.get("/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-rpc")["spec"]["template"]["spec"][
        "containers"
    ]
    assert c["readinessProbe"]["tcpSocket"] == {"port": 9090}


def test_use_comes_from_the_metrics_api_each_slot_its_pods_average(cluster: StandIn, tmp_path: Path) -> None:
    p = make(cluster, tmp_path)
    for name in ("web-api-aaa", "web-api-bbb"):
        p.create_instance(request(name))
    p.create_instance(request("web-rpc-ccc", component="rpc"))
    wait(lambda: set(states(p).values()) == {"running"})
    path = "/apis/apps/v1/namespaces/shz-gz-tax/deployments/web-api"
    d = cluster.get(path)
    d["metadata"]["annotations"]["standin.shanzhi.io/usage"] = "cpu=300m,memory=96Mi"  # the pods get busy
    httpx.put(f"{cluster.url}{path}", json=d).raise_for_status()
    got = p.usage()
    assert set(got) == {"web-api-aaa", "web-api-bbb", "web-rpc-ccc"}
    assert got["web-api-aaa"].cpu == pytest.approx(0.3) and got["web-api-aaa"].memory == 96 * 2**20
    assert got["web-rpc-ccc"].cpu == pytest.approx(0.001) and got["web-rpc-ccc"].memory == 10 * 2**20
    assert got["web-api-bbb"].rx is None  # the metrics API has no network figures
    # another cloud's pods are not this one's
    assert make(cluster, tmp_path, name="k2").usage() == {}
    # pods that are not ready have no readings, and neither do their slots
    d = cluster.get(path)
    d["metadata"]["annotations"]["standin.shanzhi.io/ready"] = "false"
    httpx.put(f"{cluster.url}{path}", json=d).raise_for_status()
    wait(lambda: states(p)["web-api-aaa"] == "starting")
    assert set(p.usage()) == {"web-rpc-ccc"}


def test_a_cluster_without_the_metrics_api_gives_no_readings(tmp_path: Path) -> None:
    bare = StandIn(tmp_path / "bare.log")  # no metrics-server
    try:
        p = make(bare, tmp_path)
        p.create_instance(request("web-api-aaa"))
        wait(lambda: states(p) == {"web-api-aaa": "running"})
        assert p.usage() == {}
    finally:
        bare.stop()


def test_a_replica_with_volumes_is_a_statefulset_whose_claims_follow_its_ordinal(
    cluster: StandIn, tmp_path: Path
) -> None:
    p = make(cluster, tmp_path, storage_class="fast-ssd")

    def db(name: str, ordinal: int) -> InstanceRequest:
        vols = tuple(
            VolumeRequest(f"gz.tax_web_db-{ordinal}_{v}", v, size, path)
            for v, size, path in (("data", 2 * 2**30, "/var/lib/db"), ("wal", 2**30, "/wal"))
        )
        return request(name, component="db", ports=(("pg", 5432),), volumes=vols)

    first = p.create_instance(db("web-db-aaa", 0))
    p.create_instance(db("web-db-bbb", 1))
    sets = "/apis/apps/v1/namespaces/shz-gz-tax/statefulsets"
    s0 = cluster.get(f"{sets}/web-db-0")
    assert s0["spec"]["replicas"] == 1 and s0["spec"]["serviceName"] == "web-db"
    assert s0["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    templates = {c["metadata"]["name"]: c for c in s0["spec"]["volumeClaimTemplates"]}
    assert templates["data"]["spec"]["resources"]["requests"]["storage"] == str(2 * 2**30)
    assert templates["data"]["spec"]["storageClassName"] == "fast-ssd"
    assert templates["wal"]["metadata"]["annotations"]["shanzhi.io/volume"] == "gz.tax_web_db-0_wal"
    (c,) = s0["spec"]["template"]["spec"]["containers"]
    assert c["volumeMounts"] == [{"name": "data", "mountPath": "/var/lib/db"}, {"name": "wal", "mountPath": "/wal"}]
    # the two sets do not select each other's pods; one Service for the component
    assert s0["spec"]["selector"]["matchLabels"]["shanzhi.io/replica"] == "web-db-0"
    assert cluster.get("/api/v1/namespaces/shz-gz-tax/services/web-db")["spec"]["ports"][0]["port"] == 5432
    assert first.endpoint == "web-db.shz-gz-tax.svc:5432"
    wait(lambda: states(p) == {"web-db-aaa": "running", "web-db-bbb": "running"})
    claims = "/api/v1/namespaces/shz-gz-tax/persistentvolumeclaims"
    uid = wait(lambda: cluster.get(f"{claims}/data-web-db-0-0").get("metadata", {}).get("uid"))
    # the replica goes: its set goes, its claims stay; the Service stays for the other replica
    p.delete_instance("web-db-aaa")
    assert cluster.get(f"{sets}/web-db-0")["code"] == 404
    assert cluster.get(f"{claims}/data-web-db-0-0")["metadata"]["uid"] == uid
    assert states(p) == {"web-db-bbb": "running"}
    assert cluster.get("/api/v1/namespaces/shz-gz-tax/services/web-db")["metadata"]["name"] == "web-db"
    # its replacement (a new name, the same ordinal) makes the same set and finds the same claim
    p.create_instance(db("web-db-ccc", 0))
    wait(lambda: states(p) == {"web-db-ccc": "running", "web-db-bbb": "running"})
    assert cluster.get(f"{claims}/data-web-db-0-0")["metadata"]["uid"] == uid
    assert p.describe("web-db-ccc")["statefulset"] == "web-db-0"
    # deleting the volumes deletes exactly their claims; the last replica takes the Service with it
    for name in ("web-db-ccc", "web-db-bbb"):
        p.delete_instance(name)
    p.delete_volume("gz.tax_web_db-0_data")
    assert cluster.get(f"{claims}/data-web-db-0-0")["code"] == 404
    left = sorted(c["metadata"]["name"] for c in cluster.get(claims)["items"])
    assert left == ["data-web-db-1-0", "wal-web-db-0-0", "wal-web-db-1-0"]
    assert cluster.get("/api/v1/namespaces/shz-gz-tax/services/web-db")["code"] == 404
    assert states(p) == {}


def test_an_adopted_deployments_pods_are_measured_by_its_own_selector(cluster: StandIn, tmp_path: Path) -> None:
    p = make(cluster, tmp_path)
    legacy = {
        "metadata": {"name": "permits", "annotations": {"standin.shanzhi.io/usage": "cpu=400m,memory=32Mi"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"run": "permits"}},
            "template": {
                "metadata": {"labels": {"run": "permits"}},
                "spec": {"containers": [{"name": "p", "image": "permits:3", "ports": [{"containerPort": 8080}]}]},
            },
        },
    }
    httpx.post(f"{cluster.url}/api/v1/namespaces", json={"metadata": {"name": "old"}}).raise_for_status()
    httpx.post(f"{cluster.url}/apis/apps/v1/namespaces/old/deployments", json=legacy).raise_for_status()
    # a neighbour in the same namespace with other labels: not counted with it
    other = {**legacy, "metadata": {"name": "other", "annotations": {"standin.shanzhi.io/usage": "cpu=2,memory=1Gi"}}}
    other["spec"] = {**legacy["spec"], "selector": {"matchLabels": {"run": "other"}}}
    other["spec"]["template"] = {**legacy["spec"]["template"], "metadata": {"labels": {"run": "other"}}}
    httpx.post(f"{cluster.url}/apis/apps/v1/namespaces/old/deployments", json=other).raise_for_status()
    for name in ("permits-web-a", "permits-web-b"):
        p.adopt("old/permits", request(name, app="permits", component="web", ports=(("p8080", 8080),)))
    wait(lambda: set(states(p).values()) == {"running"})
    got = p.usage()
    assert set(got) == {"permits-web-a", "permits-web-b"}
    assert got["permits-web-a"].cpu == pytest.approx(0.4) and got["permits-web-a"].memory == 32 * 2**20


def test_the_inventory_follows_deployments_by_a_watch(cluster: StandIn, tmp_path: Path) -> None:
    p = make(cluster, tmp_path)
    assert p.inventory_since(datetime.now(UTC)) is None  # nothing listed yet: list in whole first
    p.create_instance(request("web-api-aaa"))
    httpx.post(f"{cluster.url}/api/v1/namespaces", json={"metadata": {"name": "old"}}).raise_for_status()
    legacy = {"metadata": {"name": "legacy"}, "spec": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "x", "image": "old:1"}]}}}}  # fmt: skip
    for name in ("legacy", "doomed"):
        body = legacy | {"metadata": {"name": name}}
        httpx.post(f"{cluster.url}/apis/apps/v1/namespaces/old/deployments", json=body).raise_for_status()
    wait(lambda: all(r.state == "ready" for r in p.inventory() if r.kind == "server"))
    quiet = p.inventory_since(datetime.now(UTC))
    assert quiet is not None and quiet.partial == {"server"} and quiet.gone == ()
    assert [r for r in quiet.resources if r.kind == "server"] == []  # nothing changed: no Deployment read
    assert {r.kind for r in quiet.resources} == {"host", "network"}  # the rest in whole
    httpx.delete(f"{cluster.url}/apis/apps/v1/namespaces/old/deployments/doomed").raise_for_status()
    body = legacy | {"metadata": {"name": "fresh"}}
    httpx.post(f"{cluster.url}/apis/apps/v1/namespaces/old/deployments", json=body).raise_for_status()
    delta = p.inventory_since(datetime.now(UTC))
    assert delta is not None and delta.gone == (("server", "old/doomed"),)
    assert {r.id for r in delta.resources if r.kind == "server"} == {"old/fresh"}
    # a version the cluster no longer keeps (compacted): list in whole again, then by change
    httpx.post(f"{cluster.url}/_standin/compact").raise_for_status()
    assert p.inventory_since(datetime.now(UTC)) is None
    assert {r.id for r in p.inventory() if r.kind == "server"} == {"shz-gz-tax/web-api", "old/legacy", "old/fresh"}
    again = p.inventory_since(datetime.now(UTC))
    assert again is not None and again.partial == {"server"}
