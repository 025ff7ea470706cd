"""`shanzhi approval ...`, `shanzhi rate ...`, `shanzhi bill`: approvals, prices and chargeback."""

from __future__ import annotations

import csv
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer

from shanzhi.cli.output import Columns, Fmt, OutputOpt, cpu, emit, err, handle_errors, out
from shanzhi.client import Client, discover_token

approval_app = typer.Typer(help="Applies held for approval, and the rules that hold them.", no_args_is_help=True)
rate_app = typer.Typer(help="Prices per cloud (yuan per unit-hour).", no_args_is_help=True)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")

REQUEST_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("APP", lambda r: f"{r['vdc']}/{r['app']}"),
    ("ACTION", lambda r: r["action"]),
    ("REQUESTER", lambda r: r["requester"]),
    ("STATUS", lambda r: r["status"]),
    ("STAGE", lambda r: f"{min(r['stage'] + 1, len(r['stages']))}/{len(r['stages'])}"),
    ("WAITING FOR", lambda r: ", ".join(r["stages"][r["stage"]]["approvers"]) if r["status"] == "pending" else ""),
    ("EXPIRES", lambda r: str(r["expires_at"])[:19]),
    ("WHY", lambda r: "; ".join(f"{x['rule']}: {x['why']}" for x in r["reasons"])),
]


def _conditions(c: dict[str, Any]) -> str:
    """A rule's conditions as they were given: `cpu over 8`, not `cpuOver=8000`."""
    parts = []
    for k, v in c.items():
        if k == "cpuOver":
            parts.append(f"cpu over {cpu(v) if isinstance(v, int) else v}")
        elif k == "sites":
            parts.append(f"sites {','.join(v)}")
        elif v is True:
            parts.append(k)
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts)


RULE_COLS: Columns = [
    ("ID", lambda r: r["id"]),
    ("VDC", lambda r: r["vdc"]),
    ("NAME", lambda r: r["name"]),
    ("CONDITIONS", lambda r: _conditions(r["conditions"])),
    ("STAGES", lambda r: " -> ".join("|".join(st) for st in r["stages"])),
    ("EXPIRE", lambda r: f"{r['expire_hours']}h"),
]
RATE_COLS: Columns = [
    ("CLOUD", lambda r: r["cloud"]),
    ("CPU/CORE-H", lambda r: r["cpu_core_hour"]),
    ("MEMORY/GIB-H", lambda r: r["memory_gib_hour"]),
    ("STORAGE/GIB-H", lambda r: r["storage_gib_hour"]),
    ("CURRENCY", lambda r: r["currency"]),
]
BILL_FIELDS = ("vdc", "cloud", "instance_hours", "cpu_core_hours", "memory_gib_hours", "storage_gib_hours", "cost")


def _client(data_dir: Path | None) -> Client:
    return Client(token=discover_token(data_dir))


def _show(r: dict[str, Any], output: Fmt) -> None:
    if output is Fmt.json:
        emit(r, output)
        return
    emit(r, output, REQUEST_COLS)
    for i, st in enumerate(r["stages"], 1):
        done = f"{st['decision']} by {st['by']}" if st["decision"] else "waiting"
        out.print(f"  stage {i} ({st['rule']} in {st['vdc']}): {' | '.join(st['approvers'])}: {done}")
    for c in r["comments"]:
        out.print(f"  {str(c['at'])[:19]} {c['by']}: {c['text']}")
    if r["outcome"]:
        out.print(f"  outcome: {r['outcome']}")


