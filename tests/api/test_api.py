"""The REST API: auth, problem documents, clouds, VDCs, apply, audit. Bad input changes nothing."""

import re
import stat
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from shanzhi.config import Settings
from tests.api.conftest import bearer, hello

PROBLEM = "application/problem+json"


def snapshot(api: TestClient) -> dict[str, Any]:
    """Everything a bad request must leave unchanged."""
    return {
        "clouds": api.get("/api/v1/clouds").json(),
        "vdcs": api.get("/api/v1/vdcs").json(),
        "apps": api.get("/api/v1/apps").json(),
    }


def problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = r.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


@pytest.fixture
def world(api: TestClient) -> TestClient:
    for name, site in (("city-a", "site-a"), ("city-b", "site-b")):
        r = api.post(
            "/api/v1/clouds",
            json={"name": name, "kind": "local", "site": site, "region": "gz", "tags": {"level": "city"}},
        )
        assert r.status_code == 201, r.text
    assert api.post("/api/v1/vdcs", json={"path": "gz", "quota": {"cpu": "4", "instances": 20}}).status_code == 201
    assert api.post("/api/v1/vdcs", json={"path": "gz/health", "quota": {"cpu": "1"}}).status_code == 201
    return api


def test_token_file_is_private_and_required(settings: Settings, api: TestClient) -> None:
    assert stat.S_IMODE(settings.token_file.stat().st_mode) == 0o600
    anonymous = TestClient(api.app)
    assert "Bearer" in problem(anonymous.get("/api/v1/clouds"), 401)["detail"]
    wrong = anonymous.get("/api/v1/clouds", headers={"Authorization": "Bearer szt_nope"})
    assert problem(wrong, 401)["detail"].startswith("invalid token")
    assert wrong.headers["www-authenticate"] == "Bearer"
    assert anonymous.get("/healthz").json() == {"status": "ok"}


def test_token_survives_restart(settings: Settings, api: TestClient) -> None:
    from shanzhi.api import create_app

    first = settings.token_file.read_text()
    with TestClient(create_app(settings)) as again:
        assert settings.token_file.read_text() == first
        assert again.get("/api/v1/clouds", headers={"Authorization": f"Bearer {first.strip()}"}).status_code == 200


def test_openapi_document(api: TestClient) -> None:
    doc = api.get("/api/v1/openapi.json").json()
    assert {"/api/v1/clouds", "/api/v1/apps", "/api/v1/vdcs", "/api/v1/instances", "/api/v1/events"} <= set(
        doc["paths"]
    )


def test_api_docs_are_served_from_the_package_with_the_bearer_scheme(api: TestClient) -> None:
    anonymous = TestClient(api.app)
    for page in ("/api/v1/docs", "/api/v1/redoc"):
        html = anonymous.get(page).text
        scripts = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert scripts and all(s.startswith(("/static/docs/", "/api/v1/")) for s in scripts), scripts
        assert "cdn." not in html and "fonts.googleapis" not in html
        for asset in scripts:
            fetched = anonymous.get(asset)
            assert fetched.status_code == 200 and len(fetched.content) > 1000, asset
    doc = anonymous.get("/api/v1/openapi.json").json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearer"]["description"],
    }
    assert doc["paths"]["/api/v1/clouds"]["get"]["security"] == [{"bearer": []}]
    assert "security" not in doc["paths"]["/api/v1/auth/login"]["post"]
    # what the scheme says works: the bearer token is what the routes take
    token = api.headers["authorization"].removeprefix("Bearer ")
    assert anonymous.get("/api/v1/clouds", headers=bearer(token)).status_code == 200


def test_apps_are_listed_a_page_at_a_time(world: TestClient) -> None:
    for name in ("a1", "a2", "a3"):
        doc = hello() | {"metadata": {"name": name, "vdc": "gz"}}
        assert world.post("/api/v1/apps", json=doc).status_code == 201
    every = [a["name"] for a in world.get("/api/v1/apps").json()]
    assert every == ["a1", "a2", "a3"]
    assert [a["name"] for a in world.get("/api/v1/apps?limit=2").json()] == ["a1", "a2"]
    assert [a["name"] for a in world.get("/api/v1/apps?limit=2&offset=2").json()] == ["a3"]
    assert world.get("/api/v1/apps?limit=2&offset=9").json() == []
    problem(world.get("/api/v1/apps?limit=0"), 422)


