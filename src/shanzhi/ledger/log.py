"""The log: durable batched appends into tiles and entry bundles, proofs, tiles for readers.

Storage per entry beyond the entry itself: its 32-byte leaf hash in a level-0 tile, its
2-byte length prefix in a bundle, and 1/256 of a hash per level above. One append is one
database transaction (bundles, tiles and the tree state together), so a crash mid-batch
leaves the log exactly as it was before the batch, and an acknowledged entry is committed.

Several processes may append to one database: each append takes the state row's lock
(`FOR UPDATE` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite) and reloads its in-memory right
edge if another writer moved the tree meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from shanzhi.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    perfect_root,
)
from shanzhi.store import Database

TILE = 256
MAX_ENTRY = 0xFFFF
_UPSERT_TILE = text(
    "INSERT INTO ledger_tiles (level, idx, data) VALUES (:level, :idx, :data) "
    "ON CONFLICT (level, idx) DO UPDATE SET data = excluded.data"
)
_UPSERT_BUNDLE = text(
    "INSERT INTO ledger_bundles (idx, data) VALUES (:idx, :data) ON CONFLICT (idx) DO UPDATE SET data = excluded.data"
)
_UPSERT_STATE = text(
    "INSERT INTO ledger_state (id, size, root) VALUES (1, :size, :root) "
    "ON CONFLICT (id) DO UPDATE SET size = excluded.size, root = excluded.root"
)


class LedgerError(ValueError):
    pass


@dataclass
class _Edge:
    """What an append needs in memory: the right edge of the tree and the partial rows."""

    range: CompactRange
    bundle: bytearray  # the partial bundle (entries since the last full one)
    tiles: dict[int, bytearray]  # level -> the partial tile at that level

    def copy(self) -> _Edge:
        return _Edge(
            CompactRange(self.range.size, self.range.hashes),
            bytearray(self.bundle),
            {k: bytearray(v) for k, v in self.tiles.items()},
        )


def split_bundle(data: bytes) -> list[bytes]:
    out = []
    i = 0
    n = len(data)
    while i < n:
        length = int.from_bytes(data[i : i + 2], "big")
        out.append(data[i + 2 : i + 2 + length])
        i += 2 + length
    if i != n:
        raise LedgerError("bundle is truncated")
    return out


class Log:
    """The ledger's Merkle log over the platform database."""

    def __init__(self, db: Database, cache_tiles: int = 4096) -> None:
        self.db = db
        self._lock = threading.Lock()
        self._grown = threading.Condition()
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_max = cache_tiles
        with db.reader.connect() as conn:
            self._edge = self._load(conn)

    # ------------------------------------------------------------ state
    @property
    def size(self) -> int:
        return self._edge.range.size

    def root(self) -> bytes:
        return self._edge.range.root()

    def _load(self, conn: Connection) -> _Edge:
        row = conn.execute(text("SELECT size FROM ledger_state WHERE id = 1")).first()
        size = int(row[0]) if row else 0
        tiles: dict[int, bytearray] = {}
        level, width = 0, size
        while width:
            idx, w = divmod(width, TILE)
            if w:
                tiles[level] = bytearray(self._read_tile(conn, level, idx)[: 32 * w])
            width = idx
            level += 1
        bundle = bytearray()
        if size % TILE:
            got = conn.execute(text("SELECT data FROM ledger_bundles WHERE idx = :i"), {"i": size // TILE}).first()
            bundle = bytearray(got[0]) if got else bytearray()
        hashes = []
        start = 0
        for bit in range(size.bit_length() - 1, -1, -1):
            if size >> bit & 1:
                hashes.append(self._perfect(conn, start, 1 << bit, tiles, size))
                start += 1 << bit
        return _Edge(CompactRange(size, hashes), bundle, tiles)

    def _read_tile(self, conn: Connection, level: int, idx: int) -> bytes:
        key = (level, idx)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        row = conn.execute(text("SELECT data FROM ledger_tiles WHERE level = :l AND idx = :i"), {"l": level, "i": idx})
        got = row.first()
        data = bytes(got[0]) if got else b""
        if len(data) == 32 * TILE:  # full tiles never change: keep them
            self._cache[key] = data
            if len(self._cache) > self._cache_max:
                self._cache.popitem(last=False)
        return data

    def _tile_hashes(
        self, conn: Connection, level: int, start: int, count: int, partial: dict[int, bytearray], size: int
    ) -> bytes:
        """`count` hashes of a level from `start`; partial tiles of a tree of `size` come from memory."""
        idx, off = divmod(start, TILE)
        mine = partial.get(level)
        current = mine is not None and idx == size // TILE ** (level + 1)
        data: bytes | bytearray = mine if current and mine is not None else self._read_tile(conn, level, idx)
        got = data[32 * off : 32 * (off + count)]
        if len(got) != 32 * count:
            raise LedgerError(f"tile {level}/{idx} lacks hashes {off}..{off + count - 1}")
        return bytes(got)

    def _perfect(self, conn: Connection, start: int, n: int, partial: dict[int, bytearray], size: int) -> bytes:
        """MTH of an aligned power-of-two range of leaves, from the tiles."""
        height = n.bit_length() - 1
        level, rem = divmod(height, 8)
        count = 1 << rem
        raw = self._tile_hashes(conn, level, start >> (8 * level), count, partial, size)
        return perfect_root([raw[i : i + 32] for i in range(0, len(raw), 32)])

    # ----------------------------------------------------------- append
    def append(self, entries: Sequence[bytes], also: Callable[[Connection, int], None] | None = None) -> int:
        """Durably append entries; returns the index of the first. Raises without a trace.

        `also(conn, first)` runs inside the same transaction before it commits (the audit outbox
        marks its records delivered there, so an entry and its delivery commit together)."""
        for e in entries:
            if len(e) > MAX_ENTRY:
                raise LedgerError(f"entry of {len(e)} bytes is over the {MAX_ENTRY}-byte limit")
        if not entries:
            return self.size
        with self._lock:
            with self.db.engine.begin() as conn:
                lock = "" if self.db.is_sqlite else " FOR UPDATE"
                row = conn.execute(text("SELECT size, root FROM ledger_state WHERE id = 1" + lock)).first()
                if not self._matches(row):
                    self._edge = self._load(conn)  # another writer appended (or the store was changed)
                edge = self._edge.copy()
                first = edge.range.size
                tiles_out: dict[tuple[int, int], bytes] = {}
                bundles_out: dict[int, bytes] = {}

                def on_full(height: int, index: int, h: bytes) -> None:
                    if height % 8:
                        return
                    level = height // 8
                    t = edge.tiles.setdefault(level, bytearray())
                    t += h
                    tidx = index // TILE
                    tiles_out[(level, tidx)] = bytes(t)
                    if len(t) == 32 * TILE:
                        edge.tiles[level] = bytearray()

                for e in entries:
                    size = edge.range.size
                    h = leaf_hash(e)
                    edge.bundle += len(e).to_bytes(2, "big") + e
                    t0 = edge.tiles.setdefault(0, bytearray())
                    t0 += h
                    tiles_out[(0, size // TILE)] = bytes(t0)
                    bundles_out[size // TILE] = bytes(edge.bundle)
                    if len(t0) == 32 * TILE:
                        edge.tiles[0] = bytearray()
                        edge.bundle = bytearray()
                    edge.range.append(h, on_full)
                conn.execute(_UPSERT_BUNDLE, [{"idx": i, "data": d} for i, d in bundles_out.items()])
                conn.execute(_UPSERT_TILE, [{"level": k[0], "idx": k[1], "data": d} for k, d in tiles_out.items()])
                conn.execute(_UPSERT_STATE, {"size": edge.range.size, "root": edge.range.root()})
                if also is not None:
                    also(conn, first)
            self._edge = edge
        with self._grown:
            self._grown.notify_all()
        return first

    def _matches(self, row: Any) -> bool:
        if row is None:
            return self.size == 0
        return int(row[0]) == self.size and bytes(row[1]) == self.root()

    def refresh(self) -> int:
        """Pick up entries appended by another process; returns the size."""
        with self._lock, self.db.reader.connect() as conn:
            row = conn.execute(text("SELECT size, root FROM ledger_state WHERE id = 1")).first()
            if not self._matches(row):
                self._edge = self._load(conn)
        return self.size

    def wait_for_growth(self, size: int, timeout: float) -> int:
        """Block until the log is larger than `size` (or the timeout passes)."""
        with self._grown:
            self._grown.wait_for(lambda: self.size > size, timeout)
        return self.size

    # ----------------------------------------------------------- reads
    def mth(self, start: int, end: int) -> bytes:
        """Merkle Tree Hash of leaves [start, end) (end <= size)."""
        if end > self.size:
            raise LedgerError(f"the log has only {self.size} entries")
        with self.db.reader.connect() as conn:
            return self._mth(conn, start, end, self._edge)

    def _mth(self, conn: Connection, start: int, end: int, edge: _Edge) -> bytes:
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self._perfect(conn, start, n, edge.tiles, edge.range.size)
        k = 1 << ((n - 1).bit_length() - 1)
        return node_hash(self._mth(conn, start, start + k, edge), self._mth(conn, start + k, end, edge))

    def root_at(self, size: int) -> bytes:
        return self.mth(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        size = self.size if size is None else size
        if size > self.size:
            raise LedgerError(f"the log has only {self.size} entries")
        edge = self._edge
        with self.db.reader.connect() as conn:
            return inclusion_proof(index, size, lambda a, b: self._mth(conn, a, b, edge))

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        new = self.size if new is None else new
        if new > self.size:
            raise LedgerError(f"the log has only {self.size} entries")
        edge = self._edge
        with self.db.reader.connect() as conn:
            return consistency_proof(old, new, lambda a, b: self._mth(conn, a, b, edge))

    def tile(self, level: int, idx: int, width: int | None = None) -> bytes | None:
        """A tile as tlog-tiles serves it (None if it does not exist at that width)."""
        with self.db.reader.connect() as conn:
            data = self._read_tile(conn, level, idx)
        want = TILE if width is None else width
        if not 1 <= want <= TILE or len(data) < 32 * want:
            return None
        return data[: 32 * want]

    def bundle(self, idx: int, width: int | None = None) -> bytes | None:
        with self.db.reader.connect() as conn:
            row = conn.execute(text("SELECT data FROM ledger_bundles WHERE idx = :i"), {"i": idx}).first()
        if row is None:
            return None
        entries = split_bundle(bytes(row[0]))
        want = TILE if width is None else width
        if not 1 <= want <= TILE or len(entries) < want:
            return None
        return b"".join(len(e).to_bytes(2, "big") + e for e in entries[:want])

    def entries(self, start: int, end: int) -> list[bytes]:
        """Entries [start, end)."""
        end = min(end, self.size)
        out: list[bytes] = []
        if start >= end:
            return out
        with self.db.reader.connect() as conn:
            rows = conn.execute(
                text("SELECT idx, data FROM ledger_bundles WHERE idx >= :a AND idx <= :b ORDER BY idx"),
                {"a": start // TILE, "b": (end - 1) // TILE},
            )
            for idx, data in rows:
                for j, e in enumerate(split_bundle(bytes(data))):
                    i = idx * TILE + j
                    if start <= i < end:
                        out.append(e)
        return out

    def entry(self, index: int) -> bytes:
        got = self.entries(index, index + 1)
        if not got:
            raise LedgerError(f"no entry {index}: the log has {self.size}")
        return got[0]
