"""`shanzhi app metrics` against a real server sampling a simulated cloud every second."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Cli, Server, stop_everything, wait_for

pytestmark = pytest.mark.e2e
APP = """apiVersion: shanzhi.io/v1
kind: App
metadata: {name: api, vdc: gz}
spec:
  components:
    - {name: web, replicas: 2, image: x, resources: {cpu: 1, memory: 1Gi}}
"""


@pytest.fixture
def cli(data_dir: Path) -> Iterator[Cli]:
    server = Server(data_dir, None, "--metrics-interval", "1")
    yield Cli(server)
    stop_everything(data_dir, server)


def test_app_metrics_latest_history_and_bad_input(cli: Cli, tmp_path: Path) -> None:
    cli.ok("cloud", "add", "sim-a", "--kind", "sim", "--site", "s1", "--region", "gz", "--option", "boot=0")
    cli.ok("vdc", "create", "gz")
    spec = tmp_path / "api.yaml"
    spec.write_text(APP)
    cli.ok("apply", "-f", str(spec))
    found = wait_for(lambda: (m := cli.json("app", "metrics", "api")) and len(m["latest"]) == 2 and m, 60, "samples")
    assert found["app"] == "api" and found["resolution"] == 60
    assert all(p["cpu"] > 0 and p["memory"] > 0 for p in found["latest"])
    names = {i["name"] for i in cli.json("instance", "list", "--app", "api")}
    assert {p["instance"] for p in found["latest"]} == names
    table = cli.ok("app", "metrics", "api")
    assert "CPU" in table and all(n in table for n in names)
    one = sorted(names)[0]
    assert {p["instance"] for p in cli.json("app", "metrics", "api", "--instance", one)["latest"]} == {one}
    bad = cli.run("app", "metrics", "api", "--since", "forever")
    assert bad.returncode != 0 and "since" in bad.stderr
    missing = cli.run("app", "metrics", "nope")
    assert missing.returncode != 0 and "app nope does not exist" in missing.stderr