def test_cloud_lifecycle(world: TestClient) -> None:
    clouds = {c["name"]: c for c in world.get("/api/v1/clouds").json()}
    assert set(clouds) == {"city-a", "city-b"}
    assert clouds["city-a"]["site"] == "site-a" and clouds["city-a"]["tags"] == {"level": "city"}
    assert clouds["city-a"]["options"]["instances"] == 50  # defaults are filled in
    assert world.delete("/api/v1/clouds/city-b").json() == {"name": "city-b", "outcome": "removed"}
    problem(world.get("/api/v1/clouds/city-b"), 404)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"name": "city-a", "kind": "local", "site": "s", "region": "r"}, 409, "name"),
        ({"name": "x", "kind": "vmware", "site": "s", "region": "r"}, 422, "kind"),
        ({"name": "x", "kind": "local", "site": "s", "region": "r", "options": {"gpus": 1}}, 422, "options.gpus"),
        ({"name": "x", "kind": "local", "site": "s", "region": "r", "options": {"cpu": "lots"}}, 422, "options.cpu"),
        ({"name": "Bad_Name", "kind": "local", "site": "s", "region": "r"}, 422, "name"),
        ({"name": "x", "kind": "local", "site": "s", "region": "r", "colour": "red"}, 422, "colour"),
        ({"name": "x", "kind": "local", "site": "s"}, 422, "region"),
    ],
)
def test_bad_cloud_requests_name_the_problem_and_change_nothing(
    world: TestClient, body: dict[str, Any], status: int, field: str
) -> None:
    before = snapshot(world)
    assert problem(world.post("/api/v1/clouds", json=body), status)["field"] == field
    assert snapshot(world) == before


def test_vdc_tree_and_nested_quotas(world: TestClient) -> None:
    body = problem(world.post("/api/v1/vdcs", json={"path": "gz/health/it", "quota": {"cpu": "2"}}), 422)
    assert body["field"] == "quota.cpu" and "set by VDC gz/health" in body["detail"]
    assert "--parents" in problem(world.post("/api/v1/vdcs", json={"path": "sz/a"}), 404)["detail"]
    assert world.post("/api/v1/vdcs", json={"path": "sz/a/b", "parents": True}).status_code == 201
    assert [v["path"] for v in world.get("/api/v1/vdcs").json()] == ["gz", "gz/health", "sz", "sz/a", "sz/a/b"]
    low = problem(world.put("/api/v1/vdcs/gz/quota", json={"quota": {"cpu": "500m"}}), 422)
    assert "already granted to VDC gz/health" in low["detail"]
    ok = world.put("/api/v1/vdcs/gz/quota", json={"quota": {"cpu": "8"}})
    assert ok.json()["quota"] == {"cpu": 8000, "memory": None, "instances": 20, "storage": None}
    problem(world.delete("/api/v1/vdcs/gz"), 409)
    problem(world.post("/api/v1/vdcs", json={"path": "gz"}), 409)
    problem(world.post("/api/v1/vdcs", json={"path": "Bad Path"}), 422)
    assert problem(world.post("/api/v1/vdcs", json={"path": "x", "quota": {"gpu": 1}}), 422)["field"] == "quota.gpu"


def test_apply_is_idempotent_and_updates_bump_the_generation(world: TestClient) -> None:
    r = world.post("/api/v1/apps", json=hello())
    assert r.status_code == 201 and r.json()["outcome"] == "created"
    assert r.json()["app"]["generation"] == 1
    again = world.post("/api/v1/apps", json=hello())
    assert again.status_code == 200 and again.json()["outcome"] == "unchanged"
    assert again.json()["app"]["generation"] == 1
    changed = world.post("/api/v1/apps", json=hello(replicas=5))
    assert changed.json()["outcome"] == "configured" and changed.json()["app"]["generation"] == 2
    got = world.get("/api/v1/apps/hello").json()
    assert got["spec"]["spec"]["components"][0]["replicas"] == 5
    assert got["components"] == [{"name": "web", "desired": 5, "ready": 0, "instances": 0}]


