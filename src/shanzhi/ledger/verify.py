"""The verifier anyone can run: recompute the tree from the stored entries and check it all.

It reads a log from a database URL or from a tlog-tiles export directory (`export`), needs
no server, and checks: every entry against its leaf hash in the level-0 tile, every upper
tile against the subtrees recomputed from the entries, every checkpoint's log signature
and witness cosignatures (k of n), every checkpoint's root against the recomputed prefix
(which also proves each checkpoint consistent with every other), and the stored tree head.
It stops at the first problem and names it: the entry, tile or checkpoint, and what failed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from sqlalchemy import text

from shanzhi.ledger.checkpoint import Checkpoint
from shanzhi.ledger.entries import EntryError, open_entry
from shanzhi.ledger.log import TILE, LedgerError, split_bundle
from shanzhi.ledger.merkle import EMPTY_ROOT, CompactRange, leaf_hash
from shanzhi.ledger.note import NoteError, Verifier, verify
from shanzhi.store import Database


class Source(Protocol):
    def head(self) -> int | None: ...
    def bundle(self, idx: int) -> bytes | None: ...
    def tile(self, level: int, idx: int) -> bytes | None: ...
    def checkpoints(self) -> list[str]: ...


def tile_path(level: int | str, idx: int, width: int | None = None) -> str:
    """`tile/<L>/<N>[.p/<W>]` with N as x001/x234/067 (tlog-tiles)."""
    digits = f"{idx:03d}"
    digits = "0" * (-len(digits) % 3) + digits
    parts = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    n = "/".join([*("x" + p for p in parts[:-1]), parts[-1]])
    return f"tile/{level}/{n}" + (f".p/{width}" if width else "")


_TILE_INDEX = re.compile(r"(?:x[0-9]{3}/)*[0-9]{3}(?:\.p/[0-9]{1,3})?")
MAX_TILE_INDEX = 2**63 // 256  # a tile index beyond a tree of 2^63 entries names nothing


def parse_tile_index(path: str) -> tuple[int, int | None]:
    """Inverse of the N[.p/W] part of `tile_path`, for the canonical encoding only (ASCII digits,
    no leading zero groups, widths 1-255); raises ValueError for anything else."""
    if not _TILE_INDEX.fullmatch(path):
        raise ValueError(f"bad tile index {path!r}")
    n, _, w = path.partition(".p/")
    idx = int(n.replace("x", "").replace("/", ""))
    width = int(w) if w else None
    if idx > MAX_TILE_INDEX or (width is not None and not 1 <= width <= 255):
        raise ValueError(f"bad tile index {path!r}")
    if tile_path(0, idx, width) != f"tile/0/{path}":
        raise ValueError(f"tile index {path!r} is not in canonical form")
    return idx, width


class DatabaseSource:
    def __init__(self, db: Database) -> None:
        self.db = db

    def head(self) -> int | None:
        with self.db.reader.connect() as c:
            row = c.execute(text("SELECT size FROM ledger_state WHERE id = 1")).first()
        return int(row[0]) if row else None

    def bundle(self, idx: int) -> bytes | None:
        with self.db.reader.connect() as c:
            row = c.execute(text("SELECT data FROM ledger_bundles WHERE idx = :i"), {"i": idx}).first()
        return bytes(row[0]) if row else None

    def bundles(self, start: int, end: int, chunk: int = 256) -> Iterator[tuple[int, bytes]]:
        """Bundles in order, read `chunk` at a time (no cursor stays open between reads)."""
        for a in range(start, end, chunk):
            with self.db.reader.connect() as c:
                rows = c.execute(
                    text("SELECT idx, data FROM ledger_bundles WHERE idx >= :a AND idx < :b ORDER BY idx"),
                    {"a": a, "b": min(a + chunk, end)},
                ).all()
            for idx, data in rows:
                yield int(idx), bytes(data)

    def tile(self, level: int, idx: int) -> bytes | None:
        with self.db.reader.connect() as c:
            row = c.execute(
                text("SELECT data FROM ledger_tiles WHERE level = :l AND idx = :i"), {"l": level, "i": idx}
            ).first()
        return bytes(row[0]) if row else None

    def tiles(self, level: int) -> dict[int, bytes]:
        with self.db.reader.connect() as c:
            rows = c.execute(text("SELECT idx, data FROM ledger_tiles WHERE level = :l"), {"l": level})
            return {int(i): bytes(d) for i, d in rows}

    def checkpoints(self) -> list[str]:
        with self.db.reader.connect() as c:
            return [str(r[0]) for r in c.execute(text("SELECT note FROM ledger_checkpoints ORDER BY size"))]


class DirectorySource:
    """An export: `checkpoints/<size>`, `tile/<L>/<N>[.p/W]`, `tile/entries/<N>[.p/W]`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _read(self, rel: str) -> bytes | None:
        try:
            return (self.root / rel).read_bytes()
        except FileNotFoundError:
            return None

    def _latest(self, level: int | str, idx: int) -> bytes | None:
        full = self._read(tile_path(level, idx))
        if full is not None:
            return full
        d = self.root / tile_path(level, idx, 1).rsplit("/", 1)[0]
        widths = sorted((int(p.name) for p in d.glob("*") if p.name.isdigit()), reverse=True) if d.exists() else []
        return self._read(tile_path(level, idx, widths[0])) if widths else None

    def head(self) -> int | None:
        cps = self.checkpoints()
        return Checkpoint.parse(cps[-1][: cps[-1].rfind("\n\n") + 1]).size if cps else None

    def bundle(self, idx: int) -> bytes | None:
        return self._latest("entries", idx)

    def tile(self, level: int, idx: int) -> bytes | None:
        return self._latest(level, idx)

    def checkpoints(self) -> list[str]:
        d = self.root / "checkpoints"
        files = sorted(d.glob("*"), key=lambda p: int(p.name)) if d.exists() else []
        return [p.read_text() for p in files]


