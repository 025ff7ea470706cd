"""`shanzhi audit ...`: read the audit trail and verify its hash chain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from shanzhi.cli.output import Fmt, OutputOpt, emit, err, handle_errors, out
from shanzhi.client import Client, discover_token

audit_app = typer.Typer(help="The audit trail: who did what, from where, with what outcome.", no_args_is_help=True)
DataDirOpt = typer.Option(
    None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (its audit.token, if you have not logged in)."
)


@audit_app.command("list")
def list_cmd(
    since: int = typer.Option(0, "--since", help="Only records after this id."),
    limit: int = typer.Option(50, "--limit", help="How many records."),
    actor: str | None = typer.Option(None, "--actor", help="Only this user's records."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Show audit records in order (audit administrators)."""
    with handle_errors(), Client(token=discover_token(data_dir, fallback="audit.token")) as c:
        rows = c.audit_records(since, limit, actor)
    emit(
        rows,
        output,
        [
            ("ID", lambda r: r["id"]),
            ("TIME", lambda r: str(r["at"])[:19]),
            ("ACTOR", lambda r: r["actor"]),
            ("ROLE", lambda r: r.get("role", "")),
            ("FROM", lambda r: r["source"]),
            ("REQUEST", lambda r: f"{r['method']} {r['path']}"),
            ("STATUS", lambda r: r["status"]),
            ("OUTCOME", lambda r: r["outcome"]),
        ],
    )


@audit_app.command("verify")
def verify(
    database_url: str | None = typer.Option(
        None, "--database-url", help="Verify this database directly (no server needed)."
    ),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Recompute the audit hash chain; exit 1 naming the first edited, deleted or moved record."""
    if database_url:
        result = _verify_offline(database_url)
    else:
        with handle_errors(), Client(token=discover_token(data_dir, fallback="audit.token")) as c:
            result = c.audit_verify()
    if output is Fmt.json:
        emit(result, output)
    elif result["ok"]:
        out.print(f"OK: {result['records']} audit records form an unbroken chain")
        copies = result.get("ledger_copies")
        if copies:
            out.print(
                f"OK: {copies['checked']} have their commitment in the directory ledger"
                + (f" ({copies['pending']} on their way)" if copies["pending"] else "")
            )
    if not result["ok"]:
        err.print(f"[red]error[/]: audit trail does not verify: {result['problem']}")
        raise typer.Exit(1)


def _verify_offline(database_url: str) -> dict[str, Any]:
    """The chain and the ledger copies, straight from the database (keys from its key registry)."""
    from sqlalchemy import select

    from shanzhi.ledger.audit_copies import check_copies
    from shanzhi.ledger.log import Log
    from shanzhi.ledger.note import Verifier
    from shanzhi.store import open_database
    from shanzhi.store.audit import verify_chain
    from shanzhi.store.tables import LedgerKey

    db = open_database(database_url)
    try:
        with db.reader.connect() as conn:
            rep = verify_chain(conn)
            keys = {r.name: Verifier.decode(r.vkey) for r in conn.execute(select(LedgerKey.name, LedgerKey.vkey))}
            copies = check_copies(conn, Log(db), keys.get)
    finally:
        db.dispose()
    problems = [p for p in (rep.problem, copies.problem()) if p]
    return {
        "ok": rep.ok and copies.ok,
        "records": rep.records,
        "problem": "; ".join(problems),
        "ledger_copies": copies.summary(),
    }


@audit_app.command("prune")
def prune(
    before: str | None = typer.Option(
        None, "--before", help="Remove records before this UTC time (default and latest: now minus the retention)."
    ),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Remove records older than the retention period (audit administrators; the server also
    does this hourly). The chain stays verifiable from an anchor."""
    with handle_errors(), Client(token=discover_token(data_dir, fallback="audit.token")) as c:
        r = c.audit_prune(before)
    if output is Fmt.json:
        emit(r, output)
    else:
        out.print(f"pruned {r['pruned']} records before {str(r['before'])[:19]}")
