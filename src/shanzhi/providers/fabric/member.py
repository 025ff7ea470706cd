"""What a cloud on the tenant fabric adds to the provider surface: its hosts as namespaces, the
policy applied to them, their flow collectors, and the names flows are tied back with."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

from shanzhi.domain.errors import InvalidInput, ProviderError
from shanzhi.network.policy import LOG_GROUP
from shanzhi.providers.base import OptionSpec
from shanzhi.providers.fabric import nft
from shanzhi.providers.fabric.topology import Fabric
from shanzhi.providers.sandbox import server_id


def unavailable() -> str | None:
    """Why this machine cannot build the fabric, or None."""
    if os.geteuid() != 0:
        return "tenant networks need root (network namespaces and nftables rules); use a local cloud"
    if not Path("/proc/self/ns/net").exists():
        return "this kernel has no network namespaces; use a local cloud"
    return nft.available()


#: the option through which the platform tells a fabric cloud its site (`cloud add --site`)
SITE_OPTION = OptionSpec(str, "", "the cloud's site: set by the platform from `cloud add --site`")


class FabricMember:
    """Mixed into a provider whose `name`, `state_dir` and `opts["hosts"]` it uses."""

    name: str
    state_dir: Path
    opts: dict[str, Any]

    @functools.cached_property
    def fabric(self) -> Fabric:
        return Fabric(server_id(self.state_dir.parent.parent))

    @property
    def _hosts(self) -> int:
        return int(self.opts["hosts"])

    @property
    def _site(self) -> str:
        """The cloud's site (set by the platform when the cloud is added; its own name before)."""
        return str(self.opts.get("site") or self.name)

    def _host_index(self, host: str) -> int:
        try:
            index = int(host.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            raise InvalidInput(f"no host {host!r} in cloud {self.name}", field="host") from None
        if not 0 <= index < self._hosts:
            raise InvalidInput(f"no host {host!r} in cloud {self.name}", field="host")
        return index

    def _ensure_fabric(self) -> None:
        if not self.fabric.cloud_ready(self.name, self._site, self._hosts):
            self.fabric.ensure_cloud(self.name, self._site, self._hosts)

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
        module = "shanzhi.providers.fabric.collector"
        return {
            ns: ["ip", "netns", "exec", ns, sys.executable, "-m", module, "--group", str(LOG_GROUP)]
            for ns in (self.fabric.host(self.name, i) for i in range(self._hosts))
        }


def remove_fabric(data_dir: Path) -> int:
    """Every namespace and link the server of this data dir made (offline cleanup, as tests do);
    returns how many namespaces went."""
    if unavailable() is not None:
        return 0
    return Fabric(server_id(data_dir)).remove_all()
