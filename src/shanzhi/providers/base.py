"""The provider base class and the plain data it exchanges with the controllers."""

from __future__ import annotations

import shlex
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from shanzhi.domain.errors import CloudUnavailable, InvalidInput, NotFound
from shanzhi.domain.metrics import Point, Usage
from shanzhi.domain.quantity import parse_cpu, parse_memory
from shanzhi.domain.spec import Health

InstanceState = Literal["starting", "running", "exited", "failed"]


@dataclass(frozen=True)
class HostInfo:
    name: str
    cpu: int  # millicores
    memory: int  # bytes
    max_instances: int
    healthy: bool = True


@dataclass(frozen=True)
class CloudStatus:
    healthy: bool
    message: str = ""


@dataclass(frozen=True)
class VolumeRequest:
    key: str  # the disk's name on its cloud (stable for an app, component, ordinal and volume)
    name: str
    size: int  # bytes
    mount_path: str
    copy_from: str | None = None  # a cloud (of the same kind, on this machine) whose disk to start from


@dataclass(frozen=True)
class NetworkAttachment:
    """An instance's place on the tenant fabric (clouds with tenant networks): its address in
    its VDC's subnet for the site, the pool all subnets come from and the management address
    (the platform's, from which health checks come)."""

    address: str
    pool: str
    management: str


#: the VDC a platform-owned workload (the DR quorum's etcd members) runs as: a uid of its own,
#: never a tenant's (VDC paths cannot hold `@`)
PLATFORM_VDC = "@platform"


@dataclass(frozen=True)
class InstanceRequest:
    name: str
    app: str
    component: str
    vdc: str
    host: str
    cpu: int
    memory: int
    command: tuple[str, ...] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    ports: tuple[tuple[str, int], ...] = ()
    image: str | None = None
    flavor: str | None = None
    volumes: tuple[VolumeRequest, ...] = ()
    network: NetworkAttachment | None = None
    health: Health | None = None  # the component's check, for clouds that run it themselves
    generation: int = 0  # the app's spec generation the replica was made for (clouds that keep labels)
    fixed_ports: bool = False  # `ports` exactly as asked, or refused (clouds that otherwise pick their own)


@dataclass(frozen=True)
class ObservedInstance:
    name: str
    host: str
    state: InstanceState
    endpoint: str | None = None
    ports: Mapping[str, int] = field(default_factory=dict)
    detail: str = ""


#: what an inventory holds, per cloud
RESOURCE_KINDS = ("host", "server", "volume", "network", "image", "flavor")


@dataclass(frozen=True)
class Resource:
    """One thing a cloud has, for the inventory: Shanzhi's own (`managed`, with the instance it
    is when it is one) or found there (unmanaged: a legacy system, something made by hand)."""

    kind: str  # one of RESOURCE_KINDS
    id: str  # the cloud's own id
    name: str
    state: str = ""
    managed: bool = False
    instance: str | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Listing:
    """An inventory listing that is whole for some kinds and only what changed for others
    (`partial`): those kinds' resources changed since the time asked, and the ids of those gone."""

    resources: list[Resource]
    partial: frozenset[str] = frozenset()
    gone: tuple[tuple[str, str], ...] = ()  # (kind, id) of partial kinds


def server_resource(o: ObservedInstance) -> Resource:
    """One of Shanzhi's own instances, as the inventory lists it."""
    return Resource("server", o.name, o.name, o.state, True, o.name, {"host": o.host, "endpoint": o.endpoint})


@dataclass(frozen=True)
class LogChunk:
    text: str
    size: int  # the whole log's size in bytes
    truncated: bool  # older output left out


