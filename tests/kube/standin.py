"""A loopback stand-in for the Kubernetes API: exactly the calls the `kubernetes` provider makes.

No Kubernetes runs on this machine. This server answers those calls with the bodies the
Kubernetes API reference documents (objects with `apiVersion`, `kind`, `metadata` with
`resourceVersion`, `uid`, `generation`; lists; `Status` errors with `reason` and `code`), keeps
objects in memory, honours label selectors and optimistic concurrency (a PUT with a stale
`resourceVersion` is 409 Conflict), and plays the part of the controllers and kubelets: every
0.2 s each Deployment's and StatefulSet's status reports `spec.replicas` ready (a StatefulSet's
claims made from its templates, bound, and kept when it goes), unless its annotation
`standin.shanzhi.io/ready` is `"false"` (a test's way to fail the pods' readiness). With
`--metrics`, it serves metrics-server's `metrics.k8s.io/v1beta1` pod metrics: one PodMetrics per
ready pod of each Deployment, with the use its annotation `standin.shanzhi.io/usage` names
(`cpu=250m,memory=64Mi`; a test's way to load the pods), else 1m and 10Mi. A list with
`watch=1` streams the changes after `resourceVersion` (one JSON event a line, for
`timeoutSeconds`), or an `Expired` (410) error event once that version is older than the
changes it keeps.

    python -m tests.kube.standin --port P [--nodes 2 --cpu 4 --memory 8Gi]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from shanzhi.domain.quantity import parse_cpu, parse_memory

_rv = itertools.count(1)
_lock = threading.Lock()
_objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name) -> object
_events: list[tuple[int, str, str, dict[str, Any]]] = []  # (resourceVersion, plural, type, object): for watches
KEPT_EVENTS = 1000  # a watch from before the oldest kept is told 410 Expired, as the API server does
_compacted = [0]  # every change up to this resourceVersion is forgotten
KINDS = {
    "namespaces": ("Namespace", "v1"),
    "services": ("Service", "v1"),
    "persistentvolumeclaims": ("PersistentVolumeClaim", "v1"),
    "deployments": ("Deployment", "apps/v1"),
    "statefulsets": ("StatefulSet", "apps/v1"),
}
WORKLOADS = ("deployments", "statefulsets")
app = FastAPI()
USAGE = "standin.shanzhi.io/usage"
NODES: list[dict[str, Any]] = []


def _status(code: int, reason: str, message: str) -> JSONResponse:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return JSONResponse(body, status_code=code)


def _matches(obj: dict[str, Any], selector: str | None) -> bool:
    if not selector:
        return True
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(k) == v for k, _, v in (term.partition("=") for term in selector.split(",")))


def _list(plural: str, namespace: str | None, selector: str | None) -> dict[str, Any]:
    kind, version = KINDS[plural]
    with _lock:
        items = [
            copy.deepcopy(o)
            for (k, ns, _), o in sorted(_objects.items())
            if k == plural and (namespace is None or ns == namespace) and _matches(o, selector)
        ]
    return {
        "kind": f"{kind}List",
        "apiVersion": version,
        "metadata": {"resourceVersion": str(next(_rv))},
        "items": items,
    }


def _event(plural: str, kind: str, obj: dict[str, Any]) -> None:
    """Record a change for watchers (under `_lock`)."""
    _events.append((int(obj["metadata"]["resourceVersion"]), plural, kind, copy.deepcopy(obj)))
    if len(_events) > KEPT_EVENTS:
        _compacted[0] = _events[-KEPT_EVENTS - 1][0]
        del _events[:-KEPT_EVENTS]


def _watch(plural: str, since: str, selector: str | None, timeout: float) -> StreamingResponse | JSONResponse:
    """A watch: every change after `since`, one JSON event a line, for `timeout` seconds."""
    start = int(since or 0)
    with _lock:
        if start < _compacted[0]:
            body = {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "message": f"too old resource version: {start} ({_compacted[0]})", "reason": "Expired",
                    "code": 410}}  # fmt: skip
            return JSONResponse(body)

    def lines() -> Any:
        seen = start
        deadline = time.monotonic() + timeout
        while True:
            with _lock:
                fresh = [(rv, k, o) for rv, p, k, o in _events if p == plural and rv > seen and _matches(o, selector)]
            for rv, kind, obj in fresh:
                seen = rv
                yield json.dumps({"type": kind, "object": obj}) + "\n"
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    return StreamingResponse(lines(), media_type="application/json")


def _stamp(plural: str, namespace: str, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
    kind, version = KINDS[plural]
    meta = obj.setdefault("metadata", {})
    meta["namespace"] = namespace if plural != "namespaces" else None
    meta["resourceVersion"] = str(next(_rv))
    meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
    meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else datetime.now(UTC).isoformat()
    if plural in WORKLOADS:
        spec_changed = old is None or old.get("spec") != obj.get("spec")
        meta["generation"] = (old["metadata"].get("generation", 1) + (1 if spec_changed else 0)) if old else 1
        obj["status"] = (old or {}).get("status", {}) if old else {}
    if plural == "services":
        obj.setdefault("spec", {}).setdefault("clusterIP", f"10.96.0.{len(_objects) % 250 + 2}")
    obj["kind"], obj["apiVersion"] = kind, version
    return obj


async def _create(plural: str, namespace: str, request: Request) -> JSONResponse:
    obj = await request.json()
    name = obj.get("metadata", {}).get("name")
    if not name:
        return _status(422, "Invalid", f"{plural}: metadata.name: Required value")
    with _lock:
        if plural != "namespaces" and ("namespaces", "", namespace) not in _objects:
            return _status(404, "NotFound", f'namespaces "{namespace}" not found')
        if (plural, namespace, name) in _objects:
            return _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        _objects[(plural, namespace, name)] = _stamp(plural, namespace, obj, None)
        _event(plural, "ADDED", obj)
        return JSONResponse(copy.deepcopy(obj), status_code=201)


def _get(plural: str, namespace: str, name: str) -> JSONResponse:
    with _lock:
        obj = _objects.get((plural, namespace, name))
        if obj is None:
            return _status(404, "NotFound", f'{plural} "{name}" not found')
        return JSONResponse(copy.deepcopy(obj))


async def _replace(plural: str, namespace: str, name: str, request: Request) -> JSONResponse:
    obj = await request.json()
    with _lock:
        old = _objects.get((plural, namespace, name))
        if old is None:
            return _status(404, "NotFound", f'{plural} "{name}" not found')
        given = obj.get("metadata", {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            return _status(
                409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified'
            )
        _objects[(plural, namespace, name)] = _stamp(plural, namespace, obj, old)
        _event(plural, "MODIFIED", obj)
        return JSONResponse(copy.deepcopy(obj))


def _delete(plural: str, namespace: str, name: str) -> JSONResponse:
    with _lock:
        gone = _objects.pop((plural, namespace, name), None)
        if gone is None:
            return _status(404, "NotFound", f'{plural} "{name}" not found')
        gone["metadata"]["resourceVersion"] = str(next(_rv))
        _event(plural, "DELETED", gone)
        if plural == "namespaces":
            for key in [k for k in _objects if k[1] == name]:
                obj = _objects.pop(key)
                obj["metadata"]["resourceVersion"] = str(next(_rv))
                _event(key[0], "DELETED", obj)
    return JSONResponse({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})


@app.get("/api/v1/nodes")
def nodes() -> dict[str, Any]:
    return {"kind": "NodeList", "apiVersion": "v1", "metadata": {}, "items": NODES}


@app.get("/api/v1/namespaces")
def list_namespaces(labelSelector: str | None = None) -> dict[str, Any]:
    return _list("namespaces", None, labelSelector)


@app.post("/api/v1/namespaces")
async def create_namespace(request: Request) -> JSONResponse:
    obj = await request.json()
    with _lock:
        name = obj["metadata"]["name"]
        if ("namespaces", "", name) in _objects:
            return _status(409, "AlreadyExists", f'namespaces "{name}" already exists')
        _objects[("namespaces", "", name)] = _stamp("namespaces", "", obj, None)
        return JSONResponse(copy.deepcopy(obj), status_code=201)


@app.get("/api/v1/namespaces/{name}")
def get_namespace(name: str) -> JSONResponse:
    return _get("namespaces", "", name)


@app.delete("/api/v1/namespaces/{name}")
def delete_namespace(name: str) -> JSONResponse:
    return _delete("namespaces", "", name)


for plural, base in (
    ("services", "/api/v1"),
    ("persistentvolumeclaims", "/api/v1"),
    ("deployments", "/apis/apps/v1"),
    ("statefulsets", "/apis/apps/v1"),
):

    def routes(plural: str = plural, base: str = base) -> None:
        @app.get(f"{base}/{plural}", response_model=None)
        def list_all(
            labelSelector: str | None = None,
            watch: bool = False,
            resourceVersion: str = "",
            timeoutSeconds: float = 1.0,
        ) -> dict[str, Any] | StreamingResponse | JSONResponse:
            if watch:
                return _watch(plural, resourceVersion, labelSelector, min(timeoutSeconds, 5.0))
            return _list(plural, None, labelSelector)

        @app.get(f"{base}/namespaces/{{ns}}/{plural}")
        def list_ns(ns: str, labelSelector: str | None = None) -> dict[str, Any]:
            return _list(plural, ns, labelSelector)

        @app.post(f"{base}/namespaces/{{ns}}/{plural}")
        async def create(ns: str, request: Request) -> JSONResponse:
            return await _create(plural, ns, request)

        @app.get(f"{base}/namespaces/{{ns}}/{plural}/{{name}}")
        def get(ns: str, name: str) -> JSONResponse:
            return _get(plural, ns, name)

        @app.put(f"{base}/namespaces/{{ns}}/{plural}/{{name}}")
        async def replace(ns: str, name: str, request: Request) -> JSONResponse:
            return await _replace(plural, ns, name, request)

        @app.delete(f"{base}/namespaces/{{ns}}/{plural}/{{name}}")
        def delete(ns: str, name: str) -> JSONResponse:
            return _delete(plural, ns, name)

    routes()


@app.post("/_standin/compact")
def compact() -> dict[str, Any]:
    """Forget every change so far, as etcd's compaction does (a test's way to expire watches)."""
    with _lock:
        _compacted[0] = next(_rv)
        _events.clear()
    return {"compacted": _compacted[0]}


def pod_metrics(labelSelector: str | None = None, ns: str | None = None) -> dict[str, Any]:
    """metrics.k8s.io/v1beta1 PodMetricsList, as metrics-server answers it (nanocores, KiB)."""
    items = []
    with _lock:
        deployments = [
            copy.deepcopy(o) for (k, where, _), o in sorted(_objects.items()) if k in WORKLOADS and ns in (None, where)
        ]
    for d in deployments:
        template = d["spec"]["template"]["metadata"]
        if not _matches({"metadata": template}, labelSelector):
            continue
        asked = dict(
            kv.split("=", 1) for kv in d["metadata"].get("annotations", {}).get(USAGE, "").split(",") if "=" in kv
        )
        cpu = parse_cpu(asked.get("cpu", "1m")) * 10**6
        memory = parse_memory(asked.get("memory", "10Mi")) // 1024
        for i in range(int((d.get("status") or {}).get("readyReplicas") or 0)):
            items.append(
                {
                    "metadata": {
                        "name": f"{d['metadata']['name']}-standin-{i}",
                        "namespace": d["metadata"]["namespace"],
                        "labels": template.get("labels", {}),
                    },
                    "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "window": "30s",
                    "containers": [
                        {"name": c["name"], "usage": {"cpu": f"{cpu}n", "memory": f"{memory}Ki"}}
                        for c in d["spec"]["template"]["spec"]["containers"]
                    ],
                }
            )
    return {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": items}


def _claims(namespace: str, sts: dict[str, Any]) -> None:
    """The StatefulSet controller's part: a claim per template and pod ordinal, made once, bound
    at once, and left when the set goes (its retention policy here is always Retain)."""
    for i in range(int(sts["spec"].get("replicas", 1))):
        for template in sts["spec"].get("volumeClaimTemplates", []):
            name = f"{template['metadata']['name']}-{sts['metadata']['name']}-{i}"
            if ("persistentvolumeclaims", namespace, name) in _objects:
                continue
            meta = copy.deepcopy(template["metadata"]) | {"name": name}
            claim = {"metadata": meta, "spec": copy.deepcopy(template["spec"]), "status": {"phase": "Bound"}}
            _objects[("persistentvolumeclaims", namespace, name)] = _stamp(
                "persistentvolumeclaims", namespace, claim, None
            )


def _kubelets() -> None:
    """The controllers' and kubelets' part: Deployments' and StatefulSets' pods become ready
    (unless told not to); StatefulSets' claims are made."""
    while True:
        time.sleep(0.2)
        with _lock:
            for (plural, namespace, _), obj in list(_objects.items()):
                if plural not in WORKLOADS:
                    continue
                if plural == "statefulsets":
                    _claims(namespace, obj)
                want = int(obj["spec"].get("replicas", 1))
                ready = 0 if obj["metadata"].get("annotations", {}).get("standin.shanzhi.io/ready") == "false" else want
                status = {
                    "observedGeneration": obj["metadata"]["generation"],
                    "replicas": want,
                    "updatedReplicas": want,
                    "readyReplicas": ready,
                    "availableReplicas": ready,
                }
                if obj.get("status") != status:
                    obj["status"] = status
                    obj["metadata"]["resourceVersion"] = str(next(_rv))
                    _event(plural, "MODIFIED", obj)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--cpu", default="4")
    ap.add_argument("--memory", default="8Gi")
    ap.add_argument("--metrics", action="store_true", help="serve metrics.k8s.io (as metrics-server does)")
    args = ap.parse_args()
    if args.metrics:
        app.get("/apis/metrics.k8s.io/v1beta1/pods")(pod_metrics)
        app.get("/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods")(pod_metrics)
    for i in range(args.nodes):
        alloc = {"cpu": args.cpu, "memory": args.memory, "pods": "110"}
        NODES.append(
            {
                "kind": "Node",
                "apiVersion": "v1",
                "metadata": {"name": f"node-{i}", "labels": {"kubernetes.io/hostname": f"node-{i}"}},
                "status": {
                    "allocatable": alloc,
                    "capacity": alloc,
                    "conditions": [{"type": "Ready", "status": "True"}],
                },
            }
        )
    threading.Thread(target=_kubelets, daemon=True).start()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
