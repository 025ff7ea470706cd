"""The libvirt domain document of one replica, built from plain data (no libvirt import).

The network is QEMU's user mode with a host forward on 127.0.0.1 per declared port, so a VM's
endpoint answers on this machine exactly as a `local` replica's does. libvirt has no element for
user-mode forwards outside its passt backend, so the NIC is passed through
`<qemu:commandline>` at a fixed PCI slot (0x1e) that libvirt's own devices never take.
Shanzhi's metadata (cloud, app, component, instance, ports) rides in the domain itself, so a
restarted server adopts its VMs from libvirt alone.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

NS = "https://shanzhi.io/xmlns/instance/1"
_META_MARK = "@@shanzhi-metadata@@"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class Meta:
    cloud: str
    app: str
    component: str
    vdc: str
    instance: str
    host: str
    ports: dict[str, int] = field(default_factory=dict)  # port name -> host port
    guest_ports: dict[str, int] = field(default_factory=dict)  # port name -> port in the guest
    address: str = ""  # on the tenant fabric: the guest's address (its ports are reached there)
    owner: str = ""  # an adopted domain keeps its own name: the server that adopted it
    generation: str = ""  # the app's spec generation it was made for

    def to_xml(self, prefixed: bool = True) -> str:
        """The metadata element, its namespace declared on itself (as libvirt keeps it); or,
        not `prefixed`, bare, as `virDomainSetMetadata` takes it (libvirt adds the namespace)."""
        pre = "shanzhi:" if prefixed else ""
        parts = [f'<shanzhi:instance xmlns:shanzhi="{NS}">' if prefixed else "<instance>"]
        for key in ("cloud", "app", "component", "vdc", "instance", "host", "address", "owner", "generation"):
            if key in ("address", "owner", "generation") and not getattr(self, key):
                continue
            parts.append(f"<{pre}{key}>{escape(getattr(self, key))}</{pre}{key}>")
        for name, port in self.ports.items():
            parts.append(f'<{pre}port name={quoteattr(name)} host="{port}" guest="{self.guest_ports[name]}"/>')
        parts.append(f"</{pre}instance>")
        return "".join(parts)

    @classmethod
    def parse(cls, xml: str) -> Meta:
        """From the element as libvirt returns it (prefixed or not)."""
        root = ET.fromstring(xml)
        values: dict[str, str] = {}
        ports: dict[str, int] = {}
        guest: dict[str, int] = {}
        for el in root:
            tag = el.tag.rsplit("}", 1)[-1]
            if tag == "port":
                ports[el.get("name", "")] = int(el.get("host", "0"))
                guest[el.get("name", "")] = int(el.get("guest", "0"))
            else:
                values[tag] = el.text or ""
        v = values.get
        return cls(
            v("cloud", ""),
            v("app", ""),
            v("component", ""),
            v("vdc", ""),
            v("instance", ""),
            v("host", ""),
            ports,
            guest,
            v("address", ""),
            v("owner", ""),
            v("generation", ""),
        )


@dataclass(frozen=True)
class Domain:
    name: str
    meta: Meta
    vcpus: int
    memory_kib: int
    kernel: str | None  # direct kernel boot; None: boot from the first disk
    initrd: str | None
    cmdline: str
    console_log: str
    accel: str  # kvm | qemu (TCG)
    # (file, device: vda, vdb, ... in the guest's probe order, format: qcow2 | raw); raw ones read-only
    disks: tuple[tuple[str, str, str], ...] = ()
    tap: str | None = None  # on the tenant fabric: the tap device to use (else QEMU's user network)

    def xml(self) -> str:
        dom = ET.Element("domain", {"type": "kvm" if self.accel == "kvm" else "qemu"})
        ET.SubElement(dom, "name").text = self.name
        ET.SubElement(dom, "metadata").text = _META_MARK
        ET.SubElement(dom, "memory", {"unit": "KiB"}).text = str(self.memory_kib)
        ET.SubElement(dom, "vcpu").text = str(self.vcpus)
        os_ = ET.SubElement(dom, "os")
        ET.SubElement(os_, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
        if self.kernel is not None:
            ET.SubElement(os_, "kernel").text = self.kernel
            ET.SubElement(os_, "initrd").text = self.initrd
            ET.SubElement(os_, "cmdline").text = self.cmdline
        else:
            ET.SubElement(os_, "boot", {"dev": "hd"})
        features = ET.SubElement(dom, "features")
        ET.SubElement(features, "acpi")
        ET.SubElement(dom, "on_poweroff").text = "destroy"
        ET.SubElement(dom, "on_reboot").text = "restart"
        ET.SubElement(dom, "on_crash").text = "destroy"
        devices = ET.SubElement(dom, "devices")
        for path, dev, fmt in self.disks:
            disk = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
            ET.SubElement(disk, "driver", {"name": "qemu", "type": fmt})
            ET.SubElement(disk, "source", {"file": path})
            ET.SubElement(disk, "target", {"dev": dev, "bus": "virtio"})
            if fmt == "raw":
                ET.SubElement(disk, "readonly")
        serial = ET.SubElement(devices, "serial", {"type": "file"})
        ET.SubElement(serial, "source", {"path": self.console_log, "append": "on"})
        ET.SubElement(serial, "target", {"port": "0"})
        ET.SubElement(devices, "memballoon", {"model": "none"})
        if self.tap is not None:  # an existing tap, opened by libvirtd and handed to QEMU
            nic = ET.SubElement(devices, "interface", {"type": "ethernet"})
            ET.SubElement(nic, "target", {"dev": self.tap, "managed": "no"})
            ET.SubElement(nic, "model", {"type": "virtio"})
            return ET.tostring(dom, encoding="unicode").replace(_META_MARK, self.meta.to_xml())
        forwards = ",".join(
            f"hostfwd=tcp:127.0.0.1:{port}-:{self.meta.guest_ports[name]}" for name, port in self.meta.ports.items()
        )
        netdev = "user,id=shz0" + (f",{forwards}" if forwards else "")
        cmd = ET.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in ("-netdev", netdev, "-device", "virtio-net-pci,netdev=shz0,addr=0x1e"):
            ET.SubElement(cmd, f"{{{QEMU_NS}}}arg", {"value": arg})
        return ET.tostring(dom, encoding="unicode").replace(_META_MARK, self.meta.to_xml())
