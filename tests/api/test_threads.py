"""The API's two pools of threads: a route marked `@slow` waits in a pool of its own, so a full
default pool (the quick routes') never waits for it, and FastAPI sees the route's parameters."""

from __future__ import annotations

import threading

import anyio
import anyio.to_thread
import httpx
from fastapi import FastAPI, Query

from shanzhi.api.threads import slow


def test_a_slow_route_never_takes_a_thread_of_the_quick_pool() -> None:
    release = threading.Event()
    app = FastAPI()

    @app.get("/slow")
    @slow
    def wait_long(n: int = Query(..., ge=1)) -> dict[str, int]:
        release.wait(10)
        return {"n": n}

    @app.get("/quick")
    def quick() -> dict[str, str]:
        return {"ok": "yes"}

    async def main() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1  # `serve --threads 1`
        transport = httpx.ASGITransport(app=app)
        async with (
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
            anyio.create_task_group() as tg,
        ):
            answers: list[httpx.Response] = []

            async def call_slow(n: int) -> None:
                answers.append(await client.get("/slow", params={"n": n}))

            for n in (1, 2, 3):  # three slow calls under way, more than the quick pool has threads
                tg.start_soon(call_slow, n)
            await anyio.sleep(0.2)
            with anyio.fail_after(5):  # ... and a quick route still answers
                assert (await client.get("/quick")).json() == {"ok": "yes"}
            assert answers == []  # the slow ones were still waiting then
            release.set()
            # the route's parameters are FastAPI's as without the mark: validated, documented
            assert (await client.get("/slow", params={"n": "0"})).status_code == 422
        assert sorted(r.json()["n"] for r in answers) == [1, 2, 3]
        params = app.openapi()["paths"]["/slow"]["get"]["parameters"]
        assert [(p["name"], p["required"]) for p in params] == [("n", True)]

    anyio.run(main)
