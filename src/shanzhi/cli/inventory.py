"""`shanzhi inventory ...` and `shanzhi adopt`: what every cloud has, and bringing what Shanzhi
did not create (a legacy system) under management without restarting it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, handle_errors, out
from shanzhi.client import Client, discover_token

inventory_app = typer.Typer(
    help="What every cloud has: hosts, servers (Shanzhi's and others'), volumes, networks, images, flavors.",
    no_args_is_help=True,
)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")

ITEM_COLS: Columns = [
    ("CLOUD", lambda r: r["cloud"]),
    ("KIND", lambda r: r["kind"]),
    ("ID", lambda r: r["external_id"]),
    ("NAME", lambda r: r["name"]),
    ("STATE", lambda r: r["state"]),
    ("MANAGED", lambda r: r["instance"] or ("yes" if r["managed"] else "NO")),
]
SYNC_COLS: Columns = [
    ("CLOUD", lambda r: r["cloud"]),
    ("KIND", lambda r: r["kind"]),
    ("SYNCED", lambda r: (r["synced_at"] or "never")[:19]),
    ("SECONDS", lambda r: "" if r["seconds"] is None else f"{r['seconds']:.2f}"),
    ("ITEMS", lambda r: r["items"]),
    ("CHANGED", lambda r: r["changed"]),
    ("BY", lambda r: r.get("mode") or "-"),
    ("ERROR", lambda r: (f"({r['failures']}x) " if r["failures"] else "") + r["error"][:80]),
]


@inventory_app.command("list")
def inventory_list(
    cloud: str | None = typer.Option(None, "--cloud", help="Only this cloud."),
    kind: str | None = typer.Option(None, "--kind", help="host, server, volume, network, image or flavor."),
    unmanaged: bool = typer.Option(False, "--unmanaged", help="Only what Shanzhi did not create (to adopt)."),
    limit: int = typer.Option(1000, "--limit", min=1, help="At most this many items (fetched in pages)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """List the inventory, as last synced (see 'inventory syncs' for when)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        rows: list[dict[str, Any]] = []
        while len(rows) < limit:
            page = c.inventory(cloud, kind, unmanaged, after=rows[-1]["id"] if rows else 0, limit=min(1000, limit))
            rows += page[: limit - len(rows)]
            if len(page) < min(1000, limit):
                break
        emit(rows, output, ITEM_COLS)


@inventory_app.command("syncs")
def inventory_syncs(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Each cloud's last inventory sync: when, how long, how many items, what changed, its error."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.inventory_syncs(), output, SYNC_COLS)


@inventory_app.command("sync")
def inventory_sync(
    cloud: str | None = typer.Option(None, "--cloud", help="Only this cloud (default: all)."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Sync now instead of at the next interval (see the result with 'inventory syncs')."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.inventory_sync(cloud)
        if output is Fmt.json:
            emit(r, output)
        else:
            out.print(f"sync requested for {', '.join(r['clouds']) or 'no cloud'}")


def adopt(
    ids: list[str] = typer.Argument(..., help="The servers' ids on the cloud (from 'inventory list --unmanaged')."),
    cloud: str = typer.Option(..., "--cloud", help="The cloud they run on."),
    vdc: str = typer.Option(..., "--vdc", help="The VDC the new app goes in."),
    app_name: str = typer.Option(..., "--app", help="The new app's name."),
    component: str = typer.Option("main", "--component", help="The component the servers become replicas of."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the spec adopting would write; change nothing."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Bring servers Shanzhi did not create under management as a new app, without restarting
    them: from then on they are healed, metered and audited like any replica."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.adopt(cloud, ids, vdc, app_name, component, dry_run)
        if output is Fmt.json:
            emit(r, output)
            return
        if dry_run:
            out.print(yaml.safe_dump(r["spec"], sort_keys=False), end="")
            return
        out.print(f"app/{app_name} ({vdc}) adopted {len(ids)} servers from {cloud}: {', '.join(r['instances'])}")
