"""The tenant fabric in the kernel: network namespaces, veth links and routes (pyroute2).

One fabric per server (its namespaces all start `shz-<server id>.`; names hold no `.`,
so one cloud's names never run into another's):

    root ns --mgmt link-- core --- <cloud>.r (a cloud's router) --- <cloud>.h<i> (its hosts)
                                                                       `--- <cloud>.i.<instance>

- An instance is a namespace of its own with one link (`eth0`) to its host, holding its /32
  address; its default route goes out of that link.
- Hosts, routers and the core forward and answer ARP for what they route (proxy ARP, as Calico
  does), so links need no addresses of their own: each instance address is a /32 route on its
  host, its cloud's router and the core. Hosts are where policy is enforced (see `nft`).
- The management link joins the root namespace (the server, its health checks) to the core: the
  pool is routed through it from the management address (the pool's first). Workloads cannot
  open connections over it (the policy drops them), so it joins no two tenants.

Everything is idempotent by name: `ensure_*` creates what is missing, `remove_*` succeeds when it
is gone. Namespaces are only entered through pyroute2's `IPRoute(netns=...)`, which opens its
socket in a forked child: the server's threads never switch namespace.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from shanzhi.domain.errors import ProviderError
from shanzhi.network.policy import INSTANCE_LINK_PREFIX, closed_ruleset
from shanzhi.providers.fabric import nft

_EEXIST = 17
_ENOENT = 2
_ESRCH = 3
_ENODEV = 19
_FORWARDER_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.forwarding=1",
    "net.ipv4.conf.default.proxy_arp=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
    "net.netfilter.nf_conntrack_acct=1",
    "net.netfilter.nf_conntrack_timestamp=1",
)
#: the forwarders' own addresses (on their loopbacks), link-local, routed nowhere, one per tier:
#: the kernel sends ARP requests from a local address, a proxy-ARP neighbour ignores requests
#: from 0.0.0.0 and drops those from an address of its own, and linked namespaces are always
#: of different tiers
TIER_ADDRESS = {"core": "169.254.1.1", "router": "169.254.1.2", "host": "169.254.1.3"}
_INSTANCE_SYSCTLS = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def _sysctl(ns: str, settings: tuple[str, ...]) -> None:
    """Set sysctls inside a namespace (per-namespace ones; `ip netns exec` remounts /proc/sys)."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-q", "-e", "-w", *settings], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ProviderError(f"could not configure namespace {ns}: {done.stderr.strip()}")


