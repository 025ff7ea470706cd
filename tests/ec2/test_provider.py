"""The ec2 provider against a real moto server on loopback (no EC2 runs here)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from shanzhi.domain.errors import CloudUnavailable, InvalidInput
from shanzhi.providers import InstanceRequest, VolumeRequest, provider_class
from shanzhi.providers.ec2 import Ec2Provider
from tests.e2e.harness import free_port
from tests.ec2.moto import REGION, Moto, tagged

CREDS = {"access_key_id": "AKIASHANZHI", "secret_access_key": "shanzhi-secret"}


def make(moto: Moto, tmp_path: Path, name: str = "e1", **options: Any) -> Ec2Provider:
    opts = Ec2Provider.validate_options({"endpoint": moto.url, "region": REGION, **options})
    p = provider_class("ec2")(name, opts, tmp_path / name, CREDS)
    assert isinstance(p, Ec2Provider)
    return p


def request(moto: Moto, name: str = "gz.tax_web_api-0", zone: str = "ap-southeast-1a", **kw: Any) -> InstanceRequest:
    base: dict[str, Any] = {
        "name": name,
        "app": "web",
        "component": "api",
        "vdc": "gz/tax",
        "host": zone,
        "cpu": 1500,
        "memory": 3 * 2**30,
        "image": moto.image(),
        "ports": (("http", 8080), ("metrics", 9100)),
        "env": {"GREETING": "hello 'world'"},
        "command": ("/usr/bin/serve", "--port", "8080"),
    }
    base.update(kw)
    return InstanceRequest(**base)


def instance(ec2: Any, name: str) -> dict[str, Any]:
    found = ec2.describe_instances(
        Filters=[
            {"Name": "tag:shanzhi:instance", "Values": [name]},
            {"Name": "instance-state-name", "Values": ["pending", "running"]},
        ]
    )["Reservations"]
    assert len(found) == 1, found
    return dict(found[0]["Instances"][0])


def test_hosts_are_the_zones_sharing_the_quota(moto: Moto, tmp_path: Path) -> None:
    p = make(moto, tmp_path, cpu="30", memory="96Gi", instances=9)
    assert p.status().healthy
    hosts = p.hosts()
    assert [h.name for h in hosts] == ["ap-southeast-1a", "ap-southeast-1b", "ap-southeast-1c"]
    assert {(h.cpu, h.memory, h.max_instances) for h in hosts} == {(10_000, 32 * 2**30, 3)}


def test_create_tags_sizes_guards_and_starts_the_replica(moto: Moto, tmp_path: Path) -> None:
    p = make(moto, tmp_path)
    ec2 = moto.client()
    obs = p.create_instance(request(moto))
    i = instance(ec2, "gz.tax_web_api-0")
    tags = {t["Key"]: t["Value"] for t in i["Tags"]}
    assert tags["shanzhi:cloud"] == "e1" and tags["shanzhi:vdc"] == "gz/tax" and tags["shanzhi:app"] == "web"
    assert tags["shanzhi:component"] == "api" and tags["Name"] == "gz.tax_web_api-0"
    # 1.5 cpu and 3 GiB: the smallest type in t3,m5,c5,r5 with 2 vCPUs and at least 3 GiB
    assert i["InstanceType"] == "t3.medium"
    assert i["Placement"]["AvailabilityZone"] == "ap-southeast-1a"
    assert obs.host == "ap-southeast-1a" and obs.ports == {"http": 8080, "metrics": 9100}
    assert obs.endpoint == f"{i['PrivateIpAddress']}:8080"
    # the security group admits exactly the component's ports, from the VPC only
    (group,) = ec2.describe_security_groups(GroupIds=[g["GroupId"] for g in i["SecurityGroups"]])["SecurityGroups"]
    vpc = ec2.describe_vpcs(VpcIds=[group["VpcId"]])["Vpcs"][0]["CidrBlock"]
    rules = {
        (r["IpProtocol"], r["FromPort"], tuple(x["CidrIp"] for x in r["IpRanges"])) for r in group["IpPermissions"]
    }
    assert rules == {("tcp", 8080, (vpc,)), ("tcp", 9100, (vpc,))}
    # the user data starts the command with the environment, quoted
    raw = ec2.describe_instance_attribute(InstanceId=i["InstanceId"], Attribute="userData")["UserData"]["Value"]
    script = base64.b64decode(raw).decode()
    assert "export GREETING='hello '\"'\"'world'\"'\"''" in script
    assert script.rstrip().endswith("exec /usr/bin/serve --port 8080")
    # created again under the same name (a reconciler that crashed after the call): the same instance
    assert p.create_instance(request(moto)).detail.split()[0] == i["InstanceId"]
    assert len(tagged(ec2, "e1")["instances"]) == 1


def test_a_volume_is_made_in_the_zone_attached_and_outlives_its_replica(moto: Moto, tmp_path: Path) -> None:
    p = make(moto, tmp_path)
    ec2 = moto.client()
    vol = VolumeRequest("gz.tax_web_api-0_data", "data", 5 * 2**30 + 1, "/data")
    p.create_instance(request(moto, zone="ap-southeast-1b", volumes=(vol,)))
    i = instance(ec2, "gz.tax_web_api-0")
    (v,) = ec2.describe_volumes(Filters=[{"Name": "tag:shanzhi:volume", "Values": [vol.key]}])["Volumes"]
    assert v["Size"] == 6 and v["AvailabilityZone"] == "ap-southeast-1b" and v["VolumeType"] == "gp3"
    assert [a["InstanceId"] for a in v["Attachments"]] == [i["InstanceId"]]
    assert p.describe("gz.tax_web_api-0")["volumes"]["/dev/sdf"] == v["VolumeId"]

    p.delete_instance("gz.tax_web_api-0")
    left = tagged(ec2, "e1")
    assert left["instances"] == [] and left["groups"] == [] and left["volumes"] == [v["VolumeId"]]
    # the next replica of the ordinal, asked for in another zone, runs where its disk is
    p.create_instance(request(moto, zone="ap-southeast-1c", volumes=(vol,)))
    j = instance(ec2, "gz.tax_web_api-0")
    assert j["InstanceId"] != i["InstanceId"] and j["Placement"]["AvailabilityZone"] == "ap-southeast-1b"
    assert [a["InstanceId"] for a in ec2.describe_volumes(VolumeIds=[v["VolumeId"]])["Volumes"][0]["Attachments"]] == [
        j["InstanceId"]
    ]
    p.delete_instance("gz.tax_web_api-0")
    p.delete_volume(vol.key)
    p.delete_volume(vol.key)  # gone already: fine
    assert tagged(ec2, "e1") == {"instances": [], "volumes": [], "groups": []}


def test_list_sees_only_its_own_live_instances(moto: Moto, tmp_path: Path) -> None:
    p, other = make(moto, tmp_path), make(moto, tmp_path, name="e2")
    ec2 = moto.client()
    p.create_instance(request(moto, name="a-0"))
    p.create_instance(request(moto, name="a-1", zone="ap-southeast-1c"))
    other.create_instance(request(moto, name="b-0"))
    ec2.run_instances(ImageId=moto.image(), MinCount=1, MaxCount=1)  # not Shanzhi's
    seen = sorted((o.name, o.host) for o in p.list_instances())
    assert seen == [("a-0", "ap-southeast-1a"), ("a-1", "ap-southeast-1c")]
    ec2.terminate_instances(InstanceIds=[instance(ec2, "a-1")["InstanceId"]])  # behind Shanzhi's back
    assert [o.name for o in p.list_instances()] == ["a-0"]
    ec2.stop_instances(InstanceIds=[instance(ec2, "a-0")["InstanceId"]])
    assert [(o.name, o.state) for o in p.list_instances()] == [("a-0", "exited")]


def test_bad_images_sizes_and_zones_are_refused_by_name(moto: Moto, tmp_path: Path) -> None:
    p = make(moto, tmp_path)
    with pytest.raises(InvalidInput, match="ami-00000000"):
        p.create_instance(request(moto, image="ami-00000000"))
    with pytest.raises(InvalidInput, match="no image 'no-such-image'"):
        p.create_instance(request(moto, image="no-such-image"))
    with pytest.raises(InvalidInput, match="needs an 'image'"):
        p.create_instance(request(moto, image=None))
    with pytest.raises(InvalidInput, match=r"no instance type .* 5000 cpu"):
        p.create_instance(request(moto, cpu=5_000_000))
    with pytest.raises(InvalidInput, match="no zone 'mars-1a'"):
        p.create_instance(request(moto, zone="mars-1a"))
    assert tagged(moto.client(), "e1") == {"instances": [], "volumes": [], "groups": []}
    with pytest.raises(InvalidInput, match=r"http\(s\) URL"):
        Ec2Provider.validate_options({"endpoint": "ftp://x"})
    with pytest.raises(InvalidInput, match="unknown option 'zone'"):
        Ec2Provider.validate_options({"zone": "a"})


def test_an_unreachable_endpoint_is_a_cloud_down_not_a_crash(tmp_path: Path) -> None:
    opts = Ec2Provider.validate_options({"endpoint": f"http://127.0.0.1:{free_port()}", "region": REGION})
    p = Ec2Provider("gone", opts, tmp_path, CREDS)
    status = p.status()
    assert not status.healthy and "gone" in status.message and "describe_availability_zones" in status.message
    with pytest.raises(CloudUnavailable, match="describe_instances"):
        p.list_instances()


def test_the_client_signs_with_the_credentials_it_was_given(moto: Moto, tmp_path: Path) -> None:
    p = make(moto, tmp_path)
    creds = p.ec2._request_signer._credentials  # type: ignore[attr-defined]
    assert (creds.access_key, creds.secret_key) == ("AKIASHANZHI", "shanzhi-secret")


def test_use_comes_from_the_clouds_monitoring_without_an_agent(moto: Moto, tmp_path: Path) -> None:
    p = make(moto, tmp_path, monitoring_period=60)
    p.create_instance(request(moto))  # t3.medium: 2 vCPUs
    p.create_instance(request(moto, name="gz.tax_web_api-1"))
    assert p.usage() == {}  # just started: no datapoint yet, no reading (not a zero)
    iid = instance(moto.client(), "gz.tax_web_api-0")["InstanceId"]
    # what EC2 itself publishes for the instance each period (moto keeps what is put)
    watch = boto3.client(
        "cloudwatch", endpoint_url=moto.url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y"
    )
    now = datetime.now(UTC)
    for ago, cpu in ((150, 90.0), (30, 40.0)):  # the latest period wins
        at = now - timedelta(seconds=ago)
        dim = [{"Name": "InstanceId", "Value": iid}]
        watch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[
                {"MetricName": "CPUUtilization", "Dimensions": dim, "Timestamp": at, "Value": cpu, "Unit": "Percent"},
                {"MetricName": "NetworkIn", "Dimensions": dim, "Timestamp": at, "Value": 6_000_000.0, "Unit": "Bytes"},
                {"MetricName": "DiskWriteBytes", "Dimensions": dim, "Timestamp": at, "Value": 120.0, "Unit": "Bytes"},
            ],
        )
    got = p.usage()
    assert set(got) == {"gz.tax_web_api-0"}  # the other has published nothing yet
    point = got["gz.tax_web_api-0"]
    assert point.cpu == pytest.approx(0.8)  # 40 % of 2 vCPUs
    assert point.rx == pytest.approx(100_000.0) and point.write == pytest.approx(2.0)  # bytes per 60 s period
    assert point.memory is None and point.tx is None  # not measured without an agent: unknown, not zero


def test_the_monitoring_period_is_checked() -> None:
    with pytest.raises(InvalidInput, match=r"60 \(detailed monitoring\) or 300"):
        Ec2Provider.validate_options({"monitoring_period": 120})


def test_the_inventory_lists_instances_by_change_after_one_whole_listing(moto: Moto, tmp_path: Path) -> None:
    p = make(moto, tmp_path)
    ec2 = moto.client()
    since = datetime.now(UTC)
    assert p.inventory_since(since) is None  # nothing to compare with yet: list whole
    p.create_instance(request(moto, name="a-0"))
    outside = ec2.run_instances(ImageId=moto.image(), MinCount=2, MaxCount=2)["Instances"]
    whole = {r.id for r in p.inventory() if r.kind == "server"}
    assert {i["InstanceId"] for i in outside} <= whole and len(whole) >= 3
    quiet = p.inventory_since(since)
    assert quiet is not None and quiet.partial == {"server"} and quiet.gone == ()
    assert [r for r in quiet.resources if r.kind == "server"] == []  # nothing changed: no instance described
    assert {r.kind for r in quiet.resources} >= {"host", "network", "flavor"}  # the rest is listed whole
    # one stopped, one terminated, one new, one adopted (its tags change, not its state)
    first, second = (i["InstanceId"] for i in outside)
    ec2.stop_instances(InstanceIds=[first])
    ec2.terminate_instances(InstanceIds=[second])
    [new] = ec2.run_instances(ImageId=moto.image(), MinCount=1, MaxCount=1)["Instances"]
    changes = p.inventory_since(since)
    assert changes is not None
    servers = {r.id: r for r in changes.resources if r.kind == "server"}
    assert set(servers) == {first, new["InstanceId"]} and servers[first].state == "stopped"
    assert changes.gone == (("server", second),)
    p.adopt(new["InstanceId"], request(moto, name="legacy-0"))
    adopted = p.inventory_since(since)
    assert adopted is not None
    [(rid, managed, inst)] = [(r.id, r.managed, r.instance) for r in adopted.resources if r.kind == "server"]
    assert (rid, managed, inst) == (new["InstanceId"], True, "legacy-0")
    again = p.inventory_since(since)
    assert again is not None and [r for r in again.resources if r.kind == "server"] == [] and again.gone == ()
    ec2.create_tags(Resources=[first], Tags=[{"Key": "owner", "Value": "finance"}])  # outside Shanzhi: no state change
    retagged = p.inventory_since(since)
    assert retagged is not None
    [(rid, tags)] = [(r.id, r.attrs["tags"]) for r in retagged.resources if r.kind == "server"]
    assert (rid, tags) == (first, {"owner": "finance"})
