"""Leader lock: at most one controller acts at a time on one database.

PostgreSQL: a session advisory lock held on a dedicated connection; it goes away with the
connection, so a killed leader frees it at once. SQLite: an exclusive `flock` on a file
beside the database file, freed by the kernel when the process dies. Both are real locks,
never a timestamp lease that a slow leader could overrun.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import zlib
from typing import IO

from sqlalchemy import Connection, text

from shanzhi.store.db import Database


class LeaderLock:
    def __init__(self, db: Database, name: str = "controller") -> None:
        self._db = db
        self._key = zlib.crc32(name.encode())
        self._name = name
        self._conn: Connection | None = None
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self.held():
            return True
        path = self._db.sqlite_path
        if self._db.is_sqlite:
            if path is None:  # in-memory database: one process by definition
                return True
            f = open(f"{path}.{self._name}.lock", "ab")  # noqa: SIM115 - held while leader
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                return False
            os.set_inheritable(f.fileno(), False)
            self._file = f
            return True
        conn = self._db.engine.connect()
        got = bool(conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar())
        conn.commit()
        if got:
            self._conn = conn
        else:
            conn.close()
        return got

    def held(self) -> bool:
        """True while the lock is still ours (checks the PostgreSQL connection is alive)."""
        if self._file is not None:
            return True
        if self._conn is None:
            return self._db.is_sqlite and self._db.sqlite_path is None
        try:
            self._conn.execute(text("SELECT 1"))
            self._conn.commit()
            return True
        except Exception:
            with contextlib.suppress(Exception):
                self._conn.invalidate()
            self._conn = None
            return False

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
                self._conn.commit()
                self._conn.close()
            self._conn = None
