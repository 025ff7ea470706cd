"""The ledger's REST surface in-process: tiles, submissions, proofs, keys, errors."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from shanzhi.ledger.entries import make_entry
from shanzhi.ledger.merkle import verify_consistency, verify_inclusion
from shanzhi.ledger.note import Signer, Verifier, verify
from tests.api.conftest import bearer, delivered

DEPT = Signer.generate("gz.gov.cn/health")


def b(s: str) -> bytes:
    return base64.b64decode(s)


def access(i: int) -> str:
    return make_entry(DEPT, "access", "catalog/c", {"catalog": "c", "consumer": "x", "records": i}).decode()


def test_submit_prove_and_read_tiles(api: TestClient, tokens: dict[str, str]) -> None:
    r = api.post(
        "/api/v1/ledger/keys",
        json={"name": DEPT.name, "vkey": DEPT.verifier.encode(), "role": "department"},
        headers=bearer(tokens["security"]),
    )
    assert r.status_code == 201
    delivered(api)  # the registration's audit record is committed to the ledger first
    got = api.post("/api/v1/ledger/entries", json={"entries": [access(i) for i in range(300)]})
    assert got.status_code == 201
    rows = got.json()
    assert len(rows) == 300 and rows[-1]["index"] - rows[0]["index"] == 299
    assert rows[0]["index"] == 1  # after the registration's audit commitment
    delivered(api)
    size = api.get("/api/v1/ledger/status").json()["size"]
    assert size == 302  # then the submission's own audit commitment
    p = api.get("/api/v1/ledger/proof/inclusion", params={"index": 7}).json()
    verify_inclusion(b(p["leaf"]), 7, p["size"], [b(x) for x in p["proof"]], b(p["root"]))
    c = api.get("/api/v1/ledger/proof/consistency", params={"old": 5}).json()
    verify_consistency(5, c["new"], [b(x) for x in c["proof"]], b(c["old_root"]), b(c["new_root"]))
    full = api.get("/api/v1/ledger/tile/0/000")
    assert full.status_code == 200 and len(full.content) == 8192 and "immutable" in full.headers["cache-control"]
    part = api.get("/api/v1/ledger/tile/0/001.p/46")
    assert part.status_code == 200 and len(part.content) == 46 * 32
    assert api.get("/api/v1/ledger/tile/entries/001.p/46").status_code == 200
    assert api.get("/api/v1/ledger/tile/0/001.p/47").status_code == 404
    # only the canonical encoding names a tile: anything else is not found, never a 500
    bad = ("0/1", "0/x1/000", "07/000", "entries/000.p/0", "z/000", "0/x000/000", "0/x000/001.p/46", "²/000")
    bad += ("0/\u0660\u0660\u0660", "0/00\u0661", "0/" + "x999/" * 7 + "999", "0/000.p/045", "64/000", "entries/000.p/")
    for path in bad:
        assert api.get(f"/api/v1/ledger/tile/{path}").status_code == 404, path
    entry = api.get("/api/v1/ledger/entries/1").json()
    assert '"records":0' in entry["entry"]
    assert api.get("/api/v1/ledger/entries/99999").status_code == 404


def test_bad_submissions_name_the_entry_and_append_nothing(api: TestClient, tokens: dict[str, str]) -> None:
    api.post(
        "/api/v1/ledger/keys",
        json={"name": DEPT.name, "vkey": DEPT.verifier.encode(), "role": "department"},
        headers=bearer(tokens["security"]),
    )
    delivered(api)
    before = api.get("/api/v1/ledger/status").json()["size"]
    stranger = Signer.generate("gz.gov.cn/nobody")
    bad = make_entry(stranger, "access", "c", {"catalog": "c", "consumer": "x", "records": 1}).decode()
    r = api.post("/api/v1/ledger/entries", json={"entries": [access(1), bad]})
    assert r.status_code == 422 and r.json()["field"] == "entries[1]" and "no registered key" in r.json()["detail"]
    tampered = access(2).replace('"records":2', '"records":3')
    assert "does not verify" in api.post("/api/v1/ledger/entries", json={"entries": [tampered]}).json()["detail"]
    assert api.post("/api/v1/ledger/entries", json={"entries": []}).status_code == 422
    delivered(api)
    after = api.get("/api/v1/ledger/status").json()["size"]
    added = [api.get(f"/api/v1/ledger/entries/{i}").json()["entry"] for i in range(before, after)]
    assert len(added) == 3 and all('"type":"audit"' in e for e in added)  # the refusals' audit commitments only


def test_keys_are_never_silently_replaced(api: TestClient, tokens: dict[str, str]) -> None:
    api.post(
        "/api/v1/ledger/keys",
        json={"name": DEPT.name, "vkey": DEPT.verifier.encode(), "role": "department"},
        headers=bearer(tokens["security"]),
    )
    other = Signer.generate(DEPT.name)
    r = api.post(
        "/api/v1/ledger/keys",
        json={"name": DEPT.name, "vkey": other.verifier.encode(), "role": "department"},
        headers=bearer(tokens["security"]),
    )
    assert r.status_code == 422 and "different key" in r.json()["detail"]
    mismatch = api.post(
        "/api/v1/ledger/keys",
        json={"name": "x", "vkey": DEPT.verifier.encode(), "role": "department"},
        headers=bearer(tokens["security"]),
    )
    assert mismatch.status_code == 422
    assert {k["name"] for k in api.get("/api/v1/ledger/keys").json()} >= {DEPT.name}


def test_checkpoints_are_signed_by_the_log_key(api: TestClient, tokens: dict[str, str]) -> None:
    import time

    api.post("/api/v1/vdcs", json={"path": "gz"})  # audited: the log grows
    status = api.get("/api/v1/ledger/status").json()
    deadline = time.monotonic() + 10
    while (r := api.get("/api/v1/ledger/checkpoint")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.status_code == 200 and r.text.startswith(status["origin"] + "\n")
    verify(r.text, Verifier.decode(status["log_key"]))


def test_the_demo_seeds_a_linked_signed_chain(settings: object) -> None:
    import json

    from shanzhi.api import create_app

    settings.demo = True  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as c:  # type: ignore[arg-type]
        c.headers["Authorization"] = f"Bearer {settings.token_file.read_text().strip()}"  # type: ignore[attr-defined]
        entries = [json.loads(c.get(f"/api/v1/ledger/entries/{i}").json()["entry"].split("\n\n")[0]) for i in range(5)]
        assert [e["type"] for e in entries] == [
            "responsibility",
            "catalog",
            "share-request",
            "share-approval",
            "access",
        ]
        for i in range(1, 5):  # each links to the one before it, by index and leaf hash
            leaf = c.get(f"/api/v1/ledger/entries/{i - 1}").json()["leaf"]
            assert [(lk["index"], lk["leaf"]) for lk in entries[i]["links"]] == [(i - 1, leaf)]
    with TestClient(create_app(settings)) as c:  # type: ignore[arg-type]
        c.headers["Authorization"] = f"Bearer {settings.token_file.read_text().strip()}"  # type: ignore[attr-defined]
        assert c.get("/api/v1/ledger/status").json()["size"] == 5  # a restart seeds nothing twice


def test_the_verifiable_resources_are_public_and_gzipped_when_asked(api: TestClient) -> None:
    """C2SP clients fetch checkpoint, tiles and bundles with plain GETs: no token needed (the
    default, `serve --ledger-public`); the live feed and submissions still need one."""
    import gzip
    import time

    api.post("/api/v1/vdcs", json={"path": "gz"})  # audited: the log grows, a checkpoint follows
    delivered(api)
    anyone = TestClient(api.app)
    deadline = time.monotonic() + 10
    while (cp := anyone.get("/api/v1/ledger/checkpoint")).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.05)  # published by the ledger's own loop
    assert cp.status_code == 200 and cp.text.startswith("127.0.0.1:")  # origin: the server's URL prefix
    assert cp.text.split("\n")[0].endswith("/api/v1/ledger")
    for path in ("/status", "/keys", "/entries/0", "/proof/inclusion?index=0", "/tile/entries/000.p/1"):
        assert anyone.get("/api/v1/ledger" + path).status_code == 200, path
    assert anyone.get("/api/v1/ledger/watch").status_code == 401
    assert anyone.post("/api/v1/ledger/entries", json={"entries": ["x"]}).status_code == 401
    # gzip when accepted (the same bytes each time, as an immutable resource should be), plain otherwise
    raw = anyone.get("/api/v1/ledger/tile/0/000.p/1", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in raw.headers and len(raw.content) == 32
    with anyone.stream("GET", "/api/v1/ledger/tile/0/000.p/1", headers={"Accept-Encoding": "gzip"}) as r:
        body = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip" and r.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(body) == raw.content
    refused = anyone.get("/api/v1/ledger/tile/0/000.p/1", headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers


def test_an_operator_can_close_the_ledger(settings: object, tokens: dict[str, str]) -> None:
    from dataclasses import replace

    from shanzhi.api import create_app

    closed = replace(settings, ledger_public=False)  # type: ignore[type-var]
    with TestClient(create_app(closed)) as c:
        for path in ("/checkpoint", "/tile/0/000.p/1", "/status", "/entries/0", "/keys", "/proof/inclusion?index=0"):
            assert c.get("/api/v1/ledger" + path).status_code == 401, path
        assert c.get("/api/v1/ledger/status", headers=bearer(tokens["admin"])).status_code == 200
