"""The inventory controller on both databases: what a sync writes, and backing off a failing cloud."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import event, select

from shanzhi.controllers import Fleet
from shanzhi.controllers.inventory import InventoryController, backoff, store
from shanzhi.providers import Resource
from shanzhi.services.clouds import add_cloud, inject_failure
from shanzhi.services.inventory import list_items, request_sync, syncs
from shanzhi.store import Database
from shanzhi.store.tables import Cloud, InventoryItem, InventorySync, utcnow


def _cloud(db: Database, name: str = "sim-a", hosts: int = 3) -> int:
    with db.session() as s, s.begin():
        return add_cloud(s, name, "sim", "site-a", "gz", {}, {"hosts": hosts, "boot": 0}).id


def _writes(db: Database) -> list[str]:
    seen: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) and "inventory_items" in statement:
            seen.append(statement.split()[0].upper())

    event.listen(db.engine, "before_cursor_execute", count)
    return seen


def test_a_sync_writes_only_what_changed(db: Database) -> None:
    cloud = _cloud(db)
    rs = [Resource("server", f"i-{n}", f"web-{n}", "running", attrs={"zone": "a"}) for n in range(1200)]
    with db.session() as s, s.begin():
        assert store(s, cloud, rs) == (1200, 1200)
    writes = _writes(db)
    with db.session() as s, s.begin():
        assert store(s, cloud, rs) == (1200, 0)  # nothing changed: nothing written
    assert writes == []
    changed = [
        *rs[:1100],
        Resource("server", "i-5", "web-5", "stopped", attrs={"zone": "a"}),
        Resource("volume", "v-1", "d"),
    ]
    changed = [r for r in changed if not (r.id == "i-5" and r.state == "running")]
    with db.session() as s, s.begin():
        # 100 gone, one changed, one new
        assert store(s, cloud, changed) == (1101, 102)
    assert writes.count("INSERT") == 1 and writes.count("UPDATE") == 1 and writes.count("DELETE") == 1
    with db.session() as s, s.begin():
        rows = list_items(s, cloud="sim-a", limit=5000)
        assert len(rows) == 1101
        assert next(r for r in rows if r.external_id == "i-5").state == "stopped"
        assert [r.external_id for r in list_items(s, kind="volume")] == ["v-1"]
        assert [r.external_id for r in list_items(s, kind="server", unmanaged=True, after=rows[0].id, limit=2)] == [
            rows[1].external_id,
            rows[2].external_id,
        ]


def test_the_controller_syncs_due_clouds_and_backs_off_a_failing_one(db: Database, tmp_path: Path) -> None:
    fleet = Fleet(tmp_path)
    ok, bad = _cloud(db, "sim-a", 3), _cloud(db, "sim-b", 2)
    ctl = InventoryController(db, fleet, lambda: True, interval=60)
    with db.session() as s, s.begin():
        inject_failure(s, fleet, "sim-b", None, recover=False)
    assert ctl.run_once() == 2
    assert ctl.run_once() == 0  # nothing due
    with db.session() as s, s.begin():
        state = {c.name: r for c, r in syncs(s)}
        good = state["sim-a"]
        assert good is not None and good.items == 3 and good.error == "" and good.synced_at is not None
        assert {r.kind for r in list_items(s, cloud="sim-a")} == {"host"}
        failing = state["sim-b"]
        assert failing is not None and failing.failures == 1 and "not answering" in failing.error
        assert failing.synced_at is None and failing.next_at - utcnow() <= timedelta(seconds=backoff(1))
        s.get(InventorySync, bad).next_at = utcnow()  # type: ignore[union-attr]
    assert ctl.run_once() == 1
    with db.session() as s, s.begin():
        assert s.get(InventorySync, bad).failures == 2  # type: ignore[union-attr]
        inject_failure(s, fleet, "sim-b", None, recover=True)
        assert request_sync(s, None) == ["sim-a", "sim-b"]
    assert ctl.run_once() == 2
    with db.session() as s, s.begin():
        row = s.get(InventorySync, bad)
        assert row is not None and row.failures == 0 and row.error == "" and row.items == 2
        # a removed cloud takes its inventory with it
        s.delete(s.get(Cloud, ok))
    with db.session() as s, s.begin():
        assert {r.cloud_id for r in s.scalars(select(InventoryItem))} == {bad}
    assert [backoff(n) for n in (1, 2, 3, 20)] == [5.0, 10.0, 20.0, 600.0]


def test_adopting_found_servers_on_a_sim_cloud_creates_nothing_new(db: Database, tmp_path: Path) -> None:
    from shanzhi.controllers import Reconciler
    from shanzhi.domain.errors import Conflict, InvalidInput, NotFound, QuotaExceeded
    from shanzhi.domain.quota import Quota
    from shanzhi.services.inventory import adopt
    from shanzhi.services.vdcs import create_vdc
    from shanzhi.store.tables import App, Instance

    fleet = Fleet(tmp_path)
    with db.session() as s, s.begin():
        add_cloud(s, "legacy-dc", "sim", "site-a", "gz", {}, {"hosts": 2, "boot": 0, "found": 5})
        create_vdc(s, "gz", Quota(cpu=2000, memory=8 * 2**30))
    ctl = InventoryController(db, fleet, lambda: True)
    ctl.run_once()
    ids = ["legacy-dc-legacy-00001", "legacy-dc-legacy-00002"]
    with db.session() as s, s.begin():
        assert len(list_items(s, kind="server", unmanaged=True)) == 5
        dry = adopt(s, "legacy-dc", ids, "gz", "legacy", "web", dry_run=True, author="t")
        (comp,) = dry["spec"]["spec"]["components"]
        assert comp == {
            "name": "web",
            "replicas": 2,
            "image": "legacy-os",
            "resources": {"cpu": "1000m", "memory": "1024Mi"},
            "ports": [{"name": "p8080", "port": 8080}],
        }
        assert s.scalar(select(App.id)) is None
    bad = [
        (["legacy-dc-legacy-00009"], NotFound, "no server legacy-dc-legacy-00009"),
        ([ids[0], ids[0]], InvalidInput, "named twice"),
        ([*ids, "legacy-dc-legacy-00003"], QuotaExceeded, "cpu"),  # 3 cpu asked, 2 allowed
    ]
    for chosen, error, message in bad:
        with db.session() as s, s.begin():
            try:
                adopt(s, "legacy-dc", chosen, "gz", "legacy", "web", dry_run=False, author="t")
            except error as err:
                assert message in str(err)
            else:
                raise AssertionError(f"adopting {chosen} was not refused")
    with db.session() as s, s.begin():
        out = adopt(s, "legacy-dc", ids, "gz", "legacy", "web", dry_run=False, author="t")
        assert out["outcome"] == "adopted" and len(out["instances"]) == 2
    rec = Reconciler(db, fleet, failover_grace=0)
    try:
        for _ in range(4):
            rec.run_once()
    finally:
        rec.close()
    with db.session() as s, s.begin():
        rows = list(s.scalars(select(Instance).order_by(Instance.ordinal)))
        assert [(r.state, r.adopted_from, r.host) for r in rows] == [
            ("running", ids[0], "legacy-dc-h0001"),
            ("running", ids[1], "legacy-dc-h0000"),
        ]
        with_name = {r.name for r in rows}
    provider = fleet.provider("legacy-dc", "sim", {"hosts": 2, "boot": 0, "found": 5})
    assert {o.name for o in provider.list_instances()} == with_name  # nothing new was started
    with db.session() as s, s.begin():
        request_sync(s, "legacy-dc")
    ctl.run_once()
    with db.session() as s, s.begin():
        servers = list_items(s, kind="server")
        assert sorted(r.external_id for r in servers if not r.managed) == [
            "legacy-dc-legacy-00000",
            "legacy-dc-legacy-00003",
            "legacy-dc-legacy-00004",
        ]
        assert {r.instance for r in servers if r.managed} == with_name
        try:
            adopt(s, "legacy-dc", ids[:1], "gz", "again", "web", dry_run=False, author="t")
        except (Conflict, NotFound) as err:
            assert ids[0] in str(err)
        else:
            raise AssertionError("adopting an adopted server twice was not refused")


def test_credentials_that_cannot_be_opened_make_the_cloud_down_not_the_pass(db: Database, tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    from shanzhi.controllers import Reconciler
    from shanzhi.sealing import Vault

    other = Vault(Fernet(Fernet.generate_key()), "elsewhere.key")  # sealed by another server's key
    with db.session() as s, s.begin():
        add_cloud(s, "sim-a", "sim", "site-a", "gz", {}, {"hosts": 1, "boot": 0})
        creds = {"access_key_id": "AKIA", "secret_access_key": "x"}
        add_cloud(s, "aws", "ec2", "site-b", "gz", {}, {"endpoint": "http://127.0.0.1:9"}, creds, other)
    rec = Reconciler(db, Fleet(tmp_path), failover_grace=0)
    try:
        rec.run_once()
    finally:
        rec.close()
    with db.session() as s, s.begin():
        health = {c.name: (c.health, c.health_message) for c in s.scalars(select(Cloud))}
    assert health["sim-a"][0] == "healthy"
    assert health["aws"][0] == "down" and "cannot be read with this server's credentials.key" in health["aws"][1]


def test_a_sync_by_change_keeps_what_it_did_not_list_and_drops_what_went(db: Database) -> None:
    cloud = _cloud(db)
    rs = [Resource("server", f"i-{n}", f"web-{n}", "running") for n in range(5)] + [Resource("image", "img", "os")]
    with db.session() as s, s.begin():
        assert store(s, cloud, rs) == (6, 6)
    # servers by change: i-1 changed, i-9 new, i-2 gone; the others not listed, so kept
    changes = [Resource("server", "i-1", "web-1", "stopped"), Resource("server", "i-9", "web-9", "running")]
    with db.session() as s, s.begin():
        got = store(s, cloud, [*changes, Resource("image", "img", "os")], frozenset({"server"}), [("server", "i-2")])
        assert got == (6, 3)
        rows = {r.external_id: r.state for r in list_items(s, cloud="sim-a", limit=100)}
    assert rows == {"i-0": "running", "i-1": "stopped", "i-3": "running", "i-4": "running", "i-9": "running",
                    "img": ""}  # fmt: skip
    # the kinds listed in whole still lose what is not there
    with db.session() as s, s.begin():
        assert store(s, cloud, [], frozenset({"server"})) == (5, 1)
        assert {r.external_id for r in list_items(s, kind="image")} == set()
