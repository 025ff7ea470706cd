"""Coming back from an activated remote centre: rebuild the main cluster, then fail back to it.

After `dr activate-remote` the remote centre's cluster is the primary one and the main cluster
(production and same-city) is fenced: its members stopped, their data kept. Once the city
centres are back:

1. **`dr reprotect`** rebuilds the main cluster as a *standby cluster* of the remote primary.
   The DR controller clears the fenced cluster's record in the quorum, lifts the fence, and the
   reconciler starts its members afresh: each in `pgdata-r<n>` on its own volume (the old data
   stays beside it, untouched), the first one copying the remote primary by `pg_basebackup` and
   following it, the other following the first. Nothing of the diverged old timeline comes back.
2. **`dr failback`**, planned, once the rebuilt standby leader runs: the remote cluster is made a
   standby cluster of the rebuilt one's leader (Patroni shuts its primary down cleanly: writes
   stop there), the candidate is checked to have replayed every byte of the remote's WAL (if
   not, the remote is promoted back and nothing changed), then the main cluster is promoted
   (`standby_cluster: null`). The remote cluster follows it again, the connection string names
   the city centres, and the stateless components go back to production.

Patroni does both halves through its dynamic configuration, as it documents for standby
clusters; this module checks, orders and measures them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy.orm import Session

from shanzhi.controllers.dr_activate import is_primary, superuser, wait_member
from shanzhi.controllers.dr_members import main_members, remote_primary, site_roles
from shanzhi.domain.dr import sites_by_role
from shanzhi.domain.errors import Conflict
from shanzhi.domain.spec import AppSpec
from shanzhi.dr.patroni import API_USER, standby_cluster
from shanzhi.services.dr import cluster_of, healthy_sites
from shanzhi.services.dr_ops import TIMEOUT, Plan, rest_api
from shanzhi.store import Database
from shanzhi.store.changes import mark
from shanzhi.store.events import record_event
from shanzhi.store.tables import App, DrCluster, utcnow


def reprotect(s: Session, app: App, component: str | None) -> dict[str, Any]:
    """Start the rebuild (the remote centre was activated), or say how far it is."""
    c = cluster_of(s, app, component)
    act = dict(c.activation or {})
    if act.get("state") == "succeeded":
        roles = sites_by_role(site_roles(s))
        up = healthy_sites(s)
        down = [f"{roles[r]} ({r})" for r in ("production", "same-city") if r in roles and not up.get(roles[r])]
        if down:
            raise Conflict(
                f"the main cluster of database {c.component} cannot be rebuilt yet: {', '.join(down)} has no "
                "healthy cloud (recover it first)"
            )
        if remote_primary(c) is None:
            raise Conflict(
                f"database {c.component}: the remote centre's primary is not running, so there is nothing to "
                "rebuild the main cluster from; see `dr status`"
            )
        generation = c.generation + 1
        c.activation = {**act, "state": "rebuilding", "generation": generation,
                        "rebuild_asked_at": utcnow().isoformat()}  # fmt: skip
        mark(s, [app.id])
        record_event(s, "MainClusterRebuildAsked", "app", app.name,
                     f"database {c.component}: the main cluster is rebuilt as a standby of the remote primary "
                     f"(pgdata-r{generation}; the old data kept)", vdc=app.vdc.path, app=app.name)  # fmt: skip
    return _progress(c, main_members(AppSpec.model_validate(app.spec)))


def _progress(c: DrCluster, expected: int) -> dict[str, Any]:
    members = c.status.get("members", [])
    state = (c.activation or {}).get("state")
    main = [m for m in members if m.get("cluster") == "main"]
    problems = []
    if state == "rebuilding":
        problems.append("the DR controller is clearing the old main cluster's record in the quorum")
    if remote_primary(c) is None:
        problems.append("the remote centre's primary is not running")
    if not any(m.get("role") == "standby_leader" and m.get("state") == "running" for m in main):
        problems.append("the rebuilt main cluster has no running standby leader yet (copying the remote primary)")
    problems += [f"{m['name']} ({m.get('site')}) is {m['state']}" for m in main if m.get("state") != "running"]
    running = sum(1 for m in main if m.get("state") == "running")
    if running < expected:
        problems.append(f"{running} of the main cluster's {expected} members run")
    return {
        "component": c.component,
        "protected": not problems,
        "rebuilding": True,
        "problems": problems,
        "next": "dr failback" if not problems else None,
        "members": members,
    }


def plan_failback(s: Session, app: App, component: str | None, data_dir: Path) -> Plan:
    """From the remote primary to the rebuilt main cluster's standby leader."""
    c = cluster_of(s, app, component)
    state = (c.activation or {}).get("state")
    if state != "standby":
        how = (
            "being rebuilt: wait until `dr reprotect` says it is protected"
            if state == "rebuilding"
            else "not rebuilt yet: run `dr reprotect` first"
        )
        raise Conflict(f"the remote centre leads database {c.component} and the main cluster is {how}")
    members = c.status.get("members", [])
    leader = next((m for m in members if m.get("cluster") == "remote" and m.get("role") == "primary"
                   and m.get("state") == "running"), None)  # fmt: skip
    cand = next((m for m in members if m.get("cluster") == "main" and m.get("role") == "standby_leader"
                 and m.get("state") == "running"), None)  # fmt: skip
    if leader is None:
        raise Conflict(f"database {c.component}: the remote centre's primary is not running; see `dr status`")
    if cand is None or not cand.get("host"):
        raise Conflict(f"database {c.component}: the rebuilt main cluster has no running standby leader yet")
    return Plan(
        "failback", app.id, c.id, app.vdc.path, app.name, c.component, leader["name"], rest_api(leader.get("api")),
        cand["name"], rest_api(cand.get("api")), str(cand.get("site") or ""), c.keys(data_dir)["superuser"],
        leader_host=str(leader.get("host") or ""), candidate_host=str(cand["host"]), across=True,
    )  # fmt: skip


