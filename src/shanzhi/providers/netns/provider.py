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

import functools
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shanzhi.domain.errors import InvalidInput, ProviderError
from shanzhi.network.policy import LOG_GROUP
from shanzhi.providers.base import CloudStatus, InstanceRequest, OptionSpec, positive_int
from shanzhi.providers.local import LocalProvider
from shanzhi.providers.netns import nft
from shanzhi.providers.netns.fabric import Fabric
from shanzhi.providers.sandbox import server_id

DEFAULT_PORT = 8080


def unavailable() -> str | None:
    """Why this machine cannot run a netns cloud, or None."""
    if os.geteuid() != 0:
        return "a netns cloud needs root (it creates network namespaces and nftables rules); use a local cloud"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces; use a local cloud"
    return nft.available()


class NetnsProvider(LocalProvider):
    kind = "netns"
    tenant_network = True
    options = {**LocalProvider.options, "hosts": OptionSpec(positive_int, 2, "how many host namespaces")}

    @classmethod
    def validate_options(cls, raw: Mapping[str, Any]) -> dict[str, Any]:
        why = unavailable()
        if why:
            raise InvalidInput(why, field="kind")
        return super().validate_options(raw)

    @functools.cached_property
    def fabric(self) -> Fabric:
        return Fabric(server_id(self.state_dir.parent.parent))

    @property
    def _hosts(self) -> int:
        return int(self.opts["hosts"])

    def status(self) -> CloudStatus:
        base = super().status()
        if not base.healthy:
            return base
        why = unavailable()
        if why:
            return CloudStatus(False, why)
        if not self.fabric.cloud_ready(self.name, self._hosts):
            self.fabric.ensure_cloud(self.name, self._hosts)
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
        self.fabric.ensure_cloud(self.name, self._hosts)
        self.fabric.ensure_management(net.pool, net.management)
        ns = self.fabric.attach(self.name, host, req.name, net.address)
        return ["nsenter", f"--net=/run/netns/{ns}", "--"], {
            "address": net.address,
            "netns": ns,
            "link": self.fabric.instance_link(self.name, req.name),
            "host_index": host,
        }

    def _host_index(self, host: str) -> int:
        try:
            index = int(host.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            raise InvalidInput(f"no host {host!r} in cloud {self.name}", field="host") from None
        if not 0 <= index < self._hosts:
            raise InvalidInput(f"no host {host!r} in cloud {self.name}", field="host")
        return index

    def _release(self, st: dict[str, Any]) -> None:
        name = str(st["name"])
        try:
            net = json.loads((self._instances / name / "net.json").read_text())
        except (OSError, ValueError):
            net = {"host": st.get("host_index", 0), "address": st.get("address")}
        self.fabric.detach(self.name, int(net.get("host", 0)), name, net.get("address"))

    def describe(self, name: str) -> dict[str, Any]:
        out = super().describe(name)
        st = self._states().get(name, {})
        out.update({k: st.get(k) for k in ("address", "netns", "link")})
        return out

    # ------------------------------------------------------------------ policy
    def apply_policy(self, document: dict[str, Any]) -> None:
        hosts = [self.fabric.host(self.name, i) for i in range(self._hosts)]
        missing = [h for h in hosts if h not in self.fabric.namespaces()]
        if missing:
            raise ProviderError(f"cloud {self.name} lacks host namespaces {', '.join(missing)}")
        for ns in hosts:
            nft.apply(ns, document)

    def counters(self) -> dict[str, tuple[int, int]]:
        """The policy's counters summed over the cloud's hosts: rule counter -> (packets, bytes)."""
        total: dict[str, tuple[int, int]] = {}
        for i in range(self._hosts):
            for name, (p, b) in nft.counters(self.fabric.host(self.name, i)).items():
                q, c = total.get(name, (0, 0))
                total[name] = (p + q, b + c)
        return total

    def link_name(self, instance: str) -> str:
        return self.fabric.instance_link(self.name, instance)

    def host_namespace(self, host: str) -> str:
        return self.fabric.host(self.name, self._host_index(host))

    def flow_collectors(self) -> dict[str, list[str]]:
        module = "shanzhi.providers.netns.collector"
        return {
            ns: ["ip", "netns", "exec", ns, sys.executable, "-m", module, "--group", str(LOG_GROUP)]
            for ns in (self.fabric.host(self.name, i) for i in range(self._hosts))
        }

    def dismantle(self) -> None:
        for name in list(self._states()):
            self.delete_instance(name)
        self.fabric.remove_cloud(self.name)


def remove_fabric(data_dir: Path) -> int:
    """Every namespace and link the server of this data dir made (offline cleanup, as tests do);
    returns how many namespaces went."""
    if os.geteuid() != 0:
        return 0
    return Fabric(server_id(data_dir)).remove_all()
