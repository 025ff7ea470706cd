"""`kubernetes`: a cluster as one cloud, through the official client.

- A component is a **Deployment** plus a **Service** (its ports) in a namespace per VDC
  (`<prefix>-<vdc>`, labelled with the VDC). The platform's placement hands the cluster a
  replica count: each replica placed here is a slot of the Deployment (its name kept, in order,
  in the annotation `shanzhi.io/instances`), and `spec.replicas` is the number of slots.
- **Health from readiness**: the component's `health` check becomes the container's readiness
  probe, and the first `readyReplicas` slots are running, the rest starting.
  The cluster's own controllers restart and reschedule pods; Shanzhi sees a slot whose
  Deployment is gone as vanished and recreates it.
- A component with `image` runs that container image; one with `run` runs its command in the
  `process_image` option's image (python:3.11-slim by default). `resources` become the
  container's requests and limits; `${PORT}`-style variables are set as for local processes.
- **Hosts**: the cluster is one host whose capacity is the sum of its nodes' allocatable cpu,
  memory and pods (the cluster's scheduler places pods on nodes).
- **Credentials**: `kubeconfig` (the file's text), sealed at rest; or `--option in_cluster=true`
  when Shanzhi itself runs in the cluster.

- A component with **volumes** is a StatefulSet per replica ordinal (`<app>-<component>-<n>`,
  one pod), its volumes claim templates (ReadWriteOnce, the volume's size, the
  `storage_class` option) mounted at their paths, the claims kept when the set is deleted
  (`persistentVolumeClaimRetentionPolicy: Retain`): the next replica of that ordinal makes the
  same set and gets the same claims back, and `delete_volume` deletes a claim (found by its
  annotation `shanzhi.io/volume`, the volume's key).
- **Adopting** a Deployment made by hand takes each of its pod slots as a replica: labels and
  slots are added, its template, selector and name stay (nothing restarts).
- **Use** comes from the cluster's metrics API (`metrics.k8s.io`, served by metrics-server):
  pods are interchangeable slots, so every running slot gets the average of the pods its object
  selects (by that object's own selector). A cluster without the metrics API gives none.

Updates are read-modify-replace with the object's `resourceVersion` (a concurrent writer makes
the API answer 409 and the call is retried), so two slots added at once are never lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import re
import threading
import time
from datetime import datetime
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from shanzhi.domain.errors import CloudUnavailable, Conflict, InvalidInput
from shanzhi.domain.metrics import Point
from shanzhi.domain.quantity import parse_cpu, parse_memory
from shanzhi.providers.base import (
    CloudStatus,
    HostInfo,
    InstanceRequest,
    Listing,
    ObservedInstance,
    OptionSpec,
    Provider,
    Resource,
)

LABEL = "shanzhi.io/"
SLOTS = f"{LABEL}instances"
VOLUME = f"{LABEL}volume"  # a claim's annotation: the volume's key (its identity for the platform)
_TIMEOUT = 10
_ATTEMPTS = 20  # writes of one Deployment that may lose a race (409) before giving up
_DNS = re.compile(r"[^a-z0-9-]+")


def _bool(value: Any) -> bool:
    text = str(value).lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"must be true or false, not {value!r}")
    return text in ("true", "1", "yes")


def dns_name(*parts: str) -> str:
    """A DNS label (at most 63) from parts; a hash keeps long ones unique."""
    name = _DNS.sub("-", "-".join(parts).lower()).strip("-")
    if len(name) <= 63:
        return name
    return name[:54].rstrip("-") + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def _label_value(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", ".", text)[:63].strip(".-_")


class KubernetesProvider(Provider):
    kind = "kubernetes"
    runtimes = frozenset({"vm", "process"})
    probes_endpoints = False
    credential_fields = {"kubeconfig": "the kubeconfig file's text (its current context, or --option context)"}
    options = {
        "context": OptionSpec(str, "", "the kubeconfig context to use (default: its current one)"),
        "in_cluster": OptionSpec(_bool, False, "use the service account of the pod Shanzhi runs in"),
        "prefix": OptionSpec(str, "shz", "namespaces are <prefix>-<vdc>"),
        "process_image": OptionSpec(str, "python:3.11-slim", "the image that runs a component's 'run' command"),
        "storage_class": OptionSpec(str, "", "the StorageClass of volumes' claims (default: the cluster's)"),
    }

    def __init__(self, name: str, options: Any, state_dir: Any, credentials: Any = None) -> None:
        super().__init__(name, options, state_dir, credentials)
        self._lock = threading.Lock()
        self._api: k8s.ApiClient | None = None
        self._deployments_seen: str | None = None  # the resourceVersion the inventory has read up to

    # -- the client and its errors ------------------------------------------------------------

    @property
    def api(self) -> k8s.ApiClient:
        with self._lock:
            if self._api is None:
                if self.opts["in_cluster"]:
                    conf = k8s.Configuration()
                    k8s_config.load_incluster_config(client_configuration=conf)
                    self._api = k8s.ApiClient(conf)
                else:
                    text = self.credentials.get("kubeconfig")
                    if not text:
                        raise CloudUnavailable(
                            f"cloud {self.name} has no kubeconfig: 'shanzhi cloud credentials {self.name} "
                            "--credentials-file FILE' (kubeconfig: |...) or --option in_cluster=true"
                        )
                    try:
                        doc = yaml.safe_load(text)
                        self._api = k8s_config.new_client_from_config_dict(doc, context=self.opts["context"] or None)
                    except (yaml.YAMLError, k8s_config.ConfigException, KeyError, TypeError) as err:
                        raise CloudUnavailable(f"cloud {self.name}: its kubeconfig is not usable: {err}") from None
                self._api.configuration.retries = 1
            return self._api

    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """One API call, its JSON answer as plain data; failures as the platform's errors."""
        try:
            raw = fn(*args, _preload_content=False, _request_timeout=_TIMEOUT, **kwargs)
            return json.loads(raw.data or b"null")
        except ApiException as err:
            if missing_ok and err.status == 404:
                return None
            if err.status == 409:
                raise Conflict(f"cloud {self.name}: {what}: {_message(err)}") from None
            if err.status in (400, 422):
                raise InvalidInput(f"cloud {self.name}: {what}: {_message(err)}") from None
            raise CloudUnavailable(f"cloud {self.name}: {what}: {err.status} {_message(err)}") from None
        except (HTTPError, OSError) as err:
            raise CloudUnavailable(f"cloud {self.name}: {what}: {err}") from None

    @property
    def _core(self) -> k8s.CoreV1Api:
        return k8s.CoreV1Api(self.api)

    @property
    def _apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self.api)

    def _selector(self) -> str:
        return f"{LABEL}cloud={_label_value(self.name)}"

    # -- capacity -------------------------------------------------------------------------------

    def _nodes(self) -> list[dict[str, Any]]:
        return list(self._call("list nodes", self._core.list_node)["items"])

    def status(self) -> CloudStatus:
        try:
            nodes = self._nodes()
        except CloudUnavailable as err:
            return CloudStatus(False, str(err))
        ready = [n for n in nodes if _ready(n)]
        if not ready:
            return CloudStatus(False, f"no ready node of {len(nodes)}")
        return CloudStatus(True, f"ok: {len(ready)} of {len(nodes)} nodes ready")

    def hosts(self) -> list[HostInfo]:
        nodes = [n for n in self._nodes() if _ready(n)]
        alloc = [n["status"].get("allocatable", {}) for n in nodes]
        return [
            HostInfo(
                name="cluster",
                cpu=sum(parse_cpu(a.get("cpu", "0")) for a in alloc),
                memory=sum(parse_memory(a.get("memory", "0")) for a in alloc),
                max_instances=max(1, sum(int(a.get("pods", "0")) for a in alloc)),
                healthy=bool(nodes),
            )
        ]

    # -- objects --------------------------------------------------------------------------------

    def _namespace(self, vdc: str) -> str:
        name = dns_name(self.opts["prefix"], vdc.replace("/", "-"))
        body = {"metadata": {"name": name, "labels": {f"{LABEL}vdc": _label_value(vdc), f"{LABEL}managed": "true"}}}
        with contextlib.suppress(Conflict):  # there already
            self._call("create namespace", self._core.create_namespace, body)
        return name

    def _labels(self, req: InstanceRequest) -> dict[str, str]:
        return {
            f"{LABEL}cloud": _label_value(self.name),
            f"{LABEL}vdc": _label_value(req.vdc),
            f"{LABEL}app": req.app,
            f"{LABEL}component": req.component,
        }

    def _deployment(self, req: InstanceRequest, name: str, slots: list[str]) -> dict[str, Any]:
        ports = [{"name": p[:15], "containerPort": port} for p, port in req.ports]
        env = {"PORT": str(req.ports[0][1])} if req.ports else {}
        env |= {f"PORT_{p.upper().replace('-', '_')}": str(port) for p, port in req.ports}
        env |= {k: _substitute(v, env) for k, v in req.env.items()}
        container: dict[str, Any] = {
            "name": req.component[:63],
            "image": req.image or self.opts["process_image"],
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
            "ports": ports,
            "resources": {
                "requests": {"cpu": f"{req.cpu}m", "memory": str(req.memory)},
                "limits": {"cpu": f"{req.cpu}m", "memory": str(req.memory)},
            },
        }
        if req.command:
            container["command"] = [_substitute(a, env) for a in req.command]
        if req.health is not None:
            container["readinessProbe"] = _probe(req)
        selector = {f"{LABEL}app": req.app, f"{LABEL}component": req.component}
        return {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "labels": self._labels(req), "annotations": {SLOTS: json.dumps(slots)}},
            "spec": {
                "replicas": len(slots),
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": self._labels(req)}, "spec": {"containers": [container]}},
            },
        }

    def _service(self, req: InstanceRequest, name: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "labels": self._labels(req)},
            "spec": {
                "selector": {f"{LABEL}app": req.app, f"{LABEL}component": req.component},
                "ports": [{"name": p[:15], "port": port, "targetPort": port} for p, port in req.ports],
            },
        }

    def _stateful_set(self, req: InstanceRequest, name: str) -> dict[str, Any]:
        """One replica ordinal with its volumes: the Deployment's pod, in a set whose claims stay."""
        body = self._deployment(req, name, [req.name])
        body["kind"] = "StatefulSet"
        spec = body["spec"]
        mine = {f"{LABEL}replica": name}  # sets of one component must not select each other's pods
        spec["selector"]["matchLabels"] |= mine
        spec["template"]["metadata"]["labels"] |= mine
        spec["serviceName"] = dns_name(req.app, req.component)
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain", "whenScaled": "Retain"}
        storage_class = {"storageClassName": self.opts["storage_class"]} if self.opts["storage_class"] else {}
        spec["volumeClaimTemplates"] = [
            {
                "metadata": {"name": v.name, "labels": self._labels(req), "annotations": {VOLUME: v.key}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": str(v.size)}},
                    **storage_class,
                },
            }
            for v in req.volumes
        ]
        container = spec["template"]["spec"]["containers"][0]
        container["volumeMounts"] = [{"name": v.name, "mountPath": v.mount_path} for v in req.volumes]
        return body

    def _mine(self) -> list[dict[str, Any]]:
        """This cloud's Deployments and StatefulSets."""
        apps, selector = self._apps, self._selector()
        found = self._call("list deployments", apps.list_deployment_for_all_namespaces, label_selector=selector)
        sets = self._call("list statefulsets", apps.list_stateful_set_for_all_namespaces, label_selector=selector)
        return [*found["items"], *sets["items"]]

    # -- instances ------------------------------------------------------------------------------

    def _observe(self, d: dict[str, Any]) -> list[ObservedInstance]:
        meta, status = d["metadata"], d.get("status") or {}
        slots = json.loads(meta.get("annotations", {}).get(SLOTS, "[]"))
        ready = min(int(status.get("readyReplicas") or 0), len(slots))  # pods already ready stay ready
        containers = d["spec"]["template"]["spec"]["containers"]
        # a port without a name (a Deployment made by hand) goes by its number, as adopting names it
        ports = {
            p.get("name") or f"p{p['containerPort']}": int(p["containerPort"]) for p in containers[0].get("ports", [])
        }
        host = f"{meta['namespace']}/{meta['name']}"
        service = d["spec"].get("serviceName", meta["name"])
        endpoint = f"{service}.{meta['namespace']}.svc:{next(iter(ports.values()))}" if ports else None
        return [
            ObservedInstance(
                name,
                "cluster",
                "running" if i < ready else "starting",
                endpoint,
                ports,
                f"{_kind(d)} {host}: {status.get('readyReplicas') or 0}/{len(slots)} ready",
            )
            for i, name in enumerate(slots)
        ]

    def list_instances(self) -> list[ObservedInstance]:
        return [o for d in self._mine() for o in self._observe(d)]

    def usage(self) -> dict[str, Point]:
        """Each running slot's use: the average of the pods its Deployment (or StatefulSet)
        selects, by that object's own selector (so an adopted one's pods count too), from the
        metrics API (metrics.k8s.io) of each namespace this cloud's objects are in."""
        workloads = self._mine()
        pods: list[tuple[str, dict[str, str], tuple[float, float]]] = []
        for ns in sorted({d["metadata"]["namespace"] for d in workloads}):
            found = self._call(
                "list pod metrics",
                k8s.CustomObjectsApi(self.api).list_namespaced_custom_object,
                "metrics.k8s.io",
                "v1beta1",
                ns,
                "pods",
                missing_ok=True,
            )
            if found is None:  # no metrics-server in this cluster: no readings, not a failure
                return {}
            for pod in found.get("items", []):
                try:
                    cpu = sum(_nanocores(c["usage"]["cpu"]) for c in pod.get("containers", [])) / 1e9
                    memory = float(sum(parse_memory(c["usage"]["memory"]) for c in pod.get("containers", [])))
                except (KeyError, ValueError):
                    continue
                pods.append((ns, pod["metadata"].get("labels") or {}, (cpu, memory)))
        out: dict[str, Point] = {}
        for d in workloads:
            want = d["spec"]["selector"].get("matchLabels", {}).items()
            ns = d["metadata"]["namespace"]
            mine = [use for where, labels, use in pods if where == ns and want <= labels.items()]
            if not mine:
                continue
            cpu, memory = (sum(v) / len(mine) for v in zip(*mine, strict=True))
            for o in self._observe(d):
                if o.state == "running":
                    out[o.name] = Point(cpu=cpu, memory=memory)
        return out

    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        ns = self._namespace(req.vdc)
        if req.volumes:
            return self._create_stateful(req, ns)
        name = dns_name(req.app, req.component)
        adopted = self._adopted(req)
        if adopted is not None:  # a Deployment taken over keeps its own name and namespace
            ns, name = adopted["metadata"]["namespace"], adopted["metadata"]["name"]
        deployments = self._apps
        for attempt in range(_ATTEMPTS):  # read, add the slot, replace; again when someone else wrote meanwhile
            _backoff(attempt)
            d = self._call("read deployment", deployments.read_namespaced_deployment, name, ns, missing_ok=True)
            try:
                if d is None:
                    d = self._call(
                        "create deployment",
                        deployments.create_namespaced_deployment,
                        ns,
                        self._deployment(req, name, [req.name]),
                    )
                    if req.ports:
                        with contextlib.suppress(Conflict):  # left by an earlier attempt
                            self._call(
                                "create service", self._core.create_namespaced_service, ns, self._service(req, name)
                            )
                else:
                    slots = json.loads(d["metadata"].get("annotations", {}).get(SLOTS, "[]"))
                    if req.name not in slots:
                        body = self._deployment(req, name, [*slots, req.name])
                        body["metadata"]["resourceVersion"] = d["metadata"]["resourceVersion"]
                        # a Deployment's selector cannot change (an adopted one has its own): kept
                        body["spec"]["selector"] = d["spec"]["selector"]
                        body["spec"]["template"]["metadata"]["labels"] |= d["spec"]["selector"].get("matchLabels", {})
                        d = self._call("replace deployment", deployments.replace_namespaced_deployment, name, ns, body)
            except Conflict:
                continue
            assert d is not None
            return next(o for o in self._observe(d) if o.name == req.name)
        raise CloudUnavailable(f"cloud {self.name}: deployment {ns}/{name} kept changing under us")

    def _adopted(self, req: InstanceRequest) -> dict[str, Any] | None:
        """The component's Deployment when it is one taken over by `adopt` (not named by us)."""
        selector = f"{self._selector()},{LABEL}app={req.app},{LABEL}component={req.component},{LABEL}adopted=true"
        found = self._call("list deployments", self._apps.list_deployment_for_all_namespaces, label_selector=selector)
        mine = [d for d in found["items"] if d["metadata"]["labels"].get(f"{LABEL}vdc") == _label_value(req.vdc)]
        return mine[0] if mine else None

    def adopt(self, resource_id: str, req: InstanceRequest) -> ObservedInstance:
        """Take one replica of a Deployment made outside Shanzhi (`namespace/name`) as `req.name`:
        its labels and slots say so, its pods and template are left as they are (nothing
        restarts). Adopting each of its replicas in turn adopts it whole."""
        ns, _, name = resource_id.partition("/")
        deployments = self._apps
        for attempt in range(_ATTEMPTS):
            _backoff(attempt)
            d = self._call("read deployment", deployments.read_namespaced_deployment, name, ns, missing_ok=True)
            if d is None:
                raise InvalidInput(f"cloud {self.name} has no Deployment {resource_id}", field="id")
            meta = d["metadata"]
            labels = meta.get("labels") or {}
            slots = json.loads((meta.get("annotations") or {}).get(SLOTS, "[]"))
            if req.name in slots:
                return next(o for o in self._observe(d) if o.name == req.name)
            if labels.get(f"{LABEL}cloud") and not labels.get(f"{LABEL}adopted"):
                raise Conflict(f"Deployment {resource_id} is already Shanzhi's", field="id")
            if len(slots) >= int(d["spec"].get("replicas", 1)):
                raise Conflict(f"every replica of Deployment {resource_id} is adopted already", field="id")
            meta["labels"] = labels | self._labels(req) | {f"{LABEL}adopted": "true"}
            meta.setdefault("annotations", {})[SLOTS] = json.dumps([*slots, req.name])
            d.pop("status", None)
            try:
                d = self._call("replace deployment", deployments.replace_namespaced_deployment, name, ns, d)
            except Conflict:
                continue
            return next(o for o in self._observe(d) if o.name == req.name)
        raise CloudUnavailable(f"cloud {self.name}: deployment {resource_id} kept changing under us")

    def _create_stateful(self, req: InstanceRequest, ns: str) -> ObservedInstance:
        """The replica's StatefulSet (made, or taken over by a replacement of the same ordinal:
        the same set, so the same claims), and the component's Service."""
        _, _, ordinal, _ = req.volumes[0].key.split("_")  # vdc_app_<component>-<n>_volume
        name, sets = dns_name(req.app, ordinal), self._apps
        for attempt in range(_ATTEMPTS):
            _backoff(attempt)
            found = self._call("read statefulset", sets.read_namespaced_stateful_set, name, ns, missing_ok=True)
            body = self._stateful_set(req, name)
            try:
                if found is None:
                    found = self._call("create statefulset", sets.create_namespaced_stateful_set, ns, body)
                elif json.loads(found["metadata"].get("annotations", {}).get(SLOTS, "[]")) != [req.name]:
                    body["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
                    found = self._call("replace statefulset", sets.replace_namespaced_stateful_set, name, ns, body)
            except Conflict:
                continue
            if req.ports:
                with contextlib.suppress(Conflict):  # the component's, made by its first replica
                    service = self._service(req, dns_name(req.app, req.component))
                    self._call("create service", self._core.create_namespaced_service, ns, service)
            assert found is not None
            return self._observe(found)[0]
        raise CloudUnavailable(f"cloud {self.name}: statefulset {ns}/{name} kept changing under us")

    def delete_volume(self, key: str) -> None:
        """Delete a replica ordinal's claim (the set that made it is gone or going)."""
        claims = self._call(
            "list claims",
            self._core.list_persistent_volume_claim_for_all_namespaces,
            label_selector=self._selector(),
        )["items"]
        for c in claims:
            if c["metadata"].get("annotations", {}).get(VOLUME) == key:
                meta = c["metadata"]
                self._call(
                    "delete claim",
                    self._core.delete_namespaced_persistent_volume_claim,
                    meta["name"],
                    meta["namespace"],
                    missing_ok=True,
                )

    def _delete_stateful(self, holder: dict[str, Any]) -> None:
        """Delete a replica's set (its claims stay); the component's Service with its last one."""
        meta, labels = holder["metadata"], holder["metadata"].get("labels", {})
        self._call(
            "delete statefulset",
            self._apps.delete_namespaced_stateful_set,
            meta["name"],
            meta["namespace"],
            missing_ok=True,
        )
        component = (labels.get(f"{LABEL}app"), labels.get(f"{LABEL}component"))
        others = [
            d
            for d in self._mine()
            if d["metadata"]["namespace"] == meta["namespace"]
            and d["metadata"]["name"] != meta["name"]
            and (d["metadata"]["labels"].get(f"{LABEL}app"), d["metadata"]["labels"].get(f"{LABEL}component"))
            == component
        ]
        if not others:
            service = holder["spec"].get("serviceName", meta["name"])
            self._call(
                "delete service", self._core.delete_namespaced_service, service, meta["namespace"], missing_ok=True
            )

    def delete_instance(self, name: str) -> None:
        deployments = self._apps
        for attempt in range(_ATTEMPTS):
            _backoff(attempt)
            holder = next(
                (d for d in self._mine() if name in json.loads(d["metadata"].get("annotations", {}).get(SLOTS, "[]"))),
                None,
            )
            if holder is None:
                return
            if _kind(holder) == "statefulset":
                self._delete_stateful(holder)
                return
            meta = holder["metadata"]
            slots = [s for s in json.loads(meta["annotations"][SLOTS]) if s != name]
            try:
                if not slots:
                    self._call(
                        "delete deployment",
                        deployments.delete_namespaced_deployment,
                        meta["name"],
                        meta["namespace"],
                        missing_ok=True,
                    )
                    self._call(
                        "delete service",
                        self._core.delete_namespaced_service,
                        meta["name"],
                        meta["namespace"],
                        missing_ok=True,
                    )
                    return
                holder["metadata"]["annotations"][SLOTS] = json.dumps(slots)
                holder["spec"]["replicas"] = len(slots)
                holder.pop("status", None)
                self._call(
                    "replace deployment",
                    deployments.replace_namespaced_deployment,
                    meta["name"],
                    meta["namespace"],
                    holder,
                )
                return
            except Conflict:
                continue
        raise CloudUnavailable(f"cloud {self.name}: deployment of {name} kept changing under us")

    def inventory(self) -> list[Resource]:
        """Nodes, every Deployment (Shanzhi's and not) and Service."""
        listed = self._call("list deployments", self._apps.list_deployment_for_all_namespaces)
        self._deployments_seen = str(listed["metadata"].get("resourceVersion") or "") or None
        return self._inventory([self._server(d) for d in listed["items"]])

    def inventory_since(self, since: datetime) -> Listing | None:
        """The same, with Deployments by change: a watch from the last list's (or watch's)
        `resourceVersion`, read for a second (what changed meanwhile, deleted ones included).
        None (list in whole) before the first list, or once the cluster no longer keeps that
        version (410 Expired)."""
        seen = self._deployments_seen
        if seen is None:
            return None
        try:
            raw = self._apps.list_deployment_for_all_namespaces(
                watch=True, resource_version=seen, timeout_seconds=1, _preload_content=False, _request_timeout=_TIMEOUT
            )
            lines = [json.loads(x) for x in (raw.data or b"").splitlines() if x.strip()]
        except ApiException as err:
            raise CloudUnavailable(f"cloud {self.name}: watch deployments: {err.status} {_message(err)}") from None
        except (HTTPError, OSError, ValueError) as err:
            raise CloudUnavailable(f"cloud {self.name}: watch deployments: {err}") from None
        changed: dict[str, dict[str, Any]] = {}
        gone: dict[str, None] = {}
        for event in lines:
            obj = event.get("object") or {}
            if event.get("type") == "ERROR":
                if obj.get("code") == 410:  # expired: list in whole, and watch from there
                    self._deployments_seen = None
                    return None
                raise CloudUnavailable(f"cloud {self.name}: watch deployments: {obj.get('message')}")
            key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
            seen = str(obj["metadata"].get("resourceVersion") or seen)
            if event.get("type") == "DELETED":
                changed.pop(key, None)
                gone[key] = None
            else:
                changed[key] = obj
                gone.pop(key, None)
        self._deployments_seen = seen
        servers = [self._server(d) for d in changed.values()]
        return Listing(self._inventory(servers), frozenset({"server"}), tuple(("server", k) for k in gone))

    def _server(self, d: dict[str, Any]) -> Resource:
        """A Deployment, for the inventory."""
        meta = d["metadata"]
        containers = d["spec"]["template"]["spec"]["containers"]
        attrs = {
            "namespace": meta["namespace"],
            "host": "cluster",
            "image": containers[0].get("image"),
            "replicas": d["spec"].get("replicas", 1),  # adopting it adopts this many replicas
            "ready": (d.get("status") or {}).get("readyReplicas") or 0,
            "ports": sorted({int(p["containerPort"]) for c in containers for p in c.get("ports", [])}),
        }
        asked = containers[0].get("resources", {}).get("requests", {})
        with contextlib.suppress(ValueError):  # a size Shanzhi cannot read: the adopter says one
            attrs |= {"cpu": parse_cpu(asked["cpu"]), "memory": parse_memory(asked["memory"])} if asked else {}
        managed = (meta.get("labels") or {}).get(f"{LABEL}cloud") == _label_value(self.name)
        state = "ready" if attrs["ready"] else "not-ready"
        return Resource("server", f"{meta['namespace']}/{meta['name']}", meta["name"], state, managed, attrs=attrs)

    def _inventory(self, servers: list[Resource]) -> list[Resource]:
        out = []
        for n in self._nodes():
            alloc = n["status"].get("allocatable", {})
            attrs: dict[str, Any] = {"cpu": parse_cpu(alloc.get("cpu", "0"))}
            attrs["memory"] = parse_memory(alloc.get("memory", "0"))
            name = n["metadata"]["name"]
            out.append(Resource("host", name, name, "ready" if _ready(n) else "not-ready", True, attrs=attrs))
        out += servers
        mine = _label_value(self.name)
        for svc in self._call("list services", self._core.list_service_for_all_namespaces)["items"]:
            meta = svc["metadata"]
            attrs = {"type": "service", "namespace": meta["namespace"], "cluster_ip": svc["spec"].get("clusterIP")}
            managed = (meta.get("labels") or {}).get(f"{LABEL}cloud") == mine
            rid = f"{meta['namespace']}/{meta['name']}"
            out.append(Resource("network", rid, meta["name"], "", managed, attrs=attrs))
        return out

    def describe(self, name: str) -> dict[str, Any]:
        for d in self._mine():
            meta = d["metadata"]
            slots = json.loads(meta.get("annotations", {}).get(SLOTS, "[]"))
            if name in slots:
                return {
                    "namespace": meta["namespace"],
                    _kind(d): meta["name"],
                    "slot": slots.index(name),
                    "replicas": d["spec"].get("replicas"),
                    "ready": (d.get("status") or {}).get("readyReplicas") or 0,
                    "image": d["spec"]["template"]["spec"]["containers"][0].get("image"),
                }
        return {}


def _kind(d: dict[str, Any]) -> str:
    """A listed object's kind (items of a list need not say theirs): a set has claim templates."""
    return "statefulset" if "volumeClaimTemplates" in d["spec"] else "deployment"


def _backoff(attempt: int) -> None:
    """After a lost race, wait a little (random, growing) so that racing writers spread out."""
    if attempt:
        time.sleep(random.uniform(0, 0.02 * min(attempt, 10)))


def _probe(req: InstanceRequest) -> dict[str, Any]:
    """The component's health check as the kubelet's readiness probe (readiness is health here)."""
    h = req.health
    assert h is not None
    check = h.http or h.tcp
    assert check is not None
    ports = dict(req.ports)
    port = ports.get(check.port, 0) if isinstance(check.port, str) else check.port
    probe: dict[str, Any] = {
        "periodSeconds": max(1, round(h.period_seconds)),
        "timeoutSeconds": max(1, round(h.timeout_seconds)),
        "failureThreshold": h.failure_threshold,
    }
    if h.http is not None:
        return probe | {"httpGet": {"path": h.http.path, "port": port}}
    return probe | {"tcpSocket": {"port": port}}


def _ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _message(err: ApiException) -> str:
    try:
        return str(json.loads(err.body or "{}").get("message") or err.reason)
    except ValueError:
        return str(err.reason)


def _nanocores(quantity: str) -> float:
    """A cpu quantity as metrics-server writes it (`3075910n`, `250u`, `12m`, `1`) in nanocores."""
    for suffix, scale in (("n", 1.0), ("u", 1e3), ("m", 1e6)):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * scale
    return float(quantity) * 1e9


def _substitute(arg: str, env: dict[str, str]) -> str:
    return re.sub(r"\$\{(PORT(?:_[A-Z0-9_]+)?)\}", lambda m: env.get(m.group(1), m.group(0)), arg)