def test_bad_specs_name_the_field_and_change_nothing(world: TestClient) -> None:
    world.post("/api/v1/apps", json=hello())
    before = snapshot(world)
    bad = hello()
    bad["spec"]["components"][0]["replica"] = 3
    body = problem(world.post("/api/v1/apps", json=bad), 422)
    assert body["field"] == "spec.components[0].replica"
    assert {"field": "spec.components[0].replica", "message": "unknown field 'replica'"} in body["errors"]
    problem(world.post("/api/v1/apps", json=[1, 2]), 422)
    nowhere = hello()
    nowhere["metadata"]["vdc"] = "gz/nowhere"
    assert "gz/nowhere" in problem(world.post("/api/v1/apps", json=nowhere), 404)["detail"]
    assert snapshot(world) == before


def test_quota_is_checked_at_apply_naming_the_vdc_and_limit(world: TestClient) -> None:
    world.post("/api/v1/apps", json=hello())  # 4 x 100m of gz/health's 1 cpu
    before = snapshot(world)
    body = problem(world.post("/api/v1/apps", json=hello(replicas=11)), 403)
    assert (body["vdc"], body["resource"], body["limit"], body["requested"]) == ("gz/health", "cpu", 1000, 1100)
    assert "set-quota" in body["detail"]
    assert snapshot(world) == before
    usage = world.get("/api/v1/vdcs/gz").json()["usage"]
    assert usage == {"cpu": 400, "memory": 4 * 64 * 2**20, "instances": 4, "storage": 0}


def test_an_ancestors_quota_counts_its_whole_subtree_at_apply(world: TestClient) -> None:
    # gz holds 20 instances; gz/health's app runs 4; gz/transport has no quota of its own
    world.post("/api/v1/vdcs", json={"path": "gz/transport"}).raise_for_status()
    world.post("/api/v1/apps", json=hello()).raise_for_status()
    near = hello(replicas=17, resources={"cpu": "10m", "memory": "1Mi"})  # fits gz alone, not beside gz/health
    near["metadata"]["vdc"] = "gz/transport"
    body = problem(world.post("/api/v1/apps", json=near), 403)
    assert (body["vdc"], body["resource"], body["limit"], body["requested"]) == ("gz", "instances", 20, 21)
    near["spec"]["components"][0]["replicas"] = 16
    assert world.post("/api/v1/apps", json=near).status_code == 201


def test_unknown_objects_are_404(world: TestClient) -> None:
    for path in ("/api/v1/apps/nope", "/api/v1/clouds/nope", "/api/v1/vdcs/nope", "/api/v1/instances?app=nope"):
        problem(world.get(path), 404)
    problem(world.delete("/api/v1/apps/nope"), 404)


def test_same_app_name_in_two_vdcs_needs_vdc(world: TestClient) -> None:
    world.post("/api/v1/vdcs", json={"path": "gz/transport"})
    world.post("/api/v1/apps", json=hello())
    other = hello()
    other["metadata"]["vdc"] = "gz/transport"
    assert world.post("/api/v1/apps", json=other).status_code == 201
    assert "pass --vdc" in problem(world.get("/api/v1/apps/hello"), 409)["detail"]
    assert world.get("/api/v1/apps/hello", params={"vdc": "gz/transport"}).json()["vdc"] == "gz/transport"


def test_delete_marks_the_app_and_reapply_waits(world: TestClient) -> None:
    world.post("/api/v1/apps", json=hello())
    r = world.delete("/api/v1/apps/hello")
    assert r.status_code == 202 and r.json()["outcome"] == "deleting" and r.json()["app"]["status"] == "Deleting"
    problem(world.post("/api/v1/apps", json=hello()), 409)


