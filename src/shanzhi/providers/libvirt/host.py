"""The one module that talks to libvirt: a connection per cloud, domains with Shanzhi's metadata,
their states, and stopping them politely (ACPI) before firmly (destroy).

libvirt-python is blocking and its connection is not safe to share across threads without
care, so every call takes the connection's lock; a broken connection is reopened on the next
call, and any libvirt failure becomes `HypervisorError` naming the URI and what failed.

Each connection also hears libvirt's domain events (lifecycle and metadata changes), through
libvirt's default event loop run on a thread of its own (registered once per process, before
the first connection): the names of the domains that changed, for the inventory by change. A
reconnect starts a new epoch: events missed meanwhile are not known, so the next listing is whole.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from shanzhi.domain.metrics import Usage
from shanzhi.providers.base import InstanceState
from shanzhi.providers.libvirt.domain_xml import NS, Meta

try:
    import libvirt
except ImportError:  # pragma: no cover - reported by the provider when a libvirt cloud is added
    libvirt = None

#: libvirt's domain states, as the provider reports them
STATES: dict[int, InstanceState] = {
    0: "failed",  # NOSTATE
    1: "running",
    2: "running",  # BLOCKED (waiting on I/O): still up
    3: "running",  # PAUSED: up, but see detail
    4: "exited",  # SHUTDOWN (in progress)
    5: "exited",  # SHUTOFF
    6: "failed",  # CRASHED
    7: "running",  # PMSUSPENDED
}
STATE_NAMES = {
    0: "no state",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutting down",
    5: "shut off",
    6: "crashed",
    7: "suspended",
}


class HypervisorError(Exception):
    pass


def available() -> str | None:
    """None when libvirt-python imports, else what to install."""
    if libvirt is None:
        return "libvirt-python is not installed: pip install 'shanzhi[vm]' (needs libvirt-dev and pkg-config)"
    return None


@dataclass(frozen=True)
class ListedDomain:
    """A domain as the inventory lists it: Shanzhi's (`meta`) or not."""

    name: str
    uuid: str
    state_name: str
    vcpus: int
    memory: int  # bytes
    meta: Meta | None
    files: list[str]
    info: DomainInfo | None = None  # with Shanzhi's metadata: as `domains` lists it


@dataclass(frozen=True)
class DomainInfo:
    name: str
    meta: Meta
    state: InstanceState
    state_name: str
    pid: int | None