def tail_file(path: Path, tail: int) -> LogChunk:
    """The end of a log file, decoded leniently; raise NotFound when there is none."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - tail))
            data = f.read(tail)
    except FileNotFoundError:
        raise NotFound(f"no log for instance {path.parent.name} (not started here yet)", field="name") from None
    return LogChunk(data.decode(errors="replace"), size, size > tail)


@dataclass(frozen=True)
class OptionSpec:
    """One provider option: its parser and default, for `cloud add --option k=v`."""

    parse: Any
    default: Any
    help: str


class Provider(ABC):
    """One cloud. Subclasses set `kind`, `runtimes` and `options`, and implement the methods."""

    kind: ClassVar[str]
    runtimes: ClassVar[frozenset[str]]
    options: ClassVar[dict[str, OptionSpec]]
    #: whether instance endpoints are reachable from this machine (so health checks can probe)
    probes_endpoints: ClassVar[bool] = False
    #: whether instances live on the tenant fabric (each gets a NetworkAttachment, policy applies)
    tenant_network: bool = False
    #: the credential fields the cloud takes (name -> help), sealed at rest (providers.credentials)
    credential_fields: ClassVar[dict[str, str]] = {}

    def __init__(
        self, name: str, options: Mapping[str, Any], state_dir: Path, credentials: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.opts = dict(options)
        self.state_dir = state_dir
        self.credentials = dict(credentials or {})

    @classmethod
    def validate_options(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        """Parse `--option` values; refuse unknown keys and bad values, naming them."""
        out: dict[str, Any] = {}
        for key, value in raw.items():
            spec = cls.options.get(key)
            if spec is None:
                known = ", ".join(sorted(cls.options)) or "none"
                raise InvalidInput(
                    f"unknown option {key!r} for a {cls.kind} cloud (known: {known})",
                    field=f"options.{key}",
                )
            try:
                out[key] = spec.parse(value)
            except (ValueError, TypeError) as err:
                raise InvalidInput(f"option {key}: {err}", field=f"options.{key}") from None
        for key, spec in cls.options.items():
            if key not in out:
                default = spec.default() if callable(spec.default) else spec.default
                out[key] = default
        return out

    @abstractmethod
    def status(self) -> CloudStatus:
        """Is the cloud reachable and working?"""

    @abstractmethod
    def hosts(self) -> list[HostInfo]:
        """The cloud's hosts and their capacity."""

    @abstractmethod
    def list_instances(self) -> list[ObservedInstance]:
        """Every instance Shanzhi created in this cloud. Raises CloudUnavailable when down."""

    @abstractmethod
    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        """Create (or, if it already exists under this name, return) an instance."""

    @abstractmethod
    def delete_instance(self, name: str) -> None:
        """Stop and remove an instance; succeed if it is already gone."""

    def inventory(self) -> list[Resource]:
        """Everything the cloud has that it can list: hosts, servers (Shanzhi's and others'),
        volumes, networks, images and flavors. Raises CloudUnavailable when down. By default,
        the hosts and Shanzhi's own instances."""
        return [*self.host_resources(), *(server_resource(o) for o in self.list_instances())]

    def host_resources(self) -> list[Resource]:
        return [
            Resource(
                "host", h.name, h.name, "up" if h.healthy else "down", True, None, {"cpu": h.cpu, "memory": h.memory}
            )
            for h in self.hosts()
        ]

    def inventory_since(self, since: datetime) -> Listing | None:
        """The inventory with what the cloud can list by change (servers changed since `since`,
        and those deleted) instead of in whole; None (the default) when it cannot say: then
        `inventory` lists everything."""
        return None

    def adopt(self, resource_id: str, req: InstanceRequest) -> ObservedInstance:
        """Make a server found in the inventory the instance `req.name`, without restarting it."""
        raise InvalidInput(f"a {self.kind} cloud cannot adopt what it did not create", field="cloud")

    def describe(self, name: str) -> dict[str, Any]:
        """What the cloud itself says of an instance (for `instance get`): empty when it says nothing."""
        return {}

    def dismantle(self) -> None:
        """Remove what the cloud itself built on this machine (namespaces, links), once it is
        empty and deleted. Most clouds build nothing."""
        return

    def apply_policy(self, document: dict[str, Any]) -> None:
        """Enforce a tenant-network ruleset (nftables JSON) on every host (tenant_network clouds)."""
        return

    def link_name(self, instance: str) -> str:
        """The host-side name of an instance's network link (tenant_network clouds)."""
        return ""

    def host_namespace(self, host: str) -> str:
        """Where a host's flows are seen (tenant_network clouds): its namespace."""
        return ""

    def flow_collectors(self) -> dict[str, list[str]]:
        """The flow collector to run per host (tenant_network clouds): host -> command."""
        return {}

    def delete_volume(self, key: str) -> None:  # a provider without disks has none to delete
        """Delete a volume's disk; succeed if it is gone already."""
        return

    def remove_from_volume(self, key: str, names: Sequence[str]) -> list[str]:
        """Remove top-level entries of a volume's disk that the platform wrote and no longer
        needs (a managed database's superseded data directories); returns those that were there."""
        raise InvalidInput(f"a {self.kind} cloud cannot remove data from its volumes", field="key")

    def snapshot_volume(self, key: str, instance: str | None, snapshot: str, restore: bool = False) -> float:
        """Take (or with `restore`, go back to) a named snapshot of a volume's disk, stopping the
        replica using it meanwhile; returns the seconds it was down."""
        raise InvalidInput(f"a {self.kind} cloud keeps no volume snapshots", field="key")

    def volume_snapshots(self, key: str) -> list[dict[str, Any]]:
        """The snapshots of a volume's disk: name, taken at, size."""
        raise InvalidInput(f"a {self.kind} cloud keeps no volume snapshots", field="key")

    def usage(self) -> Mapping[str, Usage | Point]:
        """What each instance this cloud runs has used, by name: counters since it started and
        memory now (a Usage), or the cloud's own averages over its last period (a Point: clouds
        that measure use themselves); a cloud that cannot tell leaves an instance out."""
        return {}

    def read_log(self, name: str, tail: int) -> LogChunk:
        """The last `tail` bytes of an instance's output (console or stdout/stderr)."""
        raise InvalidInput(f"a {self.kind} cloud keeps no instance logs", field="name")

    def inject_failure(self, host: str | None = None) -> None:
        """Fail a host or (host=None) the whole cloud, for drills and tests."""
        raise InvalidInput(f"a {self.kind} cloud does not support failure injection")

    def recover(self, host: str | None = None) -> None:
        """Undo `inject_failure`."""
        raise InvalidInput(f"a {self.kind} cloud does not support failure injection")