def test_app_status_comes_from_its_instances_and_the_list_agrees_with_each_get(world: TestClient) -> None:
    from sqlalchemy import select

    from shanzhi.store.tables import App, Instance

    for name in ("ready", "progressing", "unschedulable", "starting"):
        spec = hello(replicas=2, resources={"cpu": "10m"})
        spec["metadata"]["name"] = name
        assert world.post("/api/v1/apps", json=spec).status_code == 201, name
    states = {
        "ready": ["running", "running", "terminating"],  # a leftover being removed does not count
        "progressing": ["running", "starting"],
        "unschedulable": ["running", "pending"],
        "starting": [],
    }
    db = world.app.state.db  # type: ignore[attr-defined]
    with db.session() as s, s.begin():
        for app in s.scalars(select(App)):
            for i, state in enumerate(states[app.name]):
                s.add(
                    Instance(
                        name=f"{app.name}-{i}",
                        app_id=app.id,
                        component="web",
                        spec_hash="x",
                        cpu=10,
                        memory=0,
                        state=state,
                    )
                )
    world.delete("/api/v1/apps/starting")
    listed = {a["name"]: a for a in world.get("/api/v1/apps").json()}
    assert {n: a["status"] for n, a in listed.items()} == {
        "ready": "Ready",
        "progressing": "Progressing",
        "unschedulable": "Unschedulable",
        "starting": "Deleting",
    }
    assert listed["ready"]["components"] == [{"name": "web", "desired": 2, "ready": 2, "instances": 2}]
    assert listed["progressing"]["components"] == [{"name": "web", "desired": 2, "ready": 1, "instances": 2}]
    for name, summary in listed.items():
        one = world.get(f"/api/v1/apps/{name}").json()
        assert summary["spec"] is None and len(one["instances"]) == len(states[name])
        assert {k: v for k, v in one.items() if k not in ("spec", "instances")} == {
            k: v for k, v in summary.items() if k not in ("spec", "instances")
        }


def test_the_list_follows_each_new_generation_and_an_app_made_again(world: TestClient) -> None:
    """The list keeps the components of the specs it has read (per app, creation and
    generation): a new generation, and a new app where a removed one was, are read afresh."""
    from sqlalchemy import delete, select

    from shanzhi.store.tables import App, AppRevision

    def desired() -> dict[str, list[tuple[str, int]]]:
        listed = world.get("/api/v1/apps").json()
        return {a["name"]: [(c["name"], c["desired"]) for c in a["components"]] for a in listed}

    assert world.post("/api/v1/apps", json=hello(replicas=2)).status_code == 201
    assert desired() == {"hello": [("web", 2)]}
    assert world.post("/api/v1/apps", json=hello(replicas=3)).status_code == 200
    assert desired() == {"hello": [("web", 3)]}
    # the row goes (as the controller removes a deleted app) and an app of another shape takes
    # its place: at the same generation, and on SQLite with the same id
    db = world.app.state.db  # type: ignore[attr-defined]
    ids = []
    for component, replicas in (("web", 2), ("api", 1)):
        with db.session() as s, s.begin():
            s.execute(delete(AppRevision))
            s.execute(delete(App))
        spec = hello(replicas=replicas)
        spec["spec"]["components"][0]["name"] = component
        made = world.post("/api/v1/apps", json=spec)
        assert made.status_code == 201 and made.json()["app"]["generation"] == 1
        assert desired() == {"hello": [(component, replicas)]}
        with db.session() as s:
            ids.append(s.scalar(select(App.id)))
    assert db.engine.dialect.name != "sqlite" or ids[0] == ids[1]


