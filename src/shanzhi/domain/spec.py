"""The declarative App spec (`apiVersion: shanzhi.io/v1`, `kind: App`).

Parsed with pydantic in strict "forbid" mode so that an unknown or misspelt field is refused
with its full path (for example `spec.components[0].replica`). The spec is stored as given
(after validation) and hashed per component, so that re-applying the same spec changes
nothing and a changed component rolls out alone.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from shanzhi.domain.dr import MEMBERS, Dr, Postgres, parse_duration
from shanzhi.domain.errors import InvalidInput
from shanzhi.domain.metrics import SERIES, check_metric
from shanzhi.domain.quantity import parse_cpu, parse_memory

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
VDC_PATH_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(/[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
Name = Annotated[str, Field(pattern=NAME_RE)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True, allow_inf_nan=False)


class Metadata(_Model):
    name: Name
    vdc: Annotated[str, Field(pattern=VDC_PATH_RE)]
    labels: dict[str, str] = Field(default_factory=dict)


class Resources(_Model):
    cpu: float | int | str = 0.1
    memory: int | str = "64Mi"
    storage: int | str = 0  # disk the replica needs (metered and counted against quota)

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: float | int | str) -> float | int | str:
        parse_cpu(v)
        return v

    @field_validator("memory", "storage")
    @classmethod
    def _memory(cls, v: int | str) -> int | str:
        parse_memory(v)
        return v

    @property
    def cpu_millis(self) -> int:
        return parse_cpu(self.cpu)

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def storage_bytes(self) -> int:
        return parse_memory(self.storage)


class Run(_Model):
    command: Annotated[list[str], Field(min_length=1)]
    env: dict[str, str] = Field(default_factory=dict)


class Port(_Model):
    name: Name
    port: Annotated[StrictInt, Field(ge=1, le=65535)]
    protocol: Literal["tcp", "udp"] = "tcp"


class HttpCheck(_Model):
    path: str = "/"
    port: str | int


class TcpCheck(_Model):
    port: str | int


class Health(_Model):
    http: HttpCheck | None = None
    tcp: TcpCheck | None = None
    period_seconds: Annotated[float, Field(alias="periodSeconds", gt=0, le=3600)] = 2.0
    timeout_seconds: Annotated[float, Field(alias="timeoutSeconds", gt=0, le=600)] = 1.0
    failure_threshold: Annotated[StrictInt, Field(alias="failureThreshold", ge=1, le=1000)] = 3

    @model_validator(mode="after")
    def _one_check(self) -> Health:
        if (self.http is None) == (self.tcp is None):
            raise ValueError("health needs exactly one of 'http' or 'tcp'")
        return self


class Scrape(_Model):
    """Where a replica exports its own metrics (Prometheus text format): the collector reads
    them with its samples, and a Prometheus server finds them through the targets."""

    port: str | int
    path: Annotated[str, Field(pattern=r"^/[A-Za-z0-9._~/%-]*$", max_length=255)] = "/metrics"


class Volume(_Model):
    """Storage that follows a replica's ordinal (`db-0` gets `db-0`'s back when replaced on the
    same cloud): a VM's disk, formatted and mounted at `mountPath` by the guest on first boot; a
    process's directory, named in `$SHANZHI_VOLUME_<NAME>` (a file system of its size where the
    machine can mount one, see `shanzhi.providers.sized`)."""

    name: Name
    size: int | str
    mount_path: Annotated[str, Field(alias="mountPath", pattern=r"^/[A-Za-z0-9._/-]*$", max_length=255)]
    reclaim_policy: Literal["delete", "retain"] = Field(default="delete", alias="reclaimPolicy")

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        if parse_memory(v) < 2**20:
            raise ValueError("a volume needs at least 1Mi")
        return v

    @property
    def size_bytes(self) -> int:
        return parse_memory(self.size)


#: named sizes (cpu, memory), as a cloud's catalogue offers them: `flavor: s1.medium` instead of resources
FLAVORS: dict[str, tuple[str, str]] = {
    "s1.tiny": ("0.5", "256Mi"),
    "s1.small": ("1", "1Gi"),
    "s1.medium": ("2", "4Gi"),
    "s1.large": ("4", "8Gi"),
    "s1.xlarge": ("8", "16Gi"),
    "m1.large": ("4", "32Gi"),
}


def volume_key(vdc: str, app: str, component: str, ordinal: int, volume: str) -> str:
    """A volume's disk name on its cloud: readable, unique per VDC, app, component, ordinal and
    volume (names hold no `_` or `.`, so the parts cannot run into each other)."""
    return f"{vdc.replace('/', '.')}_{app}_{component}-{ordinal}_{volume}"


#: a managed PostgreSQL's defaults: its data volume's mount point and the memory Patroni and
#: PostgreSQL need together (shared_buffers stays small unless `postgres.parameters` says more)
POSTGRES_MOUNT = "/var/lib/postgresql"
POSTGRES_MEMORY = "256Mi"
POSTGRES_CPU = "1"  # at the 0.1 of a plain component, commits and recovery crawl
#: the ports a managed PostgreSQL member listens on: PostgreSQL first (the instance's endpoint)
POSTGRES_PORTS = ({"name": "pg", "port": 5432}, {"name": "api", "port": 8008})


class Autoscale(_Model):
    """Replicas that follow load: the per-replica average of `metric` is kept near `target` (cpu
    in cores, memory a quantity, rx/tx/read/write in bytes per second, a metric the workload
    exports under `metrics` in its own unit; a counter's is per second), between `min` and
    `max`, at most one change per `cooldown`. Quota and approval rules apply to each change."""

    min: Annotated[StrictInt, Field(ge=0, le=10_000)] = 1
    max: Annotated[StrictInt, Field(ge=1, le=10_000)]
    metric: Annotated[str, Field(max_length=128)] = "cpu"
    target: float | int | str
    cooldown: str | int = "60s"

    @model_validator(mode="after")
    def _check(self) -> Autoscale:
        check_metric(self.metric)
        if self.min > self.max:
            raise ValueError(f"autoscale min {self.min} is above max {self.max}")
        if self.target_value <= 0:
            raise ValueError("autoscale target must be more than 0")
        parse_duration(self.cooldown)
        return self

    @property
    def target_value(self) -> float:
        if self.metric == "cpu":
            return parse_cpu(self.target) / 1000
        if self.metric == "memory":
            return float(parse_memory(self.target))
        try:
            return float(self.target)
        except ValueError:
            unit = "bytes per second" if self.metric in SERIES else f"{self.metric} (a plain number)"
            raise ValueError(f"autoscale target {self.target!r} is not a number of {unit}") from None

    @property
    def custom(self) -> bool:
        """Whether it follows a metric the workload exports (not one the cloud measures)."""
        return self.metric not in SERIES

    @property
    def cooldown_seconds(self) -> float:
        return parse_duration(self.cooldown)


class Component(_Model):
    name: Name
    # service: the replicas run what `run` or `image` says; postgres: the platform runs a Patroni
    # cluster, one member per centre of the app's DR tier (`replicas` comes from the tier)
    kind: Literal["service", "postgres"] = "service"
    postgres: Postgres | None = None
    replicas: Annotated[StrictInt, Field(ge=0, le=10_000)] = 1
    resources: Resources = Field(default_factory=Resources)
    run: Run | None = None
    image: str | None = None
    flavor: str | None = None
    ports: list[Port] = Field(default_factory=list)
    health: Health | None = None
    volumes: list[Volume] = Field(default_factory=list, max_length=8)
    env: dict[str, str] = Field(default_factory=dict)  # a VM's environment (its cloud-init seed); processes: run.env
    autoscale: Autoscale | None = None
    metrics: Scrape | None = None
    # set by `shanzhi app restart`: a new value rolls every replica (it is part of the hash)
    restarted_at: str | None = Field(default=None, alias="restartedAt", max_length=64)

    @model_validator(mode="before")
    @classmethod
    def _flavor(cls, data: Any) -> Any:
        """A flavor names the cpu and memory: they come from it, and may not also be given."""
        if not isinstance(data, dict) or data.get("flavor") is None:
            return data
        flavor = data["flavor"]
        if flavor not in FLAVORS:
            raise ValueError(f"unknown flavor {flavor!r}; known: {', '.join(FLAVORS)}")
        given = data.get("resources") or {}
        if not isinstance(given, dict):
            return data
        cpu, memory = FLAVORS[flavor]
        try:  # a stored spec holds the flavor's own values: those are no conflict
            same = parse_cpu(given.get("cpu", cpu)) == parse_cpu(cpu) and parse_memory(
                given.get("memory", memory)
            ) == parse_memory(memory)
        except (ValueError, TypeError):
            same = False
        both = sorted({"cpu", "memory"} & set(given))
        if both and not same:
            raise ValueError(f"flavor {flavor} sets cpu and memory: leave out resources.{' and resources.'.join(both)}")
        return {**data, "resources": {**given, "cpu": cpu, "memory": memory}}

    @model_validator(mode="before")
    @classmethod
    def _postgres(cls, data: Any) -> Any:
        """A managed PostgreSQL: the platform's command, ports and (unless named) data volume."""
        if not isinstance(data, dict) or data.get("kind") != "postgres":
            if isinstance(data, dict) and data.get("postgres") is not None:
                raise ValueError("'postgres' settings go with kind: postgres")
            return data
        given = sorted(k for k in ("run", "image", "ports", "health", "env", "flavor") if data.get(k))
        stored = given == ["ports"] and [
            (q.get("name"), q.get("port")) for q in data["ports"] if isinstance(q, dict)
        ] == [(q["name"], q["port"]) for q in POSTGRES_PORTS]  # a stored spec holds the platform's own ports
        if given and not stored:
            raise ValueError(f"kind postgres is run by the platform: leave out {', '.join(given)}")
        pg = data.get("postgres") or {}
        out = {**data, "postgres": pg, "ports": list(POSTGRES_PORTS)}
        if not data.get("volumes") and isinstance(pg, dict):
            out["volumes"] = [{"name": "data", "size": pg.get("size", "1Gi"), "mountPath": POSTGRES_MOUNT}]
        res = data.get("resources")
        if isinstance(res, dict) or res is None:
            out["resources"] = {"cpu": POSTGRES_CPU, "memory": POSTGRES_MEMORY, **(res or {})}
        return out

    @model_validator(mode="after")
    def _check(self) -> Component:
        if self.autoscale is not None and (self.kind == "postgres" or self.volumes):
            raise ValueError("autoscale is for stateless components: this one keeps data on volumes")
        if self.kind == "postgres":
            if len(self.volumes) != 1:
                raise ValueError("kind postgres keeps its data on one volume (name it, or let postgres.size make it)")
            return self
        if self.run is None and self.image is None:
            raise ValueError("a component needs 'run' (process runtime) or 'image' (VM runtime)")
        names = [p.name for p in self.ports]
        if len(set(names)) != len(names):
            raise ValueError("port names must be unique within a component")
        vols = [v.name for v in self.volumes]
        if len(set(vols)) != len(vols):
            raise ValueError("volume names must be unique within a component")
        if self.env and self.run is not None:
            raise ValueError("a process's environment goes under 'run.env' ('env' is a VM's)")
        if self.health is not None:
            check = self.health.http or self.health.tcp
            assert check is not None
            if isinstance(check.port, str) and check.port not in names:
                raise ValueError(f"health check names port {check.port!r}, which is not in 'ports'")
        if self.metrics is not None and self.metrics.port not in names + [p.port for p in self.ports]:
            raise ValueError(f"metrics names port {self.metrics.port!r}, which is not in 'ports'")
        if self.autoscale is not None and self.autoscale.custom and self.metrics is None:
            raise ValueError(
                f"autoscale metric {self.autoscale.metric!r} is not one of {', '.join(SERIES)}: "
                "a workload's own metric needs 'metrics' (the port and path it exports them on)"
            )
        return self

    @property
    def runtime(self) -> str:
        """What a cloud must run for it: processes (a managed database is processes) or VMs."""
        return "vm" if self.run is None and self.kind == "service" else "process"

    @property
    def storage_bytes(self) -> int:
        """Disk per replica: `resources.storage` and every volume (counted against quota, metered)."""
        return self.resources.storage_bytes + sum(v.size_bytes for v in self.volumes)

    def spec_hash(self, placement: Placement) -> str:
        """Hash of everything that requires replacing a replica (replicas excluded).

        Defaults are left out, so a field added to the spec later (with a default) does not
        change the hash of existing apps and roll every replica on upgrade.
        """
        body = self.model_dump(
            mode="json", by_alias=True, exclude={"replicas", "autoscale", "metrics"}, exclude_defaults=True
        )
        body["placement"] = placement.model_dump(mode="json", by_alias=True, exclude_defaults=True)
        raw = json.dumps(body, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


class CloudSelector(_Model):
    tags: dict[str, str] = Field(default_factory=dict)
    names: list[str] = Field(default_factory=list)


class Spread(_Model):
    over: Literal["site", "cloud"] = "site"
    min_groups: Annotated[StrictInt, Field(alias="minGroups", ge=1, le=10_000)] = 1


class AntiAffinity(_Model):
    over: Literal["host", "cloud", "site"] = "host"


class Placement(_Model):
    clouds: CloudSelector = Field(default_factory=CloudSelector)
    # data residency: replicas only in clouds of these regions (empty: any region)
    regions: list[str] = Field(default_factory=list)
    # divide replicas over clouds by these static weights (empty: by free capacity)
    weights: dict[str, Annotated[float, Field(ge=0, le=1e6)]] = Field(default_factory=dict)
    spread: Spread | None = None
    anti_affinity: AntiAffinity | None = Field(default=None, alias="antiAffinity")
    strategy: Literal["spread", "least-allocated", "binpack"] = "least-allocated"

    def refuses_cloud(self, name: str, region: str, tags: Mapping[str, str]) -> str | None:
        """Why this placement rules a cloud out (data residency, names, tags), or None."""
        if self.regions and region not in self.regions:
            return f"region {region} is outside the allowed regions {self.regions} (data residency)"
        if self.clouds.names and name not in self.clouds.names:
            return f"not in clouds.names {self.clouds.names}"
        for k, v in self.clouds.tags.items():
            if tags.get(k) != v:
                have = tags.get(k)
                return f"tag {k}={v} wanted, cloud has {k}={have}" if have else f"tag {k}={v} wanted, cloud has no {k}"
        return None


class Peer(_Model):
    """Who may connect: an app (of this VDC, or of `vdc`), a whole VDC, or an address range."""

    app: Name | None = None
    vdc: Annotated[str, Field(pattern=VDC_PATH_RE)] | None = None
    cidr: str | None = None

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            net = ipaddress.ip_network(v, strict=True)
        except ValueError as err:
            raise ValueError(f"not an address range: {err}") from None
        if net.version != 4:
            raise ValueError("only IPv4 ranges (tenant networks are IPv4)")
        return str(net)

    @model_validator(mode="after")
    def _one(self) -> Peer:
        if self.cidr is not None and (self.app or self.vdc):
            raise ValueError("'cidr' stands alone: give either cidr, or app and/or vdc")
        if self.cidr is None and not (self.app or self.vdc):
            raise ValueError("name an app, a vdc or a cidr")
        return self


PortRef = Annotated[StrictInt, Field(ge=1, le=65535)] | Name


class AllowRule(_Model):
    """Traffic this app accepts from a peer: to some of its ports (numbers or port names), or all."""

    from_: Peer = Field(alias="from")
    ports: list[PortRef] = Field(default_factory=list, max_length=64)
    protocol: Literal["tcp", "udp", "icmp", "any"] | None = None  # default: the named ports' own, else tcp

    @model_validator(mode="after")
    def _icmp(self) -> AllowRule:
        if self.protocol in ("icmp", "any") and self.ports:
            raise ValueError(f"protocol {self.protocol} has no ports: leave out 'ports'")
        return self


class Network(_Model):
    """Who may reach this app. Without a `network` section, the app's own VDC may; with one, only
    its own replicas and what `allow` lists. `expose` opens ports to everyone (other VDCs and
    outside). Traffic from another VDC is refused unless a rule here names it."""

    allow: list[AllowRule] = Field(default_factory=list, max_length=256)
    expose: list[PortRef] = Field(default_factory=list, max_length=64)


class AppSpecBody(_Model):
    components: Annotated[list[Component], Field(min_length=1)]
    placement: Placement = Field(default_factory=Placement)
    network: Network | None = None
    dr: Dr = Field(default_factory=Dr)

    @model_validator(mode="before")
    @classmethod
    def _members(cls, data: Any) -> Any:
        """A managed database has one member per centre of the DR tier: that is its replicas."""
        if not isinstance(data, dict) or not isinstance(data.get("components"), list):
            return data
        dr = data.get("dr") or {}
        tier = dr.get("tier", "none") if isinstance(dr, dict) else "none"
        if tier not in MEMBERS:
            return data  # the field's own validation names it
        want = len(MEMBERS[tier])
        comps = []
        for c in data["components"]:
            if isinstance(c, dict) and c.get("kind") == "postgres":
                given = c.get("replicas")
                if given is not None and given != want:
                    raise ValueError(
                        f"component {c.get('name')}: a postgres has one member per centre of dr.tier {tier} "
                        f"({want}); leave out replicas"
                    )
                comps.append({**c, "replicas": want})
            else:
                comps.append(c)
        return {**data, "components": comps}

    @model_validator(mode="after")
    def _unique(self) -> AppSpecBody:
        names = [c.name for c in self.components]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"component names must be unique; repeated: {', '.join(dup)}")
        if self.network is not None:
            known = {p.name for c in self.components for p in c.ports}
            refs = [p for r in self.network.allow for p in r.ports] + list(self.network.expose)
            unknown = sorted({p for p in refs if isinstance(p, str) and p not in known})
            if unknown:
                raise ValueError(
                    f"network names port {', '.join(unknown)}, which no component declares "
                    f"(ports: {', '.join(sorted(known)) or 'none'})"
                )
        return self

    def databases(self) -> list[Component]:
        return [c for c in self.components if c.kind == "postgres"]

    def port_table(self) -> dict[str, tuple[int, str]]:
        """Every named port of the app: name -> (number, protocol)."""
        return {p.name: (p.port, p.protocol) for c in self.components for p in c.ports}


class AppSpec(_Model):
    api_version: Literal["shanzhi.io/v1"] = Field(alias="apiVersion")
    kind: Literal["App"]
    metadata: Metadata
    spec: AppSpecBody

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


_DECIMAL_SIZE = re.compile(r"^\s*[0-9]+(?:\.[0-9]+)?\s*[kKMGTP][Bb]?\s*$")


def warnings(spec: AppSpec) -> list[str]:
    """What is valid but surely not meant: decimal sizes (`64MB` is 64,000,000 bytes, not 64Mi)."""
    found = []
    for i, c in enumerate(spec.spec.components):
        for what in ("memory", "storage"):
            value = getattr(c.resources, what)
            if isinstance(value, str) and _DECIMAL_SIZE.match(value):
                exact = parse_memory(value)
                found.append(
                    f"spec.components[{i}].resources.{what}: {value!r} is decimal ({exact:,} bytes); "
                    f"for binary units write {value.strip().rstrip('Bb').rstrip()}i"
                )
    return found


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part.startswith("function-after") or part in {"str", "int", "float"}:
            continue
        else:
            out += f".{part}" if out else part
    return out


def validation_problems(err: ValidationError) -> list[dict[str, str]]:
    """Turn pydantic's errors into `{field, message}` pairs with dotted paths."""
    problems = []
    for e in err.errors():
        field = _loc(tuple(e["loc"]))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field '{field.rsplit('.', 1)[-1]}'"
        problems.append({"field": field or "(document)", "message": msg})
    # A union failing on every branch yields one error per branch; keep the first per field.
    seen: set[str] = set()
    unique = []
    for p in problems:
        if p["field"] not in seen:
            seen.add(p["field"])
            unique.append(p)
    return unique


class SpecInvalid(InvalidInput):
    def __init__(self, problems: list[dict[str, str]]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first['field']}: {first['message']}{more}", field=first["field"])
        self.problems = problems


def parse_app(doc: Any) -> AppSpec:
    """Validate a decoded document as an App spec; raise SpecInvalid naming each field."""
    if not isinstance(doc, dict):
        raise SpecInvalid([{"field": "(document)", "message": "an App spec must be a mapping"}])
    try:
        return AppSpec.model_validate(doc)
    except ValidationError as err:
        raise SpecInvalid(validation_problems(err)) from None


#: a spec file is small; anything past these is an attack (billion laughs) or a mistake
MAX_DOCUMENT_BYTES = 4 * 2**20
MAX_EXPANDED_NODES = 100_000


def load_yaml_documents(text: str) -> list[Any]:
    """Every document of YAML (or JSON) text, refusing text over MAX_DOCUMENT_BYTES and
    documents whose aliases would expand past MAX_EXPANDED_NODES; raises ValueError saying so."""
    if len(text.encode()) > MAX_DOCUMENT_BYTES:
        raise ValueError(f"the document is {len(text.encode())} bytes, over the {MAX_DOCUMENT_BYTES} allowed")
    loader = yaml.SafeLoader(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
                raise ValueError(
                    f"the document's aliases expand to more than {MAX_EXPANDED_NODES} nodes (a 'billion laughs'?)"
                )
            docs.append(loader.construct_document(node))
        return docs
    except yaml.YAMLError as err:
        raise ValueError(f"not valid YAML/JSON: {err}") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, seen: dict[int, int]) -> int:
    """How many nodes `node` stands for once every alias is expanded (each node counted once)."""
    key = id(node)
    if key in seen:
        return seen[key]
    seen[key] = MAX_EXPANDED_NODES + 1  # a node that contains itself expands without end
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(n, seen) for n in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, seen) + _expanded_size(v, seen) for k, v in node.value)
    else:
        size = 1
    seen[key] = min(size, MAX_EXPANDED_NODES + 1)
    return seen[key]


def load_app_text(text: str) -> AppSpec:
    """Parse YAML or JSON text (JSON is YAML) into an App spec."""
    try:
        docs = load_yaml_documents(text)
    except ValueError as err:
        raise SpecInvalid([{"field": "(document)", "message": str(err)}]) from None
    if len(docs) != 1:
        raise SpecInvalid([{"field": "(document)", "message": f"expected one document, found {len(docs)}"}])
    return parse_app(docs[0])
