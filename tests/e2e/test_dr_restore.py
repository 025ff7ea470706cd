"""A restore in place across two sites and three centres, with real Patroni, etcd and
PostgreSQL: the database goes back to a moment between two batches of writes once approved;
production's member bootstraps from the restored copy, the same-city replica and the remote
standby cluster clone it afresh, and every centre has exactly the first batch and what is
written after. The server is killed in the middle of it, and the next one carries it on.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import psycopg
import pytest

from shanzhi.providers.sandbox import default_workload_root
from tests.e2e.harness import Cli, Server, wait_for
from tests.e2e.test_dr import _try, app_doc, settled, three_centres, world  # noqa: F401 - the fixture
from tests.e2e.test_dr_activate import APPROVER, _count, _login, dr_approver
from tests.e2e.test_dr_backup import two_batches

pytestmark = pytest.mark.e2e
VDC = ("--vdc", "gz/tax")


def test_a_restore_in_place_takes_every_centre_back_to_the_moment(world: tuple[Server, Cli]) -> None:  # noqa: F811
    server, cli = world
    three_centres(cli)
    dr_approver(server, cli)
    spec = server.data_dir.parent / "tax.json"
    spec.write_text(app_doc())
    cli.ok("apply", "-f", str(spec))
    before = wait_for(lambda: settled(cli), 180, "three members running (dr status)")
    dsn = cli.json("dr", "status", "tax", *VDC, "--show-password")["databases"][0]["connection"]
    password = psycopg.conninfo.conninfo_to_dict(dsn)["password"]
    wait_for(lambda: _try(lambda: psycopg.connect(dsn).close()), 60, "the app's database")
    wait_for(lambda: cli.json("dr", "backups", "tax", *VDC)["backups"], 120, "the first scheduled backup")
    moment = two_batches(dsn)
    far = next(m for m in before if m["cluster"] == "remote")
    wait_for(lambda: _count(far["host"], password) == 200, 60, "both batches in the remote centre")

    held = json.loads(cli.ok("dr", "restore", "tax", *VDC, "--to", moment.isoformat(), "--in-place", "-o", "json"))
    again = cli.run("dr", "restore", "tax", *VDC, "--to", moment.isoformat(), "--in-place", "-o", "json")
    assert json.loads(again.stdout)["id"] == held["id"]  # asked again: the same request
    ok = cli.run("approval", "approve", str(held["id"]), token=_login(server, *APPROVER))
    assert ok.returncode == 0, ok.stderr

    # the server killed (SIGKILL) in the middle of it: a new one carries on from the recorded state
    token = (server.data_dir / "admin.token").read_text().strip()

    def state() -> str | None:
        r = httpx.get(f"{server.url}/api/v1/apps/tax/dr", params={"vdc": "gz/tax"},
                      headers={"Authorization": f"Bearer {token}"}, timeout=5)  # fmt: skip
        shown = r.json()["databases"][0]["restore"] or {}
        return str(shown["state"]) if shown.get("state") in ("stopping", "starting") else None

    killed_in = wait_for(state, 120, "the restore to stop the members")
    server.kill()
    again_up = Server(server.data_dir)
    try:
        cli = Cli(again_up)

        def restored() -> dict[str, Any] | None:
            done = [r for r in cli.json("dr", "reports", "--app", "tax", *VDC)
                    if r["kind"] == "restore-in-place" and r["outcome"] != "running"]  # fmt: skip
            return done[-1] if done else None

        report = wait_for(restored, 300, "the restore in place")
        _after_the_restore(again_up, cli, report, dsn, password, killed_in)
    finally:
        again_up.terminate()


def _after_the_restore(
    server: Server, cli: Cli, report: dict[str, Any], dsn: str, password: str, killed_in: str
) -> None:
    assert report["outcome"] == "succeeded", (killed_in, report)
    after = wait_for(lambda: settled(cli), 240, "three members running again")
    where = {m["role"]: m["site"] for m in after}
    assert where == {"primary": "gz-a", "replica": "gz-b", "standby_leader": "sz"}, after
    with psycopg.connect(dsn, autocommit=True) as c:  # exactly the first batch, and it takes writes
        assert sorted(r[0] for r in c.execute("SELECT id FROM acks")) == list(range(100))
        c.execute("INSERT INTO acks VALUES (1000)")
    # every centre has it: the same-city replica and the remote standby cluster cloned afresh
    for m in after:
        wait_for(lambda m=m: _count(m["host"], password) == 101, 60, f"the restored data on {m['name']}")
    kinds = [r["kind"] for r in cli.json("dr", "reports", "--app", "tax", *VDC)]
    assert "failover" not in kinds, kinds
    # each member's old data is kept beside the new
    root = default_workload_root(server.data_dir)
    kept = [p for p in root.glob("*/volumes/*") if (p / "pgdata-p1").is_dir() and (p / "pgdata/PG_VERSION").exists()]
    assert len(kept) == 3, kept

    # a second restore in place, to a moment after the first: each volume keeps the data from just
    # before it (pgdata-p1); what the first restore left (pgdata) is removed. It starts from the
    # base backup the first one took once done (on the new timeline)
    assert any(s["step"].startswith("base backup") and s["step"].endswith("succeeded") for s in report["body"]["steps"])
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO acks SELECT generate_series(2000, 2049)")
        time.sleep(1.0)
        row = c.execute("SELECT now()").fetchone()
        assert row is not None
        time.sleep(1.0)
        c.execute("INSERT INTO acks SELECT generate_series(3000, 3049)")
    held = json.loads(cli.ok("dr", "restore", "tax", *VDC, "--to", row[0].isoformat(), "--in-place", "-o", "json"))
    ok = cli.run("approval", "approve", str(held["id"]), token=_login(server, *APPROVER))
    assert ok.returncode == 0, ok.stderr

    def second() -> dict[str, Any] | None:
        done = [r for r in cli.json("dr", "reports", "--app", "tax", *VDC)
                if r["kind"] == "restore-in-place" and r["outcome"] != "running"]  # fmt: skip
        return done[-1] if len(done) == 2 else None

    again = wait_for(second, 300, "the second restore in place")
    assert again["outcome"] == "succeeded", again
    wait_for(lambda: settled(cli), 240, "three members running after the second restore")
    with psycopg.connect(dsn, autocommit=True) as c:
        ids = sorted(r[0] for r in c.execute("SELECT id FROM acks"))
    assert ids == [*range(100), 1000, *range(2000, 2050)]
    volumes = sorted(p for p in root.glob("*/volumes/*") if (p / "pgdata-p2").is_dir())
    assert len(volumes) == 3, volumes
    for v in volumes:
        assert not (v / "pgdata").exists() and (v / "pgdata-p1" / "PG_VERSION").exists(), sorted(v.iterdir())
    assert sorted(again["body"]["old_data_removed"].values()) == [["pgdata"]] * 3, again["body"]
