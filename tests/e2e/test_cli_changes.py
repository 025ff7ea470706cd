"""Changing a running app from the CLI: restart rolls every replica, undo goes back a generation,
a warning for decimal sizes, and --wait gives up at once on an app that cannot be placed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ROOT, Cli, Server, stop_everything, wait_for
from tests.e2e.test_control_plane import setup_world

pytestmark = pytest.mark.e2e
EXAMPLE = ROOT / "examples" / "hello.yaml"


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data)
    try:
        c = Cli(server)
        setup_world(c)
        yield c
    finally:
        stop_everything(data, server)


def names(cli: Cli) -> set[str]:
    return {i["name"] for i in cli.json("instance", "list", "--app", "hello") if i["state"] == "running"}


def test_restart_rolls_every_replica_and_undo_goes_back(cli: Cli, tmp_path: Path) -> None:
    two = tmp_path / "two.yaml"
    two.write_text(EXAMPLE.read_text().replace("replicas: 4", "replicas: 2"))
    cli.ok("apply", "-f", str(two), "--wait", "--cause", "first")
    before = names(cli)
    assert len(before) == 2
    out = cli.ok("app", "restart", "hello")
    assert "configured: restart all components" in out
    wait_for(lambda: (now := names(cli)) and len(now) == 2 and not now & before, 180, "every replica replaced")
    stamp = cli.json("app", "get", "hello")["spec"]["spec"]["components"][0]["restartedAt"]
    assert stamp.startswith(time.strftime("%Y-"))
    # the instance's own view and output
    one = sorted(names(cli))[0]
    got = cli.json("instance", "get", one)
    assert got["name"] == one and got["state"] == "running" and got["placement"].startswith("placed on ")
    assert got["provider"]["alive"] is True and isinstance(got["provider"]["pid"], int)  # what its cloud says
    assert "http.server" in got["provider"]["argv"]
    # undo: generation 1's spec again, as generation 3
    cli.ok("app", "rollout", "undo", "hello")
    history = cli.json("app", "rollout", "history", "hello")
    assert [(h["generation"], h["cause"]) for h in history] == [
        (1, "first"),
        (2, "restart all components"),
        (3, "rollback to generation 1"),
    ]
    assert "restartedAt" not in cli.json("app", "get", "hello")["spec"]["spec"]["components"][0]
    r = cli.run("app", "rollout", "undo", "hello", "--to-generation", "9")
    assert r.returncode == 1 and "no generation 9 (it has: 1, 2, 3)" in r.stderr
    r = cli.run("app", "scale", "hello", "nope", "3")
    assert r.returncode == 1 and "has no component 'nope' (it has: web)" in r.stderr


def test_decimal_sizes_warn_and_wait_stops_on_unschedulable(cli: Cli, tmp_path: Path) -> None:
    decimal = tmp_path / "decimal.yaml"
    decimal.write_text(
        EXAMPLE.read_text().replace("memory: 64Mi", "memory: 64MB").replace("replicas: 4", "replicas: 1")
    )
    r = cli.run("apply", "-f", str(decimal))
    assert r.returncode == 0 and "warning" in r.stderr and "64,000,000 bytes" in r.stderr
    typo = tmp_path / "typo.yaml"
    typo.write_text(EXAMPLE.read_text().replace("level: city", "level: cty"))
    r = cli.run("apply", "-f", str(typo), "--wait", "--timeout", "600")
    # it stops at once, saying why, instead of sitting out the timeout ("not ready after 600s")
    assert r.returncode == 1 and "hello is unschedulable: no cloud fits: tag level=cty wanted" in r.stderr
    events = cli.json("events", "--app", "hello")
    failed = [e for e in events if e["reason"] == "FailedScheduling"]
    assert len(failed) == 1 and failed[0]["object_name"] == "hello/web"
