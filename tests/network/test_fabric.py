"""The netns provider with real packets: instances in namespaces on a routed fabric, the compiled
policy enforced on every host, anti-spoofing, and nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shanzhi.domain.spec import Network
from shanzhi.network.addressing import management_address
from shanzhi.network.policy import AppNet, Endpoint, Ruleset, compile_ruleset
from shanzhi.providers.base import InstanceRequest, NetworkAttachment
from shanzhi.providers.netns.provider import NetnsProvider
from tests.network import ECHO, probe
from tests.network.kernel import fresh_pool, skip_unless_netns

PORT = 8080


@pytest.fixture
def cloud(data_dir: Path) -> Iterator[NetnsProvider]:
    skip_unless_netns()
    state = data_dir / "clouds" / "n1"
    state.mkdir(parents=True)
    p = NetnsProvider("n1", NetnsProvider.validate_options({"hosts": 2, "cpu": 2000}), state)
    assert p.status().healthy
    try:
        yield p
    finally:
        mgmt = p.fabric.mgmt_link
        p.dismantle()
        assert p.fabric.namespaces() == []
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
        assert mgmt not in links


class World:
    """Four instances: gz/web x2 (one per host), gz/api, sz/db; addresses from a fresh pool."""

    def __init__(self, p: NetnsProvider) -> None:
        self.p = p
        self.pool = fresh_pool()
        base = self.pool.split(".")
        self.net = f"{base[0]}.{base[1]}.{base[2]}"
        self.mgmt = management_address(self.pool)
        self.instances = {
            "web-0": ("gz", "web", "node-0", f"{self.net}.65"),
            "web-1": ("gz", "web", "node-1", f"{self.net}.66"),
            "api-0": ("gz", "api", "node-1", f"{self.net}.67"),
            "db-0": ("sz", "db", "node-0", f"{self.net}.129"),
        }
        for name, (vdc, app, host, address) in self.instances.items():
            p.create_instance(
                InstanceRequest(
                    name,
                    app,
                    "main",
                    vdc,
                    host,
                    500,
                    64 << 20,
                    ("python3", "-c", ECHO),  # the system one: the sandboxed uid cannot read root's
                    ports=(("http", PORT),),
                    network=NetworkAttachment(address, self.pool, self.mgmt),
                )
            )

    def addr(self, name: str) -> str:
        return self.instances[name][3]

    def ns(self, name: str) -> str:
        return self.p.fabric.instance("n1", name)

    def apply(self, db_network: Network | None) -> Ruleset:
        eps = [
            Endpoint(addr, vdc, app, name, self.p.fabric.instance_link("n1", name))
            for name, (vdc, app, _, addr) in self.instances.items()
        ]
        db = AppNet("sz", "db", db_network, {"http": (PORT, "tcp")})
        apps = [AppNet("gz", "web", None), AppNet("gz", "api", None), db]
        rs = compile_ruleset(eps, apps, self.mgmt)
        self.p.apply_policy(rs.commands)
        return rs

    def wait_serving(self) -> None:
        deadline = time.monotonic() + 60
        for name in self.instances:
            while True:
                try:
                    httpx.get(f"http://{self.addr(name)}:{PORT}/", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline, f"{name} never answered its health check"
                    time.sleep(0.2)


def _rule_id(rs: Ruleset, name: str, vdc: str | None = None, app: str | None = None) -> int:
    return next(r.id for r in rs.rules.values() if r.name == name and r.vdc == vdc and r.app == app)


def test_the_policy_lets_exactly_the_allowed_pairs_talk(cloud: NetnsProvider) -> None:
    w = World(cloud)
    only_web = Network.model_validate({"allow": [{"from": {"vdc": "gz", "app": "web"}, "ports": ["http"]}]})
    rs = w.apply(only_web)
    w.wait_serving()  # the management address reaches every instance

    same_app = probe(w.ns("web-0"), [w.addr("web-1")], PORT, 50)
    assert {k: v["answered"] for k, v in same_app.items()} == {"tcp": 50, "udp": 50, "icmp": 50}
    same_vdc = probe(w.ns("api-0"), [w.addr("web-0"), w.addr("web-1")], PORT, 50)
    assert {k: v["answered"] for k, v in same_vdc.items()} == {"tcp": 50, "udp": 50, "icmp": 50}
    # db (sz) lets gz/web in on its http port (tcp) only
    allowed = probe(w.ns("web-1"), [w.addr("db-0")], PORT, 50)
    assert {k: v["answered"] for k, v in allowed.items()} == {"tcp": 50, "udp": 0, "icmp": 0}
    # gz/api is not gz/web: refused, though both are gz
    other = probe(w.ns("api-0"), [w.addr("db-0")], PORT, 50)
    assert {k: v["answered"] for k, v in other.items()} == {"tcp": 0, "udp": 0, "icmp": 0}

    # from sz into gz: every kind dropped, each packet counted by the cross-VDC rule
    before = cloud.counters()
    cross = probe(w.ns("db-0"), [w.addr("web-0"), w.addr("api-0")], PORT, 400, "udp", "icmp")
    assert {k: v["answered"] for k, v in cross.items()} == {"udp": 0, "icmp": 0}
    rid = _rule_id(rs, "cross-vdc", "gz")
    after = cloud.counters()
    assert after[f"r{rid}"][0] - before.get(f"r{rid}", (0, 0))[0] == 800


def test_a_policy_change_opens_and_closes_a_path(cloud: NetnsProvider) -> None:
    w = World(cloud)
    w.apply(Network())  # db has a network section with no rules: only its own replicas
    w.wait_serving()
    assert probe(w.ns("web-0"), [w.addr("db-0")], PORT, 20, "tcp")["tcp"]["answered"] == 0
    w.apply(Network.model_validate({"allow": [{"from": {"cidr": w.pool}, "protocol": "any"}]}))
    opened = probe(w.ns("api-0"), [w.addr("db-0")], PORT, 20)
    assert {k: v["answered"] for k, v in opened.items()} == {"tcp": 20, "udp": 20, "icmp": 20}
    w.apply(Network.model_validate({"expose": ["http"]}))  # tcp 8080 from anywhere, nothing else
    exposed = probe(w.ns("api-0"), [w.addr("db-0")], PORT, 20)
    assert {k: v["answered"] for k, v in exposed.items()} == {"tcp": 20, "udp": 0, "icmp": 0}


def test_an_instance_cannot_use_a_neighbours_address(cloud: NetnsProvider) -> None:
    w = World(cloud)
    rs = w.apply(None)
    w.wait_serving()
    before = cloud.counters()
    # api-0 takes web-1's address as a second one and sends from it to web-0 (same app as web-1)
    ns = w.ns("api-0")
    subprocess.run(["ip", "netns", "exec", ns, "ip", "addr", "add", f"{w.addr('web-1')}/32", "dev", "eth0"], check=True)
    send = (
        "import socket,select\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('{w.addr('web-1')}',0))\n"
        f"[s.sendto(b'x',('{w.addr('web-0')}',{PORT})) for _ in range(100)]\n"
        "print(len(select.select([s],[],[],1.0)[0]))\n"
    )
    cmd = ["ip", "netns", "exec", ns, sys.executable, "-c", send]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert out.stdout.strip() == "0", out.stderr
    spoof = _rule_id(rs, "spoof")
    assert cloud.counters()[f"r{spoof}"][0] - before.get(f"r{spoof}", (0, 0))[0] == 100


def test_deleting_an_instance_removes_its_namespace_and_routes(cloud: NetnsProvider) -> None:
    w = World(cloud)
    w.apply(None)
    w.wait_serving()
    ns = w.ns("web-1")
    assert ns in cloud.fabric.namespaces()
    cloud.delete_instance("web-1")
    assert ns not in cloud.fabric.namespaces()
    for where in (cloud.fabric.router("n1"), cloud.fabric.core):
        cmd = ["ip", "netns", "exec", where, "ip", "route"]
        routes = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert w.addr("web-1") not in routes and w.addr("web-0") in routes
    names = {o.name for o in cloud.list_instances()}
    assert names == {"web-0", "api-0", "db-0"}


def test_a_vm_tap_left_in_the_root_namespace_is_found_and_removed(data_dir: Path) -> None:
    skip_unless_netns()
    from shanzhi.providers.fabric.topology import Fabric
    from shanzhi.providers.sandbox import server_id

    fabric = Fabric(server_id(data_dir))
    tap = fabric.add_tap("vms", "web-0", "root")  # as a VM whose QEMU never started leaves it
    assert tap.startswith("z") and len(tap) <= 15
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {tap}:" in links
    fabric.remove_all()
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert f" {tap}:" not in links


def test_clouds_of_a_site_share_its_router_and_sites_reach_each_other(data_dir: Path) -> None:
    skip_unless_netns()
    pool = fresh_pool()
    mgmt = management_address(pool)
    net = ".".join(pool.split(".")[:3])
    clouds = {}
    for name, site in (("a1", "city"), ("a2", "city"), ("b1", "district")):
        state = data_dir / "clouds" / name
        state.mkdir(parents=True)
        opts = NetnsProvider.validate_options({"hosts": 1, "cpu": 2000, "site": site})
        clouds[name] = NetnsProvider(name, opts, state)
        assert clouds[name].status().healthy
    fabric = clouds["a1"].fabric
    try:
        routers = [n for n in fabric.namespaces() if n.startswith(f"{fabric.prefix}_r.")]
        assert sorted(routers) == [fabric.router("city"), fabric.router("district")]
        addrs = {"a1": f"{net}.10", "a2": f"{net}.11", "b1": f"{net}.12"}
        for name, p in clouds.items():
            req = InstanceRequest(
                f"w-{name}", "web", "main", "gz", "node-0", 500, 64 << 20, ("python3", "-c", ECHO),
                ports=(("http", PORT),), network=NetworkAttachment(addrs[name], pool, mgmt),
            )  # fmt: skip
            p.create_instance(req)
        eps = [Endpoint(a, "gz", "web", f"w-{n}", fabric.instance_link(n, f"w-{n}")) for n, a in addrs.items()]
        rs = compile_ruleset(eps, [AppNet("gz", "web", None)], mgmt)
        for p in clouds.values():
            p.apply_policy(rs.commands)
        for a in addrs.values():
            deadline = time.monotonic() + 60
            while True:
                try:
                    httpx.get(f"http://{a}:{PORT}/", timeout=1)
                    break
                except httpx.HTTPError:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        # the same app across two clouds of one site and across sites
        src = fabric.instance("a1", "w-a1")
        assert probe(src, [addrs["a2"], addrs["b1"]], PORT, 20, "tcp")["tcp"]["answered"] == 20
        clouds["a1"].dismantle()
        assert fabric.router("city") in fabric.namespaces()  # a2 still uses it
        clouds["a2"].dismantle()
        assert fabric.router("city") not in fabric.namespaces() and fabric.core in fabric.namespaces()
    finally:
        for p in clouds.values():
            p.dismantle()
    assert fabric.namespaces() == []


def test_a_host_forwards_nothing_before_its_first_policy(cloud: NetnsProvider) -> None:
    w = World(cloud)  # instances up, no policy applied yet
    assert _answered_all(probe(w.ns("web-0"), [w.addr("web-1")], PORT, 20)) == {"tcp": 0, "udp": 0, "icmp": 0}
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{w.addr('web-0')}:{PORT}/", timeout=1)
    w.apply(None)
    w.wait_serving()
    assert _answered_all(probe(w.ns("web-0"), [w.addr("web-1")], PORT, 20)) == {"tcp": 20, "udp": 20, "icmp": 20}


def _answered_all(result: dict[str, dict[str, int]]) -> dict[str, int]:
    return {k: v["answered"] for k, v in result.items()}
