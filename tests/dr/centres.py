"""Three centres in network namespaces, joined at a core whose links can be cut with nftables.

Built with the tenant fabric's own topology (`shanzhi.providers.fabric.topology.Fabric`): each
centre is a site with its router, one host and one namespace holding the centre's address, where
its etcd member and (production and same-city) its Patroni node run. Packets between centres
cross the core. The root namespace reaches every centre over the fabric's management link, which
is never cut, so probes and the writer see every node through any partition.

A cut is a pair of centre addresses in a set of an nftables table in the core, dropped in its
forward hook both ways. Cutting and healing are one `nft` command each, and they take
established connections too (no rule lets conntrack's established state through).
"""

from __future__ import annotations

import ipaddress
import subprocess

from pyroute2 import netns

from shanzhi.network.policy import FAMILY, TABLE
from shanzhi.providers.fabric import nft
from shanzhi.providers.fabric.topology import Fabric

CENTRES = ("prod", "same", "arb")  # production, same-city, arbiter
_CUT = "shzcut"


class Centres:
    def __init__(self, tag: str, pool: str) -> None:
        self.fabric = Fabric(server=f"dr{tag}"[:8])
        hosts = list(ipaddress.ip_network(pool).hosts())
        self.mgmt = str(hosts[0])
        self.address = {c: str(hosts[10 + i]) for i, c in enumerate(CENTRES)}
        self.namespace: dict[str, str] = {}
        try:
            for c in CENTRES:
                self.fabric.ensure_cloud(c, c, 1)
                # the host forwards everything: the tenant policy is not what is under test here
                table = {"table": {"family": FAMILY, "name": TABLE}}
                nft.apply(self.fabric.host(c, 0), {"nftables": [{"add": table}, {"delete": table}]})
                self.namespace[c] = self.fabric.attach(c, c, 0, "node", self.address[c])
            self.fabric.ensure_management(pool, self.mgmt)
            self._nft(
                f"table inet {_CUT} {{\n"
                "  set cut { type ipv4_addr . ipv4_addr; }\n"
                "  chain forward { type filter hook forward priority -10; policy accept;\n"
                "    ip saddr . ip daddr @cut counter drop; }\n"
                "}\n"
            )
        except BaseException:
            self.close()
            raise

    def _nft(self, script: str) -> None:
        subprocess.run(["ip", "netns", "exec", self.fabric.core, "nft", "-f", "-"], input=script, text=True,
                       check=True, capture_output=True)  # fmt: skip

    def enter(self, centre: str) -> list[str]:
        """The command prefix that runs a program in the centre's namespace."""
        return ["ip", "netns", "exec", self.namespace[centre]]

    def cut(self, *pairs: tuple[str, str]) -> None:
        """Drop every packet between each pair of centres, both ways, from now on."""
        elems = []
        for a, b in pairs:
            x, y = self.address[a], self.address[b]
            elems += [f"{x} . {y}", f"{y} . {x}"]
        self._nft(f"add element inet {_CUT} cut {{ {', '.join(elems)} }}\n")

    def heal(self) -> None:
        self._nft(f"flush set inet {_CUT} cut\n")

    def dropped(self) -> int:
        """Packets dropped by cuts so far (proof that a cut cut something)."""
        out = subprocess.run(["ip", "netns", "exec", self.fabric.core, "nft", "list", "chain", "inet", _CUT, "forward"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        words = out.split()
        return int(words[words.index("packets") + 1]) if "packets" in words else 0

    def close(self) -> None:
        self.fabric.remove_all()

    @staticmethod
    def leftovers(tag: str) -> list[str]:
        prefix = Fabric(server=f"dr{tag}"[:8]).prefix
        return [n for n in netns.listnetns() if n.startswith(prefix)]
