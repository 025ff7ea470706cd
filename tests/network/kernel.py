"""What the tenant-network tests need from the machine: root, network namespaces, nftables.

Without them those tests skip saying why; CI sets SHANZHI_REQUIRE_NETNS=1 and fails instead.
Each test gets a pool of its own (two xdist workers build fabrics at once, and each fabric routes
its pool in the root namespace).
"""

from __future__ import annotations

import itertools
import os

import pytest

from shanzhi.providers.fabric.member import unavailable

REQUIRE = bool(os.environ.get("SHANZHI_REQUIRE_NETNS"))
_counter = itertools.count()


def skip_unless_netns() -> None:
    why = unavailable()
    if why is None:
        return
    if REQUIRE:
        pytest.fail(f"tenant-network tests required (SHANZHI_REQUIRE_NETNS=1) but: {why}")
    pytest.skip(why)


def fresh_pool() -> str:
    """A /20 no other running test uses: 10.(200 + worker).(16 k).0/20."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return f"10.{200 + worker % 50}.{(next(_counter) % 16) * 16}.0/20"
