"""Seeing a change before making it (dry-run, diff), its history (revisions) and a replica's output."""

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shanzhi.store.tables import AppRevision, Instance
from tests.api.conftest import hello
from tests.api.test_api import problem, snapshot, world  # noqa: F401  (the fixture)


def test_dry_run_shows_what_would_change_and_changes_nothing(world: TestClient) -> None:  # noqa: F811
    before = snapshot(world)
    first = world.post("/api/v1/apps/dry-run", json=hello())
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["outcome"] == "create" and body["stored"] is None
    assert body["rolls"] == [{"component": "web", "action": "create", "replicas": 4, "detail": "4 new replicas"}]
    assert snapshot(world) == before  # nothing was created
    world.post("/api/v1/apps", json=hello())
    same = world.post("/api/v1/apps/dry-run", json=hello()).json()
    assert same["outcome"] == "unchanged" and same["changes"] == [] and same["rolls"] == []
    bigger = world.post(
        "/api/v1/apps/dry-run", json=hello(replicas=6, resources={"cpu": "100m", "memory": "128Mi"})
    ).json()
    paths = {c["path"]: (c["old"], c["new"]) for c in bigger["changes"]}
    assert paths["spec.components[0].replicas"] == (4, 6)
    actions = {r["action"]: r for r in bigger["rolls"]}
    assert actions["roll"]["replicas"] == 4 and actions["scale"]["detail"] == "4 -> 6 replicas (2 added)"
    scaled = world.post("/api/v1/apps/dry-run", json=hello(replicas=2)).json()
    assert [r["action"] for r in scaled["rolls"]] == ["scale"]  # replicas alone roll nothing
    assert world.get("/api/v1/apps/hello").json()["generation"] == 1


def test_dry_run_refuses_what_apply_would_refuse(world: TestClient) -> None:  # noqa: F811
    body = problem(world.post("/api/v1/apps/dry-run", json=hello(replicas=11)), 403)  # 1.1 cpu > gz/health's 1
    assert (body["vdc"], body["resource"]) == ("gz/health", "cpu")
    bad = hello()
    bad["spec"]["components"][0]["replica"] = 3
    assert problem(world.post("/api/v1/apps/dry-run", json=bad), 422)["field"] == "spec.components[0].replica"
    assert world.get("/api/v1/apps").json() == []


def test_dry_run_names_the_approval_rule_that_would_hold_it(world: TestClient) -> None:  # noqa: F811
    rule = {"vdc": "gz/health", "name": "big", "conditions": {"cpuOver": "300m"}, "stages": [["admin"]]}
    assert world.post("/api/v1/approval-rules", json=rule).status_code == 201
    body = world.post("/api/v1/apps/dry-run", json=hello()).json()
    assert body["outcome"] == "held" and [h["rule"] for h in body["held_by"]] == ["big"]
    assert world.get("/api/v1/approvals").json() == []  # no request was made


def test_decimal_sizes_are_warned_about(world: TestClient) -> None:  # noqa: F811
    r = world.post("/api/v1/apps", json=hello(resources={"cpu": "100m", "memory": "64MB"}))
    assert r.status_code == 201
    (warning,) = r.json()["warnings"]
    assert "64,000,000 bytes" in warning and "64Mi" in warning and "resources.memory" in warning
    assert world.post("/api/v1/apps", json=hello(replicas=1)).json()["warnings"] == []


def test_every_generation_is_a_revision_with_author_and_cause(world: TestClient) -> None:  # noqa: F811
    world.post("/api/v1/apps", json=hello())
    world.post("/api/v1/apps", json=hello())  # unchanged: no new revision
    world.post("/api/v1/apps", params={"cause": "more traffic"}, json=hello(replicas=6))
    revs = world.get("/api/v1/apps/hello/revisions").json()
    assert [(r["generation"], r["author"], r["cause"], r["current"]) for r in revs] == [
        (1, "admin", "", False),
        (2, "admin", "more traffic", True),
    ]
    assert revs[0]["spec"]["spec"]["components"][0]["replicas"] == 4
    problem(world.get("/api/v1/apps/nope/revisions"), 404)
    problem(world.post("/api/v1/apps", params={"cause": "x" * 300}, json=hello()), 422)
    # deleting the app takes its revisions with it (when the controller removes the row)
    with world.app.state.db.session() as s, s.begin():  # type: ignore[attr-defined]
        assert s.scalar(select(func.count()).select_from(AppRevision)) == 2


def test_a_restart_stamp_is_a_new_generation_that_rolls_every_replica(world: TestClient) -> None:  # noqa: F811
    world.post("/api/v1/apps", json=hello())
    stamped = hello(restartedAt="2026-12-02T10:00:00+00:00")
    rolls = world.post("/api/v1/apps/dry-run", json=stamped).json()["rolls"]
    assert rolls == [
        {"component": "web", "action": "roll", "replicas": 4, "detail": "4 replicas replaced one by one (spec changed)"}
    ]


def test_instance_get_and_logs_need_a_readable_placed_instance(world: TestClient) -> None:  # noqa: F811
    world.post("/api/v1/apps", json=hello())
    with world.app.state.db.session() as s, s.begin():  # type: ignore[attr-defined]
        from shanzhi.store.tables import App

        app = s.scalar(select(App))
        s.add(Instance(name="hello-web-0", app=app, component="web", spec_hash="x", cpu=100, memory=2**26))
    got: dict[str, Any] = world.get("/api/v1/instances/hello-web-0").json()
    assert got["name"] == "hello-web-0" and got["state"] == "pending"
    assert "not placed" in problem(world.get("/api/v1/instances/hello-web-0/logs"), 409)["detail"]
    problem(world.get("/api/v1/instances/nope"), 404)
    problem(world.get("/api/v1/instances/hello-web-0/logs", params={"tail": 0}), 422)
    with world.app.state.db.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(select(func.count()).select_from(Instance)) == 1
