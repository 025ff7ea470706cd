"""`openstack`: servers on an OpenStack cloud (a city's private cloud; Huawei Cloud Stack speaks
the same APIs), through openstacksdk.

- **Hosts** are the availability zones (Nova); the capacity Shanzhi may use (`cpu`, `memory`,
  `instances`: the project's quota for the platform) is split evenly over them.
- **Flavor**: the smallest of the cloud's flavors with at least the replica's vCPUs and RAM.
- **Image** (Glance): the component's `image`, an id or a name.
- **Network** (Neutron): the `network` option (a name or id), else the project's first network;
  one security group per component admitting its TCP ports from that network's subnets.
- **Server metadata** carries the cloud, VDC, app, component and instance (`shanzhi.*`): a
  server is found again by it, which makes create idempotent.
- **Volumes** (Cinder) named by their key, made in the replica's zone, attached after the server
  is ACTIVE; they outlive the server (the next replica of the ordinal gets them, in their zone).
- **Credentials**: `username` and `password` (with the `auth_url`, `project`, domains and
  `region` options), or `application_credential_id` and `application_credential_secret`.
  Nothing is read from the server's environment or `clouds.yaml`.

Waiting (a server to be ACTIVE before attaching, to be gone before its group goes) uses the
SDK's own waiters. Use comes from Nova's server diagnostics (cpu time, memory, NIC and disk
bytes: the hypervisor's view), which Nova's default policy keeps for administrators.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import math
import threading
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from keystoneauth1 import exceptions as ks_exc

import openstack
from openstack import exceptions as os_exc
from shanzhi.domain.errors import CloudUnavailable, Conflict, InvalidInput, NotFound
from shanzhi.domain.metrics import Usage
from shanzhi.providers.base import (
    InstanceRequest,
    InstanceState,
    Listing,
    ObservedInstance,
    OptionSpec,
    Resource,
    ZonedCloud,
    startup_script,
)

log = logging.getLogger("shanzhi.openstack")
META = "shanzhi."
_STATES: dict[str, InstanceState] = {
    "BUILD": "starting",
    "REBUILD": "starting",
    "REBOOT": "starting",
    "HARD_REBOOT": "starting",
    "ACTIVE": "running",
    "SHUTOFF": "exited",
    "STOPPED": "exited",
    "SUSPENDED": "exited",
    "PAUSED": "exited",
    "ERROR": "failed",
}
_GONE = ("DELETED", "SOFT_DELETED", "SHELVED_OFFLOADED")
_GiB = 2**30


def _url(value: Any) -> str:
    url = str(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be the Keystone v3 URL, http(s)://.../v3, not {url!r}")
    return url


class OpenStackProvider(ZonedCloud):
    kind = "openstack"
    runtimes = frozenset({"vm"})
    probes_endpoints = False
    credential_fields = {
        "username": "the user name",
        "password": "its password",
        "application_credential_id": "an application credential's id (instead of a user and password)",
        "application_credential_secret": "that application credential's secret",
    }
    options = {
        "auth_url": OptionSpec(_url, "http://127.0.0.1:5000/v3", "the Keystone v3 URL"),
        "project": OptionSpec(str, "", "the project (tenant) name"),
        "user_domain": OptionSpec(str, "Default", "the user's domain"),
        "project_domain": OptionSpec(str, "Default", "the project's domain"),
        "region": OptionSpec(str, "", "the region name in the catalog (default: the only one)"),
        "network": OptionSpec(str, "", "network name or id for servers (default: the project's first)"),
        **ZonedCloud.QUOTA_OPTIONS,
    }

    def __init__(self, name: str, options: Any, state_dir: Any, credentials: Any = None) -> None:
        super().__init__(name, options, state_dir, credentials)
        self._lock = threading.Lock()
        self._conn: Any = None
        self._diagnostics_refused = False
        self._flavors: list[tuple[int, int, str, str]] | None = None  # (millicores, bytes, name, id)
        self._net: tuple[str, list[str]] | None = None  # network id, its subnets' CIDRs

    # -- the connection and its errors --------------------------------------------------------

    @property
    def conn(self) -> Any:
        with self._lock:
            if self._conn is None:
                c = self.credentials
                auth: dict[str, Any] = {"auth_url": self.opts["auth_url"]}
                if c.get("application_credential_id"):
                    auth_type = "v3applicationcredential"
                    auth |= {
                        "application_credential_id": c["application_credential_id"],
                        "application_credential_secret": c.get("application_credential_secret", ""),
                    }
                elif c.get("username"):
                    auth_type = "v3password"
                    auth |= {
                        "username": c["username"],
                        "password": c.get("password", ""),
                        "project_name": self.opts["project"],
                        "user_domain_name": self.opts["user_domain"],
                        "project_domain_name": self.opts["project_domain"],
                    }
                else:
                    raise CloudUnavailable(
                        f"cloud {self.name} has no credentials: 'shanzhi cloud credentials {self.name} "
                        "--credentials-file FILE' (username and password, or an application credential)"
                    )
                self._conn = openstack.connection.Connection(
                    auth=auth,
                    auth_type=auth_type,
                    region_name=self.opts["region"] or None,
                    app_name="shanzhi",
                    api_timeout=30,
                )
            return self._conn

    def _api(self, service: str) -> Any:
        """A service's proxy (the first use authenticates and reads the catalog)."""
        try:
            return getattr(self.conn, service)
        except (os_exc.SDKException, ks_exc.ClientException, OSError) as err:
            raise CloudUnavailable(f"cloud {self.name}: {service}: {_detail(err)}") from None

    def _do(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """One SDK call (a listing is read out whole); its failures as the platform's errors."""
        try:
            out = fn(*args, **kwargs)
            return list(out) if hasattr(out, "__next__") else out
        except os_exc.BadRequestException as err:
            raise InvalidInput(f"cloud {self.name}: {what}: {_detail(err)}") from None
        except (os_exc.NotFoundException, os_exc.ResourceNotFound) as err:
            raise NotFound(f"cloud {self.name}: {what}: {_detail(err)}") from None
        except (os_exc.SDKException, ks_exc.ClientException, OSError) as err:
            raise CloudUnavailable(f"cloud {self.name}: {what}: {_detail(err)}") from None

    # -- capacity -------------------------------------------------------------------------------

    def _list_zones(self) -> list[str]:
        found = self._do("list availability zones", self._api("compute").availability_zones)
        return [str(z.name) for z in found if (z.state or {}).get("available", True)]

    def _flavor_list(self) -> list[tuple[int, int, str, str]]:
        if self._flavors is None:
            found = self._do("list flavors", self._api("compute").flavors, details=True)
            self._flavors = sorted((int(f.vcpus) * 1000, int(f.ram) * 2**20, str(f.name), str(f.id)) for f in found)
        return self._flavors

    def _flavor(self, req: InstanceRequest) -> str:
        for cpu, memory, _, fid in self._flavor_list():
            if cpu >= req.cpu and memory >= req.memory:
                return fid
        raise InvalidInput(
            f"cloud {self.name} has no flavor with {req.cpu / 1000:g} vCPUs and {req.memory // 2**20} MiB",
            field="resources",
        )

    def _image(self, image: str | None) -> str:
        if not image:
            raise InvalidInput(f"cloud {self.name} runs VMs: the component needs an 'image' (a Glance id or name)")
        found = self._do("find image", self._api("image").find_image, image, ignore_missing=True)
        if found is None:
            raise InvalidInput(f"cloud {self.name} has no image {image!r}", field="image")
        return str(found.id)

    def _network(self) -> tuple[str, list[str]]:
        if self._net is None:
            wanted = self.opts["network"]
            if wanted:
                net = self._do("find network", self._api("network").find_network, wanted, ignore_missing=True)
                if net is None:
                    raise InvalidInput(f"cloud {self.name} has no network {wanted!r}", field="options.network")
            else:
                nets = self._do("list networks", self._api("network").networks)
                if not nets:
                    raise InvalidInput(f"cloud {self.name}: the project has no network; set --option network=")
                net = nets[0]
            cidrs = [str(s.cidr) for s in self._do("list subnets", self._api("network").subnets, network_id=net.id)]
            self._net = (str(net.id), cidrs)
        return self._net

    def _labels(self, req: InstanceRequest) -> dict[str, str]:
        return {
            f"{META}cloud": self.name,
            f"{META}vdc": req.vdc,
            f"{META}app": req.app,
            f"{META}component": req.component,
        }

    def _group(self, req: InstanceRequest, cidrs: list[str]) -> str:
        """The component's security group, admitting exactly its TCP ports from the network."""
        net = self._api("network")
        name = f"shanzhi-{self.name}-{req.vdc.replace('/', '.')}-{req.app}-{req.component}"
        group = self._do("find security group", net.find_security_group, name, ignore_missing=True)
        if group is None:
            desc = f"Shanzhi {req.vdc}/{req.app}/{req.component} (cloud {self.name})"
            group = self._do("create security group", net.create_security_group, name=name, description=desc)
        have = {
            (r["port_range_min"], r["remote_ip_prefix"]): r["id"]
            for r in group.security_group_rules or []
            if r.get("direction") == "ingress" and r.get("protocol") == "tcp"
        }
        want = {(port, cidr) for _, port in req.ports for cidr in cidrs}
        for port, cidr in sorted(want - set(have)):
            self._do(
                "create security group rule",
                net.create_security_group_rule,
                security_group_id=group.id,
                direction="ingress",
                ethertype="IPv4",
                protocol="tcp",
                port_range_min=port,
                port_range_max=port,
                remote_ip_prefix=cidr,
            )
        for key in set(have) - want:
            self._do("delete security group rule", net.delete_security_group_rule, have[key])
        return name

    # -- volumes --------------------------------------------------------------------------------

    def _volume(self, key: str) -> Any:
        found = self._do("list volumes", self._api("block_storage").volumes, details=True, name=key)
        mine = [v for v in found if (v.metadata or {}).get(f"{META}cloud") == self.name and v.status != "deleting"]
        return mine[0] if mine else None

    def _ensure_volumes(self, req: InstanceRequest, zone: str) -> list[str]:
        ids = []
        for v in req.volumes:
            vol = self._volume(v.key)
            if vol is None:
                meta = self._labels(req) | {f"{META}volume": v.key}
                vol = self._do(
                    "create volume",
                    self._api("block_storage").create_volume,
                    size=max(1, math.ceil(v.size / _GiB)),
                    name=v.key,
                    availability_zone=zone,
                    metadata=meta,
                )
            ids.append(str(vol.id))
        return ids

    def _attach(self, server: Any, volume_ids: list[str]) -> None:
        attached = {str(v["id"]) for v in server.attached_volumes or []}
        todo = [v for v in volume_ids if v not in attached]
        if not todo:
            return
        server = self._do("wait for server", self._api("compute").wait_for_server, server, interval=0.5, wait=300)
        for vid in todo:
            vol = self._do("get volume", self._api("block_storage").get_volume, vid)
            self._wait_available(vol)
            self._do("attach volume", self._api("compute").create_volume_attachment, server, volume_id=vid)

    def _wait_available(self, vol: Any) -> None:
        self._do(
            "wait for volume", self._api("block_storage").wait_for_status, vol, "available", interval=0.5, wait=120
        )

    def delete_volume(self, key: str) -> None:
        vol = self._volume(key)
        if vol is None:
            return
        for a in vol.attachments or []:
            self._do("detach volume", self._api("compute").delete_volume_attachment, a["server_id"], vol.id)
            self._wait_available(vol)
        self._do("delete volume", self._api("block_storage").delete_volume, vol.id, ignore_missing=True)

    # -- servers --------------------------------------------------------------------------------

    def _servers(self) -> list[Any]:
        found = self._do("list servers", self._api("compute").servers, details=True)
        return [s for s in found if (s.metadata or {}).get(f"{META}cloud") == self.name and s.status not in _GONE]

    def _observe(self, s: Any) -> ObservedInstance:
        meta = s.metadata or {}
        ports = {k[len(META) + 5 :]: int(v) for k, v in meta.items() if k.startswith(f"{META}port.")}
        addrs = [a["addr"] for net in (s.addresses or {}).values() for a in net if a.get("version", 4) == 4]
        ip = addrs[0] if addrs else None
        endpoint = f"{ip}:{next(iter(ports.values()))}" if ip and ports else ip
        state = _STATES.get(str(s.status), "starting")
        detail = f"{s.id} {s.status}" + (f": {s.fault['message']}" if getattr(s, "fault", None) else "")
        return ObservedInstance(_observed_name(s), s.availability_zone or "", state, endpoint, ports, detail)

    def list_instances(self) -> list[ObservedInstance]:
        return [self._observe(s) for s in self._servers()]

    def usage(self) -> dict[str, Usage]:
        """Each ACTIVE server's counters from Nova's server diagnostics (microversion 2.48: the
        hypervisor's view, no agent in the guest): cpu time, memory used, bytes through its NICs
        and disks. Nova's default policy keeps the call for administrators: a project that may
        not make it gets no readings (said once in the log), not a cloud down."""
        compute, out = self._api("compute"), {}
        for s in self._servers():
            if s.status != "ACTIVE":
                continue
            try:
                d = compute.get_server_diagnostics(s)
            except os_exc.ForbiddenException:
                if not self._diagnostics_refused:
                    log.warning("cloud %s: server diagnostics are refused to this project: no use figures", self.name)
                self._diagnostics_refused = True
                return {}
            except (os_exc.NotFoundException, os_exc.ResourceNotFound):
                continue  # gone meanwhile
            except (os_exc.SDKException, ks_exc.ClientException, OSError) as err:
                raise CloudUnavailable(f"cloud {self.name}: server diagnostics: {_detail(err)}") from None
            nics, disks = d.nic_details or [], d.disk_details or []
            out[_observed_name(s)] = Usage(
                cpu_seconds=sum(float(c.get("time") or 0) for c in d.cpu_details or []) / 1e9,  # ns
                memory=int((d.memory_details or {}).get("used") or 0) * 2**20,  # MiB
                rx_bytes=sum(int(n.get("rx_octets") or 0) for n in nics) if nics else None,
                tx_bytes=sum(int(n.get("tx_octets") or 0) for n in nics) if nics else None,
                read_bytes=sum(int(k.get("read_bytes") or 0) for k in disks) if disks else None,
                write_bytes=sum(int(k.get("write_bytes") or 0) for k in disks) if disks else None,
            )
        return out

    def _by_name(self, name: str) -> list[Any]:
        return [s for s in self._servers() if (s.metadata or {}).get(f"{META}instance") == name]

    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        existing = self._by_name(req.name)
        if existing:  # made by a call that did not finish: see that it has its disks
            self._attach(existing[0], self._ensure_volumes(req, existing[0].availability_zone))
            return self._observe(existing[0])
        zones = self._zone_names()
        zone = next((str(v.availability_zone) for r in req.volumes if (v := self._volume(r.key))), req.host)
        if zone not in zones:
            raise InvalidInput(f"cloud {self.name} has no zone {zone!r} (zones: {', '.join(zones)})", field="host")
        net, cidrs = self._network()
        meta = self._labels(req) | {f"{META}instance": req.name}
        meta |= {f"{META}port.{p}": str(port) for p, port in req.ports}
        kwargs = {
            "name": req.name,
            "flavor_id": self._flavor(req),
            "image_id": self._image(req.image),
            "networks": [{"uuid": net}],
            "availability_zone": zone,
            "metadata": meta,
            "security_groups": [{"name": self._group(req, cidrs)}],
            "user_data": base64.b64encode(startup_script(req.command, dict(req.env)).encode()).decode(),
        }
        volumes = self._ensure_volumes(req, zone)
        created = self._do("create server", self._api("compute").create_server, **kwargs)
        server = self._do("get server", self._api("compute").get_server, created.id)
        self._attach(server, volumes)
        return self._observe(server)

    def delete_instance(self, name: str) -> None:
        found = self._by_name(name)
        groups = {g["name"] for s in found for g in s.security_groups or []}
        for s in found:
            self._do("delete server", self._api("compute").delete_server, s, ignore_missing=True)
        still = {
            g["name"] for s in self._servers() for g in s.security_groups or [] if s.id not in {f.id for f in found}
        }
        orphaned = {g for g in groups - still if g.startswith(f"shanzhi-{self.name}-")}
        for s in found:
            if orphaned or s.attached_volumes:
                self._do("wait for delete", self._api("compute").wait_for_delete, s, interval=0.5, wait=300)
        for g in sorted(orphaned):
            group = self._do("find security group", self._api("network").find_security_group, g, ignore_missing=True)
            if group is not None:
                with contextlib.suppress(CloudUnavailable):  # in use again (a replica made meanwhile): kept
                    self._do("delete security group", self._api("network").delete_security_group, group)

    def inventory(self) -> list[Resource]:
        """Zones, every server of the project (Shanzhi's and not), volumes, networks, images, flavors."""
        return self._inventory(None).resources

    def inventory_since(self, since: datetime) -> Listing:
        """The same, with only the servers changed since `since` (Nova's `changes-since`, which
        also names the servers deleted since): the bulk of a project, listed by change."""
        return self._inventory(since)

    def _inventory(self, since: datetime | None) -> Listing:
        out = [Resource("host", h.name, h.name, "available", True, attrs={"cpu": h.cpu}) for h in self.hosts()]
        flavors = {fid: (cpu, mem, name) for cpu, mem, name, fid in self._flavor_list()}
        query: dict[str, Any] = {"details": True}
        if since is not None:
            query["changes_since"] = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        gone = []
        for s in self._do("list servers", self._api("compute").servers, **query):
            if str(s.status) == "DELETED":
                gone.append(("server", str(s.id)))
                continue
            meta = s.metadata or {}
            flavor = s.flavor or {}
            attrs = {
                "zone": s.availability_zone,
                "image": (s.image or {}).get("id"),
                "instance_type": flavor.get("original_name") or flavor.get("id"),
                "cpu": int(flavor.get("vcpus", 0)) * 1000 or None,
                "memory": int(flavor.get("ram", 0)) * 2**20 or None,
                "addresses": [a["addr"] for n in (s.addresses or {}).values() for a in n],
            }
            instance = meta.get(f"{META}instance") if meta.get(f"{META}cloud") == self.name else None
            managed = bool(meta.get(f"{META}cloud"))
            out.append(Resource("server", str(s.id), str(s.name), str(s.status), managed, instance, attrs))
        for v in self._do("list volumes", self._api("block_storage").volumes, details=True):
            attrs = {"size_gib": v.size, "zone": v.availability_zone}
            attrs["attached_to"] = [a["server_id"] for a in v.attachments or []]
            managed = bool((v.metadata or {}).get(f"{META}cloud"))
            out.append(Resource("volume", str(v.id), str(v.name or v.id), str(v.status), managed, attrs=attrs))
        for n in self._do("list networks", self._api("network").networks):
            attrs = {"subnets": list(n.subnet_ids or [])}
            out.append(Resource("network", str(n.id), str(n.name), str(n.status), attrs=attrs))
        for i in self._do("list images", self._api("image").images):
            out.append(Resource("image", str(i.id), str(i.name), str(i.status), attrs={"created": i.created_at}))
        for fid, (cpu, mem, name) in flavors.items():
            out.append(Resource("flavor", fid, name, "offered", attrs={"cpu": cpu, "memory": mem}))
        return Listing(out, frozenset({"server"}) if since is not None else frozenset(), tuple(gone))

    def adopt(self, resource_id: str, req: InstanceRequest) -> ObservedInstance:
        """Write the replica's metadata on a server made outside Shanzhi; nothing else changes."""
        server = self._do("get server", self._api("compute").get_server, resource_id)
        held = (server.metadata or {}).get(f"{META}instance")
        if held and held != req.name:
            raise Conflict(f"{resource_id} is already Shanzhi's replica {held}", field="id")
        meta = self._labels(req) | {f"{META}instance": req.name}
        meta |= {f"{META}port.{p}": str(port) for p, port in req.ports}
        self._do("set server metadata", self._api("compute").set_server_metadata, server, **meta)
        return self._observe(self._do("get server", self._api("compute").get_server, resource_id))

    def describe(self, name: str) -> dict[str, Any]:
        found = self._by_name(name)
        if not found:
            return {}
        s = found[0]
        return {
            "server_id": s.id,
            "status": s.status,
            "zone": s.availability_zone,
            "flavor": (s.flavor or {}).get("original_name"),
            "image": (s.image or {}).get("id"),
            "addresses": s.addresses,
            "volumes": [v["id"] for v in s.attached_volumes or []],
        }


def _observed_name(server: Any) -> str:
    """The replica a server is: its metadata says (or, not yet tagged, its own name)."""
    return str((server.metadata or {}).get(f"{META}instance", server.name))


def _detail(err: BaseException) -> str:
    text = getattr(err, "details", None) or str(err)
    return str(text).splitlines()[0][:300]
