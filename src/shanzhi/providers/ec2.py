"""`ec2`: instances on any EC2-compatible endpoint (AWS, or a cloud that speaks the EC2 API), with boto3.

- **Hosts** are the region's availability zones; the capacity Shanzhi may use (options `cpu`,
  `memory`, `instances`: the account's quota for the platform) is split evenly over them.
- **Instance type**: the smallest offered type of the `families` option with at least the
  replica's cpu and memory (a `flavor` sets those), or the `instance_type` option when given.
- **Image**: the component's `image`, an AMI id (`ami-...`) or the name of an image (the
  newest of that name wins).
- **Tags** carry the cloud, VDC, app, component and instance: an instance is found by its tags
  (`shanzhi:instance`), which is what makes create idempotent and adoption possible.
- **Ports**: one security group per component, admitting TCP on its ports from the VPC only.
- **Volumes**: EBS (`gp3`) tagged `shanzhi:volume`, created in the replica's zone and attached
  as `/dev/sdf`, `/dev/sdg`, ... They outlive the instance (the next replica of the ordinal
  gets them) until the app is deleted.
- **Start-up**: the command and environment go in the user data (a shell script cloud-init
  runs). User data is readable by whoever may describe the instance: put no secret there.
- **Credentials**: `access_key_id`, `secret_access_key` and optionally `session_token`, sealed
  at rest (`providers.credentials`); without them boto3's own chain on the server (its
  environment, `~/.aws`, an instance profile).
- **Retries and waits** are boto3's: the `standard` retry mode, and its waiters for an instance
  to terminate and a volume to become available.

Instances' addresses are private to the VPC, so the platform does not probe their health itself
(`probes_endpoints` is off): the state EC2 reports is the state recorded. Their use comes from
the cloud's monitoring service (`providers.cloudwatch`: cpu, network and disk, no memory without
an agent), at the `monitoring_endpoint` (default: the `endpoint`, as EC2-compatible clouds
serve both; else AWS's own).
"""

from __future__ import annotations

import base64
import math
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError

from shanzhi.domain.errors import CloudUnavailable, Conflict, InvalidInput, NotFound
from shanzhi.domain.metrics import Point
from shanzhi.providers import cloudwatch
from shanzhi.providers.base import (
    InstanceRequest,
    InstanceState,
    Listing,
    LogChunk,
    ObservedInstance,
    OptionSpec,
    Resource,
    ZonedCloud,
    startup_script,
)

if TYPE_CHECKING:
    from mypy_boto3_ec2 import EC2Client

TAG = "shanzhi:"
LIVE = ["pending", "running", "stopping", "stopped"]  # shutting-down and terminated are gone
INVENTORIED = ("pending", "running", "stopping", "stopped", "shutting-down")  # the inventory lists these
_STATES: dict[str, InstanceState] = {
    "pending": "starting",
    "running": "running",
    "stopping": "exited",
    "stopped": "exited",
}
_DEVICES = [f"/dev/sd{c}" for c in "fghijklm"]  # one per volume (a component has at most 8)
_GiB = 2**30


def _endpoint(value: Any) -> str:
    url = str(value)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL such as https://ec2.cn-north-1.example.gov.cn, not {url!r}")
    return url


def _families(value: Any) -> str:
    names = [f.strip() for f in str(value).split(",") if f.strip()]
    if not names or not all(f.replace("-", "").isalnum() for f in names):
        raise ValueError(f"must be instance families separated by commas (t3,m5), not {value!r}")
    return ",".join(names)


def _period(value: Any) -> int:
    seconds = int(value)
    if seconds not in (60, 300):
        raise ValueError(f"must be 60 (detailed monitoring) or 300 (basic), not {value!r}")
    return seconds


def _tags(pairs: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in pairs.items()]


def _digest(tags: list[Any]) -> int:
    """An instance's tags as one number, to see whether they changed (in this process)."""
    return hash(frozenset((str(t["Key"]), str(t["Value"])) for t in tags))


