"""Where the garbage collector's full scans happen: in the full reconcile pass, not in any pass.

At city scale the reconciler holds a large, long-lived heap (every app's parsed spec, every
cloud's listing); at 20,000 apps CPython's full collection scans it in about 0.7 s, and it
comes every ten passes or so, whenever objects promoted since the last one exceed a quarter of
the heap. That pause landed in whichever pass it hit, and was most of the slowest apply to first
placement. `settle` runs the full collection itself, in the full pass (which is slow anyway and
runs every few minutes), then freezes what survived (`gc.freeze`), so the collector's later full
scans only look at objects made since. Unfreezing first lets what the last freeze kept and has
since become garbage be collected, so nothing leaks.
"""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("shanzhi.reconciler")


def settle() -> None:
    """Collect everything now and leave what survives out of the collector's later scans."""
    t = time.perf_counter()
    gc.unfreeze()
    found = gc.collect()
    gc.freeze()
    log.debug("heap settled: %d unreachable objects collected, %d frozen, in %.3f s",
              found, gc.get_freeze_count(), time.perf_counter() - t)  # fmt: skip
