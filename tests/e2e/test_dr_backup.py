"""Backups and point-in-time restores of a managed PostgreSQL, with real Patroni, etcd,
pg_basebackup and PostgreSQL's own recovery: a scheduled base backup, the WAL archive, a restore
to a moment between two batches of writes (exactly the first batch comes back), bad times
refused, and the restored copy removed without residue; then the database itself restored in
place to that moment, once approved (the second batch given up, the old data kept, a new backup).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from shanzhi.providers.sandbox import default_workload_root
from tests.e2e.harness import Cli, Server, wait_for
from tests.e2e.test_dr import _try, world  # noqa: F401 - the fixture
from tests.e2e.test_dr_activate import APPROVER, _login, dr_approver

pytestmark = pytest.mark.e2e


def _namespaces() -> list[str]:
    return subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout.split()


def _filesystem(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


def _reaches(namespace: str | None, hostport: str) -> bool:
    """Does a TCP connection to hostport open from the namespace (None: the root one)?"""
    host, _, port = hostport.rpartition(":")
    code = f"import socket; socket.create_connection(({host!r}, {port}), timeout=2).close()"
    argv = [sys.executable, "-c", code]
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    return subprocess.run([*prefix, *argv], capture_output=True, check=False).returncode == 0


def app_doc() -> str:
    return json.dumps(
        {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": "tax", "vdc": "gz/tax"},
            "spec": {
                "dr": {"tier": "none", "backups": {"every": "1h", "keep": 2}},
                "components": [{"name": "db", "kind": "postgres", "postgres": {"database": "ledger"}}],
            },
        }
    )


def two_batches(dsn: str) -> datetime:
    """Rows 0-99, then a moment a second after them, then rows 100-199 a second later: the moment."""
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE acks (id bigint PRIMARY KEY)")
        for i in range(100):
            c.execute("INSERT INTO acks VALUES (%s)", (i,))
        time.sleep(1.0)
        row = c.execute("SELECT now()").fetchone()
        assert row is not None
        moment: datetime = row[0]
        time.sleep(1.0)
        for i in range(100, 200):
            c.execute("INSERT INTO acks VALUES (%s)", (i,))
    return moment


def test_a_scheduled_backup_and_a_restore_to_a_point_in_time(world: tuple[Server, Cli]) -> None:  # noqa: F811
    server, cli = world
    cli.ok("cloud", "add", "prod", "--kind", "local", "--site", "gz-a", "--region", "gd", "--option",
           "address=127.0.1.1")  # fmt: skip
    cli.ok("site", "role", "gz-a", "production")
    cli.ok("vdc", "create", "gz/tax", "--parents")
    spec = server.data_dir.parent / "tax.json"
    spec.write_text(app_doc())
    cli.ok("apply", "-f", str(spec))
    # nothing to restore from before the first backup, and it says so
    early = cli.run("dr", "restore", "tax", "--vdc", "gz/tax", "--to", datetime.now(UTC).isoformat())
    assert early.returncode != 0 and "dr backup" in early.stderr + early.stdout, early

    def dsn() -> str | None:
        st = cli.json("dr", "status", "tax", "--vdc", "gz/tax", "--show-password")
        return str(st["databases"][0]["connection"]) if st["databases"] and st["databases"][0]["connection"] else None

    url = wait_for(dsn, 180, "the database's connection string")
    wait_for(lambda: _try(lambda: psycopg.connect(url).close()), 120, "the app's database")
    # the schedule takes the first base backup by itself once the database runs
    first = wait_for(lambda: cli.json("dr", "backups", "tax", "--vdc", "gz/tax")["backups"], 120, "a backup")
    assert first[0]["body"]["why"] == "scheduled" and first[0]["body"]["bytes"] > 0

    moment = two_batches(url)

    # a time without its zone, one in the future, one before every backup: refused, nothing made
    for bad, says in (
        ("2026-12-06T10:00:00", "zone"),
        ((datetime.now(UTC) + timedelta(hours=1)).isoformat(), "future"),
        ("2001-01-01T00:00:00+00:00", "earliest point to restore to"),
    ):
        r = cli.run("dr", "restore", "tax", "--vdc", "gz/tax", "--to", bad)
        assert r.returncode != 0 and says in r.stderr + r.stdout, (bad, r.stderr, r.stdout)

    report = json.loads(cli.ok("dr", "restore", "tax", "--vdc", "gz/tax", "--to", moment.isoformat(), "-o", "json"))
    body: dict[str, Any] = report["body"]
    assert report["outcome"] == "succeeded" and body["state"] == "ready", report
    assert body["recovered_to"] is not None and datetime.fromisoformat(body["recovered_to"]) <= moment
    password = url.split(":", 2)[2].split("@", 1)[0]
    copy = body["connection"].replace("********", password)
    with psycopg.connect(copy, autocommit=True) as c:
        got = sorted(r[0] for r in c.execute("SELECT id FROM acks"))
        assert got == list(range(100)), f"{len(got)} rows, expected exactly the first 100"
        c.execute("INSERT INTO acks VALUES (-1)")  # the copy is open for writes ...
        assert c.execute("SHOW fsync").fetchone() == ("on",) and body["durable"]  # ... and keeps them
    assert not body["in_memory"] and Path(body["dir"]).stat().st_dev == server.data_dir.stat().st_dev  # on disk
    with psycopg.connect(url, autocommit=True) as c:  # ... and the running cluster untouched
        assert c.execute("SELECT count(*), min(id) FROM acks").fetchone() == (200, 0)

    # to a moment after the last commit (PostgreSQL finds no commit past it): all 200 rows
    time.sleep(1.0)
    later = json.loads(
        cli.ok("dr", "restore", "tax", "--vdc", "gz/tax", "--to", datetime.now(UTC).isoformat(), "-o", "json")
    )
    with psycopg.connect(later["body"]["connection"].replace("********", password)) as c:
        assert c.execute("SELECT count(*) FROM acks").fetchone() == (200,)
    # a drill: recovered to now in a copy of its own, checked, RTO and RPO measured
    drill = json.loads(cli.ok("dr", "test", "tax", "--vdc", "gz/tax", "-o", "json"))
    assert drill["kind"] == "drill" and drill["outcome"] == "succeeded", drill
    assert drill["body"]["checks"] == {"database": "ledger", "tables": 1, "answers": True}
    assert drill["body"]["rto_seconds"] > 0 and drill["body"]["rpo_seconds"] is not None
    # ... in a network namespace of its own: the host cannot reach it over TCP, it cannot reach
    # production, and the platform (and the test) reach it through its socket only
    net, port = drill["body"]["network"], drill["body"]["port"]
    assert net["isolated"] and net["namespace"] in _namespaces(), drill["body"]
    assert net["namespace"] in drill["summary"]
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(drill["body"]["connection"].replace("********", password), connect_timeout=2).close()
    member = url.split("@", 1)[1].split("/", 1)[0]  # production's member, host:port
    assert _reaches(None, member) and not _reaches(net["namespace"], member)
    with psycopg.connect(host=drill["body"]["dir"], port=port, user="postgres", dbname="ledger") as c:
        assert c.execute("SELECT count(*) FROM acks").fetchone() == (200,)
        # a drill's copy asks the disk production shares for no flush (it is thrown away)
        assert c.execute("SHOW fsync").fetchone() == ("off",) and not drill["body"]["durable"]
    # ... and is unpacked in memory (a tmpfs), not on the disk production's WAL goes to
    assert drill["body"]["in_memory"] and Path(drill["body"]["dir"]).is_relative_to("/dev/shm"), drill["body"]
    assert _filesystem(Path(drill["body"]["dir"])) == "tmpfs"
    # ... its PostgreSQL yields the CPU (a cgroup of the lowest weight) and holds none of the server's environment
    pid = drill["body"]["pid"]
    lines = [line.split(":", 2) for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()]
    cpu = next(path for _, controllers, path in lines if "cpu" in controllers.split(",") or controllers == "")
    assert cpu.endswith(f"/copy-r{drill['id']}"), cpu
    mount = Path("/sys/fs/cgroup/cpu") if Path("/sys/fs/cgroup/cpu/cpu.shares").exists() else Path("/sys/fs/cgroup")
    weight = mount / cpu.lstrip("/") / ("cpu.shares" if mount.name == "cpu" else "cpu.weight")
    assert weight.read_text().strip() in ("2", "1")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert {e.split(b"=", 1)[0] for e in environ if e} <= {b"PATH", b"HOME", b"LANG", b"PWD"}  # PWD: the shell's

    # another backup on demand; both kept, and the window a restore can reach
    cli.ok("dr", "backup", "tax", "--vdc", "gz/tax")
    listed = cli.json("dr", "backups", "tax", "--vdc", "gz/tax")
    assert len(listed["backups"]) == 2 and listed["restorable_from"] and listed["archived_until"]
    reasons = {e["reason"] for e in cli.json("events", "--app", "tax", "--vdc", "gz/tax")}
    assert {"BackupTaken", "DatabaseRestored"} <= reasons

    # cleanup: the copy stops and its directory goes
    gone = cli.json("dr", "cleanup", "tax", "--vdc", "gz/tax")
    assert gone["removed"] == [report["id"], later["id"], drill["id"]]
    assert not any(Path(r["body"]["dir"]).exists() for r in (report, later, drill))
    assert not any(Path(drill["body"]["dir"]).parent.iterdir())
    assert not weight.parent.exists()  # the copy's cgroup too
    assert net["namespace"] not in _namespaces()  # no residue
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(copy, connect_timeout=2).close()
    assert cli.json("dr", "cleanup", "tax", "--vdc", "gz/tax")["removed"] == []

    # the database itself back to `moment`: held for approval, refused for times no backup reaches
    for bad, says in (
        ((datetime.now(UTC) + timedelta(hours=1)).isoformat(), "future"),
        ("2001-01-01T00:00:00+00:00", "dr backups"),
    ):
        r = cli.run("dr", "restore", "tax", "--vdc", "gz/tax", "--to", bad, "--in-place")
        assert r.returncode != 0 and says in r.stderr + r.stdout, (bad, r.stderr, r.stdout)
    dr_approver(server, cli)
    held = json.loads(cli.ok("dr", "restore", "tax", "--vdc", "gz/tax", "--to", moment.isoformat(), "--in-place",
                             "--note", "a bad batch", "-o", "json"))  # fmt: skip
    assert held["status"] == "pending" and held["action"] == "restore-in-place", held
    with psycopg.connect(url, autocommit=True) as c:  # nothing happens before the approval
        assert c.execute("SELECT count(*) FROM acks").fetchone() == (200,)
    li = _login(server, *APPROVER)
    ok = cli.run("approval", "approve", str(held["id"]), token=li)
    assert ok.returncode == 0, ok.stderr

    def restored() -> dict[str, Any] | None:
        done = [r for r in cli.json("dr", "reports", "--app", "tax", "--vdc", "gz/tax")
                if r["kind"] == "restore-in-place" and r["outcome"] != "running"]  # fmt: skip
        return done[-1] if done else None

    report = wait_for(restored, 120, "the restore in place")
    shown = cli.json("dr", "status", "tax", "--vdc", "gz/tax")["databases"][0]["restore"]
    assert shown["state"] == "succeeded" and shown["count"] == 1 and shown["to"] == moment.isoformat(), shown
    assert "restore in place to" in cli.ok("dr", "status", "tax", "--vdc", "gz/tax")
    body = report["body"]
    assert report["outcome"] == "succeeded", report
    assert datetime.fromisoformat(body["recovered_to"]) <= moment and body["writes_stopped_seconds"] > 0
    steps = [st["step"] for st in body["steps"]]
    assert any("cleared" in st for st in steps) and any("base backup" in st for st in steps), steps
    url = wait_for(dsn, 60, "the connection string again")
    with psycopg.connect(url, autocommit=True) as c:  # exactly the first batch, and it takes writes
        assert sorted(r[0] for r in c.execute("SELECT id FROM acks")) == list(range(100))
        c.execute("INSERT INTO acks VALUES (1000)")
    # no failover was reported for it, a backup was taken after it, and the old data is kept
    plan = cli.json("dr", "plan", "tax", "--vdc", "gz/tax")["plans"]["restore-in-place"]
    assert plan["steps"][0]["phase"] == "approval" and "li.wei" in plan["steps"][0]["step"], plan
    assert plan["last_run"]["report"] == report["id"] and plan["last_run"]["outcome"] == "succeeded"
    kinds = [r["kind"] for r in cli.json("dr", "reports", "--app", "tax", "--vdc", "gz/tax")]
    assert "failover" not in kinds, kinds
    after = cli.json("dr", "backups", "tax", "--vdc", "gz/tax")["backups"]
    assert after[-1]["body"]["why"] == "after a restore in place", after[-1]
    root = default_workload_root(server.data_dir)
    volumes = [p for p in root.glob("*/volumes/*") if (p / "pgdata-p1").is_dir()]
    assert len(volumes) == 1 and (volumes[0] / "pgdata" / "PG_VERSION").exists(), volumes