def _lsn(host: str, password: str) -> int | None:
    """How far the member at `host` has replayed (a standby) or written (a primary), in bytes."""
    try:
        with superuser(host, password, 3) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() "
                "ELSE pg_current_wal_lsn() END, '0/0')::bigint"
            ).fetchone()
    except (psycopg.Error, OSError, ValueError):
        return None
    return int(row[0]) if row is not None and row[0] is not None else None


def execute_failback(plan: Plan) -> dict[str, Any]:
    """The remote primary made a standby of the candidate, the candidate checked to have all of
    it, then promoted (see the module docstring). Raises Conflict, having put things back where
    it can, when a step does not happen."""
    t0 = time.monotonic()

    def step(what: str, **more: Any) -> None:
        plan.steps.append({"step": what, "seconds": round(time.monotonic() - t0, 3), **more})

    host, _, port = plan.candidate_host.rpartition(":")
    follow = standby_cluster(host, int(port))
    with httpx.Client(timeout=30.0, auth=(API_USER, plan.password)) as http:

        def back(why: str) -> Conflict:
            r = http.patch(f"{plan.leader_api}/config", json={"standby_cluster": None})
            wait_member(http, plan.leader_api, is_primary, TIMEOUT)
            step(f"{plan.leader} promoted back", answer=r.status_code)
            return Conflict(f"failback of database {plan.component} stopped: {why}; the remote centre leads again")

        r = http.patch(f"{plan.leader_api}/config", json={"standby_cluster": follow})
        step(f"asked {plan.leader} (remote) to follow {plan.candidate}", answer=r.status_code)
        if r.status_code != 200:
            raise Conflict(f"Patroni refused to make the remote cluster a standby: {r.status_code} {r.text[:200]}")
        if wait_member(http, plan.leader_api, _standby_leader, TIMEOUT) is None:
            raise back(f"{plan.leader} did not become a standby leader within {TIMEOUT:.0f}s")
        step(f"{plan.leader} is a standby leader: writes stopped there")
        end = _lsn(plan.leader_host, plan.password)
        deadline = time.monotonic() + TIMEOUT
        have = _lsn(plan.candidate_host, plan.password)
        while end is not None and (have is None or have < end) and time.monotonic() < deadline:
            time.sleep(0.1)
            have = _lsn(plan.candidate_host, plan.password)
        if end is None or have is None or have < end:
            raise back(f"{plan.candidate} did not replay all of the remote centre's WAL ({have} of {end} bytes)")
        step(f"{plan.candidate} has replayed every byte the remote centre wrote", position=end)
        r = http.patch(f"{plan.candidate_api}/config", json={"standby_cluster": None})
        promoted = wait_member(http, plan.candidate_api, is_primary, TIMEOUT)
        if r.status_code != 200 or promoted is None:
            raise back(f"{plan.candidate} was not promoted ({r.status_code})")
        step(f"{plan.candidate} is primary")
        follows = wait_member(http, plan.leader_api, _standby_leader, TIMEOUT)
        step(f"{plan.leader} follows as the remote standby cluster" if follows else f"{plan.leader} not back yet")
    return {
        "component": plan.component, "from": plan.leader, "to": plan.candidate, "site": plan.target_site,
        "timeline": promoted.get("timeline"), "switch_seconds": plan.steps[-2]["seconds"],
        "position": end, "old_primary_follows": bool(follows), "steps": plan.steps,
    }  # fmt: skip


def _standby_leader(d: dict[str, Any]) -> bool:
    return d.get("role") == "standby_leader" and d.get("state") == "running"


def end_activation(db: Database, cluster_id: int) -> None:
    """After a failback: the main cluster leads again; the stateless components go back."""
    with db.session() as s, s.begin():
        c = s.get(DrCluster, cluster_id)
        if c is None:
            return
        c.activation = {**(c.activation or {}), "state": "failed-back", "failed_back_at": utcnow().isoformat()}
        mark(s, [c.app_id])