def _tag(resource: dict[str, Any], key: str) -> str:
    for t in resource.get("Tags", []):
        if t["Key"] == key:
            return str(t["Value"])
    return ""


class Ec2Provider(ZonedCloud):
    kind = "ec2"
    runtimes = frozenset({"vm"})
    probes_endpoints = False
    credential_fields = {
        "access_key_id": "the access key id",
        "secret_access_key": "the secret access key",
        "session_token": "a session token (temporary credentials)",
    }
    options = {
        "endpoint": OptionSpec(_endpoint, "", "the EC2 API endpoint URL (default: AWS's own for the region)"),
        "region": OptionSpec(str, "us-east-1", "the region name the endpoint serves"),
        "subnet": OptionSpec(str, "", "subnet id for instances (default: the default VPC's subnet in each zone)"),
        "families": OptionSpec(_families, "t3,m5,c5,r5", "instance families to choose types from"),
        "instance_type": OptionSpec(str, "", "one instance type for every replica (instead of choosing)"),
        "key_name": OptionSpec(str, "", "an EC2 key pair to put on instances"),
        "monitoring_endpoint": OptionSpec(_endpoint, "", "the CloudWatch endpoint URL (default: `endpoint`)"),
        "monitoring_period": OptionSpec(_period, 300, "seconds per CloudWatch datapoint: 300 (basic) or 60 (detailed)"),
        **ZonedCloud.QUOTA_OPTIONS,
    }

    def __init__(self, name: str, options: Any, state_dir: Any, credentials: Any = None) -> None:
        super().__init__(name, options, state_dir, credentials)
        self._lock = threading.Lock()
        self._client: EC2Client | None = None
        self._monitoring: Any = None
        self._types: list[tuple[int, int, int, str]] | None = None  # (millicores, bytes, rank, type)
        self._images: dict[str, str] = {}
        self._subnets: dict[str, tuple[str, str, str]] = {}  # zone -> (subnet, vpc, vpc cidr)
        # inventory by change: each live instance's state and tags (a digest) in the last listing
        self._listed: dict[str, tuple[str, int]] | None = None

    # -- the client and its errors ------------------------------------------------------------

    @property
    def ec2(self) -> EC2Client:
        with self._lock:
            if self._client is None:
                self._client = self._session_client("ec2", self.opts["endpoint"])
            return self._client

    @property
    def cloudwatch(self) -> Any:
        with self._lock:
            if self._monitoring is None:
                endpoint = self.opts["monitoring_endpoint"] or self.opts["endpoint"]
                self._monitoring = self._session_client("cloudwatch", endpoint)
            return self._monitoring

    def _session_client(self, service: str, endpoint: str) -> Any:
        creds = self.credentials
        session = boto3.session.Session(
            aws_access_key_id=creds.get("access_key_id"),
            aws_secret_access_key=creds.get("secret_access_key"),
            aws_session_token=creds.get("session_token"),
        )
        return session.client(
            service,  # type: ignore[call-overload]
            endpoint_url=endpoint or None,
            region_name=self.opts["region"],
            config=Config(retries={"mode": "standard", "max_attempts": 4}, connect_timeout=5, read_timeout=30),
        )

    def _call(self, op: str, **kwargs: Any) -> Any:
        """One EC2 call; its failures as the platform's errors, naming the cloud and the call."""
        try:
            return getattr(self.ec2, op)(**kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            message = err.response.get("Error", {}).get("Message", str(err))
            if code.startswith(("InvalidAMIID", "InvalidParameter", "InvalidInstanceType", "Unsupported")):
                raise InvalidInput(f"cloud {self.name}: {op}: {code}: {message}") from None
            if code.endswith(".NotFound"):
                raise NotFound(f"cloud {self.name}: {op}: {code}: {message}") from None
            raise CloudUnavailable(f"cloud {self.name}: {op}: {code or 'error'}: {message}") from None
        except BotoCoreError as err:
            raise CloudUnavailable(f"cloud {self.name}: {op}: {err}") from None

    def _pages(self, op: str, key: str, **kwargs: Any) -> list[Any]:
        try:
            pages = self.ec2.get_paginator(op).paginate(**kwargs)  # type: ignore[call-overload]
            return [item for page in pages for item in page[key]]
        except (ClientError, BotoCoreError) as err:
            raise CloudUnavailable(f"cloud {self.name}: {op}: {err}") from None

    # -- capacity -------------------------------------------------------------------------------

    def _list_zones(self) -> list[str]:
        got = self._call("describe_availability_zones", Filters=[{"Name": "state", "Values": ["available"]}])
        return [str(z["ZoneName"]) for z in got["AvailabilityZones"]]

    def _instance_type(self, req: InstanceRequest) -> str:
        if self.opts["instance_type"]:
            return str(self.opts["instance_type"])
        for cpu, memory, _, name in self._instance_types_loaded():
            if cpu >= req.cpu and memory >= req.memory:
                return name
        raise InvalidInput(
            f"cloud {self.name} offers no instance type in families {self.opts['families']} with "
            f"{req.cpu / 1000:g} cpu and {req.memory // 2**20} MiB",
            field="resources",
        )

    def _instance_types_loaded(self) -> list[tuple[int, int, int, str]]:
        """The offered types of the families, smallest first (asked once per provider object)."""
        if self._types is None:
            families = str(self.opts["families"]).split(",")
            offered = self._pages(
                "describe_instance_types",
                "InstanceTypes",
                Filters=[{"Name": "instance-type", "Values": [f"{f}.*" for f in families]}],
            )
            rank = {f: n for n, f in enumerate(families)}  # equal sizes: the family named first
            self._types = sorted(
                (
                    int(t["VCpuInfo"]["DefaultVCpus"]) * 1000,
                    int(t["MemoryInfo"]["SizeInMiB"]) * 2**20,
                    rank.get(t["InstanceType"].split(".")[0], len(rank)),
                    t["InstanceType"],
                )
                for t in offered
            )
        return self._types

    # -- what an instance needs -----------------------------------------------------------------

    def _image(self, image: str | None) -> str:
        if not image:
            raise InvalidInput(f"cloud {self.name} runs VMs: the component needs an 'image' (an AMI id or name)")
        if image not in self._images:
            if image.startswith("ami-"):
                found = self._call("describe_images", ImageIds=[image])["Images"]
            else:
                found = self._call("describe_images", Filters=[{"Name": "name", "Values": [image]}])["Images"]
            if not found:
                raise InvalidInput(f"cloud {self.name} has no image {image!r}", field="image")
            newest = max(found, key=lambda i: str(i.get("CreationDate", "")))
            self._images[image] = str(newest["ImageId"])
        return self._images[image]

    def _subnet(self, zone: str) -> tuple[str, str, str]:
        """The subnet for a zone, its VPC and the VPC's address range."""
        if zone not in self._subnets:
            if self.opts["subnet"]:
                subnets = self._call("describe_subnets", SubnetIds=[self.opts["subnet"]])["Subnets"]
            else:
                filters = [
                    {"Name": "availability-zone", "Values": [zone]},
                    {"Name": "default-for-az", "Values": ["true"]},
                ]
                subnets = self._call("describe_subnets", Filters=filters)["Subnets"]
            if not subnets:
                raise InvalidInput(
                    f"cloud {self.name} has no default subnet in {zone}: set --option subnet=subnet-...",
                    field="options.subnet",
                )
            sub = subnets[0]
            vpc = self._call("describe_vpcs", VpcIds=[sub["VpcId"]])["Vpcs"][0]
            self._subnets[zone] = (str(sub["SubnetId"]), str(sub["VpcId"]), str(vpc["CidrBlock"]))
        return self._subnets[zone]

    def _group_name(self, req: InstanceRequest) -> str:
        return f"shanzhi-{self.name}-{req.vdc.replace('/', '.')}-{req.app}-{req.component}"

    def _security_group(self, req: InstanceRequest, vpc: str, cidr: str) -> str:
        """The component's group, admitting exactly its ports from the VPC."""
        name = self._group_name(req)
        found = self._call(
            "describe_security_groups",
            Filters=[{"Name": "group-name", "Values": [name]}, {"Name": "vpc-id", "Values": [vpc]}],
        )["SecurityGroups"]
        if found:
            group = found[0]
            gid = str(group["GroupId"])
        else:
            gid = str(
                self._call(
                    "create_security_group",
                    GroupName=name,
                    Description=f"Shanzhi {req.vdc}/{req.app}/{req.component}",
                    VpcId=vpc,
                    TagSpecifications=[
                        {"ResourceType": "security-group", "Tags": _tags(self._labels(req) | {"Name": name})}
                    ],
                )["GroupId"]
            )
            group = {"IpPermissions": []}
        have = {
            (p.get("IpProtocol"), p.get("FromPort"))
            for p in group.get("IpPermissions", [])
            if any(r.get("CidrIp") == cidr for r in p.get("IpRanges", []))
        }
        want = {("tcp", port) for _, port in req.ports}
        for op, ports in (("authorize", want - have), ("revoke", {p for p in have - want if p[0] == "tcp"})):
            if ports:
                rules = [
                    {"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "IpRanges": [{"CidrIp": cidr}]}
                    for _, port in sorted(ports, key=lambda p: p[1] or 0)
                ]
                self._call(f"{op}_security_group_ingress", GroupId=gid, IpPermissions=rules)
        return gid

    def _labels(self, req: InstanceRequest) -> dict[str, str]:
        return {
            f"{TAG}cloud": self.name,
            f"{TAG}vdc": req.vdc,
            f"{TAG}app": req.app,
            f"{TAG}component": req.component,
        }

    # -- volumes --------------------------------------------------------------------------------

    def _volume(self, key: str) -> dict[str, Any] | None:
        found = self._call(
            "describe_volumes",
            Filters=[{"Name": f"tag:{TAG}volume", "Values": [key]}, {"Name": f"tag:{TAG}cloud", "Values": [self.name]}],
        )["Volumes"]
        live = [v for v in found if v["State"] not in ("deleting", "deleted", "error")]
        return live[0] if live else None

    def _ensure_volumes(self, req: InstanceRequest, zone: str) -> list[str]:
        ids = []
        for v in req.volumes:
            vol = self._volume(v.key)
            if vol is None:
                vol = self._call(
                    "create_volume",
                    AvailabilityZone=zone,
                    Size=max(1, math.ceil(v.size / _GiB)),
                    VolumeType="gp3",
                    TagSpecifications=[
                        {
                            "ResourceType": "volume",
                            "Tags": _tags(self._labels(req) | {f"{TAG}volume": v.key, "Name": v.key}),
                        }
                    ],
                )
            ids.append(str(vol["VolumeId"]))
        return ids

    def _volume_zone(self, req: InstanceRequest) -> str | None:
        """An existing disk's zone: the replica must run there (EBS volumes stay in their zone)."""
        for v in req.volumes:
            vol = self._volume(v.key)
            if vol is not None:
                return str(vol["AvailabilityZone"])
        return None

    def _attach(self, instance: dict[str, Any], volume_ids: list[str]) -> None:
        """Attach the volumes the instance does not have yet, once both are ready."""
        instance_id = str(instance["InstanceId"])
        mappings = [m for m in instance.get("BlockDeviceMappings", []) if "Ebs" in m]
        attached = {m["Ebs"]["VolumeId"] for m in mappings}
        volume_ids = [v for v in volume_ids if v not in attached]
        if not volume_ids:
            return
        try:
            self.ec2.get_waiter("instance_running").wait(
                InstanceIds=[instance_id], WaiterConfig={"Delay": 2, "MaxAttempts": 90}
            )
            self.ec2.get_waiter("volume_available").wait(
                VolumeIds=volume_ids, WaiterConfig={"Delay": 2, "MaxAttempts": 60}
            )
        except (WaiterError, ClientError, BotoCoreError) as err:
            raise CloudUnavailable(f"cloud {self.name}: {instance_id} or its volumes not ready: {err}") from None
        free = [d for d in _DEVICES if d not in {m["DeviceName"] for m in mappings}]
        for device, vid in zip(free, volume_ids, strict=False):
            self._call("attach_volume", InstanceId=instance_id, VolumeId=vid, Device=device)

    def delete_volume(self, key: str) -> None:
        vol = self._volume(key)
        if vol is None:
            return
        vid = str(vol["VolumeId"])
        if vol["State"] == "in-use":
            self._call("detach_volume", VolumeId=vid, Force=True)
            try:
                self.ec2.get_waiter("volume_available").wait(
                    VolumeIds=[vid], WaiterConfig={"Delay": 2, "MaxAttempts": 60}
                )
            except (WaiterError, ClientError, BotoCoreError) as err:
                raise CloudUnavailable(f"cloud {self.name}: volume {vid} did not detach: {err}") from None
        self._call("delete_volume", VolumeId=vid)

    # -- instances ------------------------------------------------------------------------------

    def _found(self, *filters: dict[str, Any]) -> list[dict[str, Any]]:
        base = [
            {"Name": f"tag:{TAG}cloud", "Values": [self.name]},
            {"Name": "instance-state-name", "Values": LIVE},
        ]
        reservations = self._pages("describe_instances", "Reservations", Filters=base + list(filters))
        return [i for r in reservations for i in r["Instances"]]

    def _observe(self, i: dict[str, Any]) -> ObservedInstance:
        state = _STATES.get(i["State"]["Name"], "failed")
        ports = {
            k[len(TAG) + 5 :]: int(t)
            for k, t in ((t["Key"], t["Value"]) for t in i.get("Tags", []))
            if k.startswith(f"{TAG}port:")
        }
        ip = i.get("PrivateIpAddress")
        endpoint = f"{ip}:{next(iter(ports.values()))}" if ip and ports else ip
        detail = f"{i['InstanceId']} {i['State']['Name']}"
        if i.get("StateReason", {}).get("Message"):
            detail += f": {i['StateReason']['Message']}"
        return ObservedInstance(
            _tag(i, f"{TAG}instance"), i["Placement"]["AvailabilityZone"], state, endpoint, ports, detail
        )

    def list_instances(self) -> list[ObservedInstance]:
        newest: dict[str, dict[str, Any]] = {}
        for i in self._found():
            name = _tag(i, f"{TAG}instance")
            if name and (name not in newest or str(i["LaunchTime"]) > str(newest[name]["LaunchTime"])):
                newest[name] = i
        return [self._observe(i) for i in newest.values()]

    def usage(self) -> dict[str, Point]:
        """Each running instance's latest monitoring period (CloudWatch; `providers.cloudwatch`)."""
        vcpus = {name: cpu / 1000 for cpu, _, _, name in self._instance_types_loaded()}
        running: dict[str, tuple[str, float]] = {}
        for i in self._found():
            name = _tag(i, f"{TAG}instance")
            if name and i["State"]["Name"] == "running":
                cores = i.get("CpuOptions", {})
                count = cores.get("CoreCount", 0) * cores.get("ThreadsPerCore", 1)
                running[str(i["InstanceId"])] = (name, float(count or vcpus.get(i["InstanceType"], 1.0)))
        if not running:
            return {}
        try:
            return cloudwatch.usage(self.cloudwatch, running, int(self.opts["monitoring_period"]))
        except (ClientError, BotoCoreError) as err:
            raise CloudUnavailable(f"cloud {self.name}: get_metric_data: {err}") from None

    def _by_name(self, name: str) -> list[dict[str, Any]]:
        return self._found({"Name": f"tag:{TAG}instance", "Values": [name]})

    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        existing = self._by_name(req.name)
        if existing:  # made by a call that did not finish: see that it has its disks
            found = existing[0]
            self._attach(found, self._ensure_volumes(req, found["Placement"]["AvailabilityZone"]))
            return self._observe(found)
        zones = self._zone_names()
        zone = self._volume_zone(req) or req.host
        if zone not in zones:
            raise InvalidInput(f"cloud {self.name} has no zone {zone!r} (zones: {', '.join(zones)})", field="host")
        subnet, vpc, cidr = self._subnet(zone)
        labels = self._labels(req) | {f"{TAG}instance": req.name, "Name": req.name}
        labels |= {f"{TAG}port:{port_name}": str(port) for port_name, port in req.ports}
        kwargs: dict[str, Any] = {
            "ImageId": self._image(req.image),
            "InstanceType": self._instance_type(req),
            "MinCount": 1,
            "MaxCount": 1,
            "Placement": {"AvailabilityZone": zone},
            "SubnetId": subnet,
            "SecurityGroupIds": [self._security_group(req, vpc, cidr)],
            "UserData": startup_script(req.command, dict(req.env)),
            "TagSpecifications": [{"ResourceType": "instance", "Tags": _tags(labels)}],
        }
        if self.opts["key_name"]:
            kwargs["KeyName"] = self.opts["key_name"]
        volumes = self._ensure_volumes(req, zone)
        instance = self._call("run_instances", **kwargs)["Instances"][0]
        self._attach(instance, volumes)
        return self._observe(instance)

    def delete_instance(self, name: str) -> None:
        found = self._by_name(name)
        if not found:
            return
        ids = [str(i["InstanceId"]) for i in found]
        self._call("terminate_instances", InstanceIds=ids)
        groups = {g["GroupId"] for i in found for g in i.get("SecurityGroups", [])}
        disks = any(m["DeviceName"] in _DEVICES for i in found for m in i.get("BlockDeviceMappings", []))
        still_used = {
            g["GroupId"] for i in self._found() for g in i.get("SecurityGroups", []) if i["InstanceId"] not in ids
        }
        orphaned = groups - still_used
        if disks or orphaned:  # the disks are free, and the group can go, once the instance is gone
            try:
                self.ec2.get_waiter("instance_terminated").wait(
                    InstanceIds=ids, WaiterConfig={"Delay": 2, "MaxAttempts": 90}
                )
            except (WaiterError, ClientError, BotoCoreError) as err:
                raise CloudUnavailable(f"cloud {self.name}: {', '.join(ids)} did not terminate: {err}") from None
        for gid in sorted(orphaned):
            self._delete_group(gid)

    def _delete_group(self, gid: str) -> None:
        try:
            self.ec2.delete_security_group(GroupId=gid)
        except ClientError as err:  # in use again (a replica just created), or already gone: keep it
            if err.response.get("Error", {}).get("Code") not in ("DependencyViolation", "InvalidGroup.NotFound"):
                raise CloudUnavailable(f"cloud {self.name}: delete_security_group {gid}: {err}") from None
        except BotoCoreError as err:
            raise CloudUnavailable(f"cloud {self.name}: delete_security_group {gid}: {err}") from None

    def dismantle(self) -> None:
        """A removed cloud: the security groups it made and no instance uses."""
        groups = self._call("describe_security_groups", Filters=[{"Name": f"tag:{TAG}cloud", "Values": [self.name]}])
        for g in groups["SecurityGroups"]:
            self._delete_group(str(g["GroupId"]))

    # -- inventory and adoption -----------------------------------------------------------------

    def inventory(self) -> list[Resource]:
        """Zones, every instance (Shanzhi's and not), volumes, VPCs and subnets, the account's own
        images and the instance types of the families: a full listing, paged."""
        return self._inventory(None).resources

    def inventory_since(self, since: datetime) -> Listing | None:
        """The same with the instances by change: `DescribeInstanceStatus` (every instance's id
        and state) and `DescribeTags` (every instance's tags) against the last listing, and only
        the new ones and those whose state or tags changed described in full; those no longer
        live are named gone. EC2 has no "changed since": `since` is not used, and a change of
        instance type (which needs the instance stopped: a state change) is seen by its state.
        None before this process listed whole."""
        if self._listed is None:
            return None
        statuses = self._pages("describe_instance_status", "InstanceStatuses", IncludeAllInstances=True)
        now = {str(x["InstanceId"]): str(x["InstanceState"]["Name"]) for x in statuses}
        live = {i: st for i, st in now.items() if st in INVENTORIED}
        tags: dict[str, list[dict[str, str]]] = {}
        for t in self._pages("describe_tags", "Tags", Filters=[{"Name": "resource-type", "Values": ["instance"]}]):
            tags.setdefault(str(t["ResourceId"]), []).append(t)
        changed = sorted(i for i, st in live.items() if self._listed.get(i) != (st, _digest(tags.get(i, []))))
        gone = tuple(("server", i) for i in sorted(set(self._listed) - set(live)))
        return self._inventory(changed, gone)

    def _inventory(self, changed: list[str] | None, gone: tuple[tuple[str, str], ...] = ()) -> Listing:
        """Everything, with every live instance (`changed` None) or only those named."""
        out = [Resource("host", h.name, h.name, "available", True, attrs={"cpu": h.cpu}) for h in self.hosts()]
        groups = self._pages("describe_security_groups", "SecurityGroups")
        ports = {
            g["GroupId"]: sorted(
                {
                    int(p["FromPort"])
                    for p in g.get("IpPermissions", [])
                    if p.get("IpProtocol") == "tcp" and p.get("FromPort") is not None
                }
            )
            for g in groups
        }
        filters = [{"Name": "instance-state-name", "Values": list(INVENTORIED)}]
        reservations = []
        if changed is None:
            reservations = self._pages("describe_instances", "Reservations", Filters=filters)
        for k in range(0, len(changed or ()), 200):  # a filter takes at most 200 values
            ids = {"Name": "instance-id", "Values": (changed or [])[k : k + 200]}
            reservations += self._pages("describe_instances", "Reservations", Filters=[*filters, ids])
        listed: dict[str, tuple[str, int]] = {}
        for r in reservations:
            for i in r["Instances"]:
                listed[str(i["InstanceId"])] = (i["State"]["Name"], _digest(i.get("Tags", [])))
                mine = _tag(i, f"{TAG}cloud") == self.name
                gids = [g["GroupId"] for g in i.get("SecurityGroups", [])]
                attrs = {
                    "instance_type": i.get("InstanceType"),
                    "image": i.get("ImageId"),
                    "zone": i["Placement"]["AvailabilityZone"],
                    "private_ip": i.get("PrivateIpAddress"),
                    "launched": str(i.get("LaunchTime", "")),
                    "ports": sorted({p for g in gids for p in ports.get(g, [])}),
                    "tags": {t["Key"]: t["Value"] for t in i.get("Tags", []) if not t["Key"].startswith(TAG)},
                }
                name = _tag(i, "Name") or str(i["InstanceId"])
                instance = _tag(i, f"{TAG}instance") if mine else None
                out.append(
                    Resource(
                        "server",
                        str(i["InstanceId"]),
                        name,
                        i["State"]["Name"],
                        bool(_tag(i, f"{TAG}cloud")),
                        instance or None,
                        attrs,
                    )
                )
        for v in self._pages("describe_volumes", "Volumes"):
            attrs = {
                "size_gib": v["Size"],
                "zone": v["AvailabilityZone"],
                "type": v.get("VolumeType"),
                "attached_to": [a["InstanceId"] for a in v.get("Attachments", [])],
            }
            out.append(
                Resource(
                    "volume",
                    str(v["VolumeId"]),
                    _tag(v, "Name") or str(v["VolumeId"]),
                    v["State"],
                    bool(_tag(v, f"{TAG}cloud")),
                    attrs=attrs,
                )
            )
        for vpc in self._pages("describe_vpcs", "Vpcs"):
            out.append(
                Resource(
                    "network",
                    str(vpc["VpcId"]),
                    _tag(vpc, "Name") or str(vpc["VpcId"]),
                    vpc.get("State", ""),
                    attrs={"type": "vpc", "cidr": vpc["CidrBlock"], "default": vpc.get("IsDefault", False)},
                )
            )
        for sub in self._pages("describe_subnets", "Subnets"):
            attrs = {"type": "subnet", "cidr": sub["CidrBlock"], "vpc": sub["VpcId"], "zone": sub["AvailabilityZone"]}
            out.append(
                Resource(
                    "network",
                    str(sub["SubnetId"]),
                    _tag(sub, "Name") or str(sub["SubnetId"]),
                    sub.get("State", ""),
                    attrs=attrs,
                )
            )
        for img in self._call("describe_images", Owners=["self"])["Images"]:
            out.append(
                Resource(
                    "image",
                    str(img["ImageId"]),
                    str(img.get("Name", img["ImageId"])),
                    img.get("State", ""),
                    attrs={"created": img.get("CreationDate")},
                )
            )
        self._instance_types_loaded()
        for cpu, memory, _, name in self._types or []:
            out.append(Resource("flavor", name, name, "offered", attrs={"cpu": cpu, "memory": memory}))
        if changed is None:
            self._listed = listed
            return Listing(out)
        assert self._listed is not None
        went = {i for _, i in gone}
        self._listed = {i: st for i, st in self._listed.items() if i not in went} | listed
        return Listing(out, frozenset({"server"}), gone)

    def adopt(self, resource_id: str, req: InstanceRequest) -> ObservedInstance:
        """Tag an instance made outside Shanzhi as the replica `req.name`: nothing else about it
        changes (not its groups, disks or user data), and it keeps running."""
        found = self._call("describe_instances", InstanceIds=[resource_id])["Reservations"]
        instances = [i for r in found for i in r["Instances"] if i["State"]["Name"] in LIVE]
        if not instances:
            raise NotFound(f"cloud {self.name} has no running instance {resource_id}", field="id")
        i = instances[0]
        held = _tag(i, f"{TAG}instance")
        if held and held != req.name:
            raise Conflict(f"{resource_id} is already Shanzhi's replica {held}", field="id")
        labels = self._labels(req) | {f"{TAG}instance": req.name}
        labels |= {f"{TAG}port:{port_name}": str(port) for port_name, port in req.ports}
        self._call("create_tags", Resources=[resource_id], Tags=_tags(labels))
        return self._observe(self._by_name(req.name)[0])

    def describe(self, name: str) -> dict[str, Any]:
        found = self._by_name(name)
        if not found:
            return {}
        i = found[0]
        return {
            "instance_id": i["InstanceId"],
            "instance_type": i["InstanceType"],
            "image": i["ImageId"],
            "zone": i["Placement"]["AvailabilityZone"],
            "state": i["State"]["Name"],
            "private_ip": i.get("PrivateIpAddress"),
            "launched": str(i["LaunchTime"]),
            "security_groups": [g["GroupId"] for g in i.get("SecurityGroups", [])],
            "volumes": {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in i.get("BlockDeviceMappings", []) if "Ebs" in m},
        }

    def read_log(self, name: str, tail: int) -> LogChunk:
        found = self._by_name(name)
        if not found:
            raise NotFound(f"no instance {name} on cloud {self.name}", field="name")
        raw = self._call("get_console_output", InstanceId=found[0]["InstanceId"]).get("Output") or ""
        try:
            text = base64.b64decode(raw, validate=True).decode(errors="replace")
        except ValueError:
            text = raw  # some endpoints send it decoded
        data = text.encode()
        return LogChunk(data[-tail:].decode(errors="replace"), len(data), len(data) > tail)
