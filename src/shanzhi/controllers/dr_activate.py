"""Activating the remote centre: what the DR controller does once an activation is approved
(production and same-city both lost; `services.approvals` held the request). The steps:

1. **Check.** Every member the main cluster ever had is asked, by connecting, whether it
   accepts writes; any that does, or a leader the quorum's etcd still shows running, refuses
   the activation and changes nothing (two writable primaries is the failure that matters).
2. **Fence.** The main cluster is marked fenced in its record before anything is promoted: the
   reconciler stops its members and starts none, so a returning production centre cannot bring
   back a second primary. It stays fenced (its data kept on its volumes) until it is rebuilt.
3. **Promote.** Patroni's REST API on the remote centre's standby leader takes `standby_cluster`
   out of the cluster's dynamic configuration, and Patroni promotes it; the controller waits
   until it answers as a primary that is not in recovery.
4. **Services, then checks.** The app's stateless components now go to the remote centre (the
   reconciler places their lost replicas there); the controller waits until each runs as many
   replicas as its spec asks (health checks passing where it has them): the measured RTO.
5. **Report.** Steps and timings; what the remote centre had replayed (its last transaction's
   time, its WAL position: everything committed in production after it is what could not be
   recovered) and its lag in bytes as last measured while production led.

The state (`approved` → `running` → `succeeded` | `failed` | `refused`) is in the cluster's
record, so a controller that restarts mid-way carries on (each step is idempotent).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import select

from shanzhi.domain.spec import AppSpec
from shanzhi.dr.patroni import API_USER, SUPERUSER, api_base
from shanzhi.store import Database
from shanzhi.store.changes import mark
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, DrCluster, DrReport, Instance, utcnow

log = logging.getLogger("shanzhi.dr")
TIMEOUT = 60.0
SERVICES_TIMEOUT = 120.0


def is_following(d: dict[str, Any]) -> bool:
    return d.get("role") == "replica" and d.get("state") == "running"


def is_primary(d: dict[str, Any]) -> bool:
    return d.get("role") in ("master", "primary") and d.get("state") == "running"


def wait_member(
    http: httpx.Client, api: str, ok: Callable[[dict[str, Any]], bool], timeout: float
) -> dict[str, Any] | None:
    """Poll a member's `GET /patroni` until `ok` holds (None: it did not within `timeout`)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            d: dict[str, Any] = http.get(f"{api}/patroni").json()
            if ok(d):
                return d
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.1)
    return None


def superuser(host: str, password: str, timeout: int) -> psycopg.Connection[Any]:
    """A connection to the member at `host` ("address:port") as the cluster's superuser."""
    address, _, port = host.rpartition(":")
    return psycopg.connect(
        host=address, port=int(port), user=SUPERUSER, password=password, dbname="postgres", connect_timeout=timeout
    )


def writable(host: str, password: str) -> bool | None:
    """Does the PostgreSQL at `host` accept writes? None: it does not answer."""
    try:
        with superuser(host, password, 2) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            return row is not None and row[0] is False
    except (psycopg.Error, OSError, ValueError):
        return None


def _replayed(host: str, password: str) -> dict[str, Any]:
    """The last transaction a standby replayed (its time) and its WAL position."""
    try:
        with superuser(host, password, 3) as conn:
            row = conn.execute("SELECT pg_last_xact_replay_timestamp(), pg_last_wal_replay_lsn()::text").fetchone()
    except (psycopg.Error, OSError, ValueError) as err:
        return {"error": str(err).strip()[:200]}
    if row is None:
        return {}
    return {"last_transaction": row[0].isoformat() if row[0] else None, "wal_position": row[1]}


def _services_short(db: Database, app_id: int) -> list[str]:
    """The app's stateless components running fewer replicas than asked ("api 1/2")."""
    with db.session() as s, s.begin():
        app = s.get(App, app_id)
        if app is None:
            return []
        want = {c.name: c.replicas for c in AppSpec.model_validate(app.spec).spec.components if c.kind != "postgres"}
        rows = s.execute(select(Instance.component, Instance.state).where(Instance.app_id == app_id))
        have = Counter(comp for comp, state in rows if state == "running")
    return [f"{name} {have[name]}/{n}" for name, n in sorted(want.items()) if have[name] < n]


def _set_state(db: Database, cid: int, state: str, **extra: Any) -> DrCluster | None:
    with db.session() as s, s.begin():
        c = s.get(DrCluster, cid)
        if c is None:
            return None
        c.activation = {**(c.activation or {}), "state": state, **extra}
        mark(s, [c.app_id])  # the reconciler looks at the app again (fencing stops its main members)
        s.flush()
        s.expunge(c)
        return c


