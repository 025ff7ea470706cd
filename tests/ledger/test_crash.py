"""Kill the writer at random points during batched appends: nothing acknowledged is lost."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import time

from shanzhi.ledger.log import Log
from shanzhi.ledger.merkle import leaf_hash, root_of
from shanzhi.ledger.note import Signer
from shanzhi.ledger.verify import DatabaseSource, verify_log
from shanzhi.store import open_database

WRITER = textwrap.dedent(
    """
    import sys
    from shanzhi.ledger.log import Log
    from shanzhi.store import open_database
    db = open_database(sys.argv[1])
    log = Log(db)
    i = log.size
    print("ready", flush=True)              # imports done: the kill timer starts now
    while True:
        n = 1 + (i * 7919) % 300           # batch sizes vary, crossing tile boundaries
        first = log.append([f"entry-{j}".encode() for j in range(i, i + n)])
        assert first == i
        i += n
        print(i, flush=True)                # acknowledged: everything below i is durable
    """
)


def test_twenty_random_kills_lose_nothing_acknowledged(database_url: str) -> None:
    db = open_database(database_url)
    db.migrate()
    rnd = random.Random(2026)
    acknowledged = 0
    for _ in range(20):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, database_url], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"  # however slow the start
        time.sleep(rnd.uniform(0.05, 0.6))
        proc.kill()
        out, _ = proc.communicate()
        acks = [int(x) for x in out.split()]
        if acks:
            acknowledged = max(acknowledged, acks[-1])
        log = Log(db)  # a restart: rebuilt from what is stored
        assert log.size >= acknowledged, "an acknowledged entry was lost"
        assert log.entries(0, acknowledged) == [f"entry-{j}".encode() for j in range(acknowledged)]
        acknowledged = log.size  # the next writer continues from here
    hashes = [leaf_hash(f"entry-{j}".encode()) for j in range(acknowledged)]
    assert Log(db).root() == root_of(hashes)
    report = verify_log(DatabaseSource(db), Signer.generate("x.example/log").verifier)
    assert report.ok and report.entries_checked == acknowledged > 1000, report.problem
    db.dispose()
