"""`netns`: a `local` cloud whose hosts are network namespaces and whose instances each get a
namespace and an address of their VDC's own subnet, with real packets between them.

Processes run exactly as on `local` (same sandbox: VDC uid, cgroups, PID and mount namespaces),
entered into the instance's network namespace with `nsenter`. They listen on the ports their
spec declares (`$PORT` is the first), on their own address. What may reach them is the tenant
policy (`shanzhi.network.policy`), which the network controller compiles and hands to
`apply_policy`; every host enforces it.

Root only: registration is refused, saying why, where namespaces cannot be made.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from shanzhi.domain.errors import InvalidInput
from shanzhi.domain.metrics import Usage
from shanzhi.providers import usage
from shanzhi.providers.base import CloudStatus, InstanceRequest, OptionSpec, positive_int
from shanzhi.providers.fabric.member import SITE_OPTION, FabricMember, unavailable
from shanzhi.providers.local import LocalProvider

DEFAULT_PORT = 8080


class NetnsProvider(FabricMember, LocalProvider):
    finds_processes = False  # its processes live in namespaces: none of the host's are its own
    kind = "netns"
    tenant_network = True
    options = {
        **{k: v for k, v in LocalProvider.options.items() if k != "address"},  # addresses come from the fabric
        "hosts": OptionSpec(positive_int, 2, "how many host namespaces"),
        "site": SITE_OPTION,
    }

    @classmethod
    def validate_options(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        why = unavailable()
        if why:
            raise InvalidInput(why, field="kind")
        return super().validate_options(raw)

    def status(self) -> CloudStatus:
        base = super().status()
        if not base.healthy:
            return base
        why = unavailable()
        if why:
            return CloudStatus(False, why)
        self._ensure_fabric()
        return CloudStatus(True, f"{base.message}; {self._hosts} host namespaces under {self.fabric.prefix}*")

    # -------------------------------------------------------------- instances
    def _ports(self, req: InstanceRequest, states: dict[str, dict[str, Any]]) -> dict[str, int]:
        """The spec's own ports: the instance has a network of its own, nothing else binds there."""
        return dict(req.ports) or {"port": DEFAULT_PORT}

    def _enter(self, req: InstanceRequest) -> tuple[list[str], dict[str, Any]]:
        net = req.network
        if net is None:
            raise InvalidInput(f"instance {req.name} has no tenant address; a netns cloud needs one", field="network")
        host = self._host_index(req.host)
        statedir = self._instances / req.name
        (statedir / "net.json").write_text(json.dumps({"host": host, "address": net.address}))
        self._ensure_fabric()
        self.fabric.ensure_management(net.pool, net.management)
        ns = self.fabric.attach(self.name, self._site, host, req.name, net.address)
        return ["nsenter", f"--net=/run/netns/{ns}", "--"], {
            "address": net.address,
            "netns": ns,
            "link": self.fabric.instance_link(self.name, req.name),
            "host_index": host,
        }

    def _release(self, st: dict[str, Any]) -> None:
        name = str(st["name"])
        try:
            net = json.loads((self._instances / name / "net.json").read_text())
        except (OSError, ValueError):
            net = {"host": st.get("host_index", 0), "address": st.get("address")}
        self.fabric.detach(self.name, self._site, int(net.get("host", 0)), name, net.get("address"))

    def _with_network(self, st: dict[str, Any], found: Usage) -> Usage:
        """The instance's namespace is its own: its interfaces' counters are its traffic."""
        counters = usage.network_of(int(st["pid"]))
        if counters is None:
            return found
        return dataclasses.replace(found, rx_bytes=counters[0], tx_bytes=counters[1])

    def describe(self, name: str) -> dict[str, Any]:
        out = super().describe(name)
        st = self._states().get(name, {})
        out.update({k: st.get(k) for k in ("address", "netns", "link")})
        return out

    def dismantle(self) -> None:
        for name in list(self._states()):
            self.delete_instance(name)
        self.fabric.remove_cloud(self.name, self._site, self._hosts)
