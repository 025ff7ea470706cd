"""`shanzhi app metrics`: an app's use per replica, as the API keeps it (the console charts the same)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from shanzhi.cli.apps import DataDirOpt, client
from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, handle_errors, out


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value / 1024:.1f}"


COLS: Columns = [
    ("INSTANCE", lambda r: r["instance"]),
    ("COMPONENT", lambda r: r["component"]),
    ("AT", lambda r: str(r["at"])[:19]),
    ("CPU", lambda r: f"{r['cpu']:.3f}"),
    ("MEMORY MiB", lambda r: "" if r["memory"] is None else f"{r['memory'] / 2**20:.1f}"),
    ("RX KiB/s", lambda r: _rate(r["rx"])),
    ("TX KiB/s", lambda r: _rate(r["tx"])),
    ("READ KiB/s", lambda r: _rate(r["read"])),
    ("WRITE KiB/s", lambda r: _rate(r["write"])),
    ("OWN", lambda r: " ".join(f"{k}={v:.4g}" for k, v in sorted(r.get("custom", {}).items()))),
]


def app_metrics(
    name: str,
    vdc: str | None = typer.Option(None, "--vdc", help="The app's VDC (when the name is in several)."),
    since: str = typer.Option("1h", "--since", help="How far back: 15m, 6h, 7d (minutes up to a day, hours to 90d)."),
    instance: str | None = typer.Option(None, "--instance", help="Only this replica."),
    history: bool = typer.Option(False, "--history", help="Every stored point, not only each replica's latest."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Each replica's cpu (cores), memory and I/O rates, and the metrics it exports itself (OWN:
    gauges as read, counters per second): the latest sample, or the stored history."""
    with handle_errors(), client(data_dir) as c:
        found: dict[str, Any] = c.app_metrics(name, vdc, since, instance)
    if output is Fmt.json:
        emit(found, output)
        return
    rows = found["points"] if history else found["latest"]
    emit(rows, output, COLS)
    if not rows:
        out.print("no samples yet: the first arrive within a sampling interval (serve --metrics-interval)")
