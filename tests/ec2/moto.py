"""A real moto server (`moto[server]`) on loopback: the local stand-in for an EC2 endpoint.

No EC2 runs on this machine. moto answers the EC2 query API over HTTP as AWS documents it,
keeps instances, volumes and security groups, and is reset between tests.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import boto3
import httpx

from tests.e2e.harness import free_port, reap, spawn

REGION = "ap-southeast-1"  # moto knows its zones and instance types


class Moto:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = spawn(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            log,
            lambda: httpx.get(f"{self.url}/moto-api/", timeout=1).status_code < 500,
            "the moto server",
        )

    def reset(self) -> None:
        httpx.post(f"{self.url}/moto-api/reset", timeout=10).raise_for_status()

    def client(self, access_key: str = "AKIAOUTSIDE", secret: str = "outside-secret") -> Any:
        """A boto3 client of our own: what an operator (or an attacker) does behind Shanzhi's back."""
        return boto3.client(
            "ec2", endpoint_url=self.url, region_name=REGION, aws_access_key_id=access_key, aws_secret_access_key=secret
        )

    def image(self) -> str:
        images = self.client().describe_images(Owners=["amazon"])["Images"]
        return str(sorted(i["ImageId"] for i in images)[0])

    def stop(self) -> None:
        reap(self.proc)


def tagged(ec2: Any, cloud: str) -> dict[str, list[str]]:
    """What carries the cloud's tag and is not gone: instances, volumes, security groups."""
    f = [{"Name": "tag:shanzhi:cloud", "Values": [cloud]}]
    live = ["pending", "running", "stopping", "stopped", "shutting-down"]
    instances = [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=[*f, {"Name": "instance-state-name", "Values": live}])["Reservations"]
        for i in r["Instances"]
    ]
    volumes = [v["VolumeId"] for v in ec2.describe_volumes(Filters=f)["Volumes"]]
    groups = [g["GroupId"] for g in ec2.describe_security_groups(Filters=f)["SecurityGroups"]]
    return {"instances": instances, "volumes": volumes, "groups": groups}