@contextlib.contextmanager
def _ipr(ns: str | None) -> Iterator[IPRoute]:
    """A netlink socket in namespace `ns` (None: the root one). pyroute2 would create a missing
    namespace; this refuses instead."""
    if ns and ns not in netns.listnetns():
        raise ProviderError(f"network namespace {ns} does not exist")
    ipr = IPRoute(netns=ns) if ns else IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _index(ipr: IPRoute, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _ignore(err: NetlinkError, *codes: int) -> None:
    if err.code not in codes:
        raise ProviderError(f"netlink: {err}") from None


@dataclass(frozen=True)
class Fabric:
    """The fabric of one server, named by its id."""

    server: str  # a short id (see sandbox.server_id)

    # ----------------------------------------------------------------- names
    @property
    def prefix(self) -> str:
        return f"shz-{self.server[:8]}."

    @property
    def core(self) -> str:
        return f"{self.prefix}core"

    def router(self, site: str) -> str:
        """A site's router ("_" is in no cloud's name, so no cloud's namespace is named alike)."""
        return f"{self.prefix}_r.{site}"

    def host(self, cloud: str, index: int) -> str:
        return f"{self.prefix}{cloud}.h{index}"

    def instance(self, cloud: str, name: str) -> str:
        return f"{self.prefix}{cloud}.i.{name}"

    def ifname(self, tag: str, key: str) -> str:
        """An interface name unique to this server and key, within IFNAMSIZ (15)."""
        return tag + hashlib.sha1(f"{self.server}/{key}".encode()).hexdigest()[:12]

    def instance_link(self, cloud: str, name: str) -> str:
        """An instance's link on its host: the instance prefix, this server's and a hash (a VM's
        tap starts out in the root namespace, where `remove_all` finds it by the first two)."""
        key = hashlib.sha1(f"{self.server}/{cloud}/{name}".encode()).hexdigest()[:9]
        return f"{self._link_head}{key}"

    @property
    def _link_head(self) -> str:
        return f"{INSTANCE_LINK_PREFIX}{self.server[:5]}"

    @property
    def mgmt_link(self) -> str:
        return self.ifname("m", "mgmt")

    def namespaces(self) -> list[str]:
        return sorted(n for n in netns.listnetns() if n.startswith(self.prefix))

    # ---------------------------------------------------------- primitives
    def _ensure_ns(self, name: str, sysctls: tuple[str, ...], *, tier: str | None = None) -> bool:
        """Create the namespace (with its loopback up and sysctls set; a forwarder's with its
        tier's address); False if it existed."""
        if name in netns.listnetns():
            return False
        netns.create(name)
        with _ipr(name) as ipr:
            lo = _index(ipr, "lo")
            if lo is not None:
                ipr.link("set", index=lo, state="up")
                if tier:
                    ipr.addr("add", index=lo, address=TIER_ADDRESS[tier], prefixlen=32)
        _sysctl(name, sysctls)
        return True

    def _ensure_link(self, a_ns: str | None, a_if: str, b_ns: str, b_if: str, *, proxies: str = "ab") -> None:
        """A veth pair: `a_if` in `a_ns` (None: the root namespace), `b_if` in `b_ns`, both up.

        The ends named in `proxies` answer ARP for what they route at once: the kernel's default
        waits up to 0.8 s per hop (`proxy_delay`, a per-interface setting; a namespace has no
        default of its own to change).
        """
        with _ipr(a_ns) as ipr:
            if _index(ipr, a_if) is None:
                try:
                    ipr.link("add", ifname=a_if, kind="veth", peer={"ifname": b_if, "net_ns_fd": b_ns})
                except NetlinkError as err:
                    _ignore(err, _EEXIST)
            idx = _index(ipr, a_if)
            if idx is None:
                raise ProviderError(f"link {a_if} did not appear in {a_ns or 'the root namespace'}")
            ipr.link("set", index=idx, state="up")
        with _ipr(b_ns) as ipr:
            idx = _index(ipr, b_if)
            if idx is None:
                raise ProviderError(f"link {b_if} did not appear in {b_ns}")
            ipr.link("set", index=idx, state="up")
        if "a" in proxies and a_ns is not None:
            _sysctl(a_ns, (f"net.ipv4.neigh.{a_if}.proxy_delay=0",))
        if "b" in proxies:
            _sysctl(b_ns, (f"net.ipv4.neigh.{b_if}.proxy_delay=0",))

    def _route(self, ns: str | None, dst: str, ifname: str, *, present: bool = True, src: str | None = None) -> None:
        if not present and ns and ns not in netns.listnetns():
            return  # nothing to remove where there is nothing
        with _ipr(ns) as ipr:
            idx = _index(ipr, ifname)
            if idx is None:
                if present:
                    raise ProviderError(f"no link {ifname} in {ns or 'the root namespace'} to route {dst} through")
                return
            spec: dict[str, object] = {"dst": dst, "oif": idx}
            if src:
                spec["prefsrc"] = src
            try:
                ipr.route("replace" if present else "del", **spec)
            except NetlinkError as err:
                _ignore(err, _ESRCH, _ENOENT)

    @staticmethod
    def _remove_ns(name: str) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            netns.remove(name)

    # ------------------------------------------------------------ topology
    def ensure_cloud(self, cloud: str, site: str, hosts: int) -> None:
        """The core, the site's router and the cloud's hosts, linked (idempotent)."""
        self._ensure_ns(self.core, _FORWARDER_SYSCTLS, tier="core")
        router = self.router(site)
        self._ensure_ns(router, _FORWARDER_SYSCTLS, tier="router")
        self._ensure_link(self.core, self.ifname("c", site), router, "up0")
        with _ipr(router) as ipr:
            up = _index(ipr, "up0")
            with contextlib.suppress(NetlinkError):
                ipr.route("replace", dst="0.0.0.0/0", oif=up)
        for i in range(hosts):
            host = self.host(cloud, i)
            if self._ensure_ns(host, _FORWARDER_SYSCTLS, tier="host"):
                nft.apply(host, closed_ruleset())  # closed until the controller's policy arrives
            self._ensure_link(router, self.ifname("h", f"{cloud}/{i}"), host, "up0")
            with _ipr(host) as ipr:
                up = _index(ipr, "up0")
                with contextlib.suppress(NetlinkError):
                    ipr.route("replace", dst="0.0.0.0/0", oif=up)

    def cloud_ready(self, cloud: str, site: str, hosts: int) -> bool:
        present = set(netns.listnetns())
        return {self.core, self.router(site), *(self.host(cloud, i) for i in range(hosts))} <= present

    def ensure_management(self, pool: str, address: str) -> None:
        """The management link from the root namespace, routing the pool from `address`."""
        self._ensure_ns(self.core, _FORWARDER_SYSCTLS, tier="core")
        link = self.mgmt_link
        with _ipr(None) as ipr:
            net, plen = pool.split("/")
            for route in ipr.get_routes(family=2, table=254):
                if route.get_attr("RTA_DST") != net or route["dst_len"] != int(plen):
                    continue
                oif = route.get_attr("RTA_OIF")
                names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links(oif)] if oif else []
                if names and names[0] != self.mgmt_link:
                    raise ProviderError(
                        f"the network pool {pool} is already routed on this machine (via {names[0]}); "
                        "start the server with another --network-pool"
                    )
        self._ensure_link(None, link, self.core, "m0", proxies="b")
        with _ipr(None) as ipr:
            idx = _index(ipr, link)
            assert idx is not None
            with contextlib.suppress(NetlinkError):
                ipr.addr("add", index=idx, address=address, prefixlen=32)
        self._route(None, pool, link, src=address)
        self._route(self.core, f"{address}/32", "m0")

    def _routes(self, cloud: str, site: str, host: int, address: str, *, present: bool = True) -> None:
        """An instance's /32 on its site's router (to its host) and on the core (to its site)."""
        self._route(self.router(site), f"{address}/32", self.ifname("h", f"{cloud}/{host}"), present=present)
        self._route(self.core, f"{address}/32", self.ifname("c", site), present=present)

    def attach(self, cloud: str, site: str, host: int, name: str, address: str) -> str:
        """An instance's namespace with its address, linked to its host and routed; returns the
        namespace's name. Idempotent."""
        ns = self.instance(cloud, name)
        self._ensure_ns(ns, _INSTANCE_SYSCTLS)
        hostns = self.host(cloud, host)
        link = self.instance_link(cloud, name)
        self._ensure_link(hostns, link, ns, "eth0", proxies="a")
        with _ipr(ns) as ipr:
            idx = _index(ipr, "eth0")
            assert idx is not None
            with contextlib.suppress(NetlinkError):
                ipr.addr("add", index=idx, address=address, prefixlen=32)
            with contextlib.suppress(NetlinkError):
                ipr.route("replace", dst="0.0.0.0/0", oif=idx)
        self._route(hostns, f"{address}/32", link)
        self._routes(cloud, site, host, address)
        return ns

    def add_tap(self, cloud: str, name: str, owner: str) -> str:
        """A VM's link: a persistent tap in the root namespace that `owner` (QEMU's user) may open
        by name; `adopt_tap` moves it onto its host once QEMU holds it. Returns its name."""
        link = self.instance_link(cloud, name)
        with _ipr(None) as ipr:
            if _index(ipr, link) is not None:
                ipr.link("del", index=_index(ipr, link))
        done = subprocess.run(
            ["ip", "tuntap", "add", "dev", link, "mode", "tap", "user", owner],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise ProviderError(f"could not create tap {link}: {done.stderr.strip()}")
        return link

    def adopt_tap(self, cloud: str, site: str, host: int, name: str, address: str) -> None:
        """Move a VM's tap (opened by QEMU: the file stays bound to it) to its host, and route."""
        link = self.instance_link(cloud, name)
        hostns = self.host(cloud, host)
        with _ipr(None) as ipr:
            idx = _index(ipr, link)
            if idx is not None:
                ipr.link("set", index=idx, net_ns_fd=hostns)
        with _ipr(hostns) as ipr:
            idx = _index(ipr, link)
            if idx is None:
                raise ProviderError(f"tap {link} is neither in the root namespace nor in {hostns}")
            ipr.link("set", index=idx, state="up")
        _sysctl(hostns, (f"net.ipv4.conf.{link}.proxy_arp=1", f"net.ipv4.neigh.{link}.proxy_delay=0"))
        self._route(hostns, f"{address}/32", link)
        self._routes(cloud, site, host, address)

    def detach(self, cloud: str, site: str, host: int, name: str, address: str | None) -> None:
        """Remove an instance's namespace (or a VM's tap) and its routes; succeed when gone."""
        link = self.instance_link(cloud, name)
        for ns in (None, self.host(cloud, host)):  # a VM's tap, wherever it is
            with contextlib.suppress(NetlinkError, OSError, ProviderError), _ipr(ns) as ipr:
                idx = _index(ipr, link)
                if idx is not None:
                    ipr.link("del", index=idx)
        self._remove_ns(self.instance(cloud, name))  # its link goes with it, and the host's route
        if address:
            self._routes(cloud, site, host, address, present=False)

    def isolated(self, key: str) -> str:
        """A namespace with nothing but its loopback (a DR drill's copy): no link, no route, so
        nothing in it reaches production and nothing outside reaches it. Returns its name."""
        ns = f"{self.prefix}_x.{key}"
        self._ensure_ns(ns, _INSTANCE_SYSCTLS)
        return ns

    def remove_isolated(self, name: str) -> None:
        if name.startswith(f"{self.prefix}_x."):
            self._remove_ns(name)

    def remove_cloud(self, cloud: str, site: str, hosts: int) -> None:
        """Every namespace of the cloud; its site's router when no other cloud is left there, and
        the core when no site is."""
        router = self.router(site)
        with contextlib.suppress(ProviderError, NetlinkError, OSError), _ipr(router) as ipr:
            for i in range(hosts):  # at once (a namespace's own links go when the kernel gets to it)
                idx = _index(ipr, self.ifname("h", f"{cloud}/{i}"))
                if idx is not None:
                    ipr.link("del", index=idx)
            if not any(str(link.get_attr("IFLA_IFNAME")).startswith("h") for link in ipr.get_links()):
                self._remove_ns(router)
        mine = f"{self.prefix}{cloud}."
        for name in self.namespaces():
            if name.startswith(mine):
                self._remove_ns(name)
        if not any(n.startswith(f"{self.prefix}_r.") for n in self.namespaces()):
            self.remove_all()

    def remove_all(self) -> int:
        """Every namespace and link of this server's fabric; returns how many namespaces went."""
        names = self.namespaces()
        for name in names:
            self._remove_ns(name)
        with _ipr(None) as ipr:
            for link in ipr.get_links():
                name = str(link.get_attr("IFLA_IFNAME"))
                if name == self.mgmt_link or name.startswith(self._link_head):  # and taps never moved
                    with contextlib.suppress(NetlinkError):
                        ipr.link("del", index=link["index"])
        return len(names)
