"""End to end on an ec2 cloud: a real server and CLI driving a real moto server on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.e2e.harness import Cli, Server, stop_everything, wait_for
from tests.ec2.moto import REGION, Moto, tagged

pytestmark = pytest.mark.e2e
SECRET = "wJalrXUtnFEMI-K7MDENG-shanzhi-test-secret"


def app_spec(image: str, replicas: int = 2) -> str:
    return json.dumps(
        {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": "tax", "vdc": "gz"},
            "spec": {
                "components": [
                    {
                        "name": "api",
                        "replicas": replicas,
                        "image": image,
                        "flavor": "s1.small",
                        "env": {"MODE": "production"},
                        "ports": [{"name": "http", "port": 8080}],
                        "volumes": [{"name": "data", "size": "2Gi", "mountPath": "/data"}],
                    }
                ],
                "placement": {"clouds": {"names": ["aws-gz"]}},
            },
        }
    )


def by_name(ec2: Any, cloud: str = "aws-gz") -> dict[str, dict[str, Any]]:
    out = {}
    live = ["pending", "running"]
    filters = [{"Name": "tag:shanzhi:cloud", "Values": [cloud]}, {"Name": "instance-state-name", "Values": live}]
    for r in ec2.describe_instances(Filters=filters)["Reservations"]:
        for i in r["Instances"]:
            out[next(t["Value"] for t in i["Tags"] if t["Key"] == "shanzhi:instance")] = i
    return out


def test_register_apply_heal_and_delete_on_an_ec2_cloud(server: Server, moto: Moto, tmp_path: Path) -> None:
    cli = Cli(server)
    creds = tmp_path / "aws-credentials"
    creds.write_text(f"[gz]\naws_access_key_id = AKIASHANZHIGZ\naws_secret_access_key = {SECRET}\n")
    options = ["--option", f"endpoint={moto.url}", "--option", f"region={REGION}", "--option", "instances=6"]
    args = ["cloud", "add", "aws-gz", "--kind", "ec2", "--site", "public-a", "--region", "gz", *options]
    cli.ok(*args, "--credentials-file", str(creds), "--profile", "gz")
    cloud = wait_for(lambda: (c := cli.json("cloud", "get", "aws-gz"))["health"] == "healthy" and c, 30, "healthy")
    assert cloud["options"]["credentials"] == {"fields": ["access_key_id", "secret_access_key"], "sealed": True}
    assert [h["name"] for h in cloud["host_list"]] == [f"{REGION}a", f"{REGION}b", f"{REGION}c"]
    # the secret is nowhere in the clear: not in the API's answers, the database, the log, the events
    everything = "".join(cli.ok(*c) for c in (["cloud", "get", "aws-gz", "-o", "json"], ["events", "-o", "json"]))
    stored = b"".join(p.read_bytes() for p in server.data_dir.glob("shanzhi.db*"))
    assert SECRET not in everything and SECRET.encode() not in stored and SECRET not in server.log.read_text()
    assert os.stat(server.data_dir / "credentials.key").st_mode & 0o777 == 0o600

    cli.ok("vdc", "create", "gz", "--quota", "cpu=8,memory=16Gi,instances=10,storage=20Gi")
    spec = tmp_path / "tax.json"
    spec.write_text(app_spec(moto.image()))
    out = cli.ok("apply", "-f", str(spec), "--wait", "--timeout", "90")
    assert "app/tax ready" in out
    ec2 = moto.client()
    first = by_name(ec2)
    rows = cli.json("instance", "list", "--app", "tax")
    assert sorted(first) == sorted(r["name"] for r in rows) and len(rows) == 2
    assert {r["cloud"] for r in rows} == {"aws-gz"} and all(r["state"] == "running" for r in rows)
    assert {i["InstanceType"] for i in first.values()} == {"t3.micro"}  # s1.small (1 cpu, 1 GiB): 2 vCPU, 1 GiB
    volumes = {
        name: [m["Ebs"]["VolumeId"] for m in i["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf"]
        for name, i in first.items()
    }
    assert all(len(v) == 1 for v in volumes.values())
    detail = cli.json("instance", "get", rows[0]["name"])
    assert detail["provider"]["instance_id"] == first[rows[0]["name"]]["InstanceId"]

    # an operator terminates one behind Shanzhi's back: it comes back, with its own disk
    victim = rows[0]["name"]
    ec2.terminate_instances(InstanceIds=[first[victim]["InstanceId"]])
    healed = wait_for(
        lambda: (
            (now := by_name(ec2)).get(victim, {}).get("InstanceId") not in (None, first[victim]["InstanceId"]) and now
        ),
        60,
        "the terminated instance to be replaced",
    )
    again = [m["Ebs"]["VolumeId"] for m in healed[victim]["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf"]
    assert again == volumes[victim]
    reasons = [e["reason"] for e in cli.json("events", "--app", "tax")]
    assert "InstanceVanished" in reasons
    wait_for(lambda: all(r["state"] == "running" for r in cli.json("instance", "list", "--app", "tax")), 30, "running")

    # delete leaves nothing behind on the cloud: no instance, volume or security group
    cli.ok("app", "delete", "tax", "--wait", "--timeout", "60")
    wait_for(lambda: tagged(ec2, "aws-gz") == {"instances": [], "volumes": [], "groups": []}, 60, "nothing left")


def test_bad_credentials_and_clouds_are_refused_and_change_nothing(server: Server, moto: Moto, tmp_path: Path) -> None:
    cli = Cli(server)
    base = ["cloud", "add", "aws-gz", "--kind", "ec2", "--site", "public-a", "--region", "gz"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("access_key_id: AKIA\npassword: hunter2\n")
    r = cli.run(*base, "--option", f"endpoint={moto.url}", "--credentials-file", str(bad))
    assert r.returncode != 0 and "unknown credential 'password'" in r.stderr and "hunter2" not in r.stderr
    r = cli.run(*base, "--credentials-file", str(tmp_path / "missing"))
    assert r.returncode != 0 and "missing" in r.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"access_key_id": "AKIA", "secret_access_key": SECRET}))
    r = cli.run(
        "cloud", "add", "city", "--kind", "local", "--site", "s", "--region", "gz", "--credentials-file", str(good)
    )
    assert r.returncode != 0 and "a local cloud takes no credentials" in r.stderr
    r = cli.run(*base, "--option", "endpoint=ftp://example", "--credentials-file", str(good))
    assert r.returncode != 0 and "http(s) URL" in r.stderr
    assert cli.json("cloud", "list") == []
    # replacing credentials: the provider is built again with them; the old ones are gone
    cli.ok(*base, "--option", f"endpoint={moto.url}", "--option", f"region={REGION}", "--credentials-file", str(good))
    new = tmp_path / "new.yaml"
    new.write_text("access_key_id: AKIANEW\nsecret_access_key: rotated-secret\n")
    out = cli.json("cloud", "credentials", "aws-gz", "--credentials-file", str(new))
    assert out["options"]["credentials"]["fields"] == ["access_key_id", "secret_access_key"]
    assert "CloudCredentials" in [e["reason"] for e in cli.json("events")]
    r = cli.run("cloud", "credentials", "nope", "--credentials-file", str(new))
    assert r.returncode != 0 and "cloud nope does not exist" in r.stderr


def test_inventory_lists_and_adopt_takes_over_an_instance_made_outside(
    server: Server, moto: Moto, tmp_path: Path
) -> None:
    cli = Cli(server)
    creds = tmp_path / "creds.yaml"
    creds.write_text(f"access_key_id: AKIASHANZHIGZ\nsecret_access_key: {SECRET}\n")
    options = ["--option", f"endpoint={moto.url}", "--option", f"region={REGION}", "--credentials-file", str(creds)]
    cli.ok("cloud", "add", "aws-gz", "--kind", "ec2", "--site", "public-a", "--region", "gz", *options)
    cli.ok("vdc", "create", "gz", "--quota", "cpu=8,memory=16Gi,instances=10")
    # a legacy system someone started by hand: its own security group opens 8443 to the VPC
    ec2 = moto.client()
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    group = ec2.create_security_group(GroupName="legacy", Description="by hand", VpcId=vpc["VpcId"])["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=group,
        IpPermissions=[
            {"IpProtocol": "tcp", "FromPort": 8443, "ToPort": 8443, "IpRanges": [{"CidrIp": vpc["CidrBlock"]}]}
        ],
    )
    legacy = ec2.run_instances(
        ImageId=moto.image(),
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.small",
        SecurityGroupIds=[group],
        Placement={"AvailabilityZone": f"{REGION}b"},
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "legacy-tax"}]}],
    )["Instances"][0]
    lid = legacy["InstanceId"]

    cli.ok("inventory", "sync", "--cloud", "aws-gz")
    found = wait_for(
        lambda: [
            r for r in cli.json("inventory", "list", "--cloud", "aws-gz", "--unmanaged") if r["external_id"] == lid
        ],
        30,
        "the legacy instance in the inventory",
    )
    assert found[0]["name"] == "legacy-tax" and found[0]["kind"] == "server" and found[0]["managed"] is False
    assert found[0]["attrs"]["ports"] == [8443] and found[0]["attrs"]["zone"] == f"{REGION}b"
    kinds = {r["kind"] for r in cli.json("inventory", "list", "--cloud", "aws-gz")}
    assert {"host", "server", "network", "flavor"} <= kinds
    (sync,) = [r for r in cli.json("inventory", "syncs") if r["cloud"] == "aws-gz"]
    assert sync["synced_at"] and sync["error"] == "" and sync["items"] > 10

    # dry run: the spec it would write, and nothing changes
    base = ["adopt", lid, "--cloud", "aws-gz", "--vdc", "gz", "--app", "legacy", "--component", "web"]
    dry = cli.json(*base, "--dry-run")
    (comp,) = dry["spec"]["spec"]["components"]
    assert comp["image"] == legacy["ImageId"] and comp["replicas"] == 1
    assert comp["resources"] == {"cpu": "2000m", "memory": "2048Mi"}  # t3.small
    assert comp["ports"] == [{"name": "p8443", "port": 8443}]
    assert cli.json("app", "list") == []

    adopted = cli.json(*base)
    (name,) = adopted["instances"]
    row = wait_for(
        lambda: (r := cli.json("instance", "get", name))["state"] == "running" and r, 30, "the adopted replica to run"
    )
    assert row["cloud"] == "aws-gz" and row["host"] == f"{REGION}b"
    tags = {t["Key"]: t["Value"] for t in ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [lid]}])["Tags"]}
    assert tags["shanzhi:instance"] == name and tags["shanzhi:vdc"] == "gz" and tags["Name"] == "legacy-tax"
    same = ec2.describe_instances(InstanceIds=[lid])["Reservations"][0]["Instances"][0]
    assert same["State"]["Name"] == "running" and same["LaunchTime"] == legacy["LaunchTime"]  # never restarted
    assert "AppAdopted" in [e["reason"] for e in cli.json("events", "--app", "legacy")]
    r = cli.run(*base)
    assert r.returncode != 0 and "already" in r.stderr
    r = cli.run("adopt", "i-0000000000", "--cloud", "aws-gz", "--vdc", "gz", "--app", "other")
    assert r.returncode != 0 and "no server i-0000000000" in r.stderr
    cli.ok("inventory", "sync", "--cloud", "aws-gz")
    wait_for(
        lambda: (
            [r["instance"] for r in cli.json("inventory", "list", "--kind", "server") if r["external_id"] == lid]
            == [name]
        ),
        30,
        "the inventory to show it managed",
    )
    # managed like any replica: terminated behind Shanzhi's back, it is replaced
    ec2.terminate_instances(InstanceIds=[lid])
    wait_for(lambda: name in by_name(ec2, "aws-gz"), 60, "a replacement")
    cli.ok("app", "delete", "legacy", "--wait", "--timeout", "60")
    wait_for(lambda: tagged(ec2, "aws-gz")["instances"] == [], 60, "nothing left")


def test_an_ec2_replicas_use_comes_from_the_clouds_monitoring(data_dir: Path, moto: Moto, tmp_path: Path) -> None:
    server = Server(data_dir, None, "--metrics-interval", "1")
    try:
        cli = Cli(server)
        creds = tmp_path / "creds.json"
        creds.write_text(json.dumps({"access_key_id": "AKIASHANZHIGZ", "secret_access_key": SECRET}))
        options = [
            "--option",
            f"endpoint={moto.url}",
            "--option",
            f"region={REGION}",
            "--option",
            "monitoring_period=60",
        ]
        cli.ok(
            "cloud",
            "add",
            "aws-gz",
            "--kind",
            "ec2",
            "--site",
            "a",
            "--region",
            "gz",
            *options,
            "--credentials-file",
            str(creds),
        )
        cli.ok("vdc", "create", "gz", "--quota", "cpu=8,memory=16Gi,instances=10,storage=20Gi")
        spec = tmp_path / "tax.json"
        spec.write_text(app_spec(moto.image(), replicas=1))
        cli.ok("apply", "-f", str(spec), "--wait", "--timeout", "90")
        [(name, i)] = by_name(moto.client()).items()  # t3.micro: 2 vCPUs
        watch = boto3.client(
            "cloudwatch", endpoint_url=moto.url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y"
        )
        dim = [{"Name": "InstanceId", "Value": i["InstanceId"]}]
        watch.put_metric_data(
            Namespace="AWS/EC2",
            MetricData=[{"MetricName": "CPUUtilization", "Dimensions": dim, "Value": 25.0, "Unit": "Percent"}],
        )
        latest = wait_for(lambda: cli.json("app", "metrics", "tax")["latest"], 30, "a sample from CloudWatch")
        assert [(p["instance"], p["cpu"], p["memory"]) for p in latest] == [(name, 0.5, None)]
        table = cli.ok("app", "metrics", "tax")
        assert name in table and "0.500" in table  # memory unknown: an empty cell, not a crash or a zero
    finally:
        stop_everything(data_dir, server)
