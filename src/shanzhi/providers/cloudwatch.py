"""An EC2 cloud's instances' use, from its monitoring service (CloudWatch's `GetMetricData`).

EC2 measures each instance itself, without an agent in the guest: `CPUUtilization` (percent of
its vCPUs), `NetworkIn`/`NetworkOut` and `DiskReadBytes`/`DiskWriteBytes` (bytes in a period).
They arrive as averages and sums over a period (5 minutes with basic monitoring, 1 with
detailed), so each instance's reading is a `Point`, the latest full period: cores busy (percent
x vCPUs / 100) and bytes per second (sum / period). Memory is not among them (it needs an agent
in the guest): None. One call asks for up to 100 instances (5 queries each, 500 a call).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from shanzhi.domain.metrics import Point

# (metric, statistic, the Point's field it becomes)
QUERIES = (
    ("CPUUtilization", "Average", "cpu"),
    ("NetworkIn", "Sum", "rx"),
    ("NetworkOut", "Sum", "tx"),
    ("DiskReadBytes", "Sum", "read"),
    ("DiskWriteBytes", "Sum", "write"),
)
PER_CALL = 500 // len(QUERIES)


def usage(
    client: Any, instances: Mapping[str, tuple[str, float]], period: int, now: datetime | None = None
) -> dict[str, Point]:
    """Each instance's latest period, by Shanzhi's name. `instances`: the EC2 instance id ->
    (its name, its vCPUs). An instance with no CPU datapoint yet (just started) is left out."""
    now = now or datetime.now(UTC)
    ids = list(instances)
    found: dict[str, dict[str, float]] = {}
    for start in range(0, len(ids), PER_CALL):
        chunk = ids[start : start + PER_CALL]
        queries = [
            {
                "Id": f"q{n}_{k}",
                "MetricStat": {
                    "Metric": {
                        "Namespace": "AWS/EC2",
                        "MetricName": metric,
                        "Dimensions": [{"Name": "InstanceId", "Value": iid}],
                    },
                    "Period": period,
                    "Stat": stat,
                },
                "ReturnData": True,
            }
            for n, iid in enumerate(chunk)
            for k, (metric, stat, _) in enumerate(QUERIES)
        ]
        token: str | None = None
        while True:
            extra = {"NextToken": token} if token else {}
            got = client.get_metric_data(
                MetricDataQueries=queries,
                StartTime=now - timedelta(seconds=3 * period),
                EndTime=now,
                ScanBy="TimestampDescending",
                **extra,
            )
            for result in got.get("MetricDataResults", []):
                if not result.get("Values"):
                    continue
                n, k = (int(x) for x in result["Id"][1:].split("_"))
                latest = max(zip(result["Timestamps"], result["Values"], strict=True), key=lambda tv: tv[0])[1]
                found.setdefault(chunk[n], {})[QUERIES[k][2]] = float(latest)
            token = got.get("NextToken")
            if not token:
                break
    out: dict[str, Point] = {}
    for iid, values in found.items():
        if "cpu" not in values:
            continue
        name, vcpus = instances[iid]
        rate = {f: values[f] / period for f in ("rx", "tx", "read", "write") if f in values}.get
        cpu = values["cpu"] / 100 * vcpus
        out[name] = Point(cpu, None, rx=rate("rx"), tx=rate("tx"), read=rate("read"), write=rate("write"))
    return out