def _silence(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; ours are raised, not printed."""


_LOOP_LOCK = threading.Lock()
_loop_running = False


def _event_loop() -> None:
    """libvirt's default event loop, once per process, on a daemon thread: it must be registered
    before a connection is opened for that connection to deliver events."""
    global _loop_running
    with _LOOP_LOCK:
        if _loop_running:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _loop_running = True


class Hypervisor:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: Any = None
        self._lock = threading.RLock()
        self._heard: set[str] = set()  # domains changed since `changes` was last asked
        self._heard_lock = threading.Lock()
        self.epoch = 0  # connections opened so far: a new one may have missed events

    @contextmanager
    def _connected(self, what: str) -> Iterator[Any]:
        if libvirt is None:
            raise HypervisorError(available())
        with self._lock:
            try:
                if self._conn is None or not _alive(self._conn):
                    libvirt.registerErrorHandler(_silence, None)
                    _event_loop()
                    self._conn = libvirt.open(self.uri)
                    self.epoch += 1
                    self._listen(self._conn)
                yield self._conn
            except libvirt.libvirtError as err:
                if self._conn is not None and not _alive(self._conn):
                    self._conn = None
                raise HypervisorError(f"libvirt at {self.uri}: {what}: {err.get_error_message()}") from None

    def _listen(self, conn: Any) -> None:
        def heard(_conn: Any, dom: Any, *_: Any) -> None:
            with self._heard_lock:
                self._heard.add(str(dom.name()))

        for event in (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, libvirt.VIR_DOMAIN_EVENT_ID_METADATA_CHANGE):
            conn.domainEventRegisterAny(None, event, heard, None)

    def changes(self) -> tuple[int, set[str]]:
        """(the connection's epoch, the domains changed since the last call), forgetting them."""
        with self._connected("listening for domain events"):
            pass  # connected: events are heard from here on
        with self._heard_lock:
            heard, self._heard = self._heard, set()
        return self.epoch, heard

    def domain(self, name: str) -> ListedDomain | None:
        """One domain as the inventory lists it, or None when it is gone."""
        with self._connected(f"looking up {name}") as c:
            dom = _lookup(c, name)
            return self._listed(dom) if dom is not None else None

    def _listed(self, dom: Any) -> ListedDomain:
        state, max_kib, _, vcpus, _ = dom.info()
        info = self._info(dom)
        files = [d["file"] for d in _disks(dom) if d["file"]]
        return ListedDomain(
            dom.name(), dom.UUIDString(), STATE_NAMES.get(state, "?"), vcpus, max_kib * 1024,
            info.meta if info else None, files, info,
        )  # fmt: skip

    # ------------------------------------------------------------ storage pools
    def ensure_pool(self, name: str, path: str) -> None:
        """A `dir` storage pool over `path` (transient: made and started if missing), refreshed
        so that it lists the disks there."""
        with self._connected(f"storage pool {name}") as c:
            try:
                pool = c.storagePoolLookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                xml = f"<pool type='dir'><name>{escape(name)}</name><target><path>{escape(path)}</path></target></pool>"
                pool = c.storagePoolCreateXML(xml, 0)
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)

    def pool_volumes(self, name: str) -> list[str]:
        """The volumes a pool lists (refreshed first); none when it does not exist."""
        with self._connected(f"storage pool {name}") as c:
            try:
                pool = c.storagePoolLookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    return []
                raise
            pool.refresh(0)
            return sorted(pool.listVolumes())

    def delete_volume(self, pool_name: str, volume: str) -> bool:
        """Delete a pool's volume (its file) through libvirt; False when the pool does not list it."""
        with self._connected(f"deleting {volume} from {pool_name}") as c:
            try:
                pool = c.storagePoolLookupByName(pool_name)
                pool.refresh(0)
                vol = pool.storageVolLookupByName(volume)
            except libvirt.libvirtError as err:
                if err.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL):
                    return False
                raise
            vol.delete(0)
            return True

    def remove_pool(self, name: str) -> None:
        """Stop (and so remove, being transient) a pool; its files stay. Gone already is fine."""
        with self._connected(f"removing storage pool {name}") as c:
            try:
                pool = c.storagePoolLookupByName(name)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
                    return
                raise
            persistent = pool.isPersistent()  # a transient one is gone once stopped
            if pool.isActive():
                pool.destroy()
            if persistent:
                pool.undefine()

    def describe(self) -> str:
        with self._connected("connecting") as c:
            return f"{c.getType()} {_version(c.getLibVersion())} on {c.getHostname()}"

    def domains(self) -> list[DomainInfo]:
        """Every domain carrying Shanzhi's metadata (others are not ours to touch)."""
        with self._connected("listing domains") as c:
            out = []
            for dom in c.listAllDomains():
                info = self._info(dom)
                if info is not None:
                    out.append(info)
            return out

    def every_domain(self) -> list[ListedDomain]:
        """Every domain on the connection, Shanzhi's or not (for the inventory)."""
        with self._connected("listing every domain") as c:
            return [self._listed(dom) for dom in c.listAllDomains()]

    def adopt(self, uuid: str, meta: Meta) -> str:
        """Write Shanzhi's metadata into a domain made elsewhere (its definition, and the running
        domain too when it runs): nothing else of it changes. Returns its name."""
        with self._connected(f"adopting {uuid}") as c:
            try:
                dom = c.lookupByUUIDString(uuid)
            except libvirt.libvirtError as err:
                if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    raise HypervisorError(f"libvirt at {self.uri} has no domain {uuid}") from None
                raise
            flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG if dom.isPersistent() else 0
            if dom.isActive():
                flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
            dom.setMetadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, meta.to_xml(prefixed=False), "shanzhi", NS, flags)
            return str(dom.name())

    def stats(self) -> dict[str, Usage]:
        """Each running domain's use from libvirt's own statistics (no guest agent): cpu time,
        resident memory of its QEMU, bytes through its interfaces and to its disks."""
        wanted = (
            libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
            | libvirt.VIR_DOMAIN_STATS_BALLOON
            | libvirt.VIR_DOMAIN_STATS_INTERFACE
            | libvirt.VIR_DOMAIN_STATS_BLOCK
        )
        with self._connected("reading domain statistics") as c:
            found = c.getAllDomainStats(wanted, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        return {dom.name(): _usage(raw) for dom, raw in found}

    def find(self, name: str) -> DomainInfo | None:
        with self._connected(f"looking up {name}") as c:
            dom = _lookup(c, name)
            return self._info(dom) if dom is not None else None

    def _info(self, dom: Any) -> DomainInfo | None:
        try:
            raw = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, NS)
        except libvirt.libvirtError:
            return None  # no metadata of ours: not Shanzhi's
        state = dom.state()[0]
        pid = _qemu_pid(dom.name()) if state in (1, 2, 3) else None
        return DomainInfo(dom.name(), Meta.parse(raw), STATES.get(state, "failed"), STATE_NAMES.get(state, "?"), pid)

    def disks(self, name: str) -> list[dict[str, str]]:
        """A domain's disks as libvirt has them: guest device, file, format."""
        with self._connected(f"reading {name}") as c:
            return _disks(c.lookupByName(name))

    def define_and_start(self, name: str, xml: str) -> None:
        with self._connected(f"starting {name}") as c:
            try:
                dom = c.lookupByName(name)
            except libvirt.libvirtError:
                dom = c.defineXML(xml)
            if not dom.isActive():
                dom.create()

    def start(self, name: str) -> None:
        with self._connected(f"starting {name}") as c:
            dom = c.lookupByName(name)
            if not dom.isActive():
                dom.create()

    def stop(self, name: str, timeout: float) -> None:
        """ACPI shutdown, then destroy after `timeout` seconds; gone already is fine."""
        deadline = time.monotonic() + timeout
        with self._connected(f"stopping {name}") as c:
            dom = _lookup(c, name)
            if dom is None:
                return
            if dom.isActive() and timeout > 0:
                with suppress(libvirt.libvirtError):
                    dom.shutdown()
        while time.monotonic() < deadline:
            with self._connected(f"stopping {name}") as c:
                dom = _lookup(c, name)
                if dom is None or not dom.isActive():
                    return
            time.sleep(0.2)
        self.destroy(name)

    def destroy(self, name: str, undefine: bool = False) -> None:
        """Power a domain off at once (and with `undefine`, remove it); gone already is fine."""
        with self._connected(f"{'removing' if undefine else 'destroying'} {name}") as c:
            dom = _lookup(c, name)
            if dom is None:
                return
            if dom.isActive():
                dom.destroy()
            if undefine:
                dom.undefine()

    def undefine(self, name: str) -> None:
        self.destroy(name, undefine=True)