@approval_app.command("list")
def approval_list(
    status: str | None = typer.Option(None, "--status", help="pending, approved, rejected, expired or failed"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Requests you made, may decide, or can see in your VDCs."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.list_approvals(status), output, REQUEST_COLS)


@approval_app.command("get")
def approval_get(request_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Show a request: its stages, decisions, comments and the spec it holds."""
    with handle_errors(), _client(data_dir) as c:
        _show(c.get_approval(request_id), output)


@approval_app.command("approve")
def approval_approve(
    request_id: int,
    comment: str = typer.Option("", "--comment", "-m", help="Why."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Pass the current stage; passing the last one carries out the held apply or delete."""
    with handle_errors(), _client(data_dir) as c:
        _show(c.decide(request_id, True, comment), output)


@approval_app.command("reject")
def approval_reject(
    request_id: int,
    comment: str = typer.Option("", "--comment", "-m", help="Why."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Reject the request: nothing is applied or deleted."""
    with handle_errors(), _client(data_dir) as c:
        _show(c.decide(request_id, False, comment), output)


@approval_app.command("comment")
def approval_comment(request_id: int, text: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Add a comment to a request."""
    with handle_errors(), _client(data_dir) as c:
        _show(c.comment(request_id, text), output)


@approval_app.command("rules")
def rule_list(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """List approval rules in the VDCs you can see."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.list_rules(), output, RULE_COLS)


@approval_app.command("add-rule")
def rule_add(
    vdc: str,
    name: str,
    cpu_over: str | None = typer.Option(None, "--cpu-over", help="Hold apps asking for more cpu than this."),
    site: list[str] = typer.Option(None, "--site", help="Hold apps that may run in this site (repeatable)."),
    always: bool = typer.Option(False, "--always", help="Hold every apply."),
    deletes: bool = typer.Option(False, "--deletes", help="Hold every delete of an app."),
    activations: bool = typer.Option(
        False, "--activations", help="Who approves activating a remote DR centre (default: a system administrator)."
    ),
    stage: list[str] = typer.Option(
        ..., "--stage", help="Approvers of one stage, comma-separated (user or role:<role>); repeat, in order."
    ),
    expire_hours: int = typer.Option(72, "--expire-hours", help="Pending requests expire after this."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Hold matching applies (or deletes) in VDC (and below) for approval, e.g.
    `shanzhi approval add-rule gz/health big --cpu-over 8 --stage role:vdc-admin --stage li.wei`."""
    conditions: dict[str, Any] = {}
    if cpu_over is not None:
        conditions["cpuOver"] = cpu_over
    if site:
        conditions["sites"] = list(site)
    if always:
        conditions["always"] = True
    if deletes:
        conditions["deletes"] = True
    if activations:
        conditions["activations"] = True
    stages = [[a.strip() for a in st.split(",") if a.strip()] for st in stage]
    with handle_errors(), _client(data_dir) as c:
        emit(c.add_rule(vdc, name, conditions, stages, expire_hours), output, RULE_COLS)


@approval_app.command("remove-rule")
def rule_remove(rule_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Remove an approval rule (pending requests it made stay pending)."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.delete_rule(rule_id), output, RULE_COLS)


# ------------------------------------------------------------------ rates and bills
@rate_app.command("list")
def rate_list(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Prices per cloud."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.list_rates(), output, RATE_COLS)


@rate_app.command("set")
def rate_set(
    cloud: str,
    cpu: str = typer.Option("0", "--cpu", help="Per core-hour, e.g. 0.05"),
    memory: str = typer.Option("0", "--memory", help="Per GiB-hour"),
    storage: str = typer.Option("0", "--storage", help="Per GiB-hour"),
    currency: str = typer.Option("CNY", "--currency"),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Set a cloud's prices (system administrators)."""
    with handle_errors(), _client(data_dir) as c:
        emit(c.set_rate(cloud, cpu, memory, storage, currency), output, RATE_COLS)


def _when(value: str | None, default: datetime, name: str) -> str:
    if value is None:
        return default.isoformat()
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]error[/]: --{name} {value!r} is not a date like 2026-11-01 or 2026-11-01T08:00")
        raise typer.Exit(1) from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).isoformat()


def bill(
    vdc: str | None = typer.Option(None, "--vdc", help="A VDC subtree (default: all you may see)."),
    start: str | None = typer.Option(None, "--from", help="Start (UTC date or time; default: this month)."),
    end: str | None = typer.Option(None, "--to", help="End, exclusive (default: now)."),
    output: str = typer.Option("table", "-o", "--output", help="table, csv or json."),
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Chargeback: metered use and cost per VDC and cloud over a period."""
    if output not in ("table", "csv", "json"):
        err.print(f"[red]error[/]: -o {output!r}: use table, csv or json")
        raise typer.Exit(1)
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with handle_errors(), _client(data_dir) as c:
        b = c.bill(_when(start, month, "from"), _when(end, now, "to"), vdc)
    if output == "json":
        emit(b, Fmt.json)
        return
    if output == "csv":
        w = csv.writer(sys.stdout)
        w.writerow([*BILL_FIELDS, "currency"])
        for ln in b["lines"]:
            w.writerow([ln[k] for k in (*BILL_FIELDS, "currency")])
        w.writerow(["TOTAL", "", *(b["total"].get(k, "0") for k in BILL_FIELDS[2:]), ""])
        return
    cols: Columns = [(k.upper().replace("_", " "), lambda r, k=k: r[k]) for k in BILL_FIELDS]  # type: ignore[misc]
    emit(b["lines"], Fmt.table, cols)
    t = b["total"]
    out.print(
        f"total {b['from'][:10]} .. {b['to'][:10]}: {t.get('cost', '0')} "
        f"({t.get('cpu_core_hours', '0')} core-h, {t.get('memory_gib_hours', '0')} GiB-h memory)"
    )
    if b["unpriced_clouds"]:
        err.print(f"no rates for {', '.join(b['unpriced_clouds'])}: counted at 0; set them with 'shanzhi rate set'")