@dataclass
class Report:
    ok: bool
    size: int = 0
    entries_checked: int = 0
    checkpoints_checked: int = 0
    signatures_checked: int = 0
    problem: str = ""
    notes: list[str] = field(default_factory=list)


class _Fail(Exception):
    pass


def verify_log(
    source: Source,
    log_key: Verifier,
    witness_keys: Sequence[Verifier] = (),
    quorum: int = 0,
    department_keys: dict[str, Verifier] | None = None,
) -> Report:
    """Check everything; `department_keys` also checks each entry's submitter signature."""
    report = Report(ok=True)
    try:
        _verify(source, log_key, list(witness_keys), quorum, department_keys, report)
    except _Fail as f:
        report.ok = False
        report.problem = str(f)
    return report


def _verify(
    source: Source,
    log_key: Verifier,
    witnesses: list[Verifier],
    quorum: int,
    dept: dict[str, Verifier] | None,
    report: Report,
) -> None:
    # 1. checkpoints: signatures first, then their roots are checked as the tree is rebuilt
    wanted: dict[int, tuple[bytes, str]] = {}
    for note in source.checkpoints():
        body = note[: note.rfind("\n\n") + 1]
        try:
            cp = Checkpoint.parse(body)
        except NoteError as err:
            raise _Fail(f"a stored checkpoint is malformed: {err}") from None
        if cp.origin != log_key.name:
            raise _Fail(f"checkpoint at size {cp.size}: origin {cp.origin!r} is not the log {log_key.name!r}")
        try:
            _, signers = verify(note, log_key, *witnesses)
        except NoteError as err:
            raise _Fail(f"checkpoint at size {cp.size}: {err}") from None
        if log_key not in [v for v, _ in signers]:
            raise _Fail(f"checkpoint at size {cp.size}: not signed by the log key")
        cosigners = {v.name for v, _ in signers if v != log_key}
        if len(cosigners) < quorum:
            raise _Fail(f"checkpoint at size {cp.size}: {len(cosigners)} witness cosignatures, {quorum} required")
        if cp.size in wanted and wanted[cp.size][0] != cp.root:
            raise _Fail(f"two checkpoints at size {cp.size} with different roots: the log forked")
        wanted[cp.size] = (cp.root, "checkpoint")
        report.checkpoints_checked += 1
    head = source.head()
    size = max([head or 0, *wanted])
    report.size = size
    # 2. the tree, rebuilt from the entries, tile by tile
    cr = CompactRange()
    upper: dict[int, list[bytes]] = {}

    def check_upper(level: int, idx: int, final: bool) -> None:
        hashes = upper.get(level, [])
        stored = source.tile(level, idx)
        want = b"".join(hashes)
        if stored is None or stored[: len(want)] != want or (not final and len(stored) != len(want)):
            raise _Fail(f"tile {level}/{idx} does not match the subtrees recomputed from the entries")

    def on_full(height: int, index: int, h: bytes) -> None:
        if height % 8 == 0:
            level = height // 8
            upper.setdefault(level, []).append(h)
            if len(upper[level]) == TILE:
                check_upper(level, index // TILE, False)
                upper[level] = []

    if 0 in wanted and wanted.pop(0)[0] != EMPTY_ROOT:
        raise _Fail("checkpoint at size 0: its root is not the empty tree's")
    checkpoint_sizes = sorted(wanted)
    next_cp = 0
    n_bundles = -(-size // TILE)
    bundles: Iterator[tuple[int, bytes]]
    if isinstance(source, DatabaseSource):
        bundles = source.bundles(0, n_bundles)
    else:
        bundles = ((i, b) for i in range(n_bundles) if (b := source.bundle(i)) is not None)
    expected_idx = 0
    for idx, data in bundles:
        if idx != expected_idx:
            raise _Fail(f"entries {expected_idx * TILE}..{idx * TILE - 1} are missing (bundle {expected_idx} is gone)")
        expected_idx += 1
        start = idx * TILE
        count = min(TILE, size - start)
        try:
            entries = split_bundle(data)
        except LedgerError:
            raise _Fail(f"bundle {idx} (entries {start}..) is truncated or corrupt") from None
        entries = entries[:count]
        hashes = [leaf_hash(e) for e in entries]
        stored = source.tile(0, idx) or b""
        joined = b"".join(hashes)
        if stored[: len(joined)] != joined:
            first = next((i for i, h in enumerate(hashes) if stored[32 * i : 32 * i + 32] != h), len(hashes))
            raise _Fail(
                f"entry {start + first} does not match its leaf hash in tile 0/{idx}: it was changed, removed or moved"
            )
        if len(entries) < count:
            raise _Fail(f"entry {start + len(entries)} is missing (bundle {idx} holds {len(entries)} of {count})")
        if dept is not None:
            for i, e in enumerate(entries):
                try:
                    open_entry(e, dept)
                except EntryError as err:
                    raise _Fail(f"entry {start + i}: {err}") from None
                report.signatures_checked += 1
        for h in hashes:
            cr.append(h, on_full)
            while next_cp < len(checkpoint_sizes) and cr.size == checkpoint_sizes[next_cp]:
                s = checkpoint_sizes[next_cp]
                if cr.root() != wanted[s][0]:
                    raise _Fail(f"checkpoint at size {s}: its root is not the root of the first {s} entries")
                next_cp += 1
        report.entries_checked += len(entries)
    if expected_idx < n_bundles:
        raise _Fail(f"entries from {expected_idx * TILE} are missing (bundle {expected_idx} is gone)")
    for level in sorted(upper):
        if upper[level]:
            check_upper(level, (cr.size // TILE**level) // TILE, True)
    if isinstance(source, DatabaseSource):
        with source.db.reader.connect() as c:
            row = c.execute(text("SELECT size, root FROM ledger_state WHERE id = 1")).first()
        if row is not None and (int(row[0]) != cr.size or bytes(row[1]) != cr.root()):
            raise _Fail("the stored tree head does not match the entries")
    if next_cp < len(checkpoint_sizes):
        raise _Fail(f"checkpoint at size {checkpoint_sizes[next_cp]} is beyond the {cr.size} stored entries")
    report.notes.append(f"{len(wanted)} checkpoints are all prefixes of one tree (consistent)")


def export(db: Database, out: Path) -> int:
    """Write the log as static tlog-tiles files (plus every checkpoint); returns its size."""
    src = DatabaseSource(db)
    size = src.head() or 0
    out.mkdir(parents=True, exist_ok=True)

    def write(rel: str, data: bytes) -> None:
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)

    for idx, data in src.bundles(0, -(-size // TILE)):
        n = len(split_bundle(data))
        write(tile_path("entries", idx, None if n == TILE else n), data)
    level = 0
    while TILE**level <= max(size, 1):
        for idx, data in src.tiles(level).items():
            w = len(data) // 32
            write(tile_path(level, idx, None if w == TILE else w), data)
        level += 1
    for note in src.checkpoints():
        cp = Checkpoint.parse(note[: note.rfind("\n\n") + 1])
        write(f"checkpoints/{cp.size}", note.encode())
        write("checkpoint", note.encode())
    return size
