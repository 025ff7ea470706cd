"""Which apps this `serve` replica reconciles: its share of `SHARDS` shards (app id mod SHARDS).

PostgreSQL: each replica holds, on one dedicated connection, a member advisory lock (a slot)
and the session advisory locks of its shards. The live members are read from `pg_locks`, so
there is no heartbeat table and no lease to expire: a dead replica's connection, and every lock
on it, goes at once. Shards are dealt to the live members in turn, in slot order; each round a
replica lets go of what is no longer its own and takes what is (a shard still held by its
previous owner is taken on a later round, once that owner let go of it). Before it writes an
app's decisions the reconciler asks `fence` inside that transaction whether this replica still
holds the app's shard, so two replicas never both act on one app, even across a lost
connection. `placing` serialises the transactions that place replicas or hand out addresses,
which read the whole fleet's use.

SQLite: one writer at a time anyway; the leader holds every shard.
"""

from __future__ import annotations

import contextlib
import logging

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from shanzhi.store.db import Database

log = logging.getLogger("shanzhi.shards")

SHARDS = 64
MEMBER_SLOTS = 256
_NS_MEMBER = 0x53480001  # advisory lock namespaces (two-int form: namespace, number)
_NS_SHARD = 0x53480002
_NS_PLACE = 0x53480003
_MINE = """
SELECT objid::bigint FROM pg_locks
WHERE locktype = 'advisory' AND objsubid = 2 AND granted AND classid::bigint = :ns
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


class Shards:
    def __init__(self, db: Database, count: int = SHARDS) -> None:
        self._db = db
        self.count = count
        self.held: frozenset[int] = frozenset()
        self.members = 0  # live replicas seen in the last round (PostgreSQL)
        self._conn: Connection | None = None
        self._pid = 0
        self._slot = -1

    def refresh(self, leader: bool) -> frozenset[int]:
        """One round: this replica's shards now (none while the database is away)."""
        if self._db.is_sqlite:
            self.held = frozenset(range(self.count)) if leader else frozenset()
            self.members = 1
            return self.held
        try:
            self._round()
        except Exception as err:  # the database is away: hold nothing (the locks went with it)
            if self.held:
                log.warning("lost the shard locks (%s): reconciling nothing until they are back", type(err).__name__)
            self._drop()
        return self.held

    def owns(self, app_id: int) -> bool:
        return app_id % self.count in self.held

    def fence(self, s: Session, app_id: int) -> bool:
        """Inside `s`'s transaction: does this replica still hold `app_id`'s shard?"""
        if self._db.is_sqlite:
            return self.owns(app_id)
        if not self.owns(app_id):
            return False
        q = text(_MINE + " AND pid = :pid AND objid::bigint = :shard")
        return s.execute(q, {"ns": _NS_SHARD, "pid": self._pid, "shard": app_id % self.count}).first() is not None

    def release(self) -> None:
        self._drop()

    def _round(self) -> None:
        if self._conn is None:
            self._connect()
        conn = self._conn
        assert conn is not None
        members = sorted(r[0] for r in conn.execute(text(_MINE), {"ns": _NS_MEMBER}))
        conn.commit()
        if self._slot not in members:
            raise RuntimeError("this replica's member lock is gone")
        me = members.index(self._slot)
        self.members = len(members)
        desired = {s for s in range(self.count) if s % len(members) == me}
        held = set(self.held)
        for s in sorted(held - desired):
            conn.execute(text("SELECT pg_advisory_unlock(:ns, :s)"), {"ns": _NS_SHARD, "s": s})
            held.discard(s)
        for s in sorted(desired - held):
            if conn.execute(text("SELECT pg_try_advisory_lock(:ns, :s)"), {"ns": _NS_SHARD, "s": s}).scalar():
                held.add(s)
        conn.commit()
        if frozenset(held) != self.held:
            log.info("reconciling %d of %d shards (%d replicas)", len(held), self.count, len(members))
        self.held = frozenset(held)

    def _connect(self) -> None:
        conn = self._db.engine.connect()
        try:
            self._pid = int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            for slot in range(MEMBER_SLOTS):
                if conn.execute(text("SELECT pg_try_advisory_lock(:ns, :s)"), {"ns": _NS_MEMBER, "s": slot}).scalar():
                    self._slot = slot
                    break
            else:
                raise RuntimeError(f"all {MEMBER_SLOTS} replica slots are taken")
            conn.commit()
        except Exception:
            conn.close()
            raise
        self._conn = conn

    def _drop(self) -> None:
        self.held = frozenset()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.invalidate()  # closes it: PostgreSQL frees every lock it held
            self._conn = None


def placing(s: Session) -> None:
    """Hold the fleet-wide placement lock until `s`'s transaction ends (PostgreSQL; SQLite
    transactions are serialised already)."""
    tx = s.get_transaction()
    if s.get_bind().dialect.name == "sqlite" or tx is None or s.info.get("shanzhi.placing") is tx:
        return
    s.execute(text("SELECT pg_advisory_xact_lock(:ns, 0)"), {"ns": _NS_PLACE})
    s.info["shanzhi.placing"] = tx
