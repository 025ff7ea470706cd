"""The same-city member moves to another cloud of its centre (its cloud is lost), with real Patroni
and etcd: the DR controller re-points the remote standby cluster at the member's new address, and
the remote centre goes on receiving every write. Left alone, the remote cluster would wait on an
address nothing listens on any more while its lag grew past the app's RPO.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import psycopg

from shanzhi.sealing import Vault
from shanzhi.store.tables import DR_KEY
from tests.e2e.harness import Cli, Server, wait_for
from tests.e2e.test_dr import _try, app_doc, settled, three_centres, world  # noqa: F401
from tests.e2e.test_dr_activate import VDC, _count

MOVED = "127.0.4.1"  # the same-city centre's second cloud


def test_the_remote_standby_follows_the_same_city_member_to_its_new_cloud(world: tuple[Server, Cli]) -> None:  # noqa: F811
    server, cli = world
    three_centres(cli)
    spec = server.data_dir.parent / "tax.json"
    spec.write_text(app_doc())
    cli.ok("apply", "-f", str(spec))
    ms = wait_for(lambda: settled(cli), 180, "three members running (dr status)")
    hosts = {m["site"]: m["host"] for m in ms}
    dsn = cli.json("dr", "status", "tax", *VDC, "--show-password")["databases"][0]["connection"]
    password = psycopg.conninfo.conninfo_to_dict(dsn)["password"]
    wait_for(lambda: _try(lambda: psycopg.connect(dsn).close()), 60, "the app's database")
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("CREATE TABLE acks (id bigint PRIMARY KEY)")
        c.execute("INSERT INTO acks SELECT generate_series(1, 100)")
    wait_for(lambda: _count(hosts["sz"], password) == 100, 60, "the remote centre following same-city")

    # the same-city centre gets a second cloud, then loses the one its member runs on
    cli.ok("cloud", "add", "same2", "--kind", "local", "--site", "gz-b", "--region", "gd", "--option",
           f"address={MOVED}")  # fmt: skip
    cli.ok("cloud", "fail", "same")

    def moved() -> dict[str, Any] | None:
        st = cli.json("dr", "status", "tax", *VDC)["databases"][0]
        return next(
            (m for m in st["members"] if m["cluster"] == "main" and m["state"] == "running"
             and str(m["host"]).startswith(f"{MOVED}:")),
            None,
        )  # fmt: skip

    try:
        member = wait_for(moved, 180, f"the same-city member running again on {MOVED}")
    except AssertionError:
        instances = cli.ok("instance", "list", "--app", "tax")
        raise AssertionError(
            f"{instances}\n{cli.ok('dr', 'status', 'tax', *VDC)}\n{server.log.read_text()[-3000:]}"
        ) from None
    wait_for(lambda: "RemoteStandbyRepointed" in {e["reason"] for e in cli.json("events", "--app", "tax", *VDC)},
             60, "the remote standby cluster re-pointed")  # fmt: skip
    said = next(e for e in cli.json("events", "--app", "tax", *VDC) if e["reason"] == "RemoteStandbyRepointed")
    assert member["host"] in said["message"], said

    # writes made after the move reach the remote centre, through the member's new address
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("INSERT INTO acks SELECT generate_series(101, 200)")
    try:
        wait_for(lambda: _count(hosts["sz"], password) == 200, 90, "the remote centre following the moved member")
    except AssertionError:
        logs = "\n".join(
            p.read_text(errors="replace")[-2500:] for p in (server.data_dir / "clouds" / "far").rglob("log")
        )
        raise AssertionError(f"{_count(hosts['sz'], password)}\n{logs}") from None

    # streamed from the member's new address (not only replayed from the WAL archive, which the
    # remote cluster also reads)
    with sqlite3.connect(server.data_dir / "shanzhi.db") as db:
        [(row,)] = db.execute("SELECT secrets FROM dr_clusters").fetchall()
    superuser = Vault.for_data_dir(server.data_dir, DR_KEY).open_json(json.loads(row)["sealed"])["superuser"]
    address, _, port = hosts["sz"].rpartition(":")

    def receiver() -> tuple[Any, ...] | None:
        with psycopg.connect(host=address, port=int(port), user="postgres", password=superuser, dbname="postgres",
                             connect_timeout=5) as c:  # fmt: skip
            return c.execute("SELECT status, sender_host FROM pg_stat_wal_receiver").fetchone()

    assert receiver() == ("streaming", MOVED)
