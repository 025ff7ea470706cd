"""Probes run inside a namespace (`ip netns exec NS python3 probe.py ...`): TCP connects, UDP
datagrams and ICMP echoes to targets, counting answers. Prints one JSON object.

Usage: probe.py TARGET[,TARGET...] PORT COUNT [tcp|udp|icmp ...]
Each probe waits at most 0.5 s (probes run in parallel batches, so a dropped probe costs no
sequential timeout). TARGETs are addresses on the test's own fabric: nothing leaves it.
"""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import sys
import time

WAIT = 0.5
BATCH = 200


def tcp(targets: list[str], port: int, count: int) -> int:
    ok = 0
    todo = [targets[i % len(targets)] for i in range(count)]
    for start in range(0, len(todo), BATCH):
        socks = {}
        for addr in todo[start : start + BATCH]:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((addr, port))
            socks[s.fileno()] = s
        deadline = time.monotonic() + WAIT
        pending = dict(socks)
        while pending and time.monotonic() < deadline:
            _, w, _ = select.select([], list(pending.values()), [], max(0.0, deadline - time.monotonic()))
            for s in w:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    ok += 1
                del pending[s.fileno()]
        for s in socks.values():
            s.close()
    return ok


def udp(targets: list[str], port: int, count: int) -> int:
    ok = 0
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 2**20)
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        for i in range(n):
            s.sendto(b"probe", (targets[(start + i) % len(targets)], port))
        deadline = time.monotonic() + WAIT
        got = 0
        while got < n and time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                s.recvfrom(2048)
                got += 1
        ok += got
    return ok


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def icmp(targets: list[str], count: int) -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    ok = 0
    for start in range(0, count, BATCH):
        n = min(BATCH, count - start)
        for i in range(n):
            seq = (start + i) & 0xFFFF
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _checksum(head + b"probe"), ident, seq) + b"probe"
            s.sendto(packet, (targets[(start + i) % len(targets)], 0))
        deadline = time.monotonic() + WAIT
        got = 0
        while got < n and time.monotonic() < deadline:
            r, _, _ = select.select([s], [], [], max(0.0, deadline - time.monotonic()))
            if r:
                data = s.recv(2048)
                typ, _, _, rid, _ = struct.unpack("!BBHHH", data[20:28])
                if typ == 0 and rid == ident:
                    got += 1
        ok += got
    return ok


def main() -> None:
    targets = sys.argv[1].split(",")
    port, count = int(sys.argv[2]), int(sys.argv[3])
    kinds = sys.argv[4:] or ["tcp", "udp", "icmp"]
    out = {}
    for kind in kinds:
        if kind == "tcp":
            answered = tcp(targets, port, count)
        elif kind == "udp":
            answered = udp(targets, port, count)
        else:
            answered = icmp(targets, count)
        out[kind] = {"sent": count, "answered": answered}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