def activate(db: Database, data_dir: Path, cid: int, main_leader: str | None) -> None:
    """Carry out an approved activation of cluster `cid` (see the module's docstring).
    `main_leader`: a leader the quorum's etcd shows running now (refuses), or None."""
    with db.session() as s, s.begin():
        c = s.get(DrCluster, cid)
        if c is None:
            return
        act = dict(c.activation or {})
        password = c.keys(data_dir)["superuser"]
        known: dict[str, dict[str, Any]] = dict(c.status.get("known", {}))
        remote = [m for m in c.status.get("members", []) if m.get("cluster") == "remote" and m.get("api")]
        app_id, vdc, app, comp = c.app_id, c.app.vdc.path, c.app.name, c.component
        lag, main_seen = c.status.get("remote_lag"), c.status.get("main_seen")
        report = DrReport(
            app_id=app_id, vdc=vdc, app=app, kind="activate-remote", outcome="running",
            summary=f"activating the remote centre of database {comp} (approval {act.get('request')}) ...",
            body={"component": comp, "request": act.get("request"), "approved_by": act.get("by")},
            started_at=utcnow(),
        )  # fmt: skip
        s.add(report)
        s.flush()
        rid = report.id
    t0 = time.monotonic()
    steps: list[dict[str, Any]] = []

    def step(what: str, **more: Any) -> None:
        steps.append({"step": what, "seconds": round(time.monotonic() - t0, 3), **more})

    def finish(outcome: str, summary: str, **body: Any) -> None:
        with db.session() as s, s.begin():
            rep = s.get(DrReport, rid)
            assert rep is not None
            rep.outcome, rep.summary, rep.finished_at = outcome, summary, utcnow()
            rep.body = {**rep.body, "steps": steps, **body}
            record_event(s, "RemoteActivated" if outcome == "succeeded" else "RemoteActivationFailed", "app", app,
                         summary, warning=True, vdc=vdc, app=app)  # fmt: skip
        log.warning("%s/%s: %s", vdc, app, summary)

    # 1. no old primary may accept writes
    alive = [
        f"{name} at {m['host']}"
        for name, m in sorted(known.items())
        if m.get("cluster") == "main" and m.get("host") and writable(m["host"], password)
    ]
    if main_leader is not None:
        alive.append(f"{main_leader} (the quorum's leader key)")
    step("checked the main cluster's members", writable=alive)
    if alive:
        _set_state(db, cid, "refused")
        why = f"{', '.join(alive)} still accepts writes (two primaries); nothing changed"
        finish("failed", f"activation of database {comp}'s remote centre refused: {why}. Use `dr switchover`")
        return
    if not remote:
        _set_state(db, cid, "failed")
        finish("failed", f"database {comp} has no remote member with a REST API to promote; see `dr status`")
        return
    target = remote[0]
    # 2. fence the main cluster (before promoting: it must never come back as a primary)
    _set_state(db, cid, "running", fenced_at=utcnow().isoformat())
    step("fenced the main cluster: its members are stopped and not started again")
    replayed = _replayed(str(target.get("host")), password)
    step(f"{target['name']} has replayed up to {replayed.get('last_transaction')}", **replayed)
    # 3. promote
    api = api_base(str(target["api"]))
    promoted = None
    try:
        with httpx.Client(timeout=30.0, auth=(API_USER, password)) as http:
            r = http.patch(f"{api}/config", json={"standby_cluster": None})
            step("asked Patroni to end the standby cluster", answer=r.status_code)
            if r.status_code != 200:
                raise RuntimeError(f"Patroni refused: {r.status_code} {r.text[:200]}")
            promoted = wait_member(http, api, is_primary, TIMEOUT)
    except (httpx.HTTPError, RuntimeError) as err:
        _set_state(db, cid, "failed")
        finish("failed", f"activating the remote centre of database {comp} failed: {err}; the main cluster "
               "stays fenced: ask again (`dr activate-remote`)", error=str(err))  # fmt: skip
        return
    if promoted is None or not writable(str(target.get("host")), password):
        _set_state(db, cid, "failed")
        finish("failed", f"{target['name']} did not become a writable primary within {TIMEOUT:.0f}s; the main "
               "cluster stays fenced: ask again (`dr activate-remote`)")  # fmt: skip
        return
    step(f"{target['name']} is primary and accepts writes", timeline=promoted.get("timeline"))
    _set_state(db, cid, "succeeded")
    # 4. services, then checks
    deadline = time.monotonic() + SERVICES_TIMEOUT
    short = _services_short(db, app_id)
    while short and time.monotonic() < deadline:
        time.sleep(0.5)
        short = _services_short(db, app_id)
    if short:
        step(f"services not all running after {SERVICES_TIMEOUT:.0f}s: {', '.join(short)}")
    else:
        step("every service runs (health checks passing where it has them)")
    behind = (lag or {}).get("bytes")
    loss = "its lag behind production was never measured"
    if behind is not None:
        loss = f"it was {behind} bytes of WAL behind production when last measured ({(lag or {}).get('at')})"
    services = f"services short: {', '.join(short)}" if short else f"services running after {steps[-1]['seconds']:.1f}s"
    summary = (
        f"database {comp}: the remote centre's {target['name']} ({target.get('site')}) is primary after "
        f"{steps[-2]['seconds']:.1f}s; {services}; it has every transaction up to "
        f"{replayed.get('last_transaction')}; {loss}"
    )
    finish("succeeded", summary, member=target["name"], site=target.get("site"), timeline=promoted.get("timeline"),
           lag_bytes_last_measured=behind, lag_measured_at=(lag or {}).get("at"), main_last_seen=main_seen,
           last_transaction=replayed.get("last_transaction"), seconds=steps[-2]["seconds"],
           rto_seconds=None if short else steps[-1]["seconds"], services_short=short)  # fmt: skip