def _disks(dom: Any) -> list[dict[str, str]]:
    import xml.etree.ElementTree as ET

    out = []
    for d in ET.fromstring(dom.XMLDesc()).iter("disk"):
        src, tgt, drv = d.find("source"), d.find("target"), d.find("driver")
        out.append(
            {
                "device": tgt.get("dev", "") if tgt is not None else "",
                "file": src.get("file", "") if src is not None else "",
                "format": drv.get("type", "") if drv is not None else "",
            }
        )
    return out


def _lookup(conn: Any, name: str) -> Any:
    """The domain `name`, or None when there is none (other failures raise)."""
    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as err:
        if err.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _qemu_pid(name: str) -> int | None:
    """The QEMU process of a running domain (qemu:///system keeps its pid file here)."""
    try:
        return int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(conn: Any) -> bool:
    try:
        return bool(conn.isAlive())
    except Exception:
        return False


def _version(v: int) -> str:
    return f"{v // 1_000_000}.{v // 1000 % 1000}.{v % 1000}"


def _usage(raw: dict[str, Any]) -> Usage:
    def total(prefix: str, count: str, field: str) -> int:
        return sum(int(raw.get(f"{prefix}.{i}.{field}", 0)) for i in range(int(raw.get(count, 0))))

    return Usage(
        cpu_seconds=int(raw.get("cpu.time", 0)) / 1e9,
        memory=int(raw.get("balloon.rss", raw.get("balloon.current", 0))) * 1024,  # KiB
        rx_bytes=total("net", "net.count", "rx.bytes"),
        tx_bytes=total("net", "net.count", "tx.bytes"),
        read_bytes=total("block", "block.count", "rd.bytes"),
        write_bytes=total("block", "block.count", "wr.bytes"),
    )
