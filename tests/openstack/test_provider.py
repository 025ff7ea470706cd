"""The openstack provider through openstacksdk against the loopback stand-in (no OpenStack runs
here: `tests/openstack/standin.py` answers the Keystone, Nova, Glance, Neutron and Cinder calls)."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shanzhi.domain.errors import CloudUnavailable, InvalidInput
from shanzhi.domain.metrics import rate
from shanzhi.providers import InstanceRequest, VolumeRequest, provider_class
from shanzhi.providers.openstack_cloud import OpenStackProvider
from tests.e2e.harness import wait_for
from tests.openstack.cloud import PASSWORD, StandIn

CREDS = {"username": "shanzhi", "password": PASSWORD}


def make(cloud: StandIn, tmp_path: Path, creds: dict[str, str] | None = None, **options: Any) -> OpenStackProvider:
    opts = OpenStackProvider.validate_options({"auth_url": cloud.auth_url, "project": "gz-tax", **options})
    p = provider_class("openstack")("os1", opts, tmp_path / "os1", CREDS if creds is None else creds)
    assert isinstance(p, OpenStackProvider)
    return p


def request(name: str = "gz.tax_web_api-0", zone: str = "gz-az1", **kw: Any) -> InstanceRequest:
    base: dict[str, Any] = {
        "name": name,
        "app": "web",
        "component": "api",
        "vdc": "gz/tax",
        "host": zone,
        "cpu": 1500,
        "memory": 2**30,
        "image": "kylin-v10",
        "ports": (("http", 8080),),
        "env": {"MODE": "production"},
        "command": ("/opt/tax/serve", "--port", "8080"),
    }
    base.update(kw)
    return InstanceRequest(**base)


def test_zones_flavors_images_networks_and_groups(openstack_cloud: StandIn, tmp_path: Path) -> None:
    cloud = openstack_cloud
    p = make(cloud, tmp_path, cpu="8", memory="16Gi", instances=10)
    assert p.status().healthy
    assert [(h.name, h.cpu, h.memory, h.max_instances) for h in p.hosts()] == [
        ("gz-az1", 4000, 8 * 2**30, 5),
        ("gz-az2", 4000, 8 * 2**30, 5),
    ]
    obs = p.create_instance(request(zone="gz-az2"))
    (s,) = cloud.servers()
    assert s["flavor"]["original_name"] == "s1.medium"  # 1.5 vCPU and 1 GiB: the smallest that holds them
    assert s["image"]["id"].endswith("0001") and s["OS-EXT-AZ:availability_zone"] == "gz-az2"
    assert s["metadata"]["shanzhi.cloud"] == "os1" and s["metadata"]["shanzhi.instance"] == "gz.tax_web_api-0"
    assert s["metadata"]["shanzhi.vdc"] == "gz/tax" and s["metadata"]["shanzhi.port.http"] == "8080"
    script = base64.b64decode(s["OS-EXT-SRV-ATTR:user_data"]).decode()
    assert "export MODE=production" in script and script.rstrip().endswith("exec /opt/tax/serve --port 8080")
    assert obs.host == "gz-az2" and obs.endpoint == f"{s['addresses']['gz-tax-net'][0]['addr']}:8080"
    (group,) = cloud.groups()
    assert s["security_groups"] == [{"name": group["name"]}]
    rules = {
        (r["direction"], r["protocol"], r["port_range_min"], r["remote_ip_prefix"])
        for r in group["security_group_rules"]
    }
    assert rules == {("ingress", "tcp", 8080, "10.20.0.0/24")}
    # again under the same name (a reconciler that crashed after the call): the same server
    assert p.create_instance(request()).detail.split()[0] == s["id"] and len(cloud.servers()) == 1
    assert [o.name for o in p.list_instances()] == ["gz.tax_web_api-0"]
    wait_for(lambda: [o.state for o in p.list_instances()] == ["running"], 10, "BUILD, then ACTIVE")
    p.delete_instance("gz.tax_web_api-0")
    assert cloud.servers() == [] and cloud.groups() == []


def test_a_volume_follows_its_ordinal_in_its_zone(openstack_cloud: StandIn, tmp_path: Path) -> None:
    cloud = openstack_cloud
    p = make(cloud, tmp_path)
    vol = VolumeRequest("gz.tax_web_api-0_data", "data", 3 * 2**30 - 5, "/data")
    p.create_instance(request(zone="gz-az2", volumes=(vol,)))
    (v,) = cloud.volumes()
    (s,) = cloud.servers()
    assert (v["size"], v["availability_zone"], v["status"], v["name"]) == (3, "gz-az2", "in-use", vol.key)
    assert [a["server_id"] for a in v["attachments"]] == [s["id"]]
    p.delete_instance("gz.tax_web_api-0")
    assert [x["status"] for x in cloud.volumes()] == ["available"]
    p.create_instance(request(zone="gz-az1", volumes=(vol,)))  # asked for elsewhere: runs where its disk is
    (s2,) = cloud.servers()
    assert s2["id"] != s["id"] and s2["OS-EXT-AZ:availability_zone"] == "gz-az2"
    assert [a["server_id"] for a in cloud.volumes()[0]["attachments"]] == [s2["id"]]
    p.delete_volume(vol.key)  # detached first
    p.delete_volume(vol.key)
    assert cloud.volumes() == []
    p.delete_instance("gz.tax_web_api-0")


def test_bad_input_and_a_cloud_that_is_away(openstack_cloud: StandIn, tmp_path: Path) -> None:
    cloud = openstack_cloud
    p = make(cloud, tmp_path)
    with pytest.raises(InvalidInput, match="no image 'windows-xp'"):
        p.create_instance(request(image="windows-xp"))
    with pytest.raises(InvalidInput, match="no flavor with 64 vCPUs"):
        p.create_instance(request(cpu=64_000))
    with pytest.raises(InvalidInput, match="no zone 'az9'"):
        p.create_instance(request(zone="az9"))
    with pytest.raises(InvalidInput, match="no network 'dmz'"):
        make(cloud, tmp_path, network="dmz").create_instance(request())
    assert cloud.servers() == [] and cloud.volumes() == []
    wrong = make(cloud, tmp_path, {"username": "shanzhi", "password": "not-it"})
    status = wrong.status()
    assert not status.healthy and "os1" in status.message
    with pytest.raises(CloudUnavailable):
        wrong.list_instances()
    assert "no credentials" in make(cloud, tmp_path, {}).status().message
    with pytest.raises(InvalidInput, match="Keystone v3 URL"):
        OpenStackProvider.validate_options({"auth_url": "keystone:5000"})


def test_inventory_lists_what_is_there_and_adopt_takes_a_server_over(openstack_cloud: StandIn, tmp_path: Path) -> None:
    cloud = openstack_cloud
    p = make(cloud, tmp_path)
    p.create_instance(request())
    legacy = cloud.post(
        "/compute/v2.1/servers",
        {
            "server": {
                "name": "legacy-tax",
                "flavorRef": "f2",
                "imageRef": cloud.get("/image/v2/images")["images"][1]["id"],
                "availability_zone": "gz-az2",
            }
        },
    )["server"]["id"]
    found = {(r.kind, r.id): r for r in p.inventory()}
    assert {k for k, _ in found} == {"host", "server", "volume", "network", "image", "flavor"} - {"volume"}
    old = found[("server", legacy)]
    assert (
        not old.managed and old.attrs["cpu"] == 1000 and old.attrs["memory"] == 2**30 and old.attrs["zone"] == "gz-az2"
    )
    assert [r.instance for (k, _), r in found.items() if k == "server" and r.managed] == ["gz.tax_web_api-0"]
    obs = p.adopt(legacy, request("legacy-web-aaa"))
    assert obs.name == "legacy-web-aaa" and obs.host == "gz-az2"
    assert {o.name for o in p.list_instances()} == {"gz.tax_web_api-0", "legacy-web-aaa"}
    s = next(x for x in cloud.servers() if x["id"] == legacy)
    assert s["name"] == "legacy-tax" and s["metadata"]["shanzhi.instance"] == "legacy-web-aaa"


def test_use_comes_from_novas_server_diagnostics(openstack_cloud: StandIn, tmp_path: Path) -> None:
    p = make(openstack_cloud, tmp_path)
    p.create_instance(request())
    wait_for(lambda: p.list_instances()[0].state == "running", 10, "ACTIVE")
    first, started = p.usage()["gz.tax_web_api-0"], time.monotonic()
    time.sleep(1.0)
    second = p.usage()["gz.tax_web_api-0"]
    point = rate(first, second, time.monotonic() - started)
    assert point.cpu == pytest.approx(0.5, rel=0.2)  # the two vCPUs' times: 0.3 + 0.2 of a core
    assert point.memory == 300 * 2**20
    assert point.rx == pytest.approx(2000, rel=0.2) and point.tx == pytest.approx(500, rel=0.2)
    assert point.write == pytest.approx(4096, rel=0.2) and point.read == 0
    # Nova's default policy: diagnostics for administrators only; a project without gets none
    openstack_cloud.post("/_standin/diagnostics/refuse")
    assert p.usage() == {}


def test_the_inventory_lists_servers_by_change_deleted_ones_included(openstack_cloud: StandIn, tmp_path: Path) -> None:
    cloud = openstack_cloud
    p = make(cloud, tmp_path)
    kept = p.create_instance(request("gz.tax_web_api-0"))
    doomed = p.create_instance(request("gz.tax_web_api-1"))
    wait_for(lambda: all(s["status"] == "ACTIVE" for s in cloud.servers()), 10, "servers active")
    ids = {s["name"]: s["id"] for s in cloud.servers()}
    time.sleep(1.1)  # Nova's times are to the second
    since = datetime.now(UTC)
    p.delete_instance(doomed.name)
    made = p.create_instance(request("gz.tax_web_api-2"))
    wait_for(lambda: all(s["status"] == "ACTIVE" for s in cloud.servers()), 10, "servers active")
    listing = p.inventory_since(since)
    servers = {r.name for r in listing.resources if r.kind == "server"}
    assert listing.partial == {"server"} and servers == {made.name}  # the unchanged one is not listed
    assert listing.gone == (("server", ids[doomed.name]),)
    assert {r.kind for r in listing.resources} >= {"host", "network", "image", "flavor"}  # the rest in whole
    whole = {r.name for r in p.inventory() if r.kind == "server"}
    assert whole == {kept.name, made.name}
