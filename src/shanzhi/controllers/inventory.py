"""The inventory: what every cloud has, Shanzhi's own and what it found there, in one table.

A thread of its own (a slow cloud API never holds up reconciling) syncs each cloud when it is
due: every `interval` seconds, sooner when asked (`shanzhi inventory sync`), later while the
cloud fails (5 s doubling per failure, at most 10 minutes), with the last sync's time, size,
changes and error kept per cloud. A sync is a listing compared with what is stored by a
digest per row, so the database sees only what changed: new rows in one bulk insert, changed
ones in one bulk update, vanished ones deleted. A cloud that can say what changed (OpenStack:
Nova's `changes-since` for servers, deleted ones included) is listed by change between whole
listings, so a sync of a big project reads only its few changed servers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from shanzhi.controllers.fleet import Fleet
from shanzhi.controllers.loop import LeaderThread
from shanzhi.domain.errors import ShanzhiError
from shanzhi.providers import Listing, Resource
from shanzhi.store import Database
from shanzhi.store.tables import Cloud, InventoryItem, InventorySync, utcnow

log = logging.getLogger("shanzhi.inventory")
FULL_EVERY = 10  # a cloud that lists by change is listed whole at least every tenth sync
CLOCK_MARGIN = timedelta(seconds=30)  # "changed since" asked from this much before the last sync began
BACKOFF_BASE = 5.0
BACKOFF_MAX = 600.0
_CHUNK = 500


def digest(r: Resource) -> str:
    body = [r.name, r.state, r.managed, r.instance, r.attrs]
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def backoff(failures: int) -> float:
    return float(min(BACKOFF_MAX, BACKOFF_BASE * 2 ** max(0, failures - 1)))


def store(
    s: Session,
    cloud_id: int,
    resources: Iterable[Resource],
    partial: frozenset[str] = frozenset(),
    gone: Iterable[tuple[str, str]] = (),
) -> tuple[int, int]:
    """Make the stored inventory of one cloud what `resources` says; return (items, changed).
    For the `partial` kinds `resources` holds only what changed: their other rows stay, but those
    named in `gone`."""
    now = utcnow()
    found = {(r.kind, r.id): r for r in resources}
    held = {
        (kind, ext): (rid, dig)
        for kind, ext, rid, dig in s.execute(
            select(InventoryItem.kind, InventoryItem.external_id, InventoryItem.id, InventoryItem.digest).where(
                InventoryItem.cloud_id == cloud_id
            )
        )
    }
    new, changed = [], []
    for key, r in found.items():
        d = digest(r)
        row = {
            "name": r.name[:255],
            "state": r.state[:32],
            "managed": r.managed,
            "instance": r.instance,
            "attrs": dict(r.attrs),
            "digest": d,
            "updated_at": now,
        }
        if key not in held:
            new.append(row | {"cloud_id": cloud_id, "kind": r.kind, "external_id": r.id[:255], "first_seen_at": now})
        elif held[key][1] != d:
            changed.append(row | {"id": held[key][0]})
    dropped = set(gone)
    gone_ids = [rid for key, (rid, _) in held.items() if key not in found and (key[0] not in partial or key in dropped)]
    for i in range(0, len(new), _CHUNK * 10):
        s.execute(insert(InventoryItem), new[i : i + _CHUNK * 10])
    if changed:
        s.execute(update(InventoryItem), changed)
    for i in range(0, len(gone_ids), _CHUNK):
        s.execute(delete(InventoryItem).where(InventoryItem.id.in_(gone_ids[i : i + _CHUNK])))
    return len(held) + len(new) - len(gone_ids), len(new) + len(changed) + len(gone_ids)


class InventoryController:
    def __init__(self, db: Database, fleet: Fleet, is_leader: Callable[[], bool], *, interval: float = 30.0) -> None:
        self.db = db
        self.fleet = fleet
        self.is_leader = is_leader
        self.interval = interval
        # clouds that list by change: when each sync began, and how many such syncs since a whole one
        self._since: dict[int, tuple[datetime, int]] = {}
        # every second: `run_once` itself picks the clouds that are due
        self._thread = LeaderThread("inventory", self.run_once, is_leader, 1.0)
        self.start, self.stop, self.wake = self._thread.start, self._thread.stop, self._thread.wake

    def run_once(self) -> int:
        """Sync every cloud that is due; return how many were synced."""
        now = utcnow()
        with self.db.session() as s, s.begin():
            due_at = dict(s.execute(select(InventorySync.cloud_id, InventorySync.next_at)).all())
            clouds = [
                (c.id, c.name, c.kind, dict(c.options))
                for c in s.scalars(select(Cloud).order_by(Cloud.id))
                if c.id not in due_at or due_at[c.id] <= now
            ]
        for cloud in clouds:
            if self._thread.stopped.is_set():
                break
            self.sync(*cloud)
        return len(clouds)

    def sync(self, cloud_id: int, name: str, kind: str, options: dict[str, Any]) -> None:
        """One cloud: by change where it can say what changed since the last sync (with a
        margin for clocks; a whole listing every `FULL_EVERY`th time and after a restart), else
        in whole."""
        started, began = time.monotonic(), utcnow()
        error = ""
        last = self._since.get(cloud_id)
        listing: Listing | None = None
        try:
            p = self.fleet.provider(name, kind, options)
            if last is not None and last[1] < FULL_EVERY:
                listing = p.inventory_since(last[0] - CLOCK_MARGIN)
            if listing is None:
                listing = Listing(p.inventory())
        except (ShanzhiError, OSError, sqlite3.Error) as err:
            error, listing = str(err) or type(err).__name__, Listing([])
        with self.db.session() as s, s.begin():
            if s.get(Cloud, cloud_id) is None:
                return  # removed meanwhile
            row = s.get(InventorySync, cloud_id)
            if row is None:
                row = InventorySync(cloud_id=cloud_id, seconds=0.0, items=0, changed=0, error="", failures=0)
                s.add(row)
            now = utcnow()
            if error:
                row.failures += 1
                row.error = error[:2000]
                row.next_at = now + timedelta(seconds=backoff(row.failures))
                log.warning("inventory of %s failed (%d in a row): %s", name, row.failures, error)
                return
            items, changed = store(s, cloud_id, listing.resources, listing.partial, listing.gone)
            row.synced_at, row.items, row.changed, row.error, row.failures = now, items, changed, "", 0
            row.mode = "changes" if listing.partial else "full"
            self._since[cloud_id] = (began, last[1] + 1 if listing.partial and last else 0)
            row.seconds = round(time.monotonic() - started, 3)
            row.next_at = now + timedelta(seconds=self.interval)
        if changed:
            log.info("inventory of %s: %d items, %d changed in %.2fs", name, items, changed, row.seconds)
