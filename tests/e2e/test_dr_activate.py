"""Production and same-city both lost, with real Patroni and etcd: activating the remote centre
is refused while production runs, held for approval, approved by someone else, carried out by
the DR controller (the main cluster fenced first, then the remote standby cluster promoted),
reported with the data it could not recover; the old centres come back and stay fenced. Then
the way back: `dr reprotect` rebuilds the main cluster as a standby cluster of the remote primary,
`dr failback` hands the primary back to production with nothing lost, and the services follow.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import psycopg

from tests.dr.bare import Writer
from tests.e2e.harness import Cli, Server, wait_for
from tests.e2e.test_dr import _try, app_doc, settled, three_centres, world  # noqa: F401

VDC = ("--vdc", "gz/tax")


def _writable(host: str, password: str) -> bool:
    address, _, port = host.rpartition(":")
    try:
        with psycopg.connect(host=address, port=int(port), user="app", password=password, dbname="ledger",
                             connect_timeout=2) as c:  # fmt: skip
            return c.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    except psycopg.Error:
        return False


def _count(host: str, password: str) -> int | None:
    address, _, port = host.rpartition(":")
    try:
        with psycopg.connect(host=address, port=int(port), user="app", password=password, dbname="ledger",
                             connect_timeout=2) as c:  # fmt: skip
            row = c.execute("SELECT count(*) FROM acks").fetchone()
            return int(row[0]) if row else None
    except psycopg.Error:
        return None


APPROVER = ("li.wei", "correct-horse-9")


def dr_approver(server: Server, cli: Cli) -> None:
    """The department's own approver of activations and restores in place (a user of its VDC,
    not the requester), named by a rule of gz/tax."""
    sec = (server.data_dir / "security.token").read_text().strip()
    assert cli.run("user", "create", APPROVER[0], "--password", APPROVER[1], token=sec).returncode == 0
    cli.ok("approval", "add-rule", "gz/tax", "dr-approvers", "--activations", "--stage", APPROVER[0])


def _login(server: Server, user: str, password: str) -> str:
    r = httpx.post(f"{server.url}/api/v1/auth/login", json={"user": user, "password": password}, timeout=10)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def test_the_remote_centre_is_activated_only_when_approved_and_production_cannot_come_back(
    world: tuple[Server, Cli],  # noqa: F811
) -> None:
    server, cli = world
    three_centres(cli)
    dr_approver(server, cli)
    spec = server.data_dir.parent / "tax.json"
    doc = json.loads(app_doc())
    doc["spec"]["dr"]["stateless"] = "active-active"
    doc["spec"]["components"].append(
        {"name": "api", "replicas": 2, "resources": {"cpu": 0.05, "memory": "32Mi"},
         "run": {"command": ["python3", "-c", "import time; time.sleep(100000)"]}}
    )  # fmt: skip
    spec.write_text(json.dumps(doc))
    cli.ok("apply", "-f", str(spec))
    ms = wait_for(lambda: settled(cli), 180, "three members running (dr status)")
    hosts = {m["site"]: m["host"] for m in ms}
    dsn = cli.json("dr", "status", "tax", *VDC, "--show-password")["databases"][0]["connection"]
    password = dsn.split(":", 2)[2].split("@", 1)[0]
    wait_for(lambda: _try(lambda: psycopg.connect(dsn).close()), 60, "the app's database")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE acks (id bigint PRIMARY KEY)")

    # production runs: refused, nothing held
    bad = cli.run("dr", "activate-remote", "tax", *VDC)
    assert bad.returncode != 0 and "still has a running primary" in bad.stderr, bad.stderr
    assert [a for a in cli.json("approval", "list") if a["action"] == "activate-remote"] == []

    # the remote standby cluster follows while production writes (its lag is measured meanwhile)
    w = Writer(dsn)
    wait_for(lambda: len(w.acked) > 300, 60, "writes while production runs")
    cli.ok("cloud", "fail", "prod")
    cli.ok("cloud", "fail", "same")  # both lost: Patroni and PostgreSQL killed in each
    wait_for(lambda: w.errors, 30, "the writer to see production go")
    time.sleep(1)
    w.stop()
    acked = set(w.ids)

    def held() -> dict[str, Any] | None:
        r = cli.run("dr", "activate-remote", "tax", *VDC, "--note", "both city centres lost", "-o", "json")
        return json.loads(r.stdout) if r.returncode == 0 else None

    req = wait_for(held, 90, "the request to be taken (the main cluster's leader key expires after its ttl)")
    assert req["status"] == "pending" and [st["approvers"] for st in req["stages"]] == [["li.wei"]]
    mine = cli.run("approval", "approve", str(req["id"]))  # the rule names li.wei, not the administrator
    assert mine.returncode != 0 and "not an approver of stage 1 (li.wei)" in mine.stderr, mine.stderr
    li = _login(server, *APPROVER)
    ok = cli.run("approval", "approve", str(req["id"]), "-o", "json", token=li)
    assert ok.returncode == 0 and "DR controller activates" in json.loads(ok.stdout)["outcome"], ok.stderr

    def report() -> dict[str, Any] | None:
        rs = [r for r in cli.json("dr", "reports", "--app", "tax", *VDC) if r["kind"] == "activate-remote"]
        return rs[-1] if rs and rs[-1]["outcome"] != "running" else None

    rep = wait_for(report, 120, "the activation's report")
    assert rep["outcome"] == "succeeded", rep
    body = rep["body"]
    assert body["member"] == next(m["name"] for m in ms if m["site"] == "sz") and body["approved_by"] == "li.wei"
    assert isinstance(body["lag_bytes_last_measured"], int) and body["last_transaction"], body
    assert body["services_short"] == [] and body["rto_seconds"] >= body["seconds"]
    api = [
        i for i in cli.json("instance", "list", "--app", "tax") if i["component"] == "api" and i["state"] == "running"
    ]
    assert [i["site"] for i in api] == ["sz", "sz"]  # the services followed the database to the remote centre
    assert [s["step"] for s in body["steps"]][:2] == [
        "checked the main cluster's members",
        "fenced the main cluster: its members are stopped and not started again",
    ]

    # the app is handed the remote centre: it takes writes and has what had reached it
    dsn = cli.json("dr", "status", "tax", *VDC, "--show-password")["databases"][0]["connection"]
    assert "127.0.3.1" in dsn and "127.0.1.1" not in dsn and "127.0.2.1" not in dsn
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
        c.execute("INSERT INTO acks VALUES (-1)")
        stored = {row[0] for row in c.execute("SELECT id FROM acks")} - {-1}
    # asynchronous: acknowledged writes may be missing; nothing there was never sent (a commit in
    # flight at the loss may have reached it unacknowledged)
    assert stored and all(min(acked) <= x <= w.n for x in stored - acked), sorted(stored - acked)
    print(f"{len(acked - stored)} of {len(acked)} acknowledged writes lost; report: {rep['summary']}")

    # the old centres return: their members stay stopped, so there is never a second primary
    cli.ok("cloud", "recover", "prod")
    cli.ok("cloud", "recover", "same")

    def fenced() -> bool:
        rows = [i for i in cli.json("instance", "list", "--app", "tax") if i["component"] == "db"]
        main = [i for i in rows if i["site"] in ("gz-a", "gz-b") or "fenced" in (i["reason"] or "")]
        return bool(main) and all(i["state"] == "pending" and "fenced" in i["reason"] for i in main)

    wait_for(fenced, 60, "the main cluster's members held back (fenced)")
    for _ in range(10):  # over several passes, probing every node
        assert not _writable(hosts["gz-a"], password) and not _writable(hosts["gz-b"], password)
        assert _writable(hosts["sz"], password)
        time.sleep(0.5)
    plan = cli.json("dr", "plan", "tax", *VDC, "--operation", "activate-remote")["plans"]["activate-remote"]
    assert plan["last_run"]["outcome"] == "succeeded" and plan["last_run"]["seconds"] == body["rto_seconds"]
    nothing = cli.run("dr", "plan", "tax", *VDC, "--operation", "evacuate")
    assert nothing.returncode == 1 and "no evacuate plan; it has: failover, switchover" in nothing.stderr
    again = cli.run("dr", "activate-remote", "tax", *VDC)
    assert again.returncode != 0 and "already activated" in again.stderr, again.stderr
    events = {e["reason"] for e in cli.json("events", "--app", "tax", *VDC)}
    assert {"RemoteActivationApproved", "RemoteActivated"} <= events

    # the city centres are back. Failing back needs the main cluster rebuilt first
    early = cli.run("dr", "failback", "tax", *VDC)
    assert early.returncode != 0 and "run `dr reprotect` first" in early.stderr, early.stderr
    with psycopg.connect(dsn, autocommit=True) as c:  # written while the remote centre leads
        for i in range(2, 102):
            c.execute("INSERT INTO acks VALUES (%s)", (-i,))
    asked = cli.run("dr", "reprotect", "tax", *VDC, "-o", "json")  # exits 1 until protected again
    first = json.loads(asked.stdout)
    assert asked.returncode == 1 and first["rebuilding"] and not first["protected"], asked

    def rebuilt() -> dict[str, Any] | None:
        r = cli.run("dr", "reprotect", "tax", *VDC, "-o", "json")
        return json.loads(r.stdout) if r.returncode == 0 else None

    done = wait_for(rebuilt, 240, "the main cluster rebuilt as a standby cluster of the remote primary")
    roles = {(m["cluster"], m["site"]): m["role"] for m in done["members"] if m["state"] == "running"}
    assert roles == {("main", "gz-a"): "standby_leader", ("main", "gz-b"): "replica", ("remote", "sz"): "primary"}
    new = {m["site"]: m["host"] for m in done["members"]}
    # a copy of the remote primary, not the old timeline: it has what was written since the activation
    wait_for(lambda: _count(new["gz-b"], password) == len(stored) + 101, 60, "the rebuilt replica caught up")
    assert not _writable(new["gz-a"], password) and not _writable(new["gz-b"], password)
    assert _writable(new["sz"], password)

    # failback: planned, nothing lost; the remote cluster follows the main one again
    fb = cli.json("dr", "failback", "tax", *VDC)
    assert fb["kind"] == "failback" and fb["outcome"] == "succeeded", fb
    assert fb["body"]["from"] == body["member"] and fb["body"]["old_primary_follows"], fb["body"]
    assert "has replayed every byte" in " ".join(st["step"] for st in fb["body"]["steps"])
    dsn = cli.json("dr", "status", "tax", *VDC, "--show-password")["databases"][0]["connection"]
    assert "127.0.1.1" in dsn and "127.0.3.1" not in dsn, dsn
    with psycopg.connect(dsn, autocommit=True) as c:
        assert c.execute("SELECT count(*) FROM acks").fetchone() == (len(stored) + 101,)
        c.execute("INSERT INTO acks VALUES (-1000)")
    wait_for(lambda: _count(new["sz"], password) == len(stored) + 102, 60, "the remote centre following again")
    assert _writable(new["gz-a"], password) and not _writable(new["sz"], password)

    def services_home() -> bool:
        rows = [i for i in cli.json("instance", "list", "--app", "tax") if i["component"] == "api"]
        return sorted(i["site"] for i in rows if i["state"] == "running") == ["gz-a", "gz-b"] and len(rows) == 2

    wait_for(services_home, 120, "the stateless components back in the city centres")
    events = {e["reason"] for e in cli.json("events", "--app", "tax", *VDC)}
    assert {"MainClusterRebuildAsked", "MainClusterRebuilding", "DatabaseFailback"} <= events
