"""/ledger: the tlog-tiles read API, entry submission, proofs, keys and a live change feed."""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from shanzhi.api.audit import transaction
from shanzhi.api.deps import Runtime, runtime
from shanzhi.api.schemas import MAX_ID, Id
from shanzhi.domain.errors import InvalidInput, NotFound
from shanzhi.ledger.merkle import leaf_hash
from shanzhi.ledger.note import NoteError
from shanzhi.ledger.service import Ledger, SubmissionError
from shanzhi.ledger.verify import parse_tile_index

router = APIRouter(prefix="/ledger", tags=["ledger"])
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


async def _ledger(rt: Runtime = Depends(runtime)) -> Ledger:
    if rt.ledger is None:
        raise NotFound("the ledger is not enabled on this server")
    return rt.ledger


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


class SubmitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entries: list[str] = Field(min_length=1, max_length=10_000, description="signed entries (C2SP signed notes)")


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    vkey: str
    role: str = Field(pattern="^(department|witness)$")


@router.get("/status")
def status(led: Ledger = Depends(_ledger)) -> dict[str, Any]:
    size = led.log.refresh()
    latest = led.latest_checkpoint()
    return {
        "origin": led.origin,
        "log_key": led.signer.verifier.encode(),
        "size": size,
        "root": b64(led.log.root()),
        "checkpoint": latest,
        "witnesses": [{"url": w.url, "key": w.verifier.encode()} for w in led.witnesses],
        "quorum": led.quorum,
    }


@router.get("/checkpoint", response_class=PlainTextResponse)
def checkpoint(led: Ledger = Depends(_ledger)) -> Response:
    note = led.latest_checkpoint()
    if note is None:
        raise NotFound("no checkpoint has been published yet")
    return PlainTextResponse(note, headers={"Cache-Control": "no-cache, max-age=1"})


@router.get("/checkpoints")
def checkpoints(since: int = Query(0, ge=0, le=MAX_ID), led: Ledger = Depends(_ledger)) -> list[dict[str, Any]]:
    return [{"size": s, "note": n} for s, n in led.checkpoints(since)]


_LEVELS = {str(n) for n in range(64)}


@router.get("/tile/{path:path}")
def tile(request: Request, path: str, led: Ledger = Depends(_ledger)) -> Response:
    """A tile or entry bundle (C2SP tlog-tiles), gzip-compressed when the client accepts it."""
    kind, _, rest = path.partition("/")
    try:  # only the canonical encoding names a tile (tlog-tiles): anything else is not found
        idx, width = parse_tile_index(rest)
    except ValueError as err:
        raise NotFound(f"no tile {path!r}: {err}") from None
    led.log.refresh()
    if kind == "entries":
        data = led.log.bundle(idx, width)
    elif kind in _LEVELS:
        data = led.log.tile(int(kind), idx, width)
    else:
        raise NotFound(f"no tile {path!r}: bad tile level {kind!r}")
    if data is None:
        raise NotFound(f"no tile {path}")
    headers = {**IMMUTABLE, "Vary": "Accept-Encoding"}
    if _accepts_gzip(request.headers.get("accept-encoding", "")):
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime 0: the same bytes every time
        headers["Content-Encoding"] = "gzip"
    return Response(data, media_type="application/octet-stream", headers=headers)


def _accepts_gzip(accept: str) -> bool:
    for part in accept.split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "").lower() not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


@router.post("/entries", status_code=201)
def submit(request: Request, body: SubmitIn, led: Ledger = Depends(_ledger)) -> list[dict[str, Any]]:
    """The entries are the record of what was submitted; the audit record says who sent them.
    Entries are durable when acknowledged; if the audit record then fails, the request fails."""
    request.state.target = f"{len(body.entries)} ledger entries"
    with transaction(request):
        try:
            done = led.submit([e.encode() for e in body.entries])
        except SubmissionError as err:
            raise InvalidInput(str(err), field=f"entries[{err.index}]") from None
    return [{"index": i, "leaf": b64(h)} for i, h in done]


@router.get("/entries/{index}")
def entry(index: Id, led: Ledger = Depends(_ledger)) -> dict[str, Any]:
    led.log.refresh()
    if not 0 <= index < led.log.size:
        raise NotFound(f"no entry {index}: the log has {led.log.size}")
    data = led.log.entry(index)
    return {"index": index, "leaf": b64(leaf_hash(data)), "entry": data.decode(errors="replace")}


@router.get("/proof/inclusion")
def inclusion(
    index: int = Query(..., ge=0, le=MAX_ID),
    size: int | None = Query(None, ge=1, le=MAX_ID),
    led: Ledger = Depends(_ledger),
) -> dict[str, Any]:
    n = led.log.refresh() if size is None else size
    if index >= n or n > led.log.refresh():
        raise InvalidInput(f"no entry {index} in a tree of size {n} (the log has {led.log.size})", field="index")
    return {
        "index": index,
        "size": n,
        "leaf": b64(leaf_hash(led.log.entry(index))),
        "root": b64(led.log.root_at(n)),
        "proof": [b64(p) for p in led.log.inclusion_proof(index, n)],
    }


@router.get("/proof/consistency")
def consistency(
    old: int = Query(..., ge=1, le=MAX_ID),
    new: int | None = Query(None, ge=1, le=MAX_ID),
    led: Ledger = Depends(_ledger),
) -> dict[str, Any]:
    n = led.log.refresh() if new is None else new
    if old > n or n > led.log.size:
        raise InvalidInput(f"no consistency proof from {old} to {n} (the log has {led.log.size})", field="old")
    return {
        "old": old,
        "new": n,
        "old_root": b64(led.log.root_at(old)),
        "new_root": b64(led.log.root_at(n)),
        "proof": [b64(p) for p in led.log.consistency_proof(old, n)],
    }


@router.get("/keys")
def keys(led: Ledger = Depends(_ledger)) -> list[dict[str, str]]:
    return [{"name": n, "vkey": v.encode()} for n, v in sorted(led.keys().items())]


@router.post("/keys", status_code=201)
def add_key(request: Request, body: KeyIn, led: Ledger = Depends(_ledger)) -> dict[str, str]:
    request.state.target = f"{body.role} key {body.name}"
    with transaction(request):
        try:
            v = led.register_key(body.name, body.vkey, body.role)
        except NoteError as err:
            raise InvalidInput(str(err), field="vkey") from None
    return {"name": v.name, "vkey": v.encode()}


@router.get("/watch")
async def watch(
    request: Request, start: int = Query(0, ge=0, le=MAX_ID, alias="from"), led: Ledger = Depends(_ledger)
) -> StreamingResponse:
    """Server-sent events: every entry from `from` on, as it is acknowledged."""

    async def stream() -> AsyncIterator[str]:
        nxt = start
        yield ": shanzhi ledger feed\n\n"
        while not await request.is_disconnected():
            size = await run_in_threadpool(led.log.refresh)
            if size > nxt:
                batch = await run_in_threadpool(led.log.entries, nxt, min(size, nxt + 1000))
                for e in batch:
                    doc = {"index": nxt, "leaf": b64(leaf_hash(e)), "entry": e.decode(errors="replace")}
                    yield f"id: {nxt}\nevent: entry\ndata: {json.dumps(doc)}\n\n"
                    nxt += 1
                continue
            await run_in_threadpool(led.log.wait_for_growth, nxt, 0.25)
            await asyncio.sleep(0)

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
