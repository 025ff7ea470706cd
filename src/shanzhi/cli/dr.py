"""`shanzhi dr ...` and `shanzhi site role`: the DR topology, protected apps' databases, reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, err, handle_errors, out
from shanzhi.client import Client, discover_token

dr_app = typer.Typer(help="Disaster recovery: topology, protected databases, reports.", no_args_is_help=True)
site_app = typer.Typer(help="Sites: the centres clouds stand in.", no_args_is_help=True)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")

SITE_COLS: Columns = [
    ("SITE", lambda r: r["name"]),
    ("ROLE", lambda r: r["role"] or "-"),
    ("CLOUDS", lambda r: ", ".join(f"{c['name']}({c['health']})" for c in r["clouds"]) or "-"),
    (
        "ETCD",
        lambda r: (
            ", ".join(f"{e['name']} {e['url']} on {e['cloud'] or 'the server'} ({e['health']})" for e in r["etcd"])
            or "-"
        ),
    ),
]
MEMBER_COLS: Columns = [
    ("DATABASE", lambda r: r["database"]),
    ("MEMBER", lambda r: r["name"]),
    ("CLUSTER", lambda r: r["cluster"]),
    ("SITE", lambda r: r.get("site") or "-"),
    ("ROLE", lambda r: r["role"]),
    ("STATE", lambda r: r["state"]),
    ("TL", lambda r: r.get("timeline")),
    ("LAG", lambda r: "-" if r.get("lag_bytes") is None else f"{r['lag_bytes']} B"),
    ("HOST", lambda r: r.get("host")),
]
REPORT_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("STARTED", lambda r: str(r["started_at"])[:19]),
    ("APP", lambda r: f"{r['vdc']}/{r['app']}"),
    ("KIND", lambda r: r["kind"]),
    ("OUTCOME", lambda r: r["outcome"]),
    ("SUMMARY", lambda r: r["summary"]),
]


@site_app.command("role")
def site_role(
    site: str = typer.Argument(..., help="The site (as given to `cloud add --site`)."),
    role: str = typer.Argument(..., help="production, same-city, remote, arbiter, or none."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Give a site its DR role: one site per role. Two sites, three centres needs production,
    same-city and remote (the remote centre doubles as the quorum's arbiter unless a site is)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.set_site_role(site, None if role == "none" else role), output)


@dr_app.command("topology")
def topology(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Sites with their roles, clouds and quorum members; the links between centres; and which
    tiers the topology can give."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        topo = c.dr_topology()
    if output is Fmt.json:
        emit(topo, output)
        return
    emit(topo["sites"], output, SITE_COLS)
    for link in topo["links"]:
        out.print(f"  {link['from']} -> {link['to']}: {link['kind']}")
    for tier, missing in topo["tiers"].items():
        out.print(f"  tier {tier}: {'available' if missing is None else missing}")


@dr_app.command("status")
def status(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    show_password: bool = typer.Option(False, "--show-password", help="Print the connection string's password."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A protected app's databases: each member's centre, role, state, timeline and lag; the
    leader; and the connection string apps use (it only ever reaches the writable member)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        st = c.app_dr(app_name, vdc, reveal=show_password)
    if output is Fmt.json:
        emit(st, output)
        return
    tier = st["tier"]
    out.print(f"{st['vdc']}/{st['app']}: tier {tier['tier']}, RPO {tier['rpo']}, RTO {tier['rto']}")
    rows: list[dict[str, Any]] = [{**m, "database": d["component"]} for d in st["databases"] for m in d["members"]]
    emit(rows, output, MEMBER_COLS)
    for d in st["databases"]:
        out.print(f"  {d['component']}: leader {d['leader'] or '-'}; connect with {d['connection'] or '(not yet)'}")
        act = d.get("activation")
        if act:
            out.print(f"  {d['component']}: remote centre activation {act['state']} (approval {act.get('request')})")
        back = d.get("restore")
        if back:
            out.print(f"  {d['component']}: restore in place to {back.get('to')} {back['state']} (approval "
                      f"{back.get('request')}; `dr reports` has its steps)")  # fmt: skip


@dr_app.command("plan")
def plan(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    operation: str | None = typer.Option(None, "--operation", help="Only this one (failover, activate-remote, ...)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A protected app's recovery plans: for each operation its tier allows, the ordered steps
    (database, then services, then checks) with the sites and approvers, and its last run."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.dr_plans(app_name, vdc)
        plans = r["plans"]
        if operation is not None:
            if operation not in plans:
                have = ", ".join(plans) or "none (tier none)"
                err.print(f"[red]error[/]: tier {r['tier']} has no {operation} plan; it has: {have}")
                raise typer.Exit(1)
            plans = {operation: plans[operation]}
    if output is Fmt.json:
        emit({**r, "plans": plans}, output)
        return
    out.print(f"{r['vdc']}/{r['app']}: tier {r['tier']}")
    for kind, p in plans.items():
        last = p["last_run"]
        ran = f"last run: {last['outcome']} {str(last['at'])[:19]}" if last else "never run"
        if last and last.get("seconds") is not None:
            ran += f" ({last['seconds']:.1f}s)"
        out.print(f"\n{kind} ({'automatic' if p['automatic'] else 'on command'}: {p['trigger']}; {ran})")
        for i, st in enumerate(p["steps"], 1):
            out.print(f"  {i}. [{st['phase']}] {st['step']} ({st['by']})")


@dr_app.command("reports")
def reports(
    app_name: str | None = typer.Option(None, "--app"),
    vdc: str | None = typer.Option(None, "--vdc"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Failovers, switchovers and drills, oldest first, with what each measured."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.dr_reports(app_name, vdc), output, REPORT_COLS)


def _show(r: dict[str, Any], output: Fmt) -> None:
    if output is Fmt.json:
        emit(r, output)
        return
    out.print(f"{r['kind']} {r['outcome']}: {r['summary']}")
    for step in r["body"].get("steps", []):
        out.print(f"  {step['seconds']:>7.2f}s  {step['step']}")


@dr_app.command("switchover")
def switchover(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    site: str | None = typer.Option(None, "--site", help="Move the primary to this site (default: any replica's)."),
    component: str | None = typer.Option(None, "--component", help="The database (default: the app's first)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A planned switchover, no data lost: the primary moves to a synchronous replica. Waits
    until the new primary runs (a few seconds of paused writes) and prints the report."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        if output is not Fmt.json:
            out.print(f"switching over {app_name} (Patroni hands the primary over; writes pause) ...")
        r = c.dr_operation(app_name, "switchover", vdc, site=site, component=component)
    _show(r, output)


@dr_app.command("failback")
def failback(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    component: str | None = typer.Option(None, "--component"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """After a failover: the primary back to the production centre (a planned switchover)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.dr_operation(app_name, "failback", vdc, component=component)
    _show(r, output)


