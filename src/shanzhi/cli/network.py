"""`shanzhi flows`: east-west traffic between workloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, emit_followed, handle_errors
from shanzhi.client import Client, discover_token

DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")


def _end(r: dict[str, Any], side: str) -> str:
    app = r[f"{side}_app"]
    where = f"{r[f'{side}_vdc']}/{app}" if app else "-"
    return f"{where} {r[side]}"


FLOW_COLS: Columns = [
    ("STARTED", lambda r: str(r["started_at"])[11:19]),
    ("VERDICT", lambda r: r["verdict"]),
    ("PROTO", lambda r: r["proto"]),
    ("FROM", lambda r: f"{_end(r, 'src')}:{r['sport']}"),
    ("TO", lambda r: f"{_end(r, 'dst')}:{r['dport']}"),
    ("PKTS", lambda r: f"{r['packets_out']}/{r['packets_in']}"),
    ("BYTES", lambda r: f"{r['bytes_out']}/{r['bytes_in']}"),
    ("RULE", lambda r: r["rule"]),
    ("ENDED", lambda r: str(r["ended_at"])[11:19] if r["ended_at"] else "open"),
]
HOUR_COLS: Columns = [
    ("HOUR", lambda r: str(r["hour"])[:13]),
    ("FROM", lambda r: f"{r['src_vdc']}/{r['src_app']}" if r["src_app"] else "-"),
    ("TO", lambda r: f"{r['dst_vdc']}/{r['dst_app']}" if r["dst_app"] else "-"),
    ("VERDICT", lambda r: r["verdict"]),
    ("PORT", lambda r: f"{r['dport']}/{r['proto']}"),
    ("FLOWS", lambda r: r["flows"]),
    ("PACKETS", lambda r: r["packets"]),
    ("BYTES", lambda r: r["bytes"]),
]


def flows(
    app_name: str | None = typer.Option(None, "--app", help="Flows from or to this app."),
    vdc: str | None = typer.Option(None, "--vdc", help="Flows from or to this VDC (and its subtree)."),
    verdict: str | None = typer.Option(None, "--verdict", help="forwarded or dropped."),
    since: str | None = typer.Option(None, "--since", help="Started this long ago or later: 30s, 10m, 2h, 1d."),
    limit: int = typer.Option(50, "--limit", help="How many of the latest flows."),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new flows."),
    hourly: bool = typer.Option(
        False, "--hourly", help="Sums per hour and app pair instead (kept 90 days; --since defaults to 1d)."
    ),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """East-west traffic on tenant networks: one record per connection (bytes and packets both
    ways, updated while it lasts) and per dropped 5-tuple, with both ends' VDC and app and the
    rule that let it in or dropped it. With -f and -o json, one JSON object per line."""
    if hourly:
        with handle_errors(), Client(token=discover_token(data_dir)) as c:
            emit(c.flow_hours(app_name, vdc, since or "1d"), output, HOUR_COLS)
        return
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        rows = c.flows(app_name, vdc, verdict, since, limit=limit)

        def newer(last: int) -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = c.flows(app_name, vdc, verdict, since, after=last, limit=5000)
            return found

        emit_followed(rows, newer, output, FLOW_COLS, follow)
