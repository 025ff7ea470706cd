"""Probes run inside a namespace (`ip netns exec NS python3 probe.py ...`): TCP connects, UDP
datagrams and ICMP echoes to targets, counting answers. Prints one JSON object.

Usage: probe.py TARGET[,TARGET...] PORT COUNT [tcp|udp|icmp|burst|hold ...]
(`hold` keeps one HTTP connection open COUNT seconds; `burst` sends COUNT datagrams at once.)
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


def burst(targets: list[str], port: int, count: int) -> int:
    """`count` UDP datagrams as fast as they go, from one socket; answers are not waited for."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(count):
        s.sendto(b"burst", (targets[i % len(targets)], port))
    return 0


def hold(targets: list[str], port: int, seconds: int) -> int:
    """One TCP connection kept open `seconds`, an HTTP request every 0.5 s; returns the requests
    answered."""
    s = socket.create_connection((targets[0], port), timeout=5)
    ok = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.sendall(f"GET / HTTP/1.1\r\nHost: {targets[0]}\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
        while len(body) < length:
            body += s.recv(65536)
        ok += 1
        time.sleep(0.5)
    s.close()
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
        if kind == "burst":
            answered = burst(targets, port, count)
        elif kind == "hold":
            answered = hold(targets, port, count)
        elif kind == "tcp":
            answered = tcp(targets, port, count)
        elif kind == "udp":
            answered = udp(targets, port, count)
        else:
            answered = icmp(targets, count)
        out[kind] = {"sent": count, "answered": answered}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
