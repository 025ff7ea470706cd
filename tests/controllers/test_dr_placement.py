"""Where a protected app's replicas go, on both databases (simulated clouds: no engines run).

A managed database's members are pinned to their centres and wait, each with its reason, for
what they need: the quorum's admission, the production member's bootstrap, the source of the
remote standby cluster. Stateless components stay in production and same-city (active-active)
or production alone until it is lost (cold). The topology is checked at apply."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shanzhi.controllers.dr import DrController, seal_passwords
from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.services import dr, plans
from shanzhi.services.clouds import inject_failure
from shanzhi.store import Database
from shanzhi.store.tables import DrCluster, DrEtcdMember, Instance, Site
from tests.controllers.test_reconciler import World


def doc(tier: str, stateless: str = "active-active", replicas: int = 4) -> dict[str, Any]:
    return {
        "apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "tax", "vdc": "gz"},
        "spec": {
            "dr": {"tier": tier, "stateless": stateless},
            "components": [
                {"name": "db", "kind": "postgres"},
                {"name": "api", "replicas": replicas, "image": "x", "resources": {"cpu": 0.5, "memory": "256Mi"}},
            ],
        },
    }  # fmt: skip


@pytest.fixture
def centres(db: Database, data_dir: Path) -> World:
    w = World(db, data_dir)
    for cloud, site in (("prod", "gz-a"), ("same", "gz-b"), ("far", "sz"), ("other", "fs")):
        w.cloud(cloud, "sim", site, "city", hosts=2, boot=0)
    w.rec.run_once()  # the clouds' hosts
    yield w
    w.rec.close()


def placed(w: World, component: str) -> dict[int, str | None]:
    rows = [r for r in w.rows("tax") if r.component == component and r.state not in ("lost", "terminating", "reserved")]
    return {r.ordinal: (r.cloud.site.name if r.cloud else None) for r in rows}


def reasons(w: World) -> dict[int, str]:
    return {r.ordinal: r.reason for r in w.rows("tax") if r.component == "db" and r.cloud is None}


def roles(w: World, **r: str) -> None:
    with w.db.session() as s, s.begin():
        for site, role in r.items():
            dr.set_role(s, site.replace("_", "-"), role)


def member_status(w: World, **states: tuple[str, str]) -> None:
    """What the DR controller would have read from etcd: member name -> (role, state)."""
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        assert c is not None
        rows = {r.ordinal: r for r in s.scalars(select(Instance).where(Instance.component == "db"))}
        c.status = {"members": [
            {"cluster": "main", "name": rows[int(o)].name, "role": role, "state": state,
             "host": f"127.0.0.{o}:5432", "site": rows[int(o)].cloud.site.name if rows[int(o)].cloud else None}
            for o, (role, state) in states.items()
        ]}  # fmt: skip


def test_members_wait_for_what_they_need_and_go_to_their_centres(centres: World) -> None:
    w = centres
    with pytest.raises(InvalidInput, match="missing: production, same-city, remote"):
        w.apply(doc("two-sites-three-centres"))
    assert w.rows("tax") == []  # refused: nothing stored
    roles(w, gz_a="production", gz_b="same-city", sz="remote")
    w.apply(doc("two-sites-three-centres"))
    w.rec.run_once()
    assert placed(w, "db") == {0: None, 1: None, 2: None}
    assert all("DR quorum" in why for why in reasons(w).values())
    # stateless replicas: production and same-city only, spread over both (active-active)
    assert sorted(set(placed(w, "api").values())) == ["gz-a", "gz-b"]

    with w.db.session() as s, s.begin():  # admitted: its etcd users exist (the DR controller's job)
        seal_passwords(s, w.data_dir)[0][0].prepared = True
        for cluster, site in (("quorum", "gz-a"), ("remote", "sz")):
            site_id = s.scalar(select(Site.id).where(Site.name == site))
            s.add(DrEtcdMember(cluster=cluster, name=f"{cluster}-{site}", site_id=site_id, address="127.0.0.1",
                               client_port=1, peer_port=2))  # fmt: skip
    w.rec.run_once()
    assert placed(w, "db") == {0: "gz-a", 1: None, 2: None}  # production bootstraps first
    assert "production member to bootstrap" in reasons(w)[1]
    member_status(w, **{"0": ("primary", "running")})
    w.rec.run_once()
    assert placed(w, "db") == {0: "gz-a", 1: "gz-b", 2: None}
    assert "source member" in reasons(w)[2]
    member_status(w, **{"0": ("primary", "running"), "1": ("replica", "running")})
    w.rec.run_once()
    assert placed(w, "db") == {0: "gz-a", 1: "gz-b", 2: "sz"}

    # a role a protected app relies on is not taken away; a held one is not given twice
    with w.db.session() as s, s.begin(), pytest.raises(Conflict, match="protected apps"):
        dr.set_role(s, "sz", None)
    with w.db.session() as s, s.begin(), pytest.raises(Conflict, match="already the production"):
        dr.set_role(s, "fs", "production")
    with w.db.session() as s, s.begin(), pytest.raises(InvalidInput, match="unknown DR role"):
        dr.set_role(s, "fs", "backup")
    with w.db.session() as s, s.begin(), pytest.raises(NotFound, match="sites: fs, gz-a"):
        dr.set_role(s, "nowhere", "arbiter")


def test_cold_stateless_replicas_start_in_same_city_once_production_is_lost(centres: World) -> None:
    w = centres
    roles(w, gz_a="production", gz_b="same-city", fs="arbiter")
    w.apply(doc("same-city", stateless="cold", replicas=2))
    w.rec.run_once()
    assert set(placed(w, "api").values()) == {"gz-a"}
    with w.db.session() as s, s.begin():
        inject_failure(s, w.fleet, "prod", None, recover=False)
    w.converge(lambda: set(placed(w, "api").values()) == {"gz-b"} and len(placed(w, "api")) == 2)


def test_a_cold_components_standby_capacity_is_held_in_same_city_and_given_to_it_alone(centres: World) -> None:
    w = centres
    roles(w, gz_a="production", gz_b="same-city", fs="arbiter")
    w.apply(doc("same-city", stateless="cold", replicas=2))
    w.converge(lambda: len(standby(w)) == 2 and set(placed(w, "api").values()) == {"gz-a"})
    assert all(r.cloud and r.cloud.name == "same" and r.host for r in standby(w))
    # another app that wants all of same-city's room gets all but what is held
    w.apply(filler(replicas=2))
    w.converge(lambda: any(r.state == "pending" for r in w.rows("filler")))
    held = {r.host for r in standby(w)}
    assert all(r.host not in held for r in w.rows("filler") if r.cloud)  # never on a host with the standby room
    assert "no host with 15800m cpu" in next(r.reason for r in w.rows("filler") if r.state == "pending")
    with w.db.session() as s, s.begin():  # a re-placement plan counts the held room too, and never moves it
        snap = plans.snapshot(s)
    for r in standby(w):
        i = snap.hosts.index(("same", r.host))
        assert snap.state.used_cpu[i] >= 500 and r.name not in {n for ns in snap.replicas.values() for n in ns}
    assert [r.state for r in w.rows("tax") if r.component == "api" and r.state != "reserved"] == ["running"] * 2
    # production lost: the held room goes to the cold replicas, which start in same-city
    with w.db.session() as s, s.begin():
        inject_failure(s, w.fleet, "prod", None, recover=False)
    w.converge(lambda: set(placed(w, "api").values()) == {"gz-b"} and len(placed(w, "api")) == 2 and not standby(w))
    w.converge(lambda: all(r.state == "running" for r in w.rows("tax") if r.component == "api" and r.cloud
                           and r.cloud.name == "same"))  # fmt: skip


def standby(w: World) -> list[Instance]:
    return [r for r in w.rows("tax") if r.state == "reserved"]


def filler(replicas: int) -> dict[str, Any]:
    """Replicas of nearly a whole same-city host each (16 cores a host, 2 hosts)."""
    return {
        "apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "filler", "vdc": "gz"},
        "spec": {
            "components": [{"name": "big", "replicas": replicas, "image": "x",
                            "resources": {"cpu": 15.8, "memory": "256Mi"}}],
            "placement": {"clouds": {"names": ["same"]}},
        },
    }  # fmt: skip


def _members_placed(w: World) -> None:
    """Three centres' members placed, as the DR controller's admission and reads would let them."""
    roles(w, gz_a="production", gz_b="same-city", sz="remote")
    w.apply(doc("two-sites-three-centres", replicas=1))
    w.rec.run_once()
    with w.db.session() as s, s.begin():
        seal_passwords(s, w.data_dir)[0][0].prepared = True
        for cluster, site in (("quorum", "gz-a"), ("remote", "sz")):
            site_id = s.scalar(select(Site.id).where(Site.name == site))
            s.add(DrEtcdMember(cluster=cluster, name=f"{cluster}-{site}", site_id=site_id, address="127.0.0.1",
                               client_port=1, peer_port=2))  # fmt: skip
    for states in ({"0": ("primary", "running")}, {"0": ("primary", "running"), "1": ("replica", "running")}):
        w.rec.run_once()
        member_status(w, **states)
    w.rec.run_once()
    assert placed(w, "db") == {0: "gz-a", 1: "gz-b", 2: "sz"}


def test_activating_the_remote_centre_is_refused_while_production_runs_then_approved_and_fenced(
    centres: World,
) -> None:
    from shanzhi.domain.errors import Forbidden
    from shanzhi.domain.rbac import Principal
    from shanzhi.services import approvals, dr_ops
    from shanzhi.store.tables import App

    w = centres
    _members_placed(w)
    admin, other = Principal("admin", frozenset({"system-admin"})), Principal("zhao", frozenset({"system-admin"}))
    member_status(w, **{"0": ("primary", "running"), "1": ("replica", "running")})
    with w.db.session() as s, s.begin(), pytest.raises(Conflict, match=r"still has a running primary, .* in gz-a"):
        dr_ops.request_activation(s, s.scalar(select(App)), None, "admin", "")  # type: ignore[arg-type]
    with w.db.session() as s, s.begin():  # both lost: etcd shows no main member; the remote one runs
        c = s.scalar(select(DrCluster))
        assert c is not None
        far = next(r.name for r in s.scalars(select(Instance)) if r.component == "db" and r.ordinal == 2)
        c.status = {"members": [{"cluster": "remote", "name": far, "role": "standby_leader", "state": "running",
                                 "host": "127.0.3.1:5432", "api": "http://127.0.3.1:8008/patroni"}]}  # fmt: skip
    with w.db.session() as s, s.begin():
        held = dr_ops.request_activation(s, s.scalar(select(App)), None, "admin", "both centres flooded")  # type: ignore[arg-type]
        held_id, stages = held.id, held.stages["stages"]
        assert (held.action, held.status) == ("activate-remote", "pending")
    assert [st["approvers"] for st in stages] == [["role:system-admin"]]  # no rule: a second administrator
    with w.db.session() as s, s.begin():  # asked again: the same request
        again = dr_ops.request_activation(s, s.scalar(select(App)), None, "admin", "both centres flooded")  # type: ignore[arg-type]
        assert again.id == held_id
    with w.db.session() as s, s.begin(), pytest.raises(Forbidden, match="their own"):
        approvals.decide(s, admin, held_id, True)
    with w.db.session() as s, s.begin():
        assert s.scalar(select(DrCluster)).activation is None  # type: ignore[union-attr]
        done = approvals.decide(s, other, held_id, True)
        assert done.status == "approved" and "DR controller activates" in done.outcome
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        assert c is not None and c.activation is not None
        assert (c.activation["state"], c.activation["by"]) == ("approved", "zhao")
        with pytest.raises(Conflict, match="under way"):
            dr_ops.request_activation(s, s.scalar(select(App)), None, "admin", "")  # type: ignore[arg-type]
        # what the DR controller does first: fence the main cluster
        c.activation = {**c.activation, "state": "running", "fenced_at": "now"}
    w.converge(lambda: placed(w, "db") == {0: None, 1: None, 2: "sz"})  # the main members stopped, none started
    assert all(f"fenced: the remote centre was activated (approval {held_id})" in why for why in reasons(w).values())
    with w.db.session() as s, s.begin():  # the app is handed the remote centre
        st = dr.status(s, s.scalar(select(App)))  # type: ignore[arg-type]
    assert "127.0.3.1:5432" in st["databases"][0]["connection"] and "127.0.1" not in st["databases"][0]["connection"]
    # a returning production centre does not bring its member back
    with w.db.session() as s, s.begin():
        inject_failure(s, w.fleet, "prod", None, recover=False)
    w.rec.run_once()
    with w.db.session() as s, s.begin():
        inject_failure(s, w.fleet, "prod", None, recover=True)
    w.rec.run_once()
    w.rec.run_once()
    assert placed(w, "db") == {0: None, 1: None, 2: "sz"}


def test_an_activation_rule_names_its_approvers_and_a_tier_without_a_remote_centre_is_refused(
    centres: World,
) -> None:
    from shanzhi.domain.spec import parse_app
    from shanzhi.services import approvals, dr_ops, dr_plans
    from shanzhi.store.tables import App

    w = centres
    roles(w, gz_a="production", gz_b="same-city", sz="remote", fs="arbiter")
    w.apply(doc("same-city", replicas=1))
    with w.db.session() as s, s.begin(), pytest.raises(InvalidInput, match="tier same-city has no remote centre"):
        dr_ops.request_activation(s, s.scalar(select(App)), None, "admin", "")  # type: ignore[arg-type]
    with w.db.session() as s, s.begin(), pytest.raises(InvalidInput, match="unknown condition 'activation'"):
        approvals.add_rule(s, "gz", "typo", {"activation": True}, [["li.wei"]], 4)
    with w.db.session() as s, s.begin():
        approvals.add_rule(s, "gz", "dr-approvers", {"activations": True}, [["role:vdc-admin"], ["li.wei"]], 4)
        # a rule about activations holds no apply
        assert approvals.matching_rules(s, parse_app(doc("two-sites-three-centres", replicas=1))) == []
    w.apply(doc("two-sites-three-centres", replicas=1))
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        assert c is not None
        c.status = {"members": [{"cluster": "remote", "name": "x", "role": "standby_leader", "state": "running",
                                 "host": "127.0.3.1:5432"}]}  # fmt: skip
    with w.db.session() as s, s.begin():
        held = dr_ops.request_activation(s, s.scalar(select(App)), None, "admin", "")  # type: ignore[arg-type]
        assert [st["approvers"] for st in held.stages["stages"]] == [["role:vdc-admin"], ["li.wei"]]
        assert [r["rule"] for r in held.reasons["rules"]] == ["dr-approvers"]
        assert held.expires_at < held.created_at + timedelta(hours=5)  # the rule's expiry
        plans = dr_plans.plans(s, s.scalar(select(App)))  # type: ignore[arg-type]
    assert list(plans["plans"]) == ["failover", "switchover", "failback", "activate-remote", "return-from-remote",
                                    "test", "restore-in-place"]  # fmt: skip
    assert "role:vdc-admin then li.wei" in plans["plans"]["restore-in-place"]["steps"][0]["step"]
    failover = plans["plans"]["failover"]
    assert failover["automatic"] and failover["last_run"] is None
    assert [st["phase"] for st in failover["steps"]] == ["database", "database", "database", "services", "checks",
                                                         "report"]  # fmt: skip
    assert (
        "etcd in gz-a, gz-b, fs" in failover["steps"][0]["step"]
        and "in gz-b is promoted" in failover["steps"][1]["step"]
    )
    assert "api already run in gz-b" in failover["steps"][3]["step"]
    activate = plans["plans"]["activate-remote"]["steps"]
    assert "role:vdc-admin then li.wei" in activate[0]["step"] and "in sz is promoted" in activate[3]["step"]
    assert [st["phase"] for st in activate][:3] == ["approval", "checks", "database"]  # fenced before promoting
    back = plans["plans"]["return-from-remote"]["steps"]
    assert "standby cluster of the primary in sz" in back[0]["step"] and "promoted back" in back[3]["step"]
    assert [st["phase"] for st in back] == ["database", "checks", "database", "checks", "database", "services",
                                            "checks"]  # fmt: skip


def test_a_databases_passwords_are_made_and_sealed_by_the_dr_controller(centres: World, tmp_path: Path) -> None:
    w = centres
    roles(w, gz_a="production", gz_b="same-city", sz="remote")
    w.apply(doc("two-sites-three-centres"))
    w.rec.run_once()  # the members' rows, waiting for the quorum's admission
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        assert c is not None and c.secrets == {}  # the apply makes none: it has no key
    controller = DrController(w.db, w.fleet)
    try:
        controller._admit_and_watch()  # no quorum runs here: it seals, admits nothing
        with w.db.session() as s, s.begin():
            c = s.scalar(select(DrCluster))
            assert c is not None and list(c.secrets) == ["sealed"] and not c.prepared
            keys = c.keys(w.data_dir)
            assert set(keys) == {"superuser", "replication", "app", "etcd"} and len(set(keys.values())) == 4
            assert all(v not in json.dumps(c.secrets) for v in keys.values())
            with pytest.raises(Conflict, match=r"dr\.key"):  # another server's key opens nothing
                c.keys(tmp_path)
            c.secrets = {"superuser": "s", "replication": "r", "app": "a", "etcd": "e"}  # a row from before sealing
        controller._admit_and_watch()
        with w.db.session() as s, s.begin():
            c = s.scalar(select(DrCluster))
            assert c is not None and list(c.secrets) == ["sealed"]
            assert c.keys(w.data_dir) == {"superuser": "s", "replication": "r", "app": "a", "etcd": "e"}  # kept
    finally:
        controller.close()
    member_status(w, **{"0": ("primary", "running")})
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        assert c is not None
        shown = dr.status(s, c.app, reveal=w.data_dir)["databases"][0]["connection"]
        assert shown.startswith("postgresql://app:a@127.0.0.0:5432/"), shown  # the owner's: opened with the key
        assert ":********@" in dr.status(s, c.app)["databases"][0]["connection"]


def test_a_restore_in_place_is_refused_without_a_backup_or_while_another_runs_and_stops_every_member(
    centres: World,
) -> None:
    from datetime import UTC, datetime

    from shanzhi.controllers import dr_members
    from shanzhi.domain.spec import AppSpec
    from shanzhi.services import dr_ops
    from shanzhi.store.tables import App, DrReport

    w = centres
    roles(w, gz_a="production", gz_b="same-city", sz="remote", fs="arbiter")
    w.apply(doc("two-sites-three-centres", replicas=1))
    now = datetime.now(UTC)

    def ask(to: datetime = now) -> Any:
        with w.db.session() as s, s.begin():
            return dr_ops.request_restore(s, s.scalar(select(App)), None, to, "admin", "")  # type: ignore[arg-type]

    with pytest.raises(InvalidInput, match="no base backup of db finished before"):
        ask()
    with pytest.raises(InvalidInput, match="in the future"):
        ask(now.replace(year=now.year + 1))
    with w.db.session() as s, s.begin():
        app = s.scalar(select(App))
        assert app is not None
        s.add(DrReport(app_id=app.id, vdc="gz", app="tax", kind="backup", outcome="succeeded", summary="",
                       body={"component": "db", "path": "/nowhere"}, started_at=now, finished_at=now))  # fmt: skip
    with pytest.raises(InvalidInput, match="no base backup"):  # one finished after the time asked reaches nothing
        ask(now.replace(year=now.year - 1))
    with w.db.session() as s, s.begin():  # admitted: its etcd users exist (the DR controller's job)
        seal_passwords(s, w.data_dir)[0][0].prepared = True
        site_id = s.scalar(select(Site.id).where(Site.name == "gz-a"))
        s.add(DrEtcdMember(cluster="quorum", name="quorum-gz-a", site_id=site_id, address="127.0.0.1",
                           client_port=1, peer_port=2))  # fmt: skip
    held = ask()
    assert held.action == "restore-in-place" and held.document["to"] == now.isoformat()
    assert [st["approvers"] for st in held.stages["stages"]] == [["role:system-admin"]]  # no rule: a second admin
    # approved: the DR controller's turn; a second request is refused while it runs
    with w.db.session() as s, s.begin():
        dr.approve_restore(s, held.vdc_id, "tax", held.document, held.id, "li.wei")
    with pytest.raises(Conflict, match="a restore in place of database db is under way"):
        ask()
    # the backup pruned before the DR controller got to it: the restore fails, nothing was stopped
    from shanzhi.controllers import dr_restore

    with w.db.session() as s, s.begin():
        for b in s.scalars(select(DrReport).where(DrReport.kind == "backup")):
            b.body = {**b.body, "pruned": True}
        cid = s.scalar(select(DrCluster.id))
    dr_restore.restore_in_place(w.db, w.fleet, cid, clear=lambda: pytest.fail("nothing may be cleared"))
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        failed = s.scalar(select(DrReport).where(DrReport.kind == "restore-in-place"))
        assert c is not None and failed is not None and c.restoring is None and c.restore["state"] == "failed"
        assert failed.outcome == "failed" and "no base backup of db" in failed.summary, failed.summary
        assert "before anything was stopped" in failed.summary
        c.restore = {**c.restore, "state": "approved"}  # as if approved again, for what follows
    # while it stops the members, every member of both clusters is fenced, the remote one too
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        assert c is not None
        c.restore = {**(c.restore or {}), "state": "stopping"}
        spec = AppSpec.model_validate(c.app.spec)
        comp = next(x for x in spec.spec.components if x.name == "db")
        fences = [dr_members.member_fence(c, spec, o) for o in range(3)]
        assert all(f and "stopped for a restore in place" in f for f in fences), fences
        c.restore = {**c.restore, "state": "starting", "copy": {"host": "127.0.0.1", "port": 5999}, "count": 1}
        c.status = {"members": [{"cluster": "main", "name": "old", "role": "primary", "state": "running"}]}  # stale
        assert dr_members.member_fence(c, spec, 2) is None
        # starting: production's member first (it clones the copy), the others wait for it
        assert "clones the restored copy" in (dr_members.waiting_for(s, c.app, spec, comp, 1) or "")
        assert dr_members.restored_copy(c) == ("127.0.0.1", 5999) and c.data_subdir(False) == "pgdata-p1"
        c.restore = {**c.restore, "state": "succeeded"}
        assert dr_members.restored_copy(c) is None and c.data_subdir(True) == "pgdata-p1"
    # the remote centre leading: no restore in place until it has failed back
    with w.db.session() as s, s.begin():
        c = s.scalar(select(DrCluster))
        assert c is not None
        c.activation = {"state": "succeeded", "fenced_at": now.isoformat()}
    with pytest.raises(Conflict, match="the remote centre of database db was activated"):
        ask()


def test_a_copy_cut_short_by_a_restart_is_stopped_and_removed(centres: World) -> None:
    import subprocess

    from shanzhi.controllers import dr_backup
    from shanzhi.dr.patroni import scope
    from shanzhi.providers.sandbox import default_workload_root
    from shanzhi.store.tables import App, DrReport

    w = centres
    w.apply(doc("none", replicas=1))
    with w.db.session() as s, s.begin():
        app = s.scalar(select(App))
        assert app is not None
        running = DrReport(app_id=app.id, vdc="gz", app="tax", kind="restore", outcome="running", summary="restore",
                           body={"component": "db", "state": "restoring"})  # fmt: skip
        done = DrReport(app_id=app.id, vdc="gz", app="tax", kind="backup", outcome="succeeded", summary="",
                        body={"component": "db"})  # fmt: skip
        s.add_all([running, done])
        s.flush()
        rid, other, app_id = running.id, done.id, app.id
    home = default_workload_root(w.data_dir) / "dr-restores" / f"{scope(app_id, 'db')}-r{rid}"
    (home / "pgdata").mkdir(parents=True)
    postgres = subprocess.Popen(["sleep", "60"])  # stands in for the copy's PostgreSQL
    try:
        (home / "pgdata" / "postmaster.pid").write_text(f"{postgres.pid}\n{home}/pgdata\n")
        assert dr_backup.abandon(w.db, w.data_dir, other) is False  # not a copy
        assert dr_backup.abandon(w.db, w.data_dir, rid) is True
        assert postgres.wait(timeout=20) is not None and not home.exists()
    finally:
        postgres.kill()
    with w.db.session() as s, s.begin():
        r = s.get(DrReport, rid)
        assert r is not None and r.outcome == "failed" and "abandoned" in r.summary and r.finished_at is not None
    assert dr_backup.abandon(w.db, w.data_dir, rid) is False  # once


def test_the_dr_gauges_show_each_quorum_members_health_and_each_database_members_state_and_lag(
    centres: World,
) -> None:
    from shanzhi.api.metrics import _dr

    w = centres
    roles(w, gz_a="production", gz_b="same-city", sz="remote")
    w.apply(doc("two-sites-three-centres"))
    w.rec.run_once()
    with w.db.session() as s, s.begin():
        sites = {site.name: site.id for site in s.scalars(select(Site))}
        for name, site, health in (("quorum-gz-a", "gz-a", "healthy"), ("quorum-sz", "sz", "down: cloud far failed")):
            s.add(DrEtcdMember(cluster="quorum", name=name, site_id=sites[site], address="127.0.0.1", client_port=1,
                               peer_port=2, health=health))  # fmt: skip
        c = s.scalar(select(DrCluster))
        assert c is not None
        c.status = {"members": [
            {"cluster": "main", "name": "db-0", "role": "primary", "state": "running", "site": "gz-a", "lag_bytes": 0},
            {"cluster": "main", "name": "db-1", "role": "replica", "state": "streaming", "site": "gz-b",
             "lag_bytes": None},
            {"cluster": "remote", "name": "db-2", "role": "standby_leader", "state": "running", "site": "sz",
             "lag_bytes": 4096},
        ]}  # fmt: skip
    with w.db.session() as s, s.begin():
        families = {f.name: {tuple(x.labels.values()): x.value for x in f.samples} for f in _dr(s)}
    assert families["shanzhi_dr_etcd_member_up"] == {("quorum-gz-a", "quorum", "gz-a", ""): 1.0,
                                                     ("quorum-sz", "quorum", "sz", ""): 0.0}  # fmt: skip
    up = {k[3]: v for k, v in families["shanzhi_dr_database_member_up"].items()}
    assert up == {"db-0": 1.0, "db-1": 0.0, "db-2": 1.0}
    lag = {k[3]: v for k, v in families["shanzhi_dr_database_member_lag_bytes"].items()}
    assert lag == {"db-0": 0.0, "db-2": 4096.0}  # none where the member's lag is not known
    assert next(iter(families["shanzhi_dr_database_member_lag_bytes"]))[:3] == ("gz", "tax", "db")


def test_a_members_status_read_before_a_restore_cleared_the_records_is_never_written(centres: World) -> None:
    """The DR controller reads etcd on its loop while a restore in place (or a rebuild) clears
    the database's records on its ops thread: what was read before the clear is stale."""
    import time

    from shanzhi.controllers.dr import ClusterView
    from shanzhi.domain.spec import AppSpec
    from shanzhi.dr.patroni import MemberStatus

    w = centres
    roles(w, gz_a="production", gz_b="same-city", fs="arbiter")
    w.apply(doc("same-city"))
    w.rec.run_once()
    controller = DrController(w.db, w.fleet)
    try:
        with w.db.session() as s, s.begin():
            row, sec = seal_passwords(s, w.data_dir)[0]
            cid, app_id, spec = row.id, row.app_id, AppSpec.model_validate(row.app.spec)
        old = MemberStatus("tax-db-0", "primary", "running", 1, "127.0.0.9:5432", None, 100)

        def read_then_cleared(cluster: str, sc: str) -> ClusterView:
            controller._cleared[cid] = time.monotonic()  # the ops thread clears the records meanwhile
            return ClusterView([old], old.name, 100, set(), {})

        controller._read = read_then_cleared  # type: ignore[method-assign]
        controller._watch(cid, app_id, "db", spec, sec, False)
        with w.db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            assert c is not None and "members" not in c.status and c.leader is None
        controller._read = lambda cluster, sc: ClusterView([old], old.name, 100, set(), {})  # type: ignore[method-assign]
        controller._watch(cid, app_id, "db", spec, sec, False)  # read after the clear: written
        with w.db.session() as s, s.begin():
            c = s.get(DrCluster, cid)
            assert c is not None and [m["name"] for m in c.status["members"]] == ["tax-db-0"]
            assert c.leader == "tax-db-0"
    finally:
        controller.close()