def test_every_mutating_request_is_audited(world: TestClient) -> None:
    from sqlalchemy import select

    from shanzhi.store.tables import AuditRecord

    world.post("/api/v1/apps", json=hello())
    world.post("/api/v1/apps", json={"bad": 1})
    TestClient(world.app).delete("/api/v1/apps/hello")  # no token
    db = world.app.state.db
    with db.session() as s, s.begin():
        q = select(AuditRecord).order_by(AuditRecord.id)  # in the order made, on every backend
        rows = [(r.method, r.path, r.status, r.outcome, r.actor) for r in s.scalars(q)]
    admin = rows[0][4]
    assert admin == "admin"
    assert ("POST", "/api/v1/clouds", 201, "success", admin) in rows
    assert ("POST", "/api/v1/apps", 201, "success", admin) in rows
    assert ("POST", "/api/v1/apps", 422, "error", admin) in rows
    assert ("DELETE", "/api/v1/apps/hello", 401, "denied", "anonymous") in rows
    assert all(m != "GET" for m, *_ in rows)


def test_the_audit_trail_filters_by_who_what_outcome_and_time(world: TestClient, tokens: dict[str, str]) -> None:
    world.post("/api/v1/apps", json=hello())
    world.post("/api/v1/apps", json={"bad": 1})
    TestClient(world.app).delete("/api/v1/apps/hello")  # no token: denied
    auditor = bearer(tokens["audit"])

    def trail(**params: str) -> list[tuple[str, str, str]]:
        r = world.get("/api/v1/audit", params=params, headers=auditor)
        assert r.status_code == 200, r.text
        return [(x["method"], x["path"], x["outcome"]) for x in r.json()]

    everything = trail()
    assert trail(path="/api/v1/apps") == [r for r in everything if r[1].startswith("/api/v1/apps")] != []
    assert trail(outcome="error") == [("POST", "/api/v1/apps", "error")]
    assert trail(outcome="denied") == [("DELETE", "/api/v1/apps/hello", "denied")]
    assert trail(actor="anonymous") == trail(outcome="denied")
    assert trail(path="/api/v1/app%") == []  # a prefix, not a pattern
    first = world.get("/api/v1/audit", headers=auditor).json()[0]["at"]
    assert trail(before=first) == [] and trail(after=first)[: len(everything)] == everything  # reads are audited too
    bad = world.get("/api/v1/audit", params={"after": "2026-12-06T00:00:00"}, headers=auditor)
    assert bad.status_code == 422 and "timezone" in bad.text  # a time without its zone is refused, not guessed
    assert world.get("/api/v1/audit", params={"outcome": "maybe"}, headers=auditor).status_code == 422


def test_events_record_what_happened(world: TestClient) -> None:
    world.post("/api/v1/apps", json=hello())
    reasons = [e["reason"] for e in world.get("/api/v1/events").json()]
    assert reasons.count("CloudAdded") == 2 and "VdcCreated" in reasons and "AppApplied" in reasons
    mine = world.get("/api/v1/events", params={"app": "hello"}).json()
    assert {e["app"] for e in mine} == {"hello"}


def test_the_audit_trail_is_a_verifiable_chain(world: TestClient, tokens: dict[str, str]) -> None:
    world.post("/api/v1/apps", json=hello())
    world.post("/api/v1/apps", json={"bad": 1})
    records = world.get("/api/v1/audit", headers=bearer(tokens["audit"])).json()
    assert len(records) >= 5 and all(r["hash"] and r["prev_hash"] for r in records)
    assert records[1]["prev_hash"] == records[0]["hash"]
    report = world.get("/api/v1/audit/verify", headers=bearer(tokens["audit"])).json()
    # the listing above is a privileged read: it was recorded too
    assert report["ok"] and report["records"] == len(records) + 1 and report["problem"] == ""


