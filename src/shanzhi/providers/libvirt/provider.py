"""`libvirt` clouds: every replica a virtual machine (QEMU, KVM when usable, TCG otherwise).

An instance is a persistent libvirt domain named `shz-<server>-<cloud>-<instance>` whose
metadata says whose it is, so a restarted server adopts its VMs from libvirt alone and a domain
it does not own is never touched. Its endpoint is a host forward on 127.0.0.1, like a `local`
replica's; its output is the serial console, logged to a file under the workload root (QEMU's
user cannot enter the server's data directory).

With `--option network=fabric` (root) a VM joins the tenant fabric instead, as a `netns`
process does: a tap device, opened by QEMU and then moved to its host's namespace, an address in
its VDC's subnet (the guest sets it from its seed), the tenant policy and flow records.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from shanzhi.domain.errors import CloudUnavailable, Conflict, InvalidInput, NotFound
from shanzhi.domain.metrics import Usage
from shanzhi.domain.quantity import parse_cpu, parse_memory
from shanzhi.providers.base import (
    CloudStatus,
    InstanceRequest,
    Listing,
    LogChunk,
    MachineCloud,
    ObservedInstance,
    OptionSpec,
    Resource,
    free_port,
    non_negative_float,
    positive_int,
    server_resource,
    tail_file,
)
from shanzhi.providers.fabric.member import SITE_OPTION, FabricMember, unavailable
from shanzhi.providers.libvirt.domain_xml import Domain, Meta
from shanzhi.providers.libvirt.host import DomainInfo, Hypervisor, HypervisorError, ListedDomain, available
from shanzhi.providers.libvirt.images import ImageError, ImageStore
from shanzhi.providers.libvirt.seed import SeedError, build_seed
from shanzhi.providers.sandbox import default_workload_root, server_id

MIN_MEMORY = 128 * 2**20  # the cloud kernel and its initramfs need this much to boot


def _accel(value: Any) -> str:
    v = str(value)
    if v not in ("auto", "kvm", "tcg"):
        raise ValueError(f"accel must be auto, kvm or tcg, not {v!r}")
    return v


def kvm_usable() -> tuple[bool, str]:
    """KVM needs /dev/kvm and hardware virtualisation the kernel exposes (vmx/svm)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False, "cannot read /proc/cpuinfo"
    if " vmx" not in flags and " svm" not in flags:
        return False, "/dev/kvm exists but the CPU shows no vmx/svm (nested virtualisation is off)"
    return True, "KVM"


