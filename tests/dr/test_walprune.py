"""The WAL of timelines a member left behind is removed by its launcher (`shanzhi.dr.walprune`):
what may go and what must stay, and a real Patroni cluster whose primary crashes again and again
(a timeline each time) keeping one file per segment number, with every `.partial` archived."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from shanzhi.dr.patroni import PATRONI_ARGV
from shanzhi.dr.walprune import prune, superseded_wal
from tests.dr.bare import BareCluster, need_engines, wait

SEG = re.compile(r"^([0-9A-F]{8})([0-9A-F]{16})$")


def test_one_file_per_segment_number_stays_and_nothing_waiting_for_the_archive_goes() -> None:
    names = [
        "000000010000000000000002", "000000010000000000000003",  # 3: the switch to timeline 2
        "000000020000000000000003.partial",  # renamed at the promotion, archived
        "000000020000000000000003",  # a whole copy of the same (pg_rewind brought it): no status
        "000000030000000000000003.partial",  # renamed, not archived yet
        "000000030000000000000003",  # waits for the archive
        "000000040000000000000003", "000000040000000000000004",  # the newest timeline
        "000000010000000000000009",  # recycled ahead of time under an older timeline: the only 9
        "00000004.history", "000000010000000000000002.00000028.backup", "archive_status", "xlogtemp.123",
    ]  # fmt: skip
    status = [
        "000000010000000000000003.done", "000000020000000000000003.partial.done",
        "000000030000000000000003.ready", "000000040000000000000003.done",
    ]  # fmt: skip
    assert superseded_wal(names, status) == [
        "000000010000000000000003",  # timeline 4 has a whole 3, and this one is archived
        "000000020000000000000003",  # no status, but superseded: never archived, never read
        "000000020000000000000003.partial",
    ]
    # nothing older than the newest of a number: a lone old-timeline file stays (PostgreSQL's own)
    assert superseded_wal(["000000050000000000000007", "000000060000000000000008"], []) == []
    # a .partial stays until archived, even if a whole newer segment exists
    assert superseded_wal(["000000010000000000000003.partial", "000000020000000000000003"], []) == []


def test_prune_removes_files_with_their_status_only_while_postgres_runs(tmp_path: Path) -> None:
    wal = tmp_path / "pg_wal"
    (wal / "archive_status").mkdir(parents=True)
    for name in ("000000010000000000000003", "000000020000000000000003", "000000010000000000000003.partial"):
        (wal / name).write_bytes(b"x")
    for mark in ("000000010000000000000003.done", "000000010000000000000003.partial.ready"):
        (wal / "archive_status" / mark).write_text("")
    assert prune(str(tmp_path)) == []  # stopped: pg_rewind or a clone may be at work
    assert len(list(wal.iterdir())) == 4
    (tmp_path / "postmaster.pid").write_text("1\n")
    assert prune(str(tmp_path)) == ["000000010000000000000003"]
    assert sorted(p.name for p in wal.iterdir()) == [
        "000000010000000000000003.partial",
        "000000020000000000000003",
        "archive_status",
    ]
    assert os.listdir(wal / "archive_status") == ["000000010000000000000003.partial.ready"]
    assert prune(str(tmp_path / "missing")) == []


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BareCluster]:
    need_engines()
    c = BareCluster(tmp_path / "pg", strict=False, archive=tmp_path / "archive")
    try:
        yield c
    finally:
        c.close()


def _segments(data: Path) -> list[tuple[int, str]]:
    return [(int(m[1], 16), m[2]) for f in (data / "pgdata" / "pg_wal").iterdir() if (m := SEG.match(f.name))]


def test_a_primary_crashing_again_and_again_keeps_one_wal_file_per_segment_number(
    cluster: BareCluster, tmp_path: Path
) -> None:
    crashes = 4
    for _ in range(crashes):
        primary = cluster.primary()
        cluster.crash_postgres(primary)
        wait(lambda p=primary: cluster.role(p) != "primary", 30, "the crash seen")  # type: ignore[misc]
        wait(cluster.healthy, 120, "a primary and its synchronous standby again")

    newest = max(tli for n in cluster.nodes.values() for tli, _ in _segments(n["data"]))
    assert newest >= 1 + crashes, "each crash gave a timeline (else this test proves nothing)"
    # PostgreSQL renamed the old timeline's last segment at each promotion and archived it...
    archived = [f.name for f in (tmp_path / "archive").iterdir()]
    assert sum(name.endswith(".partial") for name in archived) >= crashes

    def one_per_number() -> bool:
        for n in cluster.nodes.values():
            numbers = [number for _, number in _segments(n["data"])]
            partials = list((n["data"] / "pgdata" / "pg_wal").glob("*.partial"))
            if len(numbers) != len(set(numbers)) or partials:
                return False
        return True

    # ... and every member's launcher removed it and the older timelines' copies (every 5 s)
    wait(one_per_number, 30, "one WAL file per segment number on every member")
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:  # the cluster still writes
        conn.execute("CREATE TABLE after_prune (id int)")
        conn.execute("INSERT INTO after_prune VALUES (1)")
    wait(cluster.healthy, 60, "still a primary and its synchronous standby")


def test_every_member_launcher_runs_the_pruner_without_its_docstring_on_the_command_line() -> None:
    launcher = PATRONI_ARGV[2]
    compile(launcher, "launcher", "exec")  # one program: the compare-and-set patch, the pruner, Patroni
    assert "start_pruning(_data_dir)" in launcher and "def superseded_wal" in launcher
    assert "Removing the WAL of the timelines" not in launcher  # every `ps` shows it
