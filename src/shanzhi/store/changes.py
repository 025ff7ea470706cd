"""Which apps changed: the reconciler's wake-ups, so that its cost follows change, not size.

Every committed session that inserted, changed or deleted an `App`, `Instance` or
`VolumeRecord` names that app; one that changed a `Site`, `Cloud` or `Host` names everything.
After the commit the names go to this process's `ChangeFeed`. On PostgreSQL the session also
sends them with `NOTIFY` from inside its transaction (so PostgreSQL delivers them at commit, and
never for a rollback) to every `serve` replica that listens (`Listener`): the replica that owns
the app hears of it even when another one's API took the request.

A notice is a hint, never the truth: the reconciler still reads the rows, and a periodic resync
finds whatever a notice missed (a listener that was reconnecting, a write made by hand).
A session can opt out with `quiet(session)`: the reconciler knows what it wrote itself.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import psycopg
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from shanzhi.store.tables import App, Cloud, Host, Instance, Site, VolumeRecord

log = logging.getLogger("shanzhi.changes")

CHANNEL = "shanzhi_changes"
EVERYTHING = "*"
_PAYLOAD = 7000  # PostgreSQL takes up to 8000 bytes per notification
_KEY = "shanzhi.changed"
_QUIET = "shanzhi.quiet"


class ChangeFeed:
    """App ids changed since the last `take`, and whether something changed that concerns every
    app. Thread-safe; subscribers are called (outside the lock) on every publication."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._apps: set[int] = set()
        self._everything = False
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, wake: Callable[[], None]) -> None:
        self._subscribers.append(wake)

    def publish(self, apps: Iterable[int] = (), everything: bool = False) -> None:
        with self._lock:
            self._apps.update(apps)
            self._everything = self._everything or everything
        for wake in self._subscribers:
            wake()

    def take(self) -> tuple[set[int], bool]:
        """What changed since the last call (and forget it)."""
        with self._lock:
            apps, everything = self._apps, self._everything
            self._apps, self._everything = set(), False
        return apps, everything


def quiet(session: Session) -> Session:
    """This session's changes wake nobody (the reconciler's own writes)."""
    session.info[_QUIET] = True
    return session


def mark(session: Session, apps: Iterable[int] = (), everything: bool = False) -> None:
    """Name these changes in `session`'s transaction, even a quiet one's: sent (PostgreSQL) now,
    delivered at commit."""
    seen: tuple[set[int], list[bool]] = session.info.setdefault(_KEY, (set(), [False]))
    new = set(apps) - seen[0]
    all_new = everything and not seen[1][0]
    seen[0].update(new)
    seen[1][0] = seen[1][0] or everything
    if (new or all_new) and session.get_bind().dialect.name != "sqlite":
        conn = session.connection()
        for payload in _payloads(new, all_new):
            conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": payload})


def install(sessions: sessionmaker[Session], feed: ChangeFeed) -> None:
    """Publish every committed change made through `sessions` to `feed` (and with NOTIFY on
    PostgreSQL)."""

    @event.listens_for(sessions, "after_flush")
    def _flushed(session: Session, _ctx: Any) -> None:
        if session.info.get(_QUIET):
            return
        apps: set[int] = set()
        everything = False
        for obj in (*session.new, *session.deleted, *(o for o in session.dirty if session.is_modified(o))):
            if isinstance(obj, App):
                apps.add(obj.id)
            elif isinstance(obj, (Instance, VolumeRecord)) and obj.app_id is not None:
                apps.add(obj.app_id)
            elif isinstance(obj, (Site, Cloud, Host)):
                everything = True
        if apps or everything:
            mark(session, apps, everything)

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        seen = session.info.pop(_KEY, None)
        if seen is not None:
            feed.publish(seen[0], seen[1][0])

    @event.listens_for(sessions, "after_rollback")
    def _rolled_back(session: Session) -> None:
        session.info.pop(_KEY, None)


def _payloads(apps: set[int], everything: bool) -> list[str]:
    out = [EVERYTHING] if everything else []
    chunk: list[str] = []
    size = 0
    for a in sorted(apps):
        s = str(a)
        if size + len(s) + 1 > _PAYLOAD:
            out.append(",".join(chunk))
            chunk, size = [], 0
        chunk.append(s)
        size += len(s) + 1
    if chunk:
        out.append(",".join(chunk))
    return out


def parse(payload: str) -> tuple[set[int], bool]:
    """A notification's body: app ids separated by commas, or `*` for everything."""
    if payload == EVERYTHING:
        return set(), True
    apps = set()
    for part in payload.split(","):
        with contextlib.suppress(ValueError):
            apps.add(int(part))
    return apps, False


class Listener:
    """LISTENs on PostgreSQL and hands what it hears to `feed`. Its connection comes from the
    engine, so it reaches the database exactly as the rest does (a multi-host URL: the writable
    member). After a lost connection it reconnects with backoff and publishes "everything", since
    it may have missed notices."""

    def __init__(self, engine: Engine, feed: ChangeFeed) -> None:
        self.engine = engine
        self.feed = feed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        delay = 0.5
        first = True
        while not self._stop.is_set():
            raw = None
            try:
                raw = self.engine.raw_connection()  # never given back to the pool: invalidated below
                conn: psycopg.Connection[Any] = raw.driver_connection  # type: ignore[assignment]
                conn.rollback()
                conn.autocommit = True
                conn.execute(f"LISTEN {CHANNEL}")
                self.connected.set()
                if not first:
                    log.info("listening for changes again; looking at everything once")
                    self.feed.publish(everything=True)
                first, delay = False, 0.5
                while not self._stop.is_set():
                    for n in conn.notifies(timeout=1.0):
                        apps, everything = parse(n.payload)
                        self.feed.publish(apps, everything)
            except (psycopg.Error, DBAPIError) as err:
                self.connected.clear()
                if self._stop.is_set():
                    return
                log.warning("change listener lost the database (%s); retrying in %.1fs", type(err).__name__, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            finally:
                if raw is not None:
                    with contextlib.suppress(Exception):
                        raw.invalidate()
