"""An instance's use read off the machine it runs on, without an agent: its processes through
psutil (/proc). The processes are its cgroup's members where it has one (a double fork does not
escape it), else the process it started and that process's descendants."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import psutil

from shanzhi.domain.metrics import Usage


def tree(pid: int) -> list[int]:
    """A process and its descendants (empty when it is gone)."""
    try:
        root = psutil.Process(pid)
        return [root.pid, *(c.pid for c in root.children(recursive=True))]
    except psutil.Error:
        return []


def of_processes(pids: Iterable[int]) -> Usage | None:
    """The summed use of these processes: cpu seconds and bytes read/written by the live ones,
    resident memory now. None when none of them is alive."""
    cpu = 0.0
    memory = read = write = 0
    alive = False
    for pid in set(pids):
        try:
            p = psutil.Process(pid)
            with p.oneshot():
                times = p.cpu_times()
                rss = p.memory_info().rss
                io = p.io_counters()
        except (psutil.Error, AttributeError):  # gone meanwhile; no io counters on this platform
            continue
        alive = True
        cpu += times.user + times.system
        memory += rss
        read += io.read_bytes
        write += io.write_bytes
    return Usage(cpu_seconds=cpu, memory=memory, read_bytes=read, write_bytes=write) if alive else None


def network_of(pid: int) -> tuple[int, int] | None:
    """Bytes received and sent on every interface but loopback of the network namespace `pid` is
    in (/proc/<pid>/net/dev: the namespace's own counters); None when the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/net/dev").read_text().splitlines()[2:]
    except OSError:
        return None
    rx = tx = 0
    for line in lines:
        name, _, numbers = line.partition(":")
        fields = numbers.split()
        if name.strip() == "lo" or len(fields) < 9:
            continue
        rx += int(fields[0])
        tx += int(fields[8])
    return rx, tx
