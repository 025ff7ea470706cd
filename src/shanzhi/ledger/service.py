"""The running ledger of one server: submissions, batching, checkpoints and witnesses.

- `submit` checks each entry (registered submitter key, signature, canonical form, type,
  links to existing entries with matching leaf hashes) and hands it to the sequencer, which
  appends everything waiting in one transaction and acknowledges only after the commit.
- The publisher signs a checkpoint whenever the tree has grown (at most every `interval`
  seconds), asks the witnesses to cosign it (C2SP tlog-witness) and publishes it only with
  `quorum` cosignatures. Only the holder of the "ledger" leader lock publishes.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from sqlalchemy import Connection, bindparam, delete, select, text, update

from shanzhi.ledger.checkpoint import Checkpoint
from shanzhi.ledger.entries import EntryError, Envelope, audit_commitment, make_entry, open_entry
from shanzhi.ledger.log import LedgerError, Log
from shanzhi.ledger.merkle import leaf_hash
from shanzhi.ledger.note import NoteError, Signer, Verifier, sign, verify
from shanzhi.store import Database
from shanzhi.store.locks import LeaderLock
from shanzhi.store.tables import AuditOutbox, AuditRecord, LedgerCheckpoint, LedgerKey

log = logging.getLogger("shanzhi.ledger")


class SubmissionError(EntryError):
    """Entry `index` of a submission was refused (so the whole submission was)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(f"entries[{index}]: {message}")
        self.index = index


class _AlreadyDelivered(Exception):
    """The outbox rows were gone when our append was about to commit (it rolls back)."""


@dataclass(frozen=True)
class Witness:
    url: str
    verifier: Verifier


@dataclass
class _Pending:
    entries: list[bytes]
    done: Future[int] = field(default_factory=Future)


