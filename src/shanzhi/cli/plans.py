"""`shanzhi plan ...`: propose a rebalance or an evacuation, review the moves, apply them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from shanzhi.cli.output import Fmt, OutputOpt, emit, err, handle_errors, out
from shanzhi.client import Client, discover_token

plan_app = typer.Typer(help="Re-placement plans (CP-SAT): rebalance, evacuate, review, apply.", no_args_is_help=True)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")
TimeLimit = typer.Option(10.0, "--time-limit", help="Seconds the optimiser may search.")
Apply = typer.Option(False, "--apply", help="Apply the plan at once instead of only proposing it.")


def _show(p: dict[str, Any], output: Fmt) -> None:
    if output is Fmt.json:
        emit(p, output)
        return
    s = p["summary"]
    out.print(
        f"plan {p['id']} ({p['kind']}, {p['status']}): {s['moves']} moves, {s['stranded']} stranded, "
        f"solver {s['solver']} in {s['seconds']}s"
    )
    emit(
        p["moves"],
        output,
        [
            ("INSTANCE", lambda m: m["instance"]),
            ("FROM", lambda m: f"{m['from']['cloud']}/{m['from']['host']}"),
            ("TO", lambda m: f"{m['to']['cloud']}/{m['to']['host']}"),
            ("WHY", lambda m: m["reason"]),
        ],
    )
    if s.get("stranded_instances"):
        out.print(f"\n[yellow]stranded[/] (must leave {s['cloud']}, no room elsewhere):")
        emit([{"name": n} for n in s["stranded_instances"]], output, [("INSTANCE", lambda r: r["name"])])
    if p["status"] == "proposed" and p["kind"] == "evacuate":
        out.print(f"\n{s['cloud']} is fenced (no new placements) until this plan is applied or dropped")
    if p["status"] == "proposed":
        out.print(f"review, then: shanzhi plan apply {p['id']} (or set it aside: shanzhi plan drop {p['id']})")


def _propose(
    kind: str,
    cloud: str | None,
    target: float | None,
    time_limit: float,
    apply: bool,
    data_dir: Path | None,
    output: Fmt,
) -> None:
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        with err.status(f"planning ({kind}, up to {time_limit:.0f}s)"):
            p = c.propose_plan(kind, cloud, target, time_limit)
        if apply and p["moves"]:
            p = c.apply_plan(p["id"])
    _show(p, output)


@plan_app.command("rebalance")
def rebalance(
    target: float = typer.Option(0.75, "--target", help="Utilisation each host should stay under."),
    time_limit: float = TimeLimit,
    apply: bool = Apply,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Propose moves that bring hosts under the target utilisation with as few moves as possible."""
    _propose("rebalance", None, target, time_limit, apply, data_dir, output)


@plan_app.command("evacuate")
def evacuate(
    cloud: str,
    time_limit: float = TimeLimit,
    apply: bool = Apply,
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Propose moving every replica off CLOUD (for maintenance or a planned site shutdown)."""
    _propose("evacuate", cloud, None, time_limit, apply, data_dir, output)


@plan_app.command("get")
def get(plan_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Show a plan and its moves."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        _show(c.get_plan(plan_id), output)


@plan_app.command("apply")
def apply_cmd(plan_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Apply a plan: each replica is started on its target, and the old one stops once it is healthy."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        _show(c.apply_plan(plan_id), output)


@plan_app.command("drop")
def drop_cmd(plan_id: int, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Drop a proposed plan: nothing moves, and a cloud it fenced takes placements again."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        _show(c.drop_plan(plan_id), output)
