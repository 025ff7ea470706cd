"""The role x action matrix: every route in the OpenAPI document, called by every kind of caller,
against a table written here by hand. A route without an entry fails; so does any mismatch.
Every mutating call must also leave an audit record."""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shanzhi.api.policy import RULES, check_routes
from shanzhi.config import Settings
from shanzhi.services.identity import token_hash
from shanzhi.services.oidc import challenge_of
from shanzhi.store.tables import Alarm, App, AuditRecord, Cloud, Instance, OidcFlow, User, VolumeRecord, utcnow
from tests.api.conftest import LENIENT, PASSWORD, Tenants, app_spec, bearer, with_sso
from tests.oidc import OidcProvider

SYS, SEC, AUD = "admin", "security", "audit"
VADMIN, MEMBER, VIEWER, OUTSIDER, NOBODY, ANON = "hadmin", "hmember", "hviewer", "tmember", "nobody", "anonymous"
CALLERS = (SYS, SEC, AUD, VADMIN, MEMBER, VIEWER, OUTSIDER, NOBODY, ANON)
AUTHED = frozenset(CALLERS) - {ANON}
VDC_READERS = frozenset({SYS, VADMIN, MEMBER, VIEWER})  # of gz/health objects
VDC_ROLES_ANYWHERE = frozenset({SYS, VADMIN, MEMBER, VIEWER, OUTSIDER})
LEDGER_READERS = frozenset({SYS, SEC, AUD})
LEDGER_OPEN = frozenset(CALLERS)  # serve --ledger-public (the default): C2SP clients read with plain GETs