def test_numbers_out_of_range_are_422_naming_the_field_never_500(world: TestClient, tokens: dict[str, str]) -> None:
    """The review's 500s: huge and non-finite quantities, non-integer counts, ids past 2^63."""
    world.post("/api/v1/apps", json=hello())
    before = snapshot(world)
    huge = "9" * 400
    for field, value in (("cpu", 1e306), ("cpu", huge), ("memory", huge), ("memory", 1e300), ("storage", huge)):
        bad = hello(resources={"cpu": 0.1, "memory": "64Mi", field: value})
        body = problem(world.post("/api/v1/apps", json=bad), 422)
        assert body["field"] == f"spec.components[0].resources.{field}", (field, value)
    for value in (True, "3", 1.7, 2**70):
        body = problem(world.post("/api/v1/apps", json=hello(replicas=value)), 422)
        assert body["field"] == "spec.components[0].replicas", value
    for quota in ({"cpu": huge}, {"memory": huge}, {"instances": huge}, {"instances": 1.7}, {"instances": True}):
        key = next(iter(quota))
        body = problem(world.put("/api/v1/vdcs/gz/quota", json={"quota": quota}), 422)
        assert body["field"] == f"quota.{key}", quota
    for raw in ('{"cpu": 1e400}', '{"cpu": "NaN"}', '{"cpu": "1e400"}', '{"memory": "-Infinity"}'):
        r = world.put("/api/v1/rates/city-a", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422, (raw, r.text)
    assert snapshot(world) == before
    big = str(2**63)
    as_ = {who: {"Authorization": f"Bearer {t}"} for who, t in tokens.items()}
    for who, method, path in (
        ("admin", "GET", f"/api/v1/approvals/{big}"),
        ("admin", "POST", f"/api/v1/approvals/{big}/approve"),
        ("admin", "DELETE", f"/api/v1/approval-rules/{big}"),
        ("admin", "GET", f"/api/v1/events?since={big}"),
        ("admin", "GET", f"/api/v1/plans/{big}"),
        ("admin", "POST", f"/api/v1/plans/{big}/apply"),
        ("admin", "DELETE", f"/api/v1/tokens/{big}"),
        ("security", "DELETE", f"/api/v1/grants/{big}"),
        ("security", "DELETE", f"/api/v1/oidc-group-maps/{big}"),
        ("audit", "GET", f"/api/v1/audit?since={big}"),
        ("audit", "GET", f"/api/v1/ledger/entries/{big}"),
        ("audit", "GET", f"/api/v1/ledger/checkpoints?since={big}"),
        ("audit", "GET", f"/api/v1/ledger/proof/inclusion?index={big}"),
        ("audit", "GET", f"/api/v1/ledger/proof/consistency?old=1&new={big}"),
        ("audit", "GET", f"/api/v1/ledger/watch?from={big}"),
    ):
        r = world.request(method, path, headers=as_[who], json={} if method == "POST" else None)
        assert r.status_code == 422, (method, path, r.status_code, r.text)
    assert world.get(f"/api/v1/ledger/tile/0/{'x999/' * 6}999", headers=as_["audit"]).status_code == 404


def test_vdc_filters_are_paths_not_patterns(world: TestClient) -> None:
    world.post("/api/v1/apps", json=hello())
    assert [a["name"] for a in world.get("/api/v1/apps", params={"vdc": "gz"}).json()] == ["hello"]
    for pattern in ("g%", "g_", "%", "gz/%", "g\\z"):
        for path in ("/api/v1/apps", "/api/v1/instances", "/api/v1/events"):
            r = world.get(path, params={"vdc": pattern})
            assert r.status_code in (200, 404) and (r.status_code == 404 or r.json() == []), (path, pattern, r.text)


def test_strangers_cannot_grow_the_audit_trail_or_the_ledger(strict_api: TestClient) -> None:
    from sqlalchemy import func, select

    from shanzhi.store.tables import AuditRecord

    api = strict_api
    audit_token = (api.app.state.runtime.settings.data_dir / "audit.token").read_text().strip()  # type: ignore[attr-defined]
    db = api.app.state.db  # type: ignore[attr-defined]

    def records() -> int:
        with db.session() as s:
            return int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)

    stranger = TestClient(api.app)
    before = records()
    statuses = [stranger.get(f"/api/v1/apps?junk={'x' * 7000}&n={i}").status_code for i in range(200)]
    assert set(statuses) == {401, 429} and statuses[:30] == [401] * 30  # then made to wait
    assert records() - before <= 2  # sampled: not one record each
    with db.session() as s:
        sampled = s.scalars(select(AuditRecord).order_by(AuditRecord.id.desc()).limit(1)).one()
    assert "unauthenticated failures" in sampled.detail and len(sampled.path) <= 200 and "junk" not in sampled.path
    # a caller with a good token from the same address is not held up by the stranger
    assert api.get("/api/v1/apps").status_code == 200
    assert TestClient(api.app, headers=bearer(audit_token)).get("/api/v1/audit").status_code == 200


