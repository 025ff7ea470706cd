"""A VM on the tenant fabric, end to end: a libvirt cloud with `network=fabric` beside a netns
cloud; the VM gets an address of its VDC's subnet, is health-checked over the management link,
answers its own VDC's processes, refuses another VDC's, and its flows are recorded."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shanzhi.providers.fabric.topology import Fabric
from shanzhi.providers.sandbox import server_id
from tests.e2e.harness import Cli, Server, stop_everything, wait_for
from tests.e2e.test_tenant_network import PORT, _addr, _answered, _running, _spec
from tests.network import probe
from tests.network.kernel import fresh_pool, skip_unless_netns
from tests.vm import require_vm, tiny_image

pytestmark = pytest.mark.e2e
__all__ = ["tiny_image"]


def _vm_spec() -> str:
    doc = {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": "vmweb", "vdc": "gz/health"},
        "spec": {
            "components": [
                {
                    "name": "web",
                    "image": "tiny",
                    "resources": {"cpu": 0.5, "memory": "192Mi"},
                    "ports": [{"name": "http", "port": PORT}],
                    "health": {"http": {"path": "/", "port": "http"}},
                }
            ],
            "placement": {"clouds": {"names": ["vmnet"]}},
        },
    }
    return json.dumps(doc)


@pytest.fixture
def world(tmp_path: Path, tiny_image: str) -> Iterator[tuple[Cli, Fabric]]:
    require_vm()
    skip_unless_netns()
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data, None, "--demo", "--network-pool", fresh_pool())
    cli = Cli(server)
    try:
        site = ["--site", "gz-huangpu", "--region", "gz"]
        cli.ok(
            "cloud",
            "add",
            "vmnet",
            "--provider",
            "libvirt",
            *site,
            "--option",
            "network=fabric",
            "--option",
            "stop_timeout=1",
            "--option",
            "memory=2Gi",
        )
        cli.ok("cloud", "add", "t1", "--provider", "netns", *site, "--option", "hosts=1")
        yield cli, Fabric(server_id(data))
    finally:
        stop_everything(data, server)


def test_a_vm_on_the_fabric_is_governed_like_a_process(world: tuple[Cli, Fabric], tmp_path: Path) -> None:
    cli, fabric = world
    for name, text in {
        "vmweb": _vm_spec(),
        "peer": _spec("peer", "gz/health", 1, None, "t1"),
        "stranger": _spec("stranger", "gz/transport", 1, None, "t1"),
    }.items():
        (tmp_path / f"{name}.json").write_text(text)
        cli.ok("apply", "-f", str(tmp_path / f"{name}.json"))
    vm = _running(cli, "vmweb", 1)[0]  # its health check came over the management link
    peer, stranger = _running(cli, "peer", 1)[0], _running(cli, "stranger", 1)[0]
    subnet = _addr(peer).rsplit(".", 1)[0]
    assert _addr(vm).rsplit(".", 1)[0] == subnet and vm["endpoint"].endswith(f":{PORT}")  # its VDC's subnet

    def ns(inst: dict[str, Any]) -> str:
        return fabric.instance(str(inst["cloud"]), str(inst["name"]))

    assert _answered(probe(ns(peer), [_addr(vm)], PORT, 20, "tcp", "icmp")) == {"tcp": 20, "icmp": 20}
    assert _answered(probe(ns(stranger), [_addr(vm)], PORT, 50)) == {"tcp": 0, "udp": 0, "icmp": 0}

    def seen() -> dict[str, Any] | None:
        rows = cli.json("flows", "--app", "vmweb", "--limit", "5000")
        verdicts = {(f["src_app"], f["verdict"]) for f in rows}
        return {"rows": rows} if {("peer", "forwarded"), ("stranger", "dropped")} <= verdicts else None

    rows = wait_for(seen, 60, "the VM's flows recorded")["rows"]
    assert any(f["dst_instance"] == vm["name"] and f["rule"] == "same-vdc gz/health/vmweb" for f in rows)

    for app in ("vmweb", "peer", "stranger"):
        cli.ok("app", "delete", app, "--wait")
    for cloud in ("vmnet", "t1"):
        cli.ok("cloud", "delete", cloud)
    assert fabric.namespaces() == []
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert fabric.instance_link("vmnet", str(vm["name"])) not in links and fabric.mgmt_link not in links