@dr_app.command("reprotect")
def reprotect(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    component: str | None = typer.Option(None, "--component"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Is every centre protected again (each member running and following)? Exits 1 if not,
    naming what is missing. After `dr activate-remote`, once the city centres are back: rebuilds
    the main cluster as a standby cluster of the remote primary (the first call starts it, later
    ones say how far it is; then `dr failback`)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.dr_operation(app_name, "reprotect", vdc, component=component)
    if output is Fmt.json:
        emit(r, output)
    elif r["protected"]:
        out.print("protected" + ("; next: `dr failback`" if r.get("next") else ""))
    else:
        head = "rebuilding the main cluster" if r.get("rebuilding") else "NOT protected"
        out.print(f"{head}: " + "; ".join(r["problems"]))
    if not r["protected"]:
        raise typer.Exit(1)


@dr_app.command("activate-remote")
def activate_remote(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    component: str | None = typer.Option(None, "--component", help="The database (default: the app's first)."),
    note: str = typer.Option("", "--note", help="Why, for the approvers."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Production and same-city both lost: ask to promote the remote centre's standby cluster.
    Refused while the main cluster has a running primary. Held for approval (approval rules that
    say `--activations`, else a system administrator other than you); once approved, the DR
    controller checks that no old primary accepts writes, fences the main cluster and promotes
    the remote one. `dr reports` then tells the outcome and the data that could not be recovered."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.dr_operation(app_name, "activate-remote", vdc, component=component, note=note)
    _held(r, f"activating the remote centre of {app_name}", app_name, output)


def _held(r: dict[str, Any], what: str, app_name: str, output: Fmt) -> None:
    """An operation held for approval: who approves it, and what to run next."""
    if output is Fmt.json:
        emit(r, output)
        return
    approvers = " then ".join(" or ".join(st["approvers"]) for st in r["stages"])
    out.print(f"{what} is held for approval {r['id']} ({approvers}).")
    out.print(f"An approver runs `shanzhi approval approve {r['id']}`; then see `shanzhi dr reports --app {app_name}`.")


BACKUP_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("FINISHED", lambda r: str(r["finished_at"])[:19]),
    ("MEMBER", lambda r: r["body"].get("member")),
    ("BYTES", lambda r: f"{r['body'].get('bytes', 0):,}"),
    ("SECONDS", lambda r: r["body"].get("seconds")),
    ("WHY", lambda r: r["body"].get("why")),
]


@dr_app.command("backup")
def backup(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    component: str | None = typer.Option(None, "--component", help="The database (default: the app's first)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A base backup of the app's database now (its WAL is archived all the time; scheduled
    backups follow `spec.dr.backups`). Waits until it is done and prints the report."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        if output is not Fmt.json:
            out.print(f"backing up {app_name} (pg_basebackup from a running member) ...")
        r = c.dr_long(app_name, "backups", vdc, component=component)
    _show(r, output)


@dr_app.command("backups")
def backups(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    component: str | None = typer.Option(None, "--component"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """The kept base backups and the window a restore can reach."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.dr_backups(app_name, vdc, component)
    if output is Fmt.json:
        emit(r, output)
        return
    emit(r["backups"], output, BACKUP_COLS)
    if r["restorable_from"]:
        out.print(f"restorable from {r['restorable_from']} to {r['archived_until'] or '(nothing archived yet)'}")
    else:
        out.print("no base backup yet: nothing to restore from (`shanzhi dr backup`)")


@dr_app.command("restore")
def restore(
    app_name: str = typer.Argument(..., metavar="APP"),
    to: str = typer.Option(..., "--to", help="The time to restore to, with its zone (2026-12-06T10:00:00+08:00)."),
    vdc: str | None = typer.Option(None, "--vdc"),
    component: str | None = typer.Option(None, "--component"),
    in_place: bool = typer.Option(
        False, "--in-place", help="Restore the database itself: what was written after TIME is given up (approved)."
    ),
    note: str = typer.Option("", "--note", help="With --in-place: why, for the approvers."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A copy of the app's database as it was at TIME, on its own port (the running cluster is not
    touched): to read the past from, or to prove a backup restores. `dr cleanup` removes it.

    With --in-place, the database itself goes back to TIME: held for approval (rules that say
    `--activations`, else a system administrator other than you); the DR controller then
    recovers a copy, stops every member and starts the cluster again from it."""
    if in_place:
        with handle_errors(), Client(token=discover_token(data_dir)) as c:
            held = c.dr_operation(app_name, "restore-in-place", vdc, to=to, component=component, note=note)
        _held(held, f"restoring {app_name} in place to {to}", app_name, output)
        return
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        if output is not Fmt.json:
            out.print(f"restoring {app_name} to {to} (base backup, then the WAL archive replayed) ...")
        r = c.dr_long(app_name, "restore", vdc, to=to, component=component)
    if output is Fmt.json:
        emit(r, output)
    else:
        out.print(r["summary"])
        out.print(f"connect: {r['body']['connection']} (the app's password: `dr status --show-password`)")


@dr_app.command("cleanup")
def cleanup(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Stop and remove the app's restored copies."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.dr_long(app_name, "cleanup", vdc)
    if output is Fmt.json:
        emit(r, output)
    else:
        out.print(f"removed {len(r['removed'])} restored cop{'y' if len(r['removed']) == 1 else 'ies'}")


@dr_app.command("test")
def drill(
    app_name: str = typer.Argument(..., metavar="APP"),
    vdc: str | None = typer.Option(None, "--vdc"),
    component: str | None = typer.Option(None, "--component"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """A recovery drill: the newest backup and the WAL archive brought up to now in an isolated
    copy, checked, with its RTO and RPO measured; production is not touched. `dr cleanup`
    removes the copy."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        if output is not Fmt.json:
            out.print(f"drill: recovering {app_name} into a copy of its own ...")
        r = c.dr_long(app_name, "test", vdc, component=component)
    _show(r, output)