# (method, path) -> who may. Targets are gz/health objects unless a route lists collections.
EXPECTED: dict[tuple[str, str], frozenset[str]] = {
    ("POST", "/auth/login"): frozenset(CALLERS),
    ("GET", "/auth/oidc"): frozenset(CALLERS),
    ("POST", "/auth/oidc/start"): frozenset(CALLERS),
    ("GET", "/auth/oidc/callback"): frozenset(CALLERS),
    ("POST", "/auth/oidc/exchange"): frozenset(CALLERS),
    ("POST", "/auth/logout"): AUTHED,
    ("GET", "/auth/whoami"): AUTHED,
    ("PUT", "/auth/password"): AUTHED,
    ("POST", "/auth/mfa/enroll"): AUTHED,
    ("POST", "/auth/mfa/confirm"): AUTHED,
    ("POST", "/auth/mfa/disable"): AUTHED,
    ("DELETE", "/users/{name}/mfa"): frozenset({SEC}),
    ("GET", "/tokens"): AUTHED,
    ("POST", "/tokens"): AUTHED,
    ("DELETE", "/tokens/{token_id}"): AUTHED,
    ("GET", "/users"): frozenset({SEC}),
    ("POST", "/users"): frozenset({SEC}),
    ("GET", "/users/{name}"): frozenset({SEC}),
    ("DELETE", "/users/{name}"): frozenset({SEC}),
    ("PUT", "/users/{name}/password"): frozenset({SEC}),
    ("POST", "/users/{name}/lock"): frozenset({SEC}),
    ("DELETE", "/users/{name}/oidc"): frozenset({SEC}),
    ("GET", "/oidc-group-maps"): frozenset({SEC}),
    ("POST", "/oidc-group-maps"): frozenset({SEC}),
    ("DELETE", "/oidc-group-maps/{map_id}"): frozenset({SEC}),
    ("POST", "/users/{name}/unlock"): frozenset({SEC}),
    ("GET", "/grants"): frozenset({SEC, VADMIN}),
    ("POST", "/grants"): frozenset({SEC, VADMIN}),
    ("DELETE", "/grants/{grant_id}"): frozenset({SEC, VADMIN}),
    ("GET", "/status"): AUTHED,
    ("GET", "/clouds"): VDC_ROLES_ANYWHERE,
    ("GET", "/images"): VDC_ROLES_ANYWHERE,
    ("GET", "/images/{name}"): VDC_ROLES_ANYWHERE,
    ("POST", "/images"): frozenset({SYS}),
    ("POST", "/images/import"): frozenset({SYS}),
    ("DELETE", "/images/{name}"): frozenset({SYS}),
    ("POST", "/clouds"): frozenset({SYS}),
    ("GET", "/clouds/{name}"): VDC_ROLES_ANYWHERE,
    ("DELETE", "/clouds/{name}"): frozenset({SYS}),
    ("PUT", "/clouds/{name}/credentials"): frozenset({SYS}),
    ("GET", "/inventory"): frozenset({SYS}),
    ("GET", "/metrics"): frozenset({SYS}),
    ("GET", "/prometheus/targets"): frozenset({SYS}),
    ("GET", "/apps/{name}/metrics"): VDC_READERS,
    ("GET", "/inventory/syncs"): frozenset({SYS}),
    ("POST", "/inventory/sync"): frozenset({SYS}),
    ("POST", "/adopt"): frozenset({SYS}),
    ("POST", "/clouds/{name}/fail"): frozenset({SYS}),
    ("POST", "/clouds/{name}/recover"): frozenset({SYS}),
    ("GET", "/vdcs"): VDC_ROLES_ANYWHERE,
    ("POST", "/vdcs"): frozenset({SYS, VADMIN}),
    ("GET", "/vdcs/{path}"): VDC_READERS,
    ("PUT", "/vdcs/{path}/quota"): frozenset({SYS, VADMIN}),
    ("DELETE", "/vdcs/{path}"): frozenset({SYS, VADMIN}),
    ("GET", "/apps"): VDC_ROLES_ANYWHERE,
    ("POST", "/apps"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/dry-run"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/apps/{name}"): VDC_READERS,
    ("GET", "/apps/{name}/revisions"): VDC_READERS,
    ("DELETE", "/apps/{name}"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/volumes"): VDC_ROLES_ANYWHERE,
    ("GET", "/volumes/{key}"): VDC_READERS,
    ("DELETE", "/volumes/{key}"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/volumes/{key}/snapshots"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/volumes/{key}/snapshots"): VDC_READERS,
    ("POST", "/volumes/{key}/restore"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/instances"): VDC_READERS,
    ("GET", "/instances/{name}"): VDC_READERS,
    ("GET", "/instances/{name}/logs"): VDC_READERS,
    ("GET", "/events"): VDC_READERS,
    ("GET", "/dr/topology"): VDC_ROLES_ANYWHERE,
    ("PUT", "/sites/{name}/dr-role"): frozenset({SYS}),
    ("GET", "/apps/{name}/dr"): VDC_READERS,
    ("GET", "/apps/{name}/dr/plans"): VDC_READERS,
    ("GET", "/apps/{name}/dr/credentials"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/dr/reports"): VDC_READERS,
    ("POST", "/apps/{name}/dr/switchover"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/{name}/dr/failback"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/{name}/dr/reprotect"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/{name}/dr/activate-remote"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/{name}/dr/backups"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/apps/{name}/dr/backups"): VDC_READERS,
    ("POST", "/apps/{name}/dr/restore"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/{name}/dr/restore-in-place"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/{name}/dr/cleanup"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/apps/{name}/dr/test"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/flows"): VDC_READERS,
    ("GET", "/flows/hourly"): VDC_READERS,
    ("GET", "/alarms"): VDC_ROLES_ANYWHERE,
    ("POST", "/alarms/{alarm_id}/ack"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/alarm-rules"): VDC_ROLES_ANYWHERE,
    ("POST", "/alarm-rules"): frozenset({SYS, VADMIN, MEMBER}),
    ("DELETE", "/alarm-rules/{rule_id}"): frozenset({SYS, VADMIN, MEMBER}),
    ("GET", "/alarm-silences"): VDC_ROLES_ANYWHERE,
    ("POST", "/alarm-silences"): frozenset({SYS, VADMIN, MEMBER}),
    ("DELETE", "/alarm-silences/{silence_id}"): frozenset({SYS, VADMIN, MEMBER}),
    ("POST", "/plans"): frozenset({SYS}),
    ("GET", "/plans/{plan_id}"): frozenset({SYS}),
    ("POST", "/plans/{plan_id}/apply"): frozenset({SYS}),
    ("DELETE", "/plans/{plan_id}"): frozenset({SYS}),
    ("POST", "/plans/moves"): frozenset({SYS}),
    ("GET", "/approvals"): AUTHED,
    ("GET", "/approvals/{request_id}"): VDC_READERS,
    ("POST", "/approvals/{request_id}/approve"): frozenset({VADMIN}),
    ("POST", "/approvals/{request_id}/reject"): frozenset({VADMIN}),
    ("POST", "/approvals/{request_id}/comment"): VDC_READERS,
    ("GET", "/approval-rules"): VDC_ROLES_ANYWHERE,
    ("POST", "/approval-rules"): frozenset({SYS, VADMIN}),
    ("DELETE", "/approval-rules/{rule_id}"): frozenset({SYS, VADMIN}),
    ("GET", "/rates"): VDC_ROLES_ANYWHERE,
    ("PUT", "/rates/{cloud}"): frozenset({SYS}),
    ("GET", "/usage"): frozenset({SYS, VADMIN}),
    ("GET", "/bill"): frozenset({SYS, VADMIN}),
    ("GET", "/audit"): frozenset({AUD}),
    ("GET", "/audit/verify"): frozenset({AUD}),
    ("POST", "/audit/prune"): frozenset({AUD}),
    ("GET", "/ledger/status"): LEDGER_OPEN,
    ("GET", "/ledger/checkpoint"): LEDGER_OPEN,
    ("GET", "/ledger/checkpoints"): LEDGER_OPEN,
    ("GET", "/ledger/tile/{path}"): LEDGER_OPEN,
    ("POST", "/ledger/entries"): frozenset({SYS, VADMIN}),
    ("GET", "/ledger/entries/{index}"): LEDGER_OPEN,
    ("GET", "/ledger/proof/inclusion"): LEDGER_OPEN,
    ("GET", "/ledger/proof/consistency"): LEDGER_OPEN,
    ("GET", "/ledger/keys"): LEDGER_OPEN,
    ("POST", "/ledger/keys"): frozenset({SEC}),
    ("GET", "/ledger/watch"): LEDGER_READERS,
}


@pytest.fixture
def settings(database_url: str, data_dir: Path, provider: OidcProvider) -> Settings:
    """The matrix runs with single sign-on on, so that its routes answer for real."""
    return with_sso(Settings.build(data_dir, database_url, controller=False, **LENIENT), provider)


PERIOD = {"from": "2026-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"}
Call = tuple[str, dict[str, Any]]


class World:
    """Targets for every route; destructive calls get fresh ones each time."""

    def __init__(self, t: Tenants) -> None:
        self.t = t
        self.n = itertools.count()
        admin, sec = t.api, t.as_(SEC)
        assert sec.post("/api/v1/users", json={"name": "target", "password": PASSWORD}).status_code == 201
        r = admin.post("/api/v1/plans", json={"kind": "rebalance", "time_limit": 1})
        assert r.status_code == 201, r.text
        self.plan = r.json()["id"]
        rule = {"vdc": "gz/health/it", "name": "all", "conditions": {"always": True}, "stages": [["role:vdc-admin"]]}
        assert admin.post("/api/v1/approval-rules", json=rule).status_code == 201
        cloud = {"name": "vols", "kind": "sim", "site": "s-vols", "region": "gz"}
        assert admin.post("/api/v1/clouds", json=cloud).status_code == 201
        self.instance = "records-main-0"  # an unplaced replica of gz/health's app (no cloud in this world)
        with t.api.app.state.db.session() as s, s.begin():
            app = s.scalar(select(App).where(App.name == "records"))
            s.add(Instance(name=self.instance, app=app, component="main", spec_hash="x", cpu=100, memory=2**26))

    def volume(self) -> str:
        """A released volume of gz/health's app (as a scale-down leaves one)."""
        key = f"gz.health_records_main-{next(self.n)}_data"
        with self.t.api.app.state.db.session() as s, s.begin():
            app = s.scalar(select(App).where(App.name == "records"))
            cloud = s.scalar(select(Cloud).where(Cloud.name == "vols"))
            assert app is not None and cloud is not None
            s.add(
                VolumeRecord(
                    key=key,
                    vdc_id=app.vdc_id,
                    app_id=app.id,
                    app_name="records",
                    component="main",
                    ordinal=0,
                    name="data",
                    cloud_id=cloud.id,
                    size=2**20,
                    mount_path="/data",
                    state="released",
                )
            )
        return key

    def alarm(self) -> int:
        """An alarm of gz/health (as a denied cross-VDC attempt raises)."""
        with self.t.api.app.state.db.session() as s, s.begin():  # type: ignore[attr-defined]
            alarm = Alarm(kind="cross-vdc-denied", vdc="gz/health", app="records", message="denied", detail={})
            s.add(alarm)
            s.flush()
            return int(alarm.id)

    def alarm_rule(self) -> int:
        r = self.t.api.post(
            "/api/v1/alarm-rules", json={"name": self.fresh(), "vdc": "gz/health", "metric": "cpu", "above": 1}
        )
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def silence(self) -> int:
        r = self.t.api.post("/api/v1/alarm-silences", json={"vdc": "gz/health", "for": "1h"})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def new_plan(self) -> int:
        r = self.t.api.post("/api/v1/plans", json={"kind": "rebalance", "time_limit": 1})
        assert r.status_code == 201, r.text
        return int(r.json()["id"])

    def fresh(self) -> str:
        return f"m{next(self.n)}"

    def approval(self) -> int:
        r = self.t.as_(MEMBER).post("/api/v1/apps", json=app_spec(self.fresh(), "gz/health/it"))
        assert r.status_code == 202, r.text
        return int(r.json()["approval"]["id"])

    def sso_state(self) -> str:
        """A single sign-on login begun by a client listening on a loopback port."""
        body = {"challenge": challenge_of("v" * 43), "return_to": "http://127.0.0.1:9/callback"}
        r = self.t.api.post("/api/v1/auth/oidc/start", json=body, headers={"Authorization": ""})
        assert r.status_code == 201, r.text
        return str(r.json()["state"])

    def sso_handoff(self) -> dict[str, str]:
        """A single sign-on login the provider finished for user `target`, ready to exchange."""
        code, verifier = secrets.token_urlsafe(16), secrets.token_urlsafe(32)
        with self.t.api.app.state.db.session() as s, s.begin():  # type: ignore[attr-defined]
            user = s.scalar(select(User.id).where(User.name == "target"))
            s.add(
                OidcFlow(
                    state=secrets.token_urlsafe(16),
                    nonce="n",
                    code_verifier="v",
                    client_challenge=challenge_of(verifier),
                    expires_at=utcnow() + timedelta(minutes=2),
                    handoff_hash=token_hash(code),
                    user_id=user,
                )
            )
        return {"code": code, "verifier": verifier}

    def own_token(self, who: str) -> tuple[int, str] | None:
        if who == ANON:
            return None
        r = self.t.as_(who).post("/api/v1/tokens", json={"name": "matrix"})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["token"]


def _calls(w: World) -> dict[tuple[str, str], Callable[[str], Call]]:
    admin, sec = w.t.api, w.t.as_(SEC)

    def new_user(_: str) -> Call:
        name = w.fresh()
        assert sec.post("/api/v1/users", json={"name": name, "password": PASSWORD}).status_code == 201
        return f"/users/{name}", {}

    def new_grant(_: str) -> Call:
        g = sec.post("/api/v1/grants", json={"user": "target", "role": "viewer", "vdc": "gz/health"}).json()
        sec.delete(f"/api/v1/grants/{g['id']}")
        g = sec.post("/api/v1/grants", json={"user": "target", "role": "viewer", "vdc": "gz/health"}).json()
        return f"/grants/{g['id']}", {}

    def new_vdc(_: str) -> Call:
        path = f"gz/health/{w.fresh()}"
        assert admin.post("/api/v1/vdcs", json={"path": path}).status_code == 201
        return f"/vdcs/{path}", {}

    def new_cloud(_: str) -> Call:
        name = w.fresh()
        assert admin.post("/api/v1/clouds", json={"name": name, "kind": "sim", "site": "s", "region": "gz"}).is_success
        return f"/clouds/{name}", {}

    def new_group_map(_: str) -> Call:
        r = sec.post("/api/v1/oidc-group-maps", json={"group": w.fresh(), "role": "viewer", "vdc": "gz/health"})
        assert r.status_code == 201, r.text
        return f"/oidc-group-maps/{r.json()['id']}", {}

    def new_rule(_: str) -> Call:
        body = {"vdc": "gz/health", "name": w.fresh(), "conditions": {"cpuOver": "64"}, "stages": [["x"]]}
        return f"/approval-rules/{admin.post('/api/v1/approval-rules', json=body).json()['id']}", {}

    def own_token(who: str) -> Call:
        tok = w.own_token(who)
        return f"/tokens/{tok[0] if tok else 1}", {}

    return {
        ("POST", "/auth/login"): lambda _: ("/auth/login", {"json": {"user": "target", "password": PASSWORD}}),
        ("GET", "/auth/oidc"): lambda _: ("/auth/oidc", {}),
        ("POST", "/auth/oidc/start"): lambda _: (
            "/auth/oidc/start",
            {"json": {"challenge": challenge_of("v" * 43), "return_to": "http://127.0.0.1:9/callback"}},
        ),
        ("GET", "/auth/oidc/callback"): lambda _: (  # the provider refused: the client hears why (303)
            f"/auth/oidc/callback?state={w.sso_state()}&error=access_denied",
            {"follow_redirects": False},
        ),
        ("POST", "/auth/oidc/exchange"): lambda _: ("/auth/oidc/exchange", {"json": w.sso_handoff()}),
        ("POST", "/auth/logout"): lambda _: ("/auth/logout", {}),  # sent with a throwaway token below
        ("GET", "/auth/whoami"): lambda _: ("/auth/whoami", {}),
        ("PUT", "/auth/password"): lambda _: (
            "/auth/password",
            {"json": {"password": "short", "old_password": PASSWORD}},  # 422 once allowed: nothing changes
        ),
        ("GET", "/tokens"): lambda _: ("/tokens", {}),
        ("POST", "/tokens"): lambda _: ("/tokens", {"json": {"name": "t"}}),
        ("DELETE", "/tokens/{token_id}"): own_token,
        ("GET", "/users"): lambda _: ("/users", {}),
        ("POST", "/users"): lambda _: ("/users", {"json": {"name": w.fresh(), "password": PASSWORD}}),
        ("GET", "/users/{name}"): lambda _: ("/users/target", {}),
        ("DELETE", "/users/{name}"): new_user,
        ("PUT", "/users/{name}/password"): lambda _: ("/users/target/password", {"json": {"password": PASSWORD}}),
        ("POST", "/users/{name}/lock"): lambda _: ("/users/target/lock", {}),
        ("POST", "/auth/mfa/enroll"): lambda _: ("/auth/mfa/enroll", {}),
        ("POST", "/auth/mfa/confirm"): lambda _: ("/auth/mfa/confirm", {"json": {"code": "000000"}}),
        ("POST", "/auth/mfa/disable"): lambda _: ("/auth/mfa/disable", {"json": {"code": "000000"}}),
        ("DELETE", "/users/{name}/mfa"): lambda _: ("/users/target/mfa", {}),
        ("DELETE", "/users/{name}/oidc"): lambda _: ("/users/target/oidc", {}),
        ("GET", "/oidc-group-maps"): lambda _: ("/oidc-group-maps", {}),
        ("POST", "/oidc-group-maps"): lambda _: (
            "/oidc-group-maps",
            {"json": {"group": w.fresh(), "role": "viewer", "vdc": "gz/health"}},
        ),
        ("DELETE", "/oidc-group-maps/{map_id}"): new_group_map,
        ("POST", "/users/{name}/unlock"): lambda _: ("/users/target/unlock", {}),
        ("GET", "/grants"): lambda _: ("/grants", {}),
        ("POST", "/grants"): lambda _: ("/grants", {"json": {"user": "target", "role": "viewer", "vdc": "gz/health"}}),
        ("DELETE", "/grants/{grant_id}"): new_grant,
        ("GET", "/status"): lambda _: ("/status", {}),
        ("GET", "/clouds"): lambda _: ("/clouds", {}),
        ("POST", "/clouds"): lambda _: (
            "/clouds",
            {"json": {"name": w.fresh(), "kind": "sim", "site": "s", "region": "gz"}},
        ),
        ("GET", "/clouds/{name}"): lambda _: ("/clouds/city-a", {}),
        ("DELETE", "/clouds/{name}"): new_cloud,
        ("POST", "/clouds/{name}/fail"): lambda _: ("/clouds/city-b/fail", {"json": {}}),
        # a local cloud takes no credentials: the system administrator gets a 422, the rest 403
        ("PUT", "/clouds/{name}/credentials"): lambda _: ("/clouds/city-b/credentials", {"json": {"credentials": {}}}),
        ("GET", "/inventory"): lambda _: ("/inventory?kind=server", {}),
        ("GET", "/metrics"): lambda _: ("/metrics", {}),
        ("GET", "/prometheus/targets"): lambda _: ("/prometheus/targets", {}),
        ("GET", "/apps/{name}/metrics"): lambda _: ("/apps/records/metrics?vdc=gz/health", {}),
        ("GET", "/inventory/syncs"): lambda _: ("/inventory/syncs", {}),
        ("POST", "/inventory/sync"): lambda _: ("/inventory/sync", {"json": {"cloud": "city-b"}}),
        # no server named: the system administrator gets a 422, the rest 403
        ("POST", "/adopt"): lambda _: ("/adopt", {"json": {"cloud": "city-b", "ids": [], "vdc": "gz", "app": "x"}}),
        ("POST", "/clouds/{name}/recover"): lambda _: ("/clouds/city-b/recover", {"json": {}}),
        ("GET", "/vdcs"): lambda _: ("/vdcs", {}),
        ("POST", "/vdcs"): lambda _: ("/vdcs", {"json": {"path": f"gz/health/{w.fresh()}"}}),
        ("GET", "/vdcs/{path}"): lambda _: ("/vdcs/gz/health", {}),
        ("PUT", "/vdcs/{path}/quota"): lambda _: ("/vdcs/gz/health/it/quota", {"json": {"quota": {"cpu": "2"}}}),
        ("DELETE", "/vdcs/{path}"): new_vdc,
        ("GET", "/images"): lambda _: ("/images", {}),
        ("GET", "/images/{name}"): lambda _: (f"/images/{fake_image()}", {}),
        ("POST", "/images"): lambda _: ("/images", {"json": {"name": w.fresh(), "kind": "not-a-kind"}}),  # 422
        ("POST", "/images/import"): lambda _: ("/images/import", {"json": {"name": w.fresh(), "path": "/nope"}}),
        ("DELETE", "/images/{name}"): lambda _: (f"/images/{fake_image()}", {}),
        ("GET", "/apps"): lambda _: ("/apps", {}),
        ("POST", "/apps"): lambda _: ("/apps", {"json": app_spec(w.fresh(), "gz/health")}),
        ("POST", "/apps/dry-run"): lambda _: ("/apps/dry-run", {"json": app_spec(w.fresh(), "gz/health")}),
        ("GET", "/apps/{name}"): lambda _: ("/apps/records?vdc=gz/health", {}),
        ("GET", "/apps/{name}/revisions"): lambda _: ("/apps/records/revisions?vdc=gz/health", {}),
        ("DELETE", "/apps/{name}"): lambda _: ("/apps/records?vdc=gz/health", {}),
        ("GET", "/volumes"): lambda _: ("/volumes", {}),
        ("GET", "/volumes/{key}"): lambda _: (f"/volumes/{w.volume()}", {}),
        ("DELETE", "/volumes/{key}"): lambda _: (f"/volumes/{w.volume()}", {}),  # released: may go
        # a sim cloud keeps no snapshots: 422 once allowed
        ("POST", "/volumes/{key}/snapshots"): lambda _: (f"/volumes/{w.volume()}/snapshots", {"json": {"name": "s1"}}),
        ("GET", "/volumes/{key}/snapshots"): lambda _: (f"/volumes/{w.volume()}/snapshots", {}),
        ("POST", "/volumes/{key}/restore"): lambda _: (f"/volumes/{w.volume()}/restore", {"json": {"name": "s1"}}),
        ("GET", "/instances"): lambda _: ("/instances?app=records&vdc=gz/health", {}),
        ("GET", "/instances/{name}"): lambda _: (f"/instances/{w.instance}", {}),
        ("GET", "/instances/{name}/logs"): lambda _: (f"/instances/{w.instance}/logs", {}),  # unplaced: 409
        ("GET", "/events"): lambda _: ("/events?app=records&vdc=gz/health", {}),
        ("GET", "/dr/topology"): lambda _: ("/dr/topology", {}),
        ("PUT", "/sites/{name}/dr-role"): lambda _: ("/sites/s-vols/dr-role", {"json": {"role": "arbiter"}}),
        ("GET", "/apps/{name}/dr"): lambda _: ("/apps/records/dr?vdc=gz/health", {}),
        ("GET", "/apps/{name}/dr/plans"): lambda _: ("/apps/records/dr/plans?vdc=gz/health", {}),
        ("GET", "/apps/{name}/dr/credentials"): lambda _: ("/apps/records/dr/credentials?vdc=gz/health", {}),
        ("GET", "/dr/reports"): lambda _: ("/dr/reports?app=records&vdc=gz/health", {}),
        # records has no managed database: 409 once allowed
        ("POST", "/apps/{name}/dr/switchover"): lambda _: ("/apps/records/dr/switchover?vdc=gz/health", {"json": {}}),
        ("POST", "/apps/{name}/dr/failback"): lambda _: ("/apps/records/dr/failback?vdc=gz/health", {"json": {}}),
        ("POST", "/apps/{name}/dr/reprotect"): lambda _: ("/apps/records/dr/reprotect?vdc=gz/health", {"json": {}}),
        ("POST", "/apps/{name}/dr/activate-remote"): lambda _: (  # no remote centre in its tier: 422
            "/apps/records/dr/activate-remote?vdc=gz/health",
            {"json": {}},
        ),
        ("POST", "/apps/{name}/dr/backups"): lambda _: ("/apps/records/dr/backups?vdc=gz/health", {"json": {}}),
        ("GET", "/apps/{name}/dr/backups"): lambda _: ("/apps/records/dr/backups?vdc=gz/health", {}),
        ("POST", "/apps/{name}/dr/restore"): lambda _: (
            "/apps/records/dr/restore?vdc=gz/health",
            {"json": {"to": "2026-01-01T00:00:00+00:00"}},
        ),
        ("POST", "/apps/{name}/dr/restore-in-place"): lambda _: (  # no managed database: 409 once allowed
            "/apps/records/dr/restore-in-place?vdc=gz/health",
            {"json": {"to": "2026-01-01T00:00:00+00:00"}},
        ),
        ("POST", "/apps/{name}/dr/cleanup"): lambda _: ("/apps/records/dr/cleanup?vdc=gz/health", {}),
        ("POST", "/apps/{name}/dr/test"): lambda _: ("/apps/records/dr/test?vdc=gz/health", {"json": {}}),
        ("GET", "/flows"): lambda _: ("/flows?app=records&vdc=gz/health", {}),
        ("GET", "/flows/hourly"): lambda _: ("/flows/hourly?app=records&vdc=gz/health", {}),
        ("GET", "/alarms"): lambda _: ("/alarms?vdc=gz/health", {}),
        ("POST", "/alarms/{alarm_id}/ack"): lambda _: (f"/alarms/{w.alarm()}/ack", {}),
        ("GET", "/alarm-rules"): lambda _: ("/alarm-rules", {}),
        ("POST", "/alarm-rules"): lambda _: (
            "/alarm-rules",
            {"json": {"name": w.fresh(), "vdc": "gz/health", "metric": "cpu", "above": 1}},
        ),
        ("DELETE", "/alarm-rules/{rule_id}"): lambda _: (f"/alarm-rules/{w.alarm_rule()}", {}),
        ("GET", "/alarm-silences"): lambda _: ("/alarm-silences", {}),
        ("POST", "/alarm-silences"): lambda _: ("/alarm-silences", {"json": {"vdc": "gz/health", "for": "1h"}}),
        ("DELETE", "/alarm-silences/{silence_id}"): lambda _: (f"/alarm-silences/{w.silence()}", {}),
        ("POST", "/plans"): lambda _: ("/plans", {"json": {"kind": "rebalance", "time_limit": 1}}),
        ("GET", "/plans/{plan_id}"): lambda _: (f"/plans/{w.plan}", {}),
        ("POST", "/plans/{plan_id}/apply"): lambda _: (f"/plans/{w.plan}/apply", {}),
        ("DELETE", "/plans/{plan_id}"): lambda _: (f"/plans/{w.new_plan()}", {}),
        ("POST", "/plans/moves"): lambda _: ("/plans/moves", {"json": {"instance": w.instance, "cloud": "vols"}}),
        ("GET", "/approvals"): lambda _: ("/approvals", {}),
        ("GET", "/approvals/{request_id}"): lambda _: (f"/approvals/{w.approval()}", {}),
        ("POST", "/approvals/{request_id}/approve"): lambda _: (f"/approvals/{w.approval()}/approve", {"json": {}}),
        ("POST", "/approvals/{request_id}/reject"): lambda _: (f"/approvals/{w.approval()}/reject", {"json": {}}),
        ("POST", "/approvals/{request_id}/comment"): lambda _: (
            f"/approvals/{w.approval()}/comment",
            {"json": {"text": "looks fine"}},
        ),
        ("GET", "/approval-rules"): lambda _: ("/approval-rules", {}),
        ("POST", "/approval-rules"): lambda _: (
            "/approval-rules",
            {"json": {"vdc": "gz/health", "name": w.fresh(), "conditions": {"cpuOver": "64"}, "stages": [["x"]]}},
        ),
        ("DELETE", "/approval-rules/{rule_id}"): new_rule,
        ("GET", "/rates"): lambda _: ("/rates", {}),
        ("PUT", "/rates/{cloud}"): lambda _: ("/rates/city-a", {"json": {"cpu": "0.1"}}),
        ("GET", "/usage"): lambda _: ("/usage", {"params": {**PERIOD, "vdc": "gz/health"}}),
        ("GET", "/bill"): lambda _: ("/bill", {"params": {**PERIOD, "vdc": "gz/health"}}),
        ("GET", "/audit"): lambda _: ("/audit?limit=1", {}),
        ("GET", "/audit/verify"): lambda _: ("/audit/verify", {}),
        ("POST", "/audit/prune"): lambda _: ("/audit/prune", {"json": {}}),
        ("GET", "/ledger/status"): lambda _: ("/ledger/status", {}),
        ("GET", "/ledger/checkpoint"): lambda _: ("/ledger/checkpoint", {}),
        ("GET", "/ledger/checkpoints"): lambda _: ("/ledger/checkpoints", {}),
        ("GET", "/ledger/tile/{path}"): lambda _: ("/ledger/tile/0/000.p/1", {}),  # the first audit commitment
        ("POST", "/ledger/entries"): lambda _: ("/ledger/entries", {"json": {"entries": ["not a signed note"]}}),
        ("GET", "/ledger/entries/{index}"): lambda _: ("/ledger/entries/0", {}),
        ("GET", "/ledger/proof/inclusion"): lambda _: ("/ledger/proof/inclusion?index=0", {}),
        ("GET", "/ledger/proof/consistency"): lambda _: ("/ledger/proof/consistency?old=1", {}),
        ("GET", "/ledger/keys"): lambda _: ("/ledger/keys", {}),
        ("POST", "/ledger/keys"): lambda _: (
            "/ledger/keys",
            {"json": {"name": "x", "vkey": "not-a-key", "role": "department"}},  # 422 once allowed
        ),
        ("GET", "/ledger/watch"): lambda _: ("/ledger/watch?from=-1", {}),  # 422 once allowed (never streams)
    }


def openapi_routes(app: FastAPI) -> set[tuple[str, str]]:
    doc = app.openapi()
    return {
        (m.upper(), p.removeprefix("/api/v1")) for p, ops in doc["paths"].items() for m in ops if p.startswith("/api/")
    }


def test_every_route_has_a_rule_and_an_expectation(api: TestClient) -> None:
    routes = openapi_routes(api.app)
    assert routes == set(EXPECTED), f"no expectation: {routes - set(EXPECTED)}; stale: {set(EXPECTED) - routes}"
    assert routes == set(RULES), f"no rule: {routes - set(RULES)}; stale: {set(RULES) - routes}"


def test_a_route_added_without_a_rule_stops_the_server() -> None:
    app = FastAPI()

    @app.get("/api/v1/new-thing")
    def new_thing() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="GET /api/v1/new-thing"):
        check_routes(app)


def fake_image() -> str:
    """An image in the store (files and a manifest with their checksums): no kernel needed."""
    import hashlib
    import json
    import os

    name = f"img-{secrets.token_hex(3)}"
    d = Path(os.environ["SHANZHI_IMAGES_DIR"]) / name
    d.mkdir(parents=True)
    sums = {}
    for f in ("vmlinuz", "initrd.gz"):
        (d / f).write_bytes(f.encode())
        sums[f] = hashlib.sha256(f.encode()).hexdigest()
    (d / "manifest.json").write_text(json.dumps({"kind": "tiny", "size": 2, "sha256": sums, "detail": "fake"}))
    return name


def test_role_action_matrix(tenants: Tenants, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHANZHI_IMAGES_DIR", str(tmp_path / "images"))
    world = World(tenants)
    calls = _calls(world)
    assert set(calls) == set(EXPECTED)
    db = tenants.api.app.state.db
    mismatches = []
    unaudited = []
    checked = 0
    for (method, route), allowed in sorted(EXPECTED.items()):
        for who in CALLERS:
            url, kw = calls[(method, route)](who)
            headers = {}
            if who != ANON:
                token = tenants.tokens[who]
                if route == "/auth/logout":
                    token = world.own_token(who)[1]  # type: ignore[index]
                headers = bearer(token)
            client = TestClient(tenants.api.app, raise_server_exceptions=False)
            with db.session() as s:
                before = s.scalar(select(func.max(AuditRecord.id))) or 0
            r = client.request(method, "/api/v1" + url, headers=headers, **kw)
            assert r.status_code < 500, f"{who} {method} {url}: {r.status_code} {r.text}"
            got = r.status_code not in (401, 403, 404)
            checked += 1
            if got != (who in allowed):
                mismatches.append(f"{who} {method} {route}: {r.status_code} {r.text[:160]}")
            if method != "GET" and not (who == ANON and r.status_code == 401):  # strangers: sampled
                with db.session() as s:
                    rows = s.execute(select(AuditRecord.method, AuditRecord.path).where(AuditRecord.id > before)).all()
                if not any(m == method and p.startswith("/api/v1" + url.split("?")[0]) for m, p in rows):
                    unaudited.append(f"{who} {method} {url}")
    assert checked == len(EXPECTED) * len(CALLERS)
    assert not mismatches, "\n".join(mismatches)
    assert not unaudited, "\n".join(unaudited)
    with db.session() as s:  # the strangers' refusals were counted into sampled records
        sampled = s.scalars(select(AuditRecord.detail).where(AuditRecord.detail.like("sampled: %"))).all()
    assert sampled and sum(int(d.split()[1]) for d in sampled) >= 1


def test_the_route_table_knows_every_api_route(api: TestClient) -> None:
    """The start-up check and the guard see the routes of included routers too (FastAPI 0.165
    keeps included routers apart from `app.routes`, which left the old check looking at nothing)."""
    from shanzhi.api.policy import RouteTable
    from shanzhi.api.routes import (
        alarm_rules,
        approvals,
        apps,
        audit,
        clouds,
        dr,
        identity,
        images,
        inventory,
        ledger,
        metering,
        metrics,
        network,
        observe,
        oidc,
        plans,
        vdcs,
        volumes,
    )

    modules = (identity, oidc, clouds, images, vdcs, apps, volumes, observe, network, dr, plans, approvals, metering)
    modules += (audit, ledger, inventory, metrics, alarm_rules)
    table = RouteTable([m.router for m in modules])
    assert table.missing() == []
    for method, path in openapi_routes(api.app):
        concrete = re.sub(r"\{[^}]+\}", "x1", f"/api/v1{path}")
        assert table.rule(method, concrete) == RULES[(method, path)], (method, path)
    assert table.rule("PATCH", "/api/v1/apps") is None and table.rule("GET", "/api/v1/nothing") is None
    loose = APIRouter()

    @loose.get("/sneaky")
    def sneaky() -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(APIRouter(prefix="/api/v1"))
    with pytest.raises(RuntimeError, match="GET /api/v1/sneaky"):
        check_routes(app, [loose])
