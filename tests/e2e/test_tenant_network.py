"""Tenant networks end to end: a real server, netns clouds in two sites, apps of three VDCs;
probes between every pair of VDCs; a replica moved to the other site keeps exactly its allowed
peers; a policy change takes effect; deleting the clouds leaves no namespace or link."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shanzhi.providers.fabric.topology import Fabric
from shanzhi.providers.sandbox import server_id
from tests.e2e.harness import Cli, Server, stop_everything, wait_for
from tests.network import ECHO, probe
from tests.network.kernel import fresh_pool, skip_unless_netns

pytestmark = pytest.mark.e2e
PORT = 8080


def _spec(name: str, vdc: str, replicas: int, network: dict[str, Any] | None, *clouds: str) -> str:
    body: dict[str, Any] = {
        "components": [
            {
                "name": "main",
                "replicas": replicas,
                "resources": {"cpu": 0.5, "memory": "64Mi"},
                "run": {"command": ["python3", "-c", ECHO]},
                "ports": [{"name": "http", "port": PORT}],
                "health": {"tcp": {"port": "http"}},
            }
        ],
        "placement": {
            "clouds": {"names": list(clouds)},
            "weights": {c: 1.0 if i == 0 else 0.0 for i, c in enumerate(clouds)},  # the first, unless moved
            "antiAffinity": {"over": "host"},
        },
    }
    if network is not None:
        body["network"] = network
    doc = {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": name, "vdc": vdc}, "spec": body}
    return json.dumps(doc)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Server, Cli, Fabric]]:
    skip_unless_netns()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    s = Server(data_dir, None, "--demo", "--network-pool", fresh_pool(), "--network-prefix", "26")
    cli = Cli(s)
    try:
        for name, site in (("t1", "gz-huangpu"), ("t2", "gz-nansha")):
            cli.ok("cloud", "add", name, "--provider", "netns", "--site", site, "--region", "gz", "--option", "hosts=2")
        yield s, cli, Fabric(server_id(data_dir))
    finally:
        stop_everything(data_dir, s)


def _running(cli: Cli, app: str, n: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        rows = [i for i in cli.json("instance", "list", "--app", app) if i.get("state") == "running"]
        return rows if len(rows) == n else None

    rows: list[dict[str, Any]] = wait_for(ready, 180, f"{n} running replicas of {app}")
    return rows


def _addr(inst: dict[str, Any]) -> str:
    return str(inst["endpoint"]).rsplit(":", 1)[0]


def _answered(result: dict[str, Any]) -> dict[str, int]:
    return {k: int(v["answered"]) for k, v in result.items()}


def test_vdcs_are_isolated_and_policy_follows_a_moved_replica(
    world: tuple[Server, Cli, Fabric], tmp_path: Path
) -> None:
    _, cli, fabric = world
    allow_portal = {"allow": [{"from": {"vdc": "gz/transport", "app": "portal"}, "ports": ["http"]}]}
    specs = {
        "portal": _spec("portal", "gz/transport", 2, None, "t1"),
        "records": _spec("records", "gz/health", 1, allow_portal, "t1", "t2"),
        "aid": _spec("aid", "gz/tianhe", 1, None, "t1"),
    }
    for name, text in specs.items():
        (tmp_path / f"{name}.json").write_text(text)
        cli.ok("apply", "-f", str(tmp_path / f"{name}.json"))
    portal, records, aid = _running(cli, "portal", 2), _running(cli, "records", 1), _running(cli, "aid", 1)
    # each VDC has its own subnet: addresses of different VDCs share no /26
    nets = {
        a: {_addr(i).rsplit(".", 1)[0] + "/" + str(int(_addr(i).rsplit(".", 1)[1]) // 64) for i in rows}
        for a, rows in (("portal", portal), ("records", records), ("aid", aid))
    }
    assert nets["portal"].isdisjoint(nets["records"]) and nets["portal"].isdisjoint(nets["aid"])

    def ns(inst: dict[str, Any]) -> str:
        return fabric.instance(str(inst["cloud"]), str(inst["name"]))

    # allowed: within an app (every kind), and portal -> records on its http port
    assert _answered(probe(ns(portal[0]), [_addr(portal[1])], PORT, 100)) == {"tcp": 100, "udp": 100, "icmp": 100}
    assert _answered(probe(ns(portal[1]), [_addr(records[0])], PORT, 100, "tcp")) == {"tcp": 100}

    # every VDC to every other: nothing delivered (portal -> records tcp is the one allowed pair)
    by_vdc = {"gz/transport": portal, "gz/health": records, "gz/tianhe": aid}
    sent = 0
    for src_vdc, src in by_vdc.items():
        for dst_vdc, dst in by_vdc.items():
            if src_vdc == dst_vdc:
                continue
            kinds = ["udp", "icmp"] if (src_vdc, dst_vdc) == ("gz/transport", "gz/health") else ["tcp", "udp", "icmp"]
            got = probe(ns(src[0]), [_addr(d) for d in dst], PORT, 600, *kinds)
            assert _answered(got) == dict.fromkeys(kinds, 0), f"{src_vdc} -> {dst_vdc}: {got}"
            sent += 600 * len(kinds)
    assert sent >= 10_000

    # move records to the other site: a new address there, and the same peers as before
    cli.ok("app", "move", str(records[0]["name"]), "--to", "t2")
    moved = wait_for(
        lambda: [
            i
            for i in cli.json("instance", "list", "--app", "records")
            if i.get("state") == "running" and i["cloud"] == "t2"
        ],
        180,
        "records running on t2",
    )[0]
    assert _addr(moved) != _addr(records[0])
    wait_for(lambda: len(cli.json("instance", "list", "--app", "records")) == 1, 120, "the old replica gone")
    assert _answered(probe(ns(portal[0]), [_addr(moved)], PORT, 50, "tcp")) == {"tcp": 50}
    assert _answered(probe(ns(aid[0]), [_addr(moved)], PORT, 50)) == {"tcp": 0, "udp": 0, "icmp": 0}

    # a policy change: records also admits gz/tianhe's aid; it takes effect without a restart
    opened = {"allow": [*allow_portal["allow"], {"from": {"vdc": "gz/tianhe", "app": "aid"}, "ports": ["http"]}]}
    (tmp_path / "records.json").write_text(_spec("records", "gz/health", 1, opened, "t1", "t2"))
    cli.ok("apply", "-f", str(tmp_path / "records.json"))
    wait_for(lambda: probe(ns(aid[0]), [_addr(moved)], PORT, 5, "tcp")["tcp"]["answered"] == 5, 30, "aid let in")
    assert cli.json("instance", "list", "--app", "records")[0]["name"] == moved["name"]  # not replaced

    # deleting the apps and then the clouds removes every namespace and link the fabric made
    for app in ("portal", "records", "aid"):
        cli.ok("app", "delete", app, "--wait")
    for cloud in ("t1", "t2"):
        cli.ok("cloud", "delete", cloud)
    assert fabric.namespaces() == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert fabric.mgmt_link not in links


def test_a_replica_on_the_fabric_is_healed_and_adopted_with_its_address(
    world: tuple[Server, Cli, Fabric], tmp_path: Path
) -> None:
    server, cli, fabric = world
    for name in ("api", "web"):
        (tmp_path / f"{name}.json").write_text(_spec(name, "gz/health", 1, None, "t1"))
        cli.ok("apply", "-f", str(tmp_path / f"{name}.json"))
    api, web = _running(cli, "api", 1)[0], _running(cli, "web", 1)[0]
    ns = fabric.instance("t1", str(api["name"]))
    said = cli.json("instance", "get", str(web["name"]))["provider"]
    assert said["address"] == _addr(web) and said["netns"] == fabric.instance("t1", str(web["name"]))

    # the workload dies: healed in place, the same address, the same peers
    os.kill(int(said["pid"]), signal.SIGKILL)
    healed = wait_for(
        lambda: (
            (g := cli.json("instance", "get", str(web["name"])))["provider"]["pid"] not in (None, said["pid"])
            and g["state"] == "running"
            and g
        ),
        120,
        "the replica healed",
    )
    assert healed["provider"]["address"] == said["address"]
    assert _answered(probe(ns, [_addr(web)], PORT, 20, "tcp")) == {"tcp": 20}

    # a restarted server adopts it: the same process, the policy applied again
    pid = healed["provider"]["pid"]
    server.kill()
    again = Server(server.data_dir, None, *server.extra)  # the same network pool
    cli.server = again
    try:
        again.passes_after(10, 60)  # health checks over the management link keep passing
        got = cli.json("instance", "get", str(web["name"]))
        assert got["provider"]["pid"] == pid and got["state"] == "running" and got["restarts"] == healed["restarts"]
        assert _answered(probe(ns, [_addr(web)], PORT, 20, "tcp")) == {"tcp": 20}
    finally:
        again.kill()