class MachineCloud(Provider):
    """A cloud run on this machine (`local` processes, `libvirt` VMs): its capacity (the options
    `cpu`, `memory`, `instances`) split into `hosts` logical hosts, and failing as a whole, for
    drills, by a marker file in its state directory."""

    @property
    def _failed_marker(self) -> Path:
        return self.state_dir / "FAILED"

    def _refuse_if_failed(self) -> None:
        if self._failed_marker.exists():
            raise CloudUnavailable(f"cloud {self.name} is marked failed")

    def hosts(self) -> list[HostInfo]:
        n = int(self.opts["hosts"])
        healthy = not self._failed_marker.exists()
        return [
            HostInfo(
                name=f"node-{i}",
                cpu=int(self.opts["cpu"]) // n,
                memory=int(self.opts["memory"]) // n,
                max_instances=max(1, int(self.opts["instances"]) // n),
                healthy=healthy,
            )
            for i in range(n)
        ]

    def recover(self, host: str | None = None) -> None:
        self._failed_marker.unlink(missing_ok=True)


def free_port(taken: set[int], address: str = "127.0.0.1") -> int:
    """A port on `address` free now and not in `taken` (ports handed out but not yet bound)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind((address, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError(f"could not find a free port on {address}")


def positive_int(value: Any) -> int:
    n = int(value)
    if n <= 0:
        raise ValueError(f"must be a positive integer, not {value!r}")
    return n


def non_negative_int(value: Any) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"must be an integer >= 0, not {value!r}")
    return n


def non_negative_float(value: Any) -> float:
    x = float(value)
    if x < 0:
        raise ValueError(f"must be >= 0, not {value!r}")
    return x


def startup_script(command: Iterable[str] | None, env: dict[str, str]) -> str:
    """A VM's start-up script (its user data): the environment kept in /etc/shanzhi.env and exported,
    then the command."""
    lines = ["#!/bin/sh", "# written by Shanzhi: the replica's environment and command", "umask 077"]
    exports = [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append("cat > /etc/shanzhi.env <<'SHANZHI_ENV'")
    lines += exports
    lines.append("SHANZHI_ENV")
    lines += exports
    if command:
        lines.append("exec " + " ".join(shlex.quote(a) for a in command))
    return "\n".join(lines) + "\n"


class ZonedCloud(Provider):
    """A cloud reached through its API whose availability zones are the hosts (`ec2`,
    `openstack`): the capacity the platform may use there (options `cpu`, `memory`,
    `instances`: its quota) is split evenly over the zones, which are asked for again at most
    every `ZONES_TTL` seconds (each pass asks for hosts)."""

    ZONES_TTL: ClassVar[float] = 15.0
    QUOTA_OPTIONS: ClassVar[dict[str, OptionSpec]] = {
        "cpu": OptionSpec(parse_cpu, 64_000, "cpu the platform may use there (default 64)"),
        "memory": OptionSpec(parse_memory, 256 * 2**30, "memory the platform may use (default 256Gi)"),
        "instances": OptionSpec(positive_int, 50, "instances the platform may run"),
    }

    @abstractmethod
    def _list_zones(self) -> list[str]:
        """The available zones' names, from the cloud (raises CloudUnavailable)."""

    def _zone_names(self, fresh: bool = False) -> list[str]:
        at, zones = getattr(self, "_zones", (0.0, []))
        if fresh or not zones or time.monotonic() - at > self.ZONES_TTL:
            zones = sorted(self._list_zones())
            self._zones = (time.monotonic(), zones)
        return list(zones)

    def status(self) -> CloudStatus:
        try:
            zones = self._zone_names(fresh=True)
        except CloudUnavailable as err:
            return CloudStatus(False, str(err))
        if not zones:
            return CloudStatus(False, "no availability zone is available")
        return CloudStatus(True, f"ok: zones {', '.join(zones)}")

    def hosts(self) -> list[HostInfo]:
        zones = self._zone_names()
        n = max(1, len(zones))
        return [
            HostInfo(
                name=z,
                cpu=int(self.opts["cpu"]) // n,
                memory=int(self.opts["memory"]) // n,
                max_instances=max(1, int(self.opts["instances"]) // n),
            )
            for z in zones
        ]
