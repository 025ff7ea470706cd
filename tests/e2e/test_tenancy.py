"""Tenancy through the real CLI against a real demo server: login, isolation, approvals, bill, audit."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shanzhi.services.demo import DEMO_PASSWORD
from tests.e2e.harness import Cli, Server, stop_everything, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def demo(tmp_path: Path, database_url: str) -> Iterator[tuple[Server, Cli]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    s = Server(data_dir, None if database_url.startswith("sqlite") else database_url, "--demo")
    yield s, Cli(s)
    stop_everything(data_dir, s)


def _login(cli: Cli, user: str, password: str = DEMO_PASSWORD) -> None:
    r = cli.run("login", "-u", user, env={"SHANZHI_PASSWORD": password})
    assert r.returncode == 0, r.stderr
    assert f"as {user}" in r.stdout


BIG = """
apiVersion: shanzhi.io/v1
kind: App
metadata: {name: imaging, vdc: gz/health}
spec:
  components:
    - {name: gpu, replicas: 3, image: imaging:2, resources: {cpu: 4, memory: 1Gi}}
  placement: {clouds: {tags: {level: district}}}
"""


def test_departments_log_in_see_only_their_own_and_approvals_gate_big_applies(demo: tuple[Server, Cli]) -> None:
    server, cli = demo
    admin = (server.data_dir / "admin.token").read_text().strip()
    # the demo tree is eight levels deep
    depth = max(v["path"].count("/") + 1 for v in cli.json("vdc", "list"))
    assert depth == 8

    bad = cli.run("login", "-u", "zhang.min", env={"SHANZHI_PASSWORD": "not-the-password"})
    assert bad.returncode == 1 and "wrong user name or password" in bad.stderr
    _login(cli, "zhang.min")
    me = cli.json("whoami")
    assert me["user"] == "zhang.min" and me["vdc_roles"] == [{"vdc": "gz/health", "role": "member"}]
    creds = server.data_dir.parent / "config" / "shanzhi" / "credentials.json"
    assert oct(creds.stat().st_mode & 0o777) == "0o600" and server.url in json.loads(creds.read_text())
    assert [a["name"] for a in cli.json("app", "list")] == ["hello"]  # not transport's "permits"
    gone = cli.run("app", "get", "permits")
    assert gone.returncode == 1 and "does not exist" in gone.stderr
    denied = cli.run("cloud", "add", "x", "--kind", "sim", "--site", "s", "--region", "gz")
    assert denied.returncode == 1 and "403" in denied.stderr

    held = cli.run("apply", "-f", "-", "--wait", stdin=BIG)  # nothing to wait for: says so, exits 3 at once
    assert held.returncode == 3 and "held for approval" in held.stdout, held.stderr
    assert "nothing to wait for until it is approved" in held.stderr
    [req] = cli.json("approval", "list", "--status", "pending")
    assert req["app"] == "imaging" and "more than 8" in req["reasons"][0]["why"]
    assert cli.run("app", "get", "imaging").returncode == 1  # nothing applied yet

    _login(cli, "li.wei")  # the department admin passes stage 1
    one = cli.json("approval", "approve", str(req["id"]), "-m", "budget ok")
    assert one["status"] == "pending" and one["stage"] == 1
    done = json.loads(
        cli.run("approval", "approve", str(req["id"]), "-o", "json", token=admin).stdout
    )  # the platform passes stage 2
    assert done["status"] == "approved"
    assert cli.json("app", "get", "imaging")["generation"] == 1
    bye = cli.run("logout")
    assert bye.returncode == 0 and "now use" in bye.stdout and "admin.token" in bye.stdout  # says where it falls back

    # metering runs in the controller: the bill soon shows the health department's use
    def health_billed() -> list[dict[str, str]]:
        r = cli.run("bill", "--vdc", "gz/health", "-o", "json", token=admin)
        assert r.returncode == 0, r.stderr
        return [ln for ln in json.loads(r.stdout)["lines"] if float(ln["instance_hours"]) > 0]

    lines = wait_for(health_billed, 60, "metered usage for gz/health")
    assert {ln["vdc"] for ln in lines} == {"gz/health"}
    rows = list(csv.reader(io.StringIO(cli.run("bill", "-o", "csv", token=admin).stdout)))
    assert rows[0][:3] == ["vdc", "cloud", "instance_hours"] and rows[-1][0] == "TOTAL"
    table = cli.run("bill", token=admin)
    assert table.returncode == 0 and "total" in table.stdout
    assert cli.run("bill", "-o", "xml", token=admin).returncode == 1

    # the audit administrator (data dir's audit.token once nobody is logged in) sees it all
    records = cli.json("audit", "list", "--actor", "li.wei", "--limit", "500")
    assert any(r["path"].endswith("/approve") and r["role"] == "vdc-admin@gz/health" for r in records)
    verified = cli.run("audit", "verify")
    assert verified.returncode == 0 and "unbroken" in verified.stdout
    assert cli.run("audit", "list", token=admin).returncode == 1  # the system admin may not


def test_serve_flags_set_retention_lockout_and_session_length(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    flags = ("--audit-retention-days", "400", "--max-login-failures", "2", "--session-hours", "1")
    s = Server(data_dir, None, *flags)
    try:
        cli = Cli(s)
        sec = (data_dir / "security.token").read_text().strip()
        r = cli.run("user", "create", "wu.hao", "--password", "correct-horse-9", token=sec)
        assert r.returncode == 0, r.stderr
        ok = json.loads(cli.ok("login", "-u", "wu.hao", "--password", "correct-horse-9", "-o", "json"))
        from datetime import datetime, timedelta

        lasts = datetime.fromisoformat(ok["expires_at"]) - datetime.fromisoformat(ok["created_at"])
        assert timedelta(minutes=59) < lasts <= timedelta(hours=1)
        for _ in range(2):
            assert cli.run("login", "-u", "wu.hao", "--password", "wrong-password-1").returncode == 1
        locked = cli.run("login", "-u", "wu.hao", "--password", "correct-horse-9")
        assert locked.returncode == 1 and "locked after 2 failed logins" in locked.stderr
        audit = (data_dir / "audit.token").read_text().strip()
        verify = json.loads(cli.run("audit", "verify", "-o", "json", token=audit).stdout)
        assert verify["retention_days"] == 400
    finally:
        stop_everything(data_dir, s)
