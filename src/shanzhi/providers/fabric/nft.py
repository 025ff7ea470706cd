"""nftables in a namespace, through `nft -j` (libnftables' JSON): apply a ruleset, read counters.

The JSON document is applied with one `nft -j -f -`, which is one kernel transaction: a host
has the old ruleset or the new one, never half. (`python3-nftables` wraps the same library but
lives only in Debian's Python, not in a virtualenv; the command is the portable way in.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from shanzhi.domain.errors import ProviderError
from shanzhi.network.policy import FAMILY, TABLE


def available() -> str | None:
    """Why nftables cannot be used here, or None."""
    return None if shutil.which("nft") else "the nft command is missing (apt-get install nftables)"


def _nft(ns: str, args: list[str], stdin: str | None = None) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", *args], input=stdin, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ProviderError(f"nft in {ns}: {done.stderr.strip()[:2000]}")
    return done.stdout


def apply(ns: str, document: dict[str, Any]) -> None:
    _nft(ns, ["-j", "-f", "-"], json.dumps(document))


def counters(ns: str) -> dict[str, tuple[int, int]]:
    """Named counters of Shanzhi's table in the namespace: name -> (packets, bytes)."""
    try:
        out = _nft(ns, ["-j", "list", "counters", "table", FAMILY, TABLE])
    except ProviderError:
        return {}
    found: dict[str, tuple[int, int]] = {}
    for item in json.loads(out).get("nftables", []):
        c = item.get("counter")
        if c:
            found[str(c["name"])] = (int(c["packets"]), int(c["bytes"]))
    return found
