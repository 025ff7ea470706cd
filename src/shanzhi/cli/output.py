"""Printing results as tables (default) or JSON (`-o json`), and errors on stderr."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shanzhi.client import ApiError, Unreachable
from shanzhi.domain.quantity import format_memory

# Piped output is never cut to 80 columns: scripts and logs get whole values.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 400)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class Fmt(StrEnum):
    table = "table"
    json = "json"


Columns = Sequence[tuple[str, Callable[[dict[str, Any]], Any]]]
OutputOpt = typer.Option(Fmt.table, "-o", "--output", help="Output format: table or json.")


def cpu(v: int | None) -> str:
    """Millicores as people write cpu: in cores (`20.4`, `0.1`, `8`); JSON keeps the integers."""
    return "-" if v is None else f"{int(v) / 1000:.3f}".rstrip("0").rstrip(".")


def mem(v: int | None) -> str:
    return "-" if v is None else format_memory(int(v))


def emit(data: Any, fmt: Fmt, columns: Columns | None = None) -> None:
    if fmt is Fmt.json:
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
        return
    rows = data if isinstance(data, list) else [data]
    if columns is None:
        for row in rows:
            for k, v in row.items():
                out.print(f"[bold]{k}[/]: {v}")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for title, _ in columns:
        table.add_column(title, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*("" if (v := get(row)) is None else escape(str(v)) for _, get in columns))
    out.print(table)
    if not rows:
        err.print("(none)")


def emit_followed(
    rows: list[dict[str, Any]],
    newer: Callable[[int], list[dict[str, Any]]],
    fmt: Fmt,
    columns: Columns,
    follow: bool,
) -> None:
    """Print `rows`; with `follow`, keep printing what `newer(last id)` returns, once a second.
    Followed JSON is one object per line (NDJSON), as `jq` and log shippers read streams."""

    def ndjson(batch: list[dict[str, Any]]) -> None:
        for r in batch:
            sys.stdout.write(json.dumps(r, default=str) + "\n")
        sys.stdout.flush()

    if follow and fmt is Fmt.json:
        ndjson(rows)
    else:
        emit(rows, fmt, columns)
    last = rows[-1]["id"] if rows else 0
    while follow:
        time.sleep(1)
        batch = newer(last)
        if not batch:
            continue
        if fmt is Fmt.json:
            ndjson(batch)
        else:
            for r in batch:
                out.print("  ".join(str(get(r)) for _, get in columns))
        last = batch[-1]["id"]


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn API and connection errors into a message on stderr and a non-zero exit."""
    try:
        yield
    except ApiError as e:
        p = e.problem
        err.print(f"[red]error[/] ({e.status} {p.get('title', '')}): {p.get('detail', e)}")
        for item in p.get("errors", [])[1:]:
            err.print(f"  {item.get('field')}: {item.get('message')}")
        raise typer.Exit(1) from None
    except Unreachable as e:
        err.print(f"[red]error[/]: {e}\nIs the server running? Start it with 'shanzhi serve' or set SHANZHI_URL.")
        raise typer.Exit(2) from None
