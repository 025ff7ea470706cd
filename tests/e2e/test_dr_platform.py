"""Shanzhi's own database as a Patroni cluster across centres: the server is given a multi-host
URL (`?host=a&host=b&target_session_attrs=read-write`); the primary's node is lost; the
platform keeps serving from the other centre's new primary, and every change it acknowledged
before the loss is still there."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dr.bare import BareCluster, need_engines
from tests.e2e.harness import Cli, Server, stop_everything, wait_for


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BareCluster]:
    need_engines()
    # three nodes: with synchronous_mode_strict the new primary needs a standby left to commit
    c = BareCluster(tmp_path / "pg", addresses=("127.0.8.1", "127.0.9.1", "127.0.10.1"))
    try:
        yield c
    finally:
        c.close()


def test_the_platform_keeps_serving_from_the_same_city_centre(cluster: BareCluster, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data, cluster.sqlalchemy_url())
    try:
        cli = Cli(server)
        acked = []

        def created(path: str) -> bool:
            """Acknowledged, or found made by an earlier try whose answer was lost; a 503 (no
            writable primary for a moment: Patroni demotes one that cannot reach etcd within
            retry_timeout, which a loaded machine's slow fsyncs can cause) is tried again."""
            r = cli.run("vdc", "create", path, "--parents")
            assert r.returncode == 0 or "503" in r.stderr or "already exists" in r.stderr, r.stderr
            return r.returncode == 0 or "already exists" in r.stderr

        for i in range(20):
            wait_for(lambda i=i: created(f"gz/d{i}"), 90, f"change {i} acknowledged")
            acked.append(f"gz/d{i}")
        old = cluster.primary()
        cluster.crash_node(old, restart_after=None)  # lost, not coming back during the test
        for i in range(5):  # refused (503) while there is no primary, then served again
            wait_for(lambda i=i: created(f"gz/after{i}"), 90, f"the platform serving again (change {i})")
            acked.append(f"gz/after{i}")
        assert cluster.primary() != old
        paths = {v["path"] for v in cli.json("vdc", "list")}
        assert set(acked) <= paths, sorted(set(acked) - paths)
        server.passes_after(3, timeout=60)  # the controller got its leader lock back on the new primary
    finally:
        stop_everything(data, server)