class Ledger:
    def __init__(
        self,
        db: Database,
        signer: Signer,
        platform: Signer | None = None,
        witnesses: Sequence[Witness] = (),
        quorum: int = 0,
        interval: float = 0.25,
        http: httpx.Client | None = None,
    ) -> None:
        if quorum > len(witnesses):
            raise ValueError(f"quorum {quorum} is larger than the {len(witnesses)} witnesses configured")
        self.db = db
        self.log = Log(db)
        self.signer = signer
        self.platform = platform
        self.origin = signer.name
        self.witnesses = list(witnesses)
        self.quorum = quorum
        self.interval = interval
        self._keys: dict[str, Verifier] = {}
        self._queue: list[_Pending] = []
        self._queue_cv = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._witness_size: dict[str, int] = {}
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(witnesses)), thread_name_prefix="witness")
        self._http = http or httpx.Client(timeout=5)
        self._lock = LeaderLock(db, "ledger")
        self.register_key(signer.name, signer.verifier.encode(), "log")
        if platform is not None:
            self.register_key(platform.name, platform.verifier.encode(), "department")

    # -------------------------------------------------------------- lifecycle
    def start(self, *, sequence: bool = True, publish: bool = True) -> None:
        """Run the sequencer (this process appends submissions) and/or the publisher (checkpoints
        and the audit outbox, by whichever process holds the ledger leader lock)."""
        loops = [(self._sequence, "ledger-sequencer")] if sequence else []
        loops += [(self._publish_loop, "ledger-publisher")] if publish else []
        for target, name in loops:
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        with self._queue_cv:
            self._queue_cv.notify_all()
        for t in self._threads:
            t.join(timeout=10)
        self._lock.release()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    # ----------------------------------------------------------------- keys
    def register_key(self, name: str, vkey: str, role: str) -> Verifier:
        v = Verifier.decode(vkey)
        if v.name != name:
            raise NoteError(f"the key is for {v.name!r}, not {name!r}")
        with self.db.session() as s, s.begin():
            row = s.get(LedgerKey, name)
            if row is not None and row.vkey != vkey:
                raise NoteError(f"{name} already has a different key; keys are never replaced silently")
            if row is None:
                s.add(LedgerKey(name=name, role=role, vkey=vkey))
        self._keys[name] = v
        return v

    def keys(self) -> dict[str, Verifier]:
        with self.db.session() as s, s.begin():
            rows = list(s.scalars(select(LedgerKey).where(LedgerKey.role == "department")))
        self._keys.update({r.name: Verifier.decode(r.vkey) for r in rows})
        return dict(self._keys)

    def _key(self, name: str) -> Verifier | None:
        """A submitter's key; an unknown name re-reads the registry (another server may have added it)."""
        if name not in self._keys:
            self.keys()
        return self._keys.get(name)

    # ----------------------------------------------------------- submission
    def check(self, data: bytes, size: int | None = None) -> Envelope:
        """Check one entry; `size` is the tree size its links may point below (default: now)."""
        env = open_entry(data, self._key)
        if not env.links:
            return env
        size = self.log.refresh() if size is None else size
        for link in env.links:
            if link.index >= size:
                raise EntryError(f"link {link.rel} points at entry {link.index}, beyond the log's {size}")
            if base64.b64encode(leaf_hash(self.log.entry(link.index))).decode() != link.leaf:
                raise EntryError(f"link {link.rel} to entry {link.index}: leaf hash does not match")
        return env

    def submit(self, entries: Sequence[bytes], timeout: float = 30) -> list[tuple[int, bytes]]:
        """Check and durably append; returns (index, leaf hash) per entry. All or nothing:
        the first bad entry raises `SubmissionError` naming its position, and nothing is appended."""
        size = self.log.refresh()
        for i, e in enumerate(entries):
            try:
                self.check(e, size)
            except (EntryError, LedgerError) as err:
                raise SubmissionError(i, str(err)) from None
        return self.append_checked(entries, timeout)

    def append_checked(self, entries: Sequence[bytes], timeout: float = 30) -> list[tuple[int, bytes]]:
        if not self._threads:  # no sequencer running: append directly
            first = self.log.append(entries)
        else:
            p = _Pending(list(entries))
            with self._queue_cv:
                self._queue.append(p)
                self._queue_cv.notify()
            first = p.done.result(timeout)
        return [(first + i, leaf_hash(e)) for i, e in enumerate(entries)]

    def drain_audit_outbox(self, limit: int = 1000) -> int:
        """Append the commitments of audit records still in the outbox, oldest first; the
        entries and their removal from the outbox commit together (a replica that drained the
        same records first makes this transaction roll back, so none is appended twice)."""
        if self.platform is None:
            return 0
        with self.db.session() as s, s.begin():
            rows = list(
                s.execute(
                    select(AuditRecord.id, AuditRecord.hash, AuditRecord.commit_salt)
                    .join(AuditOutbox, AuditOutbox.audit_id == AuditRecord.id)
                    .order_by(AuditRecord.id)
                    .limit(limit)
                )
            )
        if not rows:
            return 0
        entries = [
            make_entry(self.platform, "audit", f"audit/{rid}", audit_commitment(rid, h, salt)) for rid, h, salt in rows
        ]
        ids = [rid for rid, _, _ in rows]

        def delivered(conn: Connection, first: int) -> None:
            gone = conn.execute(delete(AuditOutbox).where(AuditOutbox.audit_id.in_(ids)))
            if gone.rowcount != len(ids):
                raise _AlreadyDelivered
            conn.execute(
                update(AuditRecord).where(AuditRecord.id == bindparam("rid")).values(ledger_index=bindparam("idx")),
                [{"rid": rid, "idx": first + i} for i, rid in enumerate(ids)],
            )

        try:
            self.log.append(entries, also=delivered)
        except _AlreadyDelivered:  # another drainer (thread or replica) won: nothing appended here
            return 0
        return len(rows)

    def _sequence(self) -> None:
        while not self._stop.is_set():
            with self._queue_cv:
                while not self._queue and not self._stop.is_set():
                    self._queue_cv.wait(0.5)
                batch, self._queue = self._queue, []
            if not batch:
                continue
            try:
                first = self.log.append([e for p in batch for e in p.entries])
            except Exception as err:
                for p in batch:
                    p.done.set_exception(err)
                continue
            for p in batch:
                p.done.set_result(first)
                first += len(p.entries)

    # ---------------------------------------------------------- checkpoints
    def latest_checkpoint(self) -> str | None:
        with self.db.session() as s, s.begin():
            row = s.scalar(select(LedgerCheckpoint).order_by(LedgerCheckpoint.size.desc()).limit(1))
            return row.note if row else None

    def checkpoints(self, since: int = 0, limit: int = 1000) -> list[tuple[int, str]]:
        with self.db.session() as s, s.begin():
            rows = s.scalars(
                select(LedgerCheckpoint)
                .where(LedgerCheckpoint.size >= since)
                .order_by(LedgerCheckpoint.size)
                .limit(limit)
            )
            return [(r.size, r.note) for r in rows]

    def publish(self) -> str | None:
        """Sign, get cosigned and store a checkpoint of the current tree (if it grew)."""
        size = self.log.refresh()
        with self.db.reader.connect() as c:
            last = c.execute(text("SELECT max(size) FROM ledger_checkpoints")).scalar()
        if size == 0 or (last is not None and int(last) >= size):
            return None
        cp = Checkpoint(self.origin, size, self.log.root_at(size))
        note = sign(cp.body(), self.signer)
        cosigs = [line for line in self._pool.map(lambda w: self._cosign(w, cp, note), self.witnesses) if line]
        if len(cosigs) < self.quorum:
            log.warning("checkpoint %d not published: %d of %d cosignatures", size, len(cosigs), self.quorum)
            return None
        full = note + "".join(cosigs)
        with self.db.session() as s, s.begin():
            if s.get(LedgerCheckpoint, size) is None:
                s.add(LedgerCheckpoint(size=size, note=full))
        return full

    def _cosign(self, w: Witness, cp: Checkpoint, note: str) -> str | None:
        old = self._witness_size.get(w.url, 0)
        for _ in range(3):
            proof = self.log.consistency_proof(old, cp.size) if 0 < old < cp.size else []
            body = f"old {old}\n" + "".join(base64.b64encode(p).decode() + "\n" for p in proof) + "\n" + note
            try:
                r = self._http.post(f"{w.url.rstrip('/')}/add-checkpoint", content=body.encode())
            except httpx.HTTPError as err:
                log.warning("witness %s unreachable: %s", w.url, err)
                return None
            if r.status_code == 409 and r.headers.get("content-type", "").startswith("text/x.tlog.size"):
                old = int(r.text.strip())
                if old > cp.size:
                    log.error("witness %s has seen size %d, beyond ours %d: rollback or fork?", w.url, old, cp.size)
                    return None
                continue
            if r.status_code != 200:
                log.warning("witness %s refused checkpoint %d: %s %s", w.url, cp.size, r.status_code, r.text.strip())
                return None
            for line in r.text.splitlines(keepends=True):
                try:
                    verify(note + line, w.verifier)
                except NoteError:
                    continue
                self._witness_size[w.url] = cp.size
                return line
            log.warning("witness %s answered without a valid cosignature", w.url)
            return None
        return None

    def _publish_loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                if self._lock.try_acquire():
                    while self.drain_audit_outbox() and not self._stop.is_set():
                        pass
                    self.publish()
            except Exception:
                log.exception("publishing a checkpoint failed; retrying")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
