"""Two sites, three centres with real Patroni and etcd: a managed PostgreSQL across production,
same-city and remote (local clouds on their own loopback addresses), a writer that records
every acknowledged transaction, the production member lost, and no acknowledged write missing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shanzhi.dr.patroni import API_USER, SYNC_LAG_ON_FAILOVER, api_base
from shanzhi.sealing import Vault
from shanzhi.store.tables import DR_KEY
from tests.dr.bare import Writer, need_engines
from tests.e2e.harness import Cli, Server, stop_everything, wait_for

CENTRES = (("prod", "gz-a", "127.0.1.1", "production"), ("same", "gz-b", "127.0.2.1", "same-city"),
           ("far", "sz", "127.0.3.1", "remote"))  # fmt: skip


def three_centres(cli: Cli, roles: bool = True) -> None:
    """A local cloud per centre, with (`roles`) the centres' DR roles, and the department's VDC."""
    for cloud, site, address, _ in CENTRES:
        cli.ok("cloud", "add", cloud, "--kind", "local", "--site", site, "--region", "gd", "--option",
               f"address={address}")  # fmt: skip
    if roles:
        for _, site, _, role in CENTRES:
            cli.ok("site", "role", site, role)
    cli.ok("vdc", "create", "gz/tax", "--parents")


def app_doc(tier: str = "two-sites-three-centres") -> str:
    return json.dumps(
        {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": "tax", "vdc": "gz/tax"},
            "spec": {
                "dr": {"tier": tier, "rpo": "0s", "rto": "60s"},
                "components": [{"name": "db", "kind": "postgres", "postgres": {"database": "ledger"}}],
            },
        }
    )


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Server, Cli]]:
    need_engines()
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data)
    try:
        yield server, Cli(server)
    finally:
        stop_everything(data, server)
        shutil.rmtree(data, ignore_errors=True)


def members(cli: Cli) -> list[dict[str, Any]]:
    st = cli.json("dr", "status", "tax", "--vdc", "gz/tax")
    return [m for d in st["databases"] for m in d["members"]]


def settled(cli: Cli) -> list[dict[str, Any]] | None:
    """The members once all three run: a primary, a synchronous replica, a standby leader."""
    ms = members(cli)
    roles = sorted((m["cluster"], m["role"], m["state"]) for m in ms)
    want = [("main", "primary", "running"), ("main", "replica", "running"), ("remote", "standby_leader", "running")]
    return ms if roles == want else None


def test_production_lost_same_city_takes_over_with_every_acknowledged_write(world: tuple[Server, Cli]) -> None:
    import psycopg

    server, cli = world
    three_centres(cli, roles=False)
    # the topology cannot give the tier yet: refused, naming what is missing, nothing stored
    bad = cli.run("apply", "-f", "-", stdin=app_doc())
    assert bad.returncode != 0 and "missing: production, same-city, remote" in bad.stderr, bad.stderr
    assert cli.json("app", "list") == []
    for _, site, _, role in CENTRES:
        cli.ok("site", "role", site, role)
    topo = cli.json("dr", "topology")
    assert topo["tiers"]["two-sites-three-centres"] is None
    assert {(x["from"], x["to"]) for x in topo["links"]} >= {("gz-a", "gz-b"), ("gz-b", "sz")}
    taken = cli.run("site", "role", "gz-b", "production")
    assert taken.returncode != 0 and "already the production centre" in taken.stderr

    spec = server.data_dir.parent / "tax.json"
    spec.write_text(app_doc())
    cli.ok("apply", "-f", str(spec))
    try:
        ms = wait_for(lambda: settled(cli), 180, "three members running (dr status)")
    except AssertionError:
        log = server.log.read_text()[-3000:]
        status = cli.ok("dr", "status", "tax", "--vdc", "gz/tax")
        raise AssertionError(f"{status}\n{cli.ok('app', 'get', 'tax')}\n{log}") from None
    where = {m["role"]: m["site"] for m in ms}
    assert where == {"primary": "gz-a", "replica": "gz-b", "standby_leader": "sz"}, ms
    topo = cli.json("dr", "topology")
    etcd = {e["name"]: (site["name"], e["cloud"]) for site in topo["sites"] for e in site["etcd"]}
    assert etcd == {"quorum-gz-a": ("gz-a", "prod"), "quorum-gz-b": ("gz-b", "same"), "quorum-sz": ("sz", "far"),
                    "remote-sz": ("sz", "far")}  # fmt: skip
    masked = cli.json("dr", "status", "tax", "--vdc", "gz/tax")["databases"][0]["connection"]
    assert "********" in masked and "target_session_attrs=read-write" in masked
    dsn = cli.json("dr", "status", "tax", "--vdc", "gz/tax", "--show-password")["databases"][0]["connection"]
    assert "127.0.1.1" in dsn and "127.0.2.1" in dsn and "/ledger?" in dsn
    # the passwords are sealed at rest: the database row holds none of them, the data directory's key opens them
    password = psycopg.conninfo.conninfo_to_dict(dsn)["password"]
    with sqlite3.connect(server.data_dir / "shanzhi.db") as db:
        [(row,)] = db.execute("SELECT secrets FROM dr_clusters").fetchall()
    assert password and password not in row and list(json.loads(row)) == ["sealed"]
    keys = Vault.for_data_dir(server.data_dir, DR_KEY).open_json(json.loads(row)["sealed"])
    assert keys["app"] == password and set(keys) == {"superuser", "replication", "app", "etcd"}

    # a cluster made before a dynamic setting came gets it: the DR controller mends the configuration
    api = api_base(next(m for m in ms if m["role"] == "primary")["api"])
    lag = {"maximum_lag_on_failover": 2**20}  # Patroni's default, as a cluster made before has it
    httpx.patch(f"{api}/config", json=lag, auth=(API_USER, keys["superuser"]), timeout=10).raise_for_status()

    def mended() -> bool:
        return bool(httpx.get(f"{api}/config", timeout=5).json()["maximum_lag_on_failover"] == SYNC_LAG_ON_FAILOVER)

    def told() -> bool:  # recorded just after the change, in a transaction of its own
        events = cli.json("events", "--app", "tax", "--vdc", "gz/tax")
        return any(e["reason"] == "DatabaseSettingsMended" and "maximum_lag" in e["message"] for e in events)

    wait_for(mended, 30, "the cluster's maximum_lag_on_failover set again")
    wait_for(told, 10, "the DatabaseSettingsMended event")

    def connect() -> psycopg.Connection[Any]:
        return psycopg.connect(dsn, autocommit=True)

    wait_for(lambda: _try(lambda: connect().close()), 60, "the app's database (created by the DR controller)")
    with connect() as c:
        c.execute("CREATE TABLE acks (id bigint PRIMARY KEY)")
        assert c.execute("SHOW synchronous_commit").fetchone() == ("on",)
    w = Writer(dsn)
    wait_for(lambda: len(w.acked) > 200, 60, "writes before the crash")
    old = next(m for m in ms if m["role"] == "primary")
    crashed = time.monotonic()
    cli.ok("cloud", "fail", "prod")  # production lost: Patroni and PostgreSQL killed together (SIGKILL)
    wait_for(lambda: w.errors, 30, "the writer to see the primary go")
    before = len(w.acked)
    wait_for(lambda: len(w.acked) > before + 200, 120, "writes on the new primary")
    resumed = time.monotonic() - crashed
    w.stop()
    acked, errors = w.ids, w.errors

    def promoted() -> dict[str, Any] | None:
        return next((m for m in members(cli) if m["role"] == "primary" and (m["timeline"] or 0) >= 2), None)

    new = wait_for(promoted, 60, "a primary on a new timeline")
    assert new["site"] == "gz-b" and new["name"] != old["name"], (members(cli), old, errors[:5], resumed)
    with connect() as c:
        stored = {row[0] for row in c.execute("SELECT id FROM acks")}
        assert c.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
    missing = sorted(set(acked) - stored)
    assert not missing, f"{len(missing)} acknowledged writes lost: {missing[:10]}"

    reports = cli.json("dr", "reports", "--app", "tax", "--vdc", "gz/tax")
    failover = [r for r in reports if r["kind"] == "failover"]
    assert failover and failover[-1]["body"]["new_leader"] == new["name"], reports
    assert failover[-1]["body"]["old_leader"] == old["name"]
    events = cli.json("events", "--app", "tax", "--vdc", "gz/tax")
    assert any(e["reason"] == "DatabaseFailover" for e in events)

    # the remote standby cluster follows the new primary (it is fed from the same-city member)
    with connect() as c:
        c.execute("INSERT INTO acks VALUES (-1)")
    far = next(m for m in members(cli) if m["cluster"] == "remote")
    host, _, port = far["host"].rpartition(":")
    password = dsn.split(":", 2)[2].split("@", 1)[0]

    def on_remote() -> bool:
        try:
            with psycopg.connect(host=host, port=int(port), user="app", password=password, dbname="ledger") as c:
                return c.execute("SELECT count(*) FROM acks WHERE id = -1").fetchone() == (1,)
        except psycopg.Error:
            return False

    wait_for(on_remote, 60, "the write on the remote standby cluster")
    print(f"writes resumed {resumed:.1f}s after the production cloud failed; {len(acked)} acknowledged")

    # not protected while production is down, and it says why
    r = cli.run("dr", "reprotect", "tax", "--vdc", "gz/tax")
    assert r.returncode == 1 and "gz-a" in r.stdout, r.stdout
    bad = cli.run("dr", "switchover", "tax", "--vdc", "gz/tax", "--site", "gz-a")
    assert bad.returncode != 0 and "no running replica in site gz-a" in bad.stderr, bad.stderr
    # production comes back: its member returns to its own disk, is rewound, and follows
    cli.ok("cloud", "recover", "prod")

    def back() -> bool:
        return json.loads(cli.run("dr", "reprotect", "tax", "--vdc", "gz/tax", "-o", "json").stdout)["protected"]

    wait_for(back, 120, "every centre protected again (the old primary rewound and following)")
    quorum = {e["name"]: e["health"] for site in cli.json("dr", "topology")["sites"] for e in site["etcd"]}
    assert set(quorum.values()) == {"healthy"}, quorum  # production's member, lost with its cloud, made again
    downs = [e["message"] for e in cli.json("events", "--limit", "500") if e["reason"] == "QuorumMemberDown"]
    assert any("quorum-gz-a" in m for m in downs), downs
    returned = next(m for m in members(cli) if m["site"] == "gz-a")
    assert returned["role"] == "replica" and returned["timeline"] == promoted_timeline(cli)
    # on its own disk: the production ordinal's volume, kept on prod through the outage
    disk = next(v for v in cli.json("volume", "list", "--app", "tax") if v["ordinal"] == 0)
    assert (disk["cloud"], disk["instance"], disk["state"]) == ("prod", returned["name"], "attached")

    # failback under load: the primary back in production, no acknowledged write lost
    w = Writer(dsn)
    wait_for(lambda: len(w.acked) > 50, 60, "writes before the failback")
    report = cli.json("dr", "failback", "tax", "--vdc", "gz/tax")
    after = len(w.acked)
    try:
        wait_for(lambda: len(w.acked) > after + 50, 60, "writes after the failback")
    except AssertionError:
        raise AssertionError(f"{report}\n{cli.ok('dr', 'status', 'tax', '--vdc', 'gz/tax')}\n{w.errors[-3:]}") from None
    w.stop()
    assert report["outcome"] == "succeeded" and report["body"]["to"] == returned["name"], report
    assert report["body"]["old_primary_follows"] is True
    primary = next(m for m in members(cli) if m["role"] == "primary")
    assert primary["site"] == "gz-a"
    with connect() as c:
        stored = {row[0] for row in c.execute("SELECT id FROM acks")}
    assert not set(w.ids) - stored
    again = cli.run("dr", "failback", "tax", "--vdc", "gz/tax")
    assert again.returncode != 0 and "nothing to fail back" in again.stderr
    kinds = [r["kind"] for r in cli.json("dr", "reports", "--app", "tax", "--vdc", "gz/tax")]
    assert kinds.count("failover") == 1 and kinds.count("failback") == 1, kinds


def promoted_timeline(cli: Cli) -> int:
    return int(next(m for m in members(cli) if m["role"] == "primary")["timeline"])


def _try(fn: Any) -> bool:
    try:
        fn()
    except Exception:  # any failure means not yet
        return False
    return True