def test_logins_are_rate_limited_per_address(strict_api: TestClient) -> None:
    anon = TestClient(strict_api.app)
    codes = [
        anon.post("/api/v1/auth/login", json={"user": f"u{i}", "password": "x" * 12}).status_code for i in range(12)
    ]
    assert codes[:10] == [401] * 10 and codes[10] == 429  # ten names, one try each: still ten logins
    r = anon.post("/api/v1/auth/login", json={"user": "admin", "password": "x" * 12})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "too many" in r.json()["detail"]


def test_bodies_over_the_limit_are_413_and_strangers_are_refused_before_their_body(
    api: TestClient, settings: Settings
) -> None:
    big = b"x" * (settings.max_body_bytes + 1)
    r = api.post("/api/v1/apps", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "bytes this server accepts" in r.json()["detail"]

    def chunks() -> Any:
        for _ in range(5):
            yield b"x" * (settings.max_body_bytes // 4)

    r = api.post("/api/v1/apps", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    read: list[int] = []

    def watched() -> Any:  # a stranger's body is never read: the 401 comes first
        for i in range(5):
            read.append(i)
            yield b"x" * 1024

    r = TestClient(api.app).post("/api/v1/apps", content=watched(), headers={"content-type": "application/json"})
    assert r.status_code == 401 and len(read) <= 1


def test_a_spec_may_be_sent_as_yaml_and_its_mistakes_are_named(world: TestClient) -> None:
    doc = hello()
    as_yaml = yaml.safe_dump(doc)
    yaml_type = {"content-type": "application/yaml"}
    preview = world.post("/api/v1/apps/dry-run", content=as_yaml, headers=yaml_type)
    assert preview.status_code == 200 and preview.json()["outcome"] == "create", preview.text
    r = world.post("/api/v1/apps", content=as_yaml, headers=yaml_type)
    assert r.status_code == 201, r.text
    same = world.post("/api/v1/apps", json=doc)  # the same spec as JSON: nothing to change
    assert same.status_code == 200 and same.json()["outcome"] == "unchanged"
    bad_field = as_yaml.replace("replicas:", "replica:")
    body = problem(world.post("/api/v1/apps", content=bad_field, headers={"content-type": "text/yaml"}), 422)
    assert "replica" in body["detail"]
    broken = "apiVersion: shanzhi.io/v1\nkind: App\nmetadata: {name: x\n"
    body = problem(world.post("/api/v1/apps", content=broken, headers=yaml_type), 422)
    assert "not valid YAML" in body["detail"] and "line" in body["detail"]
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 10)}]\n" for p, n in zip("abcdef", "bcdefg", strict=True)
    )
    assert "billion laughs" in problem(world.post("/api/v1/apps", content=laughs, headers=yaml_type), 422)["detail"]
    two = as_yaml + "---\n" + as_yaml
    assert "one document" in problem(world.post("/api/v1/apps", content=two, headers=yaml_type), 422)["detail"]
    assert "not valid JSON" in problem(world.post("/api/v1/apps", content=b"{", headers=JSON_TYPE), 422)["detail"]
    other = world.post("/api/v1/apps", content=as_yaml, headers={"content-type": "text/plain"})
    assert "application/json or application/yaml" in problem(other, 415)["detail"]
    assert [a["name"] for a in world.get("/api/v1/apps").json()] == ["hello"]  # nothing else was made
    # a stranger's body is not read: 401, whatever it sent
    stranger = TestClient(world.app).post("/api/v1/apps", content=broken, headers=yaml_type)
    assert stranger.status_code == 401


