"""The witness as an HTTP service (`shanzhi witness serve`): POST /add-checkpoint."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from shanzhi.ledger.witness import WitnessState


def witness_app(state: WitnessState) -> FastAPI:
    app = FastAPI(title="Shanzhi witness", docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/add-checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        body = (await request.body()).decode(errors="replace")
        a = await run_in_threadpool(state.add_checkpoint, body)
        return Response(a.body, status_code=a.status, media_type=a.content_type)

    @app.get("/status")
    def status() -> dict[str, object]:
        logs = {}
        for origin in state.logs:
            got = state.latest(origin)
            logs[origin] = {"size": got[0] if got else 0}
        return {"name": state.signer.name, "key": state.signer.verifier.encode(), "logs": logs}

    return app
