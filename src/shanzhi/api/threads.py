"""Where the API's blocking work runs: two pools of threads per process.

Starlette runs every sync route and dependency in anyio's default pool. On two cores a large
pool is slower, not faster: forty threads that all want the interpreter take turns at its lock,
and a request that needs it several times waits behind each of them (`bench/api.py --threads`:
p99 of an authenticated read 79 ms with 40 threads, 40 ms with 4). So the default pool is small
(`serve --threads`, 4), for the work that is over in a millisecond or two: lookups, reads,
applies. Work that waits on something else for seconds (a base backup, a drill, a switchover,
an image build, a cloud's API, single sign-on's provider) would fill a small pool and stall
every read behind it: those routes are marked `@slow` and run in a pool of their own
(`SLOW_THREADS`), which the quick ones never wait for.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

SLOW_THREADS = 32

P = ParamSpec("P")
T = TypeVar("T")

# one per event loop, as anyio keeps its own default limiter (a test client runs a loop of its own)
_SLOW: RunVar[anyio.CapacityLimiter] = RunVar("shanzhi_slow_threads")


def _limiter() -> anyio.CapacityLimiter:
    try:
        return _SLOW.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(SLOW_THREADS)
        _SLOW.set(limiter)
        return limiter


def slow(route: Callable[P, T]) -> Callable[P, Awaitable[T]]:
    """A sync route that may wait for seconds, run in the slow pool (FastAPI sees the same
    parameters: `functools.wraps` keeps the signature)."""

    @functools.wraps(route)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return await anyio.to_thread.run_sync(functools.partial(route, *args, **kwargs), limiter=_limiter())

    return run
