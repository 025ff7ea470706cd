"""Pinned ledger keys, as SSH's known_hosts pins host keys: `ledger prove` checks a checkpoint
against the key it saw first for that log (or one given with --log-key), never only against
whatever the same server sends along with the proof."""

from __future__ import annotations

import json
import os
from pathlib import Path

from shanzhi.files import write_private


def known_logs_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "shanzhi" / "known_logs.json"


def load() -> dict[str, str]:
    try:
        data = json.loads(known_logs_file().read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def pin(origin: str, vkey: str) -> Path:
    """Remember `vkey` as the key of the log named `origin`."""
    logs = load()
    logs[origin] = vkey
    path = known_logs_file()
    write_private(path, json.dumps(logs, indent=2, sort_keys=True))
    return path