class _Locks:
    """One lock per instance name (created on demand), so a snapshot and a restart of the same
    replica never overlap."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @contextmanager
    def hold(self, name: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            yield


def _network(value: Any) -> str:
    if value not in ("user", "fabric"):
        raise ValueError(f"must be user or fabric, not {value!r}")
    return str(value)


def _qemu_user() -> str:
    """The user libvirt runs QEMU as (the tap it opens must be theirs)."""
    import pwd

    for name in ("libvirt-qemu", "qemu"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return "root"


class LibvirtProvider(FabricMember, MachineCloud):
    kind = "libvirt"
    runtimes: ClassVar[frozenset[str]] = frozenset({"vm"})
    probes_endpoints = True
    options: ClassVar[dict[str, OptionSpec]] = {
        "uri": OptionSpec(str, "qemu:///system", "libvirt URI (qemu:///system, qemu+ssh://host/system, ...)"),
        "cpu": OptionSpec(parse_cpu, 4000, "cpu capacity of the cloud"),
        "memory": OptionSpec(parse_memory, 8 * 2**30, "memory capacity"),
        "instances": OptionSpec(positive_int, 20, "maximum number of VMs"),
        "hosts": OptionSpec(positive_int, 1, "split the capacity into this many logical hosts"),
        "accel": OptionSpec(_accel, "auto", "auto (KVM when usable, else TCG), kvm or tcg"),
        "stop_timeout": OptionSpec(non_negative_float, 5.0, "seconds an ACPI shutdown may take before destroy"),
        "ssh_key": OptionSpec(str, "", "an SSH public key every VM's cloud-init seed authorises (optional)"),
        "network": OptionSpec(
            _network,
            "user",
            "user (QEMU's own; ports forwarded on 127.0.0.1) or fabric (the tenant fabric: an address in the "
            "VDC's subnet, the tenant policy, flow records; root)",
        ),
        "site": SITE_OPTION,
    }

    @classmethod
    def validate_options(cls, raw: Any) -> dict[str, Any]:
        opts = super().validate_options(raw)
        why = unavailable() if opts["network"] == "fabric" else None
        if why:
            raise InvalidInput(f"network=fabric: {why}", field="options.network")
        return opts

    def __init__(self, name: str, options: Any, state_dir: Path, credentials: Any = None) -> None:
        super().__init__(name, options, state_dir, credentials)
        missing = available()
        if missing:
            raise InvalidInput(f"a libvirt cloud needs {missing}", field="kind")
        self.tenant_network = self.opts.get("network") == "fabric"
        self.hv = Hypervisor(str(self.opts["uri"]))
        self.images = ImageStore()
        self._locks = _Locks()
        self._listed: dict[str, str] | None = None  # domain -> its inventory id in the last listing
        self._epoch = 0  # the connection's epoch at that listing

    # ------------------------------------------------------------ identity
    @functools.cached_property
    def _sid(self) -> str:
        return server_id(self.state_dir.parent.parent)

    def _domain(self, instance: str) -> str:
        return f"shz-{self._sid}-{self.name}-{instance}"

    def _files(self, instance: str) -> Path:
        return default_workload_root(self.state_dir.parent.parent) / self.name / instance

    @functools.cached_property
    def accel(self) -> tuple[str, str]:
        """("kvm" | "qemu", why)."""
        want = self.opts["accel"]
        if not str(self.opts["uri"]).startswith("qemu"):
            return "qemu", "not a QEMU driver"
        ok, why = kvm_usable()
        if want == "kvm" or (want == "auto" and ok):
            return "kvm", why if ok else f"KVM forced ({why})"
        return "qemu", f"TCG emulation ({why})" if want == "auto" else "TCG emulation (accel=tcg)"

    # ------------------------------------------------------------ provider
    def status(self) -> CloudStatus:
        if self._failed_marker.exists():
            return CloudStatus(False, "cloud marked failed (failure injection)")
        try:
            where = self.hv.describe()
        except HypervisorError as err:
            return CloudStatus(False, str(err))
        if self.tenant_network:
            why = unavailable()
            if why:
                return CloudStatus(False, why)
            self._ensure_fabric()
            where += f"; on the tenant fabric ({self._hosts} host namespaces)"
        return CloudStatus(True, f"ok; {where}; {self.accel[1]}")

    def _owned(self, d: DomainInfo) -> bool:
        """This server's domain on this cloud: named by it, or adopted by it (keeping its name)."""
        return d.meta.cloud == self.name and (d.name == self._domain(d.meta.instance) or d.meta.owner == self._sid)

    def _mine(self) -> list[DomainInfo]:
        try:
            return [d for d in self.hv.domains() if self._owned(d)]
        except HypervisorError as err:
            raise CloudUnavailable(str(err)) from None

    def _resolve(self, instance: str) -> str:
        """The domain of `instance`: the name this server gives, or an adopted domain's own."""
        name = self._domain(instance)
        try:
            if self.hv.find(name) is not None:
                return name
        except HypervisorError as err:
            raise CloudUnavailable(str(err)) from None
        return next((d.name for d in self._mine() if d.meta.instance == instance), name)

    # ------------------------------------------------------------ inventory
    def _server(self, d: ListedDomain) -> Resource:
        """A domain as the inventory lists it: this cloud's replica, or one that may be adopted
        (by its UUID; made by hand, by another tool or another Shanzhi)."""
        if d.info is not None and self._owned(d.info):
            return server_resource(self._observe(d.info))
        hosts = self.hosts()
        attrs = {
            "cpu": d.vcpus * 1000, "memory": d.memory, "image": d.files[0] if d.files else None, "disks": d.files,
            "host": hosts[0].name if hosts else "", "domain": d.name,
        }  # fmt: skip
        return Resource("server", d.uuid, d.name, d.state_name, d.meta is not None, None, attrs)

    def inventory(self) -> list[Resource]:
        """The hosts and every domain on the connection: this cloud's replicas and the others."""
        self._refuse_if_failed()
        try:
            epoch, _ = self.hv.changes()  # listening from here; what was heard before is in this listing
            servers = {d.name: self._server(d) for d in self.hv.every_domain()}
        except HypervisorError as err:
            raise CloudUnavailable(str(err)) from None
        self._listed, self._epoch = {name: r.id for name, r in servers.items()}, epoch
        return [*self.host_resources(), *servers.values()]

    def inventory_since(self, since: datetime) -> Listing | None:
        """The same with the servers by change: only the domains libvirt's events named since the
        last listing (started, stopped, defined, undefined, their metadata changed), and those
        gone. `since` is not used: the events say. None before a whole listing, and after the
        connection was opened again (events may have been missed meanwhile)."""
        self._refuse_if_failed()
        if self._listed is None:
            return None
        try:
            epoch, names = self.hv.changes()
            if epoch != self._epoch:
                return None
            found = {name: self.hv.domain(name) for name in sorted(names)}
        except HypervisorError as err:
            raise CloudUnavailable(str(err)) from None
        out, gone = self.host_resources(), []
        for name, d in found.items():
            old = self._listed.pop(name, None)
            r = self._server(d) if d is not None else None
            if old is not None and (r is None or r.id != old):
                gone.append(("server", old))  # undefined, or its id changed (adopted: UUID -> replica)
            if r is not None:
                self._listed[name] = r.id
                out.append(r)
        return Listing(out, frozenset({"server"}), tuple(gone))

    def adopt(self, resource_id: str, req: InstanceRequest) -> ObservedInstance:
        """Make a domain made elsewhere (by its UUID) the replica `req.name`: Shanzhi's metadata
        written into it, nothing else changed, not restarted. It keeps its name, its disks and
        its network; deleting the replica later stops and undefines it, as for any replica."""
        self._refuse_if_failed()
        found = next((d for d in self.hv.every_domain() if d.uuid == resource_id), None)
        if found is None:
            raise NotFound(f"cloud {self.name} has no domain {resource_id}", field="id")
        if found.meta is not None:
            if (found.meta.cloud, found.meta.instance, found.meta.owner) == (self.name, req.name, self._sid):
                return self._observe_named(found.name)  # adopted already
            raise Conflict(f"domain {found.name} is already Shanzhi's replica {found.meta.instance}", field="id")
        host = req.host or (self.hosts()[0].name if self.hosts() else "")
        meta = Meta(self.name, req.app, req.component, req.vdc, req.name, host, owner=self._sid)
        try:
            self.hv.adopt(resource_id, meta)
        except HypervisorError as err:
            raise OSError(str(err)) from None
        return self._observe_named(found.name)

    def _observe_named(self, domain: str) -> ObservedInstance:
        d = self.hv.find(domain)
        if d is None:
            raise OSError(f"domain {domain} vanished as it was adopted")
        return self._observe(d)

    def list_instances(self) -> list[ObservedInstance]:
        self._refuse_if_failed()
        return [self._observe(d) for d in self._mine()]

    def usage(self) -> dict[str, Usage]:
        self._refuse_if_failed()
        try:
            found = self.hv.stats()
        except HypervisorError as err:
            raise CloudUnavailable(str(err)) from None
        return {d.meta.instance: found[d.name] for d in self._mine() if d.name in found}

    def _observe(self, d: DomainInfo) -> ObservedInstance:
        ports = dict(d.meta.ports)
        first = next(iter(ports.values()), None)
        detail = f"domain {d.name} ({d.state_name})" + (f", qemu pid {d.pid}" if d.pid else "")
        where = d.meta.address or "127.0.0.1"  # on the fabric its own address; else a host forward
        return ObservedInstance(
            d.meta.instance, d.meta.host, d.state, f"{where}:{first}" if first else None, ports, detail
        )

    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        with self._locks.hold(req.name):  # not while a snapshot of its volume is being taken
            return self._create(req)

    def _create(self, req: InstanceRequest) -> ObservedInstance:
        self._refuse_if_failed()
        adopted = self._resolve(req.name)
        if adopted != self._domain(req.name):  # an adopted domain is started as it is, never rebuilt
            try:
                self.hv.start(adopted)
            except HypervisorError as err:
                raise OSError(str(err)) from None
            return self._observe_named(adopted)
        if not req.image:
            raise InvalidInput(f"a libvirt cloud runs VMs: component {req.component} has no image", field="image")
        if req.memory < MIN_MEMORY:
            raise InvalidInput(
                f"component {req.component} asks for {req.memory // 2**20}Mi of memory: a VM needs at least "
                f"{MIN_MEMORY // 2**20}Mi",
                field="resources.memory",
            )
        try:
            image = self.images.get(req.image)
        except ImageError as err:
            raise InvalidInput(str(err), field="image") from None
        name = self._domain(req.name)
        net = req.network if self.tenant_network else None
        if self.tenant_network and net is None:
            raise InvalidInput(
                f"instance {req.name} has no tenant address; this cloud is on the fabric", field="network"
            )
        try:
            found = self.hv.find(name)
            if found is not None:
                if found.state != "running":
                    self._start(name, found.meta)
                    found = self.hv.find(name) or found
                return self._observe(found)
            files = self._files(req.name)
            shutil.rmtree(files, ignore_errors=True)
            files.mkdir(parents=True)
            for p in (files, files.parent, files.parent.parent):
                os.chmod(p, 0o711)  # QEMU's user reaches its seed and overlay (the server's umask is 077)
            ports: dict[str, int] = {}
            guest: dict[str, int] = dict(req.ports)
            if net is not None:  # reached at its own address: nothing forwarded
                ports = dict(guest)
            else:
                taken = {p for d in self.hv.domains() for p in d.meta.ports.values()}
                for pname in guest:
                    ports[pname] = free_port(taken | set(ports.values()))
            address = net.address if net else ""
            meta = Meta(
                self.name, req.app, req.component, req.vdc, req.name, req.host, ports, guest, address,
                generation=str(req.generation or ""),
            )  # fmt: skip
            disks: list[tuple[str, str, str]] = []
            if image.kind == "disk":  # its own copy-on-write layer over the imported image
                root = files / "root.qcow2"
                self._qemu_img("create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F", "qcow2", str(root))
                root.chmod(0o644)
                disks.append((str(root), "vda", "qcow2"))
            mounts: dict[str, str] = {}  # guest device -> mount path
            for v in req.volumes:
                dev = f"vd{chr(ord('a') + len(disks))}"
                disks.append((str(self._disk(v.key, v.size, v.copy_from)), dev, "qcow2"))
                mounts[dev] = v.mount_path
            seed = build_seed(
                files / "seed.iso",
                req.name,
                guest,
                mounts,
                dict(req.env),
                self.opts.get("ssh_key") or None,
                address=net.address if net else None,
            )
            disks.append((str(seed), f"vd{chr(ord('a') + len(disks))}", "raw"))  # last: volumes keep vda, vdb, ...
            cmdline = "console=ttyS0 quiet"
            domain = Domain(
                name=name,
                meta=meta,
                vcpus=max(1, math.ceil(req.cpu / 1000)),
                memory_kib=req.memory // 1024,
                kernel=str(image.kernel) if image.kind == "tiny" else None,
                initrd=str(image.initrd) if image.kind == "tiny" else None,
                cmdline=cmdline,
                console_log=str(files / "console.log"),
                accel=self.accel[0],
                disks=tuple(disks),
                tap=self.fabric.instance_link(self.name, req.name) if net else None,
            )
            if net is not None:
                self._ensure_fabric()
                self.fabric.ensure_management(net.pool, net.management)
                self.fabric.add_tap(self.name, req.name, _qemu_user())
            self.hv.define_and_start(name, domain.xml())
            if net is not None:
                self.fabric.adopt_tap(self.name, self._site, self._host_index(req.host), req.name, net.address)
            started = self.hv.find(name)
        except (HypervisorError, SeedError) as err:
            raise OSError(str(err)) from None
        if started is None:
            raise OSError(f"domain {name} vanished as it started")
        return self._observe(started)

    def describe(self, name: str) -> dict[str, Any]:
        """The domain, its state and qemu process, its disks and console log."""
        found = self.hv.find(self._resolve(name))
        if found is None:
            return {"domain": None}
        files = self._files(name)
        return {
            "domain": found.name,
            "generation": found.meta.generation or None,
            "state": found.state_name,
            "qemu_pid": found.pid,
            "accel": self.accel[1],
            "disks": self.hv.disks(found.name),
            "console_log": str(files / "console.log"),
            "forwards": {
                k: f"127.0.0.1:{v} -> guest {found.meta.guest_ports.get(k)}" for k, v in found.meta.ports.items()
            },
        }

    def _start(self, name: str, meta: Meta) -> None:
        """Start a defined domain again; on the fabric its tap is made anew for QEMU to open."""
        if meta.address:
            host = self._host_index(meta.host)
            self.fabric.detach(self.name, self._site, host, meta.instance, None)
            self.fabric.add_tap(self.name, meta.instance, _qemu_user())
            self.hv.start(name)
            self.fabric.adopt_tap(self.name, self._site, host, meta.instance, meta.address)
        else:
            self.hv.start(name)

    def delete_instance(self, name: str) -> None:
        domain = self._resolve(name)
        try:
            found = self.hv.find(domain)
            self.hv.stop(domain, float(self.opts["stop_timeout"]))
            self.hv.undefine(domain)
        except HypervisorError as err:
            raise OSError(str(err)) from None
        if found is not None and found.meta.address:
            self.fabric.detach(self.name, self._site, self._host_index(found.meta.host), name, found.meta.address)
        shutil.rmtree(self._files(name), ignore_errors=True)

    def dismantle(self) -> None:
        if self.tenant_network:
            self.fabric.remove_cloud(self.name, self._site, self._hosts)
        with contextlib.suppress(HypervisorError):
            self.hv.remove_pool(self._pool)  # transient: nothing of it stays in libvirt

    # ------------------------------------------------------------- volumes
    def _volumes(self) -> Path:
        return default_workload_root(self.state_dir.parent.parent) / self.name / "volumes"

    @property
    def _pool(self) -> str:
        return f"shz-{self._sid}-{self.name}"

    def _sync_pool(self) -> None:
        """The cloud's libvirt storage pool (a `dir` pool over its volumes directory) lists its
        disks and snapshots as they are now: `virsh vol-list` shows what Shanzhi keeps."""
        try:
            self.hv.ensure_pool(self._pool, str(self._volumes()))
        except HypervisorError as err:
            raise OSError(str(err)) from None

    def _disk(self, key: str, size: int, copy_from: str | None = None) -> Path:
        """The volume's qcow2 disk: created the first time (sparse, or a copy of the disk it had
        on cloud `copy_from`: a cold migration, its snapshot chain flattened), never replaced after."""
        path = self._volumes() / f"{key}.qcow2"
        self._settle(key)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            for p in (path.parent, path.parent.parent, path.parent.parent.parent):
                os.chmod(p, 0o711)
            tmp = path.with_suffix(".creating")
            source = self._volumes().parent.parent / str(copy_from) / "volumes" / f"{key}.qcow2"
            if copy_from and source.exists():
                self._qemu_img("convert", "-q", "-O", "qcow2", str(source), str(tmp))
            else:
                self._qemu_img("create", "-q", "-f", "qcow2", str(tmp), str(size))
            tmp.rename(path)
            self._sync_pool()
        return path

    def _qemu_img(self, *args: str) -> str:
        done = subprocess.run(["qemu-img", *args], check=False, capture_output=True, text=True)
        if done.returncode != 0:
            raise OSError(f"qemu-img {args[0]}: {done.stderr.strip()}")
        return done.stdout

    def _snapshot_file(self, key: str, snapshot: str) -> Path:
        return self._volumes() / f"{key}@{snapshot}.qcow2"

    def _overlay(self, key: str, backing: Path) -> Path:
        """A new empty qcow2 layer over `backing` (named relative: the directory can move),
        beside the disk, not yet in its place."""
        disk = self._volumes() / f"{key}.qcow2"
        size = json.loads(self._qemu_img("info", "-U", "--output=json", str(disk)))["virtual-size"]
        tmp = disk.with_suffix(".overlay")
        tmp.unlink(missing_ok=True)
        self._qemu_img("create", "-q", "-u", "-f", "qcow2", "-b", backing.name, "-F", "qcow2", str(tmp), str(size))
        return tmp

    def _settle(self, key: str) -> None:
        """Finish or undo a snapshot a crash interrupted: the disk moved to its snapshot and the
        new layer not yet in its place (put it there); or a new layer made and not used (drop it)."""
        disk = self._volumes() / f"{key}.qcow2"
        tmp = disk.with_suffix(".overlay")
        if tmp.exists():
            if disk.exists():
                tmp.unlink()
            else:
                tmp.rename(disk)

    def snapshot_volume(self, key: str, instance: str | None, snapshot: str, restore: bool = False) -> float:
        """External qcow2 snapshots, taken and restored with the replica stopped (a consistent
        disk, like a cold backup). Taking one freezes the disk's current layer as the file
        `<key>@<name>.qcow2` and puts a new empty layer over it where the disk was (the domain
        keeps its definition); restoring one puts a new empty layer over that snapshot in the
        disk's place, dropping what was written since. A snapshot is never written again, so
        later snapshots and restores branch from it. Returns the downtime in seconds."""
        disk = self._volumes() / f"{key}.qcow2"
        self._settle(key)
        if not disk.exists():
            raise InvalidInput(f"volume {key} has no disk on cloud {self.name}", field="key")
        frozen = self._snapshot_file(key, snapshot)
        if restore and not frozen.exists():
            raise InvalidInput(f"volume {key} has no snapshot {snapshot!r}; see 'shanzhi volume snapshots {key}'")
        if not restore and frozen.exists():
            raise InvalidInput(f"volume {key} already has a snapshot {snapshot!r}", field="name")
        domain = self._resolve(instance) if instance else None
        with self._locks.hold(instance or key):
            started = time.monotonic()
            found = self.hv.find(domain) if domain is not None else None
            was_running = found is not None and found.state == "running"
            try:
                if domain is not None:
                    self.hv.stop(domain, float(self.opts["stop_timeout"]))
                layer = self._overlay(key, frozen)
                if restore:
                    os.replace(layer, disk)  # what was written since the snapshot is dropped
                else:
                    os.rename(disk, frozen)  # a crash from here on is finished by `_settle`
                    os.rename(layer, disk)
                self._sync_pool()
            finally:
                if domain is not None and found is not None and was_running:
                    self._start(domain, found.meta)
            return time.monotonic() - started

    def volume_snapshots(self, key: str) -> list[dict[str, Any]]:
        disk = self._volumes() / f"{key}.qcow2"
        if not disk.exists():
            raise InvalidInput(f"volume {key} has no disk on cloud {self.name}", field="key")
        files = sorted(self._volumes().glob(f"{key}@*.qcow2"), key=lambda f: f.stat().st_mtime)
        return [
            {
                "name": f.name[len(key) + 1 : -len(".qcow2")],
                "taken_at": datetime.fromtimestamp(f.stat().st_mtime, UTC).isoformat(),
                "kind": "external",
                "bytes": f.stat().st_blocks * 512,
            }
            for f in files
        ]

    def delete_volume(self, key: str) -> None:
        """The disk and its snapshots, through the cloud's storage pool (files it does not list
        are removed directly)."""
        files = [self._volumes() / f"{key}.qcow2", *self._volumes().glob(f"{key}@*.qcow2")]
        for f in files:
            deleted = False
            with contextlib.suppress(HypervisorError):
                deleted = self.hv.delete_volume(self._pool, f.name)
            if not deleted:
                f.unlink(missing_ok=True)
        (self._volumes() / f"{key}.overlay").unlink(missing_ok=True)

    def read_log(self, name: str, tail: int) -> LogChunk:
        """The VM's serial console."""
        return tail_file(self._files(name) / "console.log", tail)

    def inject_failure(self, host: str | None = None) -> None:
        """Lose the whole cloud: its VMs are destroyed and it stops answering."""
        if host is not None:
            raise InvalidInput("a libvirt cloud can only fail as a whole; omit --host")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._failed_marker.touch()
        for d in self._mine():
            self.hv.destroy(d.name)
