"""Recovery plans: for a protected app (its protection group: its managed databases and its
stateless components), the ordered steps of each DR operation, database first, then services,
then checks, with this topology's sites, engines and approvers filled in. Each plan also carries
the outcome and time of its last run, taken from the reports. The plans describe what
the platform and Patroni do; running one is its operation's command (`dr switchover`,
`dr activate-remote`, ...), and an automatic failover needs none."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.controllers.dr_members import site_roles
from shanzhi.domain.dr import MEMBERS, quorum_sites, sites_by_role
from shanzhi.domain.spec import AppSpec
from shanzhi.dr.patroni import TIMING
from shanzhi.services.approvals import activation_stages
from shanzhi.store.tables import App, DrReport


def _step(phase: str, what: str, by: str) -> dict[str, str]:
    return {"phase": phase, "step": what, "by": by}


def _last(s: Session, app: App, kind: str) -> dict[str, Any] | None:
    r = s.scalar(
        select(DrReport).where(DrReport.app_id == app.id, DrReport.kind == kind).order_by(DrReport.id.desc()).limit(1)
    )
    if r is None:
        return None
    seconds = r.body.get("rto_seconds") or r.body.get("seconds") or r.body.get("switch_seconds")
    return {"report": r.id, "outcome": r.outcome, "at": r.started_at.isoformat(), "seconds": seconds}


def plans(s: Session, app: App) -> dict[str, Any]:
    """Each operation the app's tier allows: whether it runs by itself, its ordered steps, and
    its last run."""
    spec = AppSpec.model_validate(app.spec)
    dr = spec.spec.dr
    members = MEMBERS[dr.tier]
    roles = site_roles(s)
    by_role = sites_by_role(roles)
    prod, same, remote = (by_role.get(r, f"(no {r} site)") for r in ("production", "same-city", "remote"))
    databases = [c.name for c in spec.spec.databases()]
    dbs = ", ".join(databases)
    services = ", ".join(c.name for c in spec.spec.components if c.kind != "postgres") or "(no stateless component)"
    writes = f"{dbs} accepts writes through the app's connection string; " if databases else ""
    checks = _step("checks", f"{writes}{services} run", "platform")
    out: dict[str, dict[str, Any]] = {}
    # activations and restores in place are approved alike
    approvers = " then ".join(" or ".join(st) for st in activation_stages(s, app.vdc.path))
    if "same-city" in members:
        moved = (
            f"{services} already run in {same}; production's replicas are replaced there"
            if dr.stateless == "active-active"
            else f"{services} start in {same}, in the room held for them"
        )
        steps = []
        if databases:
            steps += [
                _step("database", f"the leader key in the quorum (etcd in {', '.join(quorum_sites(roles))}) expires "
                      f"{TIMING['ttl']}s after production's primary is last heard", "etcd"),
                _step("database", f"{dbs}: the synchronous standby in {same} is promoted (only a synchronous standby "
                      "is: nothing acknowledged is lost)", "Patroni"),
            ]  # fmt: skip
            if "remote" in members:
                steps.append(_step("database", f"the standby cluster in {remote} follows the new primary", "Patroni"))
        steps += [_step("services", moved, "platform"), checks]
        if databases:
            report = "a failover report: old and new leader, the gap between them, data lost at most"
            steps.append(_step("report", report, "platform"))
        out["failover"] = {"automatic": True, "trigger": f"production ({prod}) lost", "steps": steps}
        for kind, to in (("switchover", same), ("failback", prod)) if databases else ():
            out[kind] = {
                "automatic": False,
                "trigger": f"`dr {kind}`",
                "steps": [
                    _step("database", f"{dbs}: Patroni hands the primary to the synchronous standby in {to}; writes "
                          "pause for the seconds it takes", "Patroni"),
                    _step("database", "the old primary follows the new one", "Patroni"),
                    checks,
                ],
            }  # fmt: skip
    if "remote" in members and databases:
        out["activate-remote"] = {
            "automatic": False,
            "trigger": "`dr activate-remote` once production and same-city are both lost",
            "steps": [
                _step("approval", f"held until approved by {approvers} (never the requester)", "approvers"),
                _step("checks", "no member of the main cluster accepts writes (each is asked by connecting)",
                      "platform"),
                _step("database", "the main cluster is fenced: its members are stopped and not started again",
                      "platform"),
                _step("database", f"{dbs}: the standby cluster in {remote} is promoted", "Patroni"),
                _step("services", f"{services} start in {remote}", "platform"),
                checks,
                _step("report", "the data that could not be recovered: the last transaction the remote centre has, "
                      "its lag in bytes as last measured", "platform"),
            ],
        }  # fmt: skip
        out["return-from-remote"] = {
            "automatic": False,
            "trigger": "`dr reprotect`, then `dr failback`, once the city centres are back after an activation",
            "steps": [
                _step("database", "the fenced main cluster's record in the quorum is cleared; its members start "
                      f"afresh in {prod} and {same} (new data directories, the old data kept) as a standby cluster "
                      f"of the primary in {remote}", "platform, Patroni"),
                _step("checks", "`dr reprotect` says protected: the rebuilt standby leader and its replica run",
                      "platform"),
                _step("database", f"`dr failback`: the cluster in {remote} becomes a standby cluster of the rebuilt "
                      "one (its primary shut down cleanly: writes stop)", "Patroni"),
                _step("checks", "the rebuilt standby leader has replayed every byte the remote centre wrote (else the "
                      "remote is promoted back and nothing changed)", "platform"),
                _step("database", f"{dbs}: the main cluster is promoted in {prod}; the remote cluster follows it",
                      "Patroni"),
                _step("services", f"{services} roll over from {remote} to the city centres", "platform"),
                checks,
            ],
        }  # fmt: skip
    if databases:
        out["test"] = {
            "automatic": False,
            "trigger": "`dr test`",
            "steps": [
                _step("database", "the newest base backup and the WAL archive recovered to now in a copy of its own, "
                      "in a network namespace with no link out where the server can make one (production untouched)",
                      "PostgreSQL"),
                _step("checks", "the copy opens for writes and has the app's database; RTO and RPO measured",
                      "platform"),
                _step("cleanup", "`dr cleanup` removes the copy", "platform"),
            ],
        }  # fmt: skip
    if databases:
        out["restore-in-place"] = {
            "automatic": False,
            "trigger": "`dr restore --to TIME --in-place`: what was written after TIME is given up",
            "steps": [
                _step("approval", f"held until approved by {approvers} (never the requester)", "approvers"),
                _step("database", "a copy recovered to TIME from the newest base backup before it and the WAL "
                      "archive, opened and checked (if it fails, nothing else happens)", "PostgreSQL"),
                _step("database", "every member of the database is stopped; its records in etcd are cleared",
                      "platform"),
                _step("database", f"{dbs}: production's member in {prod} is bootstrapped from the copy (new data "
                      "directories, the old data kept); the other members clone it", "Patroni"),
                checks,
                _step("report", "the time recovered to, how long writes stopped; a new base backup", "platform"),
            ],
        }  # fmt: skip
    for kind, plan in out.items():
        plan["last_run"] = _last(s, app, {"test": "drill", "return-from-remote": "failback"}.get(kind, kind))
    return {"app": app.name, "vdc": app.vdc.path, "tier": dr.tier, "plans": out}
