"""End to end on an openstack cloud: a real server and CLI against the loopback stand-in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.harness import Cli, Server, wait_for
from tests.openstack.cloud import PASSWORD, StandIn

pytestmark = pytest.mark.e2e


def mine(cloud: StandIn) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["shanzhi.instance"]: s for s in cloud.servers() if "shanzhi.instance" in s["metadata"]}


def test_register_apply_heal_adopt_and_delete_on_an_openstack_cloud(
    server: Server, openstack_cloud: StandIn, tmp_path: Path
) -> None:
    cloud, cli = openstack_cloud, Cli(server)
    creds = tmp_path / "os-creds.yaml"
    creds.write_text(f"username: shanzhi\npassword: {PASSWORD}\n")
    add = ["cloud", "add", "hcs-gz", "--kind", "openstack", "--site", "city-dc", "--region", "gz"]
    options = ["--option", f"auth_url={cloud.auth_url}", "--option", "project=gz-tax", "--option", "instances=8"]
    cli.ok(*add, *options, "--credentials-file", str(creds))
    got = wait_for(lambda: (c := cli.json("cloud", "get", "hcs-gz"))["health"] == "healthy" and c, 30, "healthy")
    assert [h["name"] for h in got["host_list"]] == ["gz-az1", "gz-az2"]
    assert PASSWORD not in cli.ok("cloud", "get", "hcs-gz", "-o", "json") and PASSWORD not in server.log.read_text()
    cli.ok("vdc", "create", "gz", "--quota", "cpu=8,memory=16Gi,instances=10,storage=20Gi")
    spec = {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": "tax", "vdc": "gz"},
        "spec": {
            "components": [
                {
                    "name": "api",
                    "replicas": 2,
                    "image": "kylin-v10",
                    "flavor": "s1.small",
                    "ports": [{"name": "http", "port": 8080}],
                    "volumes": [{"name": "data", "size": "1Gi", "mountPath": "/data"}],
                }
            ],
            "placement": {"clouds": {"names": ["hcs-gz"]}},
        },
    }
    path = tmp_path / "tax.json"
    path.write_text(json.dumps(spec))
    assert "app/tax ready" in cli.ok("apply", "-f", str(path), "--wait", "--timeout", "90")
    first = mine(cloud)
    rows = cli.json("instance", "list", "--app", "tax")
    assert sorted(first) == sorted(r["name"] for r in rows) and len(rows) == 2
    disks = {v["attachments"][0]["server_id"]: v["id"] for v in cloud.volumes()}
    assert set(disks) == {s["id"] for s in first.values()}

    # a server deleted behind Shanzhi's back comes back with its own volume
    victim = rows[0]["name"]
    old_id = first[victim]["id"]
    httpx.delete(f"{cloud.url}/compute/v2.1/servers/{old_id}", timeout=5).raise_for_status()
    healed = wait_for(lambda: (m := mine(cloud)).get(victim, {}).get("id", old_id) != old_id and m, 60, "a new server")
    new_id = healed[victim]["id"]
    wait_for(
        lambda: any(
            v["id"] == disks[old_id] and [a["server_id"] for a in v["attachments"]] == [new_id] for v in cloud.volumes()
        ),
        60,
        "the volume attached to the new server",
    )

    # a server made by hand in the project: listed unmanaged, adopted without a restart
    image = cloud.get("/image/v2/images")["images"][0]["id"]
    body = {"name": "legacy-portal", "flavorRef": "f2", "imageRef": image, "availability_zone": "gz-az1"}
    legacy = cloud.post("/compute/v2.1/servers", {"server": body})["server"]["id"]
    cli.ok("inventory", "sync", "--cloud", "hcs-gz")
    wait_for(
        lambda: any(
            r["external_id"] == legacy for r in cli.json("inventory", "list", "--kind", "server", "--unmanaged")
        ),
        30,
        "the legacy server in the inventory",
    )
    (comp,) = cli.json("adopt", legacy, "--cloud", "hcs-gz", "--vdc", "gz", "--app", "portal", "--dry-run")["spec"][
        "spec"
    ]["components"]
    assert comp["image"] == image and comp["resources"] == {"cpu": "1000m", "memory": "1024Mi"}
    (name,) = cli.json("adopt", legacy, "--cloud", "hcs-gz", "--vdc", "gz", "--app", "portal")["instances"]
    wait_for(lambda: cli.json("instance", "get", name)["state"] == "running", 30, "the adopted server running")
    assert mine(cloud)[name]["id"] == legacy

    # later syncs list servers by change: one deleted by hand leaves the inventory all the same
    adopted = next(s["id"] for s in cloud.servers() if s["name"] == "legacy-portal")
    other = body | {"name": "legacy-hr"}
    hr = cloud.post("/compute/v2.1/servers", {"server": other})["server"]["id"]
    cli.ok("inventory", "sync", "--cloud", "hcs-gz")

    def listed() -> set[str]:
        return {r["external_id"] for r in cli.json("inventory", "list", "--kind", "server")}

    wait_for(lambda: hr in listed(), 30, "the new server in the inventory")
    assert cli.json("inventory", "syncs")[0]["mode"] == "changes"
    httpx.delete(f"{cloud.url}/compute/v2.1/servers/{hr}", timeout=5).raise_for_status()
    cli.ok("inventory", "sync", "--cloud", "hcs-gz")
    wait_for(lambda: hr not in listed(), 30, "the deleted server gone from the inventory")
    assert adopted in listed() and cli.json("inventory", "syncs")[0]["mode"] == "changes"

    cli.ok("app", "delete", "tax", "--wait", "--timeout", "60")
    cli.ok("app", "delete", "portal", "--wait", "--timeout", "60")
    wait_for(lambda: cloud.servers() == [] and cloud.volumes() == [], 60, "no server or volume left")
    assert cloud.groups() == []
