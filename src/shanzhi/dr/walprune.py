"""Removing the WAL of the timelines a member has left behind, from inside its Patroni launcher.

PostgreSQL keeps a WAL segment until the checkpoint's cutoff passes its number, whatever its
timeline. Its own code says so (xlog.c, `RemoveOldXlogFiles`: "we could probably be a little
more proactive about removing segments of non-parent timelines"). Every failover leaves, at the
segment number it happened in, the old timeline's segment and a `.partial` copy of it, and
pg_rewind copies its source's whole `pg_wal` into a returning member. Under a storm of failovers
(Patroni restarts a crashed primary as a standby and promotes it: a timeline each time) the
cutoff hardly moves while each segment number gains files: `bench/dr.py`'s 20-crash runs filled
a 1 GiB volume with them, whatever `max_wal_size` said.

Removed, as nothing reads them:

- a `.partial` segment, once archived (`archive_status/<name>.done`): PostgreSQL renames the
  old timeline's last segment so at a promotion for the archive's sake alone; recovery and
  walsenders read the next timeline's copy of it;
- a whole segment of a timeline older than another whole segment of the same number, unless it
  waits to be archived (`.ready`): at a timeline switch the used part of the old segment is
  copied into the new timeline's, recovery reads the newest timeline's file of a number
  (`XLogFileReadAnyTLI`), and so does a walsender sending a historic timeline's last segment.
  Such a file with no status at all (a standby's unfinished copy when the timeline switched, or
  one pg_rewind brought) would otherwise be archived once the cutoff reached it; the archive
  has its contents in the newer timeline's segment, as it does for every renamed `.partial`.

Only while PostgreSQL runs (`postmaster.pid`): never during pg_rewind or a clone. A race with the
checkpointer removing or recycling the same file costs it one log line, nothing more.

Stdlib only, and without `from __future__`: its source is part of the launcher that Debian's
`/usr/bin/python3` runs (`shanzhi.dr.patroni.PATRONI_ARGV`), where shanzhi is not installed.
"""

import contextlib
import os
import re
import sys
import threading
import time
from collections.abc import Iterable

_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})(\.partial)?$")
#: seconds between two looks at pg_wal
PRUNE_EVERY = 5.0


def superseded_wal(names: Iterable[str], status: Iterable[str]) -> list[str]:
    """The files among `names` (a pg_wal listing) that can go, given `status` (the listing of
    its `archive_status`)."""
    marks = set(status)
    newest: dict[str, int] = {}  # segment number -> the newest timeline with a whole file of it
    segments: list[tuple[str, int, str, bool]] = []
    for name in names:
        m = _SEGMENT.match(name)
        if m is None:
            continue
        tli, number, partial = int(m[1], 16), m[2], m[3] is not None
        segments.append((name, tli, number, partial))
        if not partial:
            newest[number] = max(newest.get(number, 0), tli)
    return sorted(
        name
        for name, tli, number, partial in segments
        if (f"{name}.done" in marks if partial else tli < newest[number] and f"{name}.ready" not in marks)
    )


def prune(data_dir: str) -> list[str]:
    """Remove what `superseded_wal` names from `data_dir`'s pg_wal, with its archive status; the
    names removed."""
    wal = os.path.join(data_dir, "pg_wal")
    status = os.path.join(wal, "archive_status")
    if not os.path.exists(os.path.join(data_dir, "postmaster.pid")):
        return []
    try:
        names = os.listdir(wal)
        marks = os.listdir(status)
    except OSError:
        return []
    removed = []
    for name in superseded_wal(names, marks):
        try:
            os.unlink(os.path.join(wal, name))
        except FileNotFoundError:
            continue  # the checkpointer took it first
        except OSError:
            break
        removed.append(name)
        with contextlib.suppress(OSError):  # an orphaned status file is harmless
            os.unlink(os.path.join(status, name + ".done"))
    return removed


def _loop(data_dir: str, every: float) -> None:
    while True:
        removed = prune(data_dir)
        if removed:
            print(
                f"shanzhi: removed {len(removed)} WAL files of earlier timelines: {' '.join(removed)}",
                file=sys.stderr,
                flush=True,
            )
        time.sleep(every)


def start_pruning(data_dir: str, every: float = PRUNE_EVERY) -> threading.Thread:
    """Prune `data_dir`'s pg_wal every `every` seconds, in a daemon thread of this process."""
    thread = threading.Thread(target=_loop, args=(data_dir, every), name="shanzhi-walprune", daemon=True)
    thread.start()
    return thread