JSON_TYPE = {"content-type": "application/json"}


def test_a_database_that_goes_away_is_a_503_to_retry_not_a_crash(pg_url: str, data_dir: Path) -> None:
    """PostgreSQL away (a failover, a restart): every request is a 503 with Retry-After, handled
    (the test client would raise a crash), and the server serves again when it is back."""
    from shanzhi.api import create_app
    from tests.pg import _dsn

    st = Settings.build(data_dir, pg_url, controller=False)
    name = make_url(pg_url).database
    admin = make_url(pg_url).set(database="postgres")

    def rename(old: str, new: str) -> None:
        with psycopg.connect(_dsn(admin.render_as_string(hide_password=False)), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (old,))
            conn.execute(f'ALTER DATABASE "{old}" RENAME TO "{new}"')

    with TestClient(create_app(st)) as client:
        client.headers["Authorization"] = f"Bearer {st.token_file.read_text().strip()}"
        assert client.get("/api/v1/clouds").status_code == 200
        rename(name, f"{name}_away")
        try:
            r = client.get("/api/v1/clouds")
            assert problem(r, 503)["detail"] == "the platform's database is not reachable now; retry shortly"
            assert r.headers["retry-after"] == "2"
        finally:
            rename(f"{name}_away", name)
        assert client.get("/api/v1/clouds").status_code == 200


def test_pooled_connections_killed_while_idle_are_replaced_before_use(
    pg_url: str, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every backend of the server terminated (a restart) while its pooled connections idle:
    connections idle past the ping threshold are pinged and replaced at checkout, so the next
    request is served. Under the threshold nothing is pinged: that request is a 503 to retry,
    and then every connection returned before the failure is pinged, so the retry is served."""
    from shanzhi.api import create_app
    from shanzhi.store import db as store_db
    from tests.pg import _dsn

    st = Settings.build(data_dir, pg_url, controller=False)
    name = make_url(pg_url).database
    admin = make_url(pg_url).set(database="postgres")

    def restart() -> None:
        with psycopg.connect(_dsn(admin.render_as_string(hide_password=False)), autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    with TestClient(create_app(st)) as client:
        client.headers["Authorization"] = f"Bearer {st.token_file.read_text().strip()}"
        for _ in range(3):
            assert client.get("/api/v1/apps").status_code == 200
        monkeypatch.setattr(store_db, "_PING_IDLE_SECONDS", 0.0)
        restart()
        assert client.get("/api/v1/apps").status_code == 200
        monkeypatch.setattr(store_db, "_PING_IDLE_SECONDS", 3600.0)
        restart()
        first = client.get("/api/v1/apps")
        assert first.status_code == 503 and first.headers["retry-after"] == "2"
        assert client.get("/api/v1/apps").status_code == 200


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL readers never wait for writers
def test_reads_answer_while_a_writer_holds_the_sqlite_database(api: TestClient, settings: Settings) -> None:
    """Listing apps, instances, events and clouds reads a WAL snapshot: a write transaction held
    open elsewhere (another process's apply, the controller's pass) does not make them wait."""
    import sqlite3
    import threading

    assert settings.database_url.startswith("sqlite")
    assert api.post("/api/v1/vdcs", json={"path": "gz"}).status_code == 201
    path = settings.database_url.split("///", 1)[1]
    writer = sqlite3.connect(path, isolation_level=None, timeout=1)
    answers: dict[str, int] = {}

    def read() -> None:
        for url in ("/api/v1/apps", "/api/v1/instances", "/api/v1/events", "/api/v1/clouds", "/api/v1/vdcs/gz"):
            answers[url] = api.get(url).status_code

    writer.execute("BEGIN IMMEDIATE")  # the database's write lock, held
    try:
        t = threading.Thread(target=read)
        t.start()
        t.join(20)  # far below the 30 s busy timeout a write-locking read would wait
        assert not t.is_alive() and set(answers.values()) == {200}, answers
    finally:
        writer.execute("ROLLBACK")
        writer.close()
