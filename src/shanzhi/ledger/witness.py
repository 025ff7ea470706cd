"""A witness (C2SP tlog-witness): cosigns a log's checkpoints only if they extend what it saw.

Run by departments (`shanzhi witness serve`). For each known log (origin -> verifier key)
it keeps the latest cosigned checkpoint in its own SQLite file; checking the old size and
storing the new checkpoint happen in one `BEGIN IMMEDIATE` transaction, so concurrent
requests cannot roll it back. Answers: 200 with a cosignature line, 400 bad request,
403 no trusted log signature, 404 unknown log, 409 old size mismatch (body: the size it
holds, `text/x.tlog.size`) or same size with another root (a fork), 422 bad proof.
"""

from __future__ import annotations

import base64
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import httpx

from shanzhi.ledger.checkpoint import Checkpoint
from shanzhi.ledger.merkle import ProofError, verify_consistency
from shanzhi.ledger.note import NoteError, Signer, Verifier, verify

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, note TEXT)"
)


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"


class WitnessState:
    def __init__(self, path: Path, signer: Signer, logs: dict[str, Verifier]) -> None:
        self.signer = signer
        self.logs = logs
        self._path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._conn() as c:
            c.execute(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def latest(self, origin: str) -> tuple[int, bytes] | None:
        row = self._conn().execute("SELECT size, root FROM logs WHERE origin = ?", (origin,)).fetchone()
        return (int(row[0]), bytes(row[1])) if row else None

    def add_checkpoint(self, body: str) -> Answer:
        head, sep, note = body.partition("\n\n")
        if not sep:
            return Answer(400, "request needs an old size line, proof lines, a blank line and a checkpoint\n")
        note = note if note.endswith("\n") else note + "\n"
        lines = head.split("\n")
        if not lines[0].startswith("old ") or not lines[0][4:].isdigit():
            return Answer(400, "first line must be 'old <size>'\n")
        old = int(lines[0][4:])
        try:
            proof = [base64.b64decode(x, validate=True) for x in lines[1:] if x]
        except ValueError:
            return Answer(400, "proof lines must be base64\n")
        if len(proof) > 63:
            return Answer(400, "too many proof lines\n")
        text = note[: note.rfind("\n\n") + 1]
        try:
            cp = Checkpoint.parse(text)
        except NoteError as err:
            return Answer(400, f"bad checkpoint: {err}\n")
        key = self.logs.get(cp.origin)
        if key is None:
            return Answer(404, f"unknown log {cp.origin}\n")
        try:
            verify(note, key)
        except NoteError as err:
            return Answer(403, f"checkpoint not signed by the log's key: {err}\n")
        if old > cp.size:
            return Answer(400, f"old size {old} is larger than the checkpoint size {cp.size}\n")
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT size, root FROM logs WHERE origin = ?", (cp.origin,)).fetchone()
            have_size, have_root = (int(row[0]), bytes(row[1])) if row else (0, b"")
            if old != have_size:
                conn.execute("ROLLBACK")
                return Answer(409, f"{have_size}\n", "text/x.tlog.size")
            if old == cp.size and row is not None and have_root != cp.root:
                conn.execute("ROLLBACK")
                return Answer(409, f"fork: size {old} was cosigned with another root\n")
            if old and old < cp.size:
                try:
                    verify_consistency(old, cp.size, proof, have_root, cp.root)
                except ProofError as err:
                    conn.execute("ROLLBACK")
                    return Answer(422, f"consistency proof from {old} to {cp.size} fails: {err}\n")
            elif proof:
                conn.execute("ROLLBACK")
                return Answer(400, "the proof must be empty when the old size is 0 or equal\n")
            conn.execute(
                "INSERT INTO logs (origin, size, root, note) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (origin) DO UPDATE SET size = excluded.size, root = excluded.root, note = excluded.note",
                (cp.origin, cp.size, cp.root, note),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return Answer(200, self.signer.cosign_line(text))  # over the exact note text, extensions included


def transport(states: dict[str, WitnessState]) -> httpx.MockTransport:
    """An httpx transport that hands requests for `<url>/add-checkpoint` to in-process witnesses.

    For tests and single-machine drills: the witness logic is the real one, only the
    network hop is skipped (as httpx ships its own fake transport for the same purpose).
    """

    def handle(request: httpx.Request) -> httpx.Response:
        base = str(request.url).removesuffix("/add-checkpoint")
        state = states.get(base)
        if state is None or request.method != "POST":
            return httpx.Response(404, text="no such witness\n")
        a = state.add_checkpoint(request.content.decode())
        return httpx.Response(a.status, text=a.body, headers={"content-type": a.content_type})

    return httpx.MockTransport(handle)
