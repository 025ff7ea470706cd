"""The flow collector of one host namespace: `ip netns exec HOST python -m
shanzhi.providers.fabric.collector --group 7`. It writes one JSON object per line to stdout:

- `{"e": "new", "id", "p", "s", "sp", "d", "dp", "m", "t"}`: a connection conntrack confirmed
  (`m` is its mark: the id of the rule that accepted it; `t` its start, epoch seconds);
- `{"e": "upd", "id", "po", "bo", "pr", "br"}`: its packets and bytes out and back, from the
  dump every `--dump` seconds (5; conntrack only reports counters when a connection ends), sent
  only when they changed;
- `{"e": "end", ...new's fields, "po", "bo", "pr", "br", "t1"}`: the connection is over (its TCP
  state reached TIME_WAIT or CLOSE, seen by a dump) or gone (conntrack destroyed it), once;
- `{"e": "drop", "r", "p", "s", "sp", "d", "dp", "n", "b", "t", "t1"}`: `n` packets (`b` bytes)
  the policy dropped by rule `r`, summed per 5-tuple over half a second;
- `{"e": "loss", "ch": "nflog"|"conntrack", "n"}`: what was lost: NFLOG packets by sequence gap
  (exact), conntrack event overruns (each a burst of unknown size; the dump still finds the
  long-lived connections among them).

A separate process, entered into the namespace by `ip netns exec`, so that no thread of the
server ever changes namespace; it dies with its parent.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import select
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

from shanzhi.providers.fabric import netlink
from shanzhi.providers.fabric.netlink import Conntrack

#: long flows are updated this often (the dump reads the whole table, so its cost grows with it)
DUMP_EVERY = 5.0
_PR_SET_PDEATHSIG = 1
_DRAIN = 1000
_TCP_TIME_WAIT = 7
_FLUSH = 0.1  # output is written this often
_DROPS = 0.5  # drops are summed per 5-tuple over this long


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _tuple(c: Conntrack) -> dict[str, Any]:
    return {"id": c.id, "p": c.proto, "s": c.src, "sp": c.sport, "d": c.dst, "dp": c.dport, "m": c.mark}


def _counters(c: Conntrack) -> tuple[int, int, int, int]:
    return (c.packets_out, c.bytes_out, c.packets_in, c.bytes_in)


def _cnt(counters: tuple[int, int, int, int]) -> dict[str, int]:
    """Packets and bytes out and back, as the output names them."""
    return dict(zip(("po", "bo", "pr", "br"), counters, strict=True))


class Collector:
    def __init__(self, group: int, dump_every: float, out: TextIO) -> None:
        self.events = netlink.conntrack_events()
        self.dumper = netlink.conntrack_dump_socket()
        self.log = netlink.nflog(group)
        self.dump_every = dump_every
        self.out = out
        self.open: dict[int, tuple[tuple[int, int, int, int], float]] = {}  # id -> counters, seen at
        self.drops: dict[tuple[int, int, str, int, str, int], list[float]] = {}
        self.last_seq: int | None = None
        self.dump_seq = 0
        self.dump_started = 0.0
        self.dumped: set[int] | None = None
        self.closed: set[int] = set()  # TCP connections reported over, still in the table

    def emit(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")

    def _recv(self, sock: Any, channel: str) -> bytes | None:
        try:
            data: bytes = sock.recv(1 << 20, socket.MSG_DONTWAIT)
            return data
        except BlockingIOError:
            return None
        except OSError as err:
            if err.errno == errno.ENOBUFS:
                if channel == "conntrack":
                    self.emit({"e": "loss", "ch": channel, "n": 1})
                return None  # NFLOG losses show as a sequence gap
            raise

    def _drain(self, sock: Any, channel: str) -> Iterator[bytes]:
        """Every datagram waiting (multicast events come one per datagram), up to a bound."""
        for _ in range(_DRAIN):
            data = self._recv(sock, channel)
            if data is None:
                return
            yield data

    def on_event(self) -> None:
        for data in self._drain(self.events, "conntrack"):
            self._events(data)

    def _events(self, data: bytes) -> None:
        for kind, _, body in netlink.messages(data):
            c = netlink.parse_conntrack(body)
            if c is None:
                continue
            if kind & 0xFF == netlink.CT_DELETE:
                self.open.pop(c.id, None)
                if c.id in self.closed:
                    self.closed.discard(c.id)
                    continue
                self.emit({"e": "end", **_tuple(c), "t": c.start_ns / 1e9, "t1": c.stop_ns / 1e9, **_cnt(_counters(c))})
            elif c.id not in self.open:
                self.open[c.id] = (_counters(c), time.monotonic())
                self.emit({"e": "new", **_tuple(c), "t": (c.start_ns / 1e9) or time.time()})

    def on_log(self) -> None:
        for data in self._drain(self.log, "nflog"):
            self._logged(data)

    def _logged(self, data: bytes) -> None:
        for kind, _, body in netlink.messages(data):
            if kind >> 8 != netlink.SUBSYS_ULOG:
                continue
            d = netlink.parse_nflog(body)
            if d is None:
                continue
            if d.seq is not None:
                if self.last_seq is not None and d.seq > self.last_seq + 1:
                    self.emit({"e": "loss", "ch": "nflog", "n": d.seq - self.last_seq - 1})
                self.last_seq = d.seq
            rule = int(d.prefix[1:]) if d.prefix[:1] == "d" and d.prefix[1:].isdigit() else 0
            key = (rule, d.proto, d.src, d.sport, d.dst, d.dport)
            now = d.time or time.time()
            agg = self.drops.get(key)
            if agg is None:
                self.drops[key] = [1, d.length, now, now]
            else:
                agg[0] += 1
                agg[1] += d.length
                agg[3] = now

    def flush_drops(self) -> None:
        for (rule, proto, src, sport, dst, dport), (n, size, first, last) in self.drops.items():
            self.emit(
                {"e": "drop", "r": rule, "p": proto, "s": src, "sp": sport, "d": dst, "dp": dport}
                | {"n": int(n), "b": int(size), "t": first, "t1": last}
            )
        self.drops.clear()

    def start_dump(self) -> None:
        self.dump_seq += 1
        self.dump_started = time.monotonic()
        self.dumped = set()
        netlink.request_dump(self.dumper, self.dump_seq)

    def on_dump(self) -> None:
        data = self._recv(self.dumper, "dump")
        if data:
            self._dumped(data)

    def _dumped(self, data: bytes) -> None:
        for kind, _, body in netlink.messages(data):
            if kind in (netlink.NLMSG_DONE, netlink.NLMSG_ERROR):
                self._dump_done()
                continue
            if self.dumped is None:
                continue
            cid, counters, tcp_state = netlink.summary(body)
            self.dumped.add(cid)
            if cid in self.closed:
                continue
            known = self.open.get(cid)
            if known is None:  # its NEW event was lost, or came before we listened
                c = netlink.parse_conntrack(body)
                if c is None:
                    continue
                self.emit({"e": "new", **_tuple(c), "t": (c.start_ns / 1e9) or time.time(), "late": True})
            elif known[0] == counters and tcp_state < _TCP_TIME_WAIT:
                continue
            if tcp_state >= _TCP_TIME_WAIT:  # over: TIME_WAIT only holds the tuple
                self.open.pop(cid, None)
                self.closed.add(cid)
                self.emit({"e": "end", "id": cid, **_cnt(counters), "t1": time.time()})
            else:
                self.open[cid] = (counters, time.monotonic())
                self.emit({"e": "upd", "id": cid, **_cnt(counters)})

    def _dump_done(self) -> None:
        if self.dumped is None:
            return
        self.closed &= self.dumped  # those the table no longer holds were destroyed
        for cid, (counters, seen) in list(self.open.items()):
            if cid not in self.dumped and seen < self.dump_started:  # gone, and its DESTROY lost
                del self.open[cid]
                self.emit({"e": "end", "id": cid, **_cnt(counters), "t1": time.time()})
        self.dumped = None

    def run(self) -> None:
        next_dump = time.monotonic()
        next_flush = next_drops = time.monotonic() + _FLUSH
        socks = {self.events: self.on_event, self.log: self.on_log, self.dumper: self.on_dump}
        while True:
            now = time.monotonic()
            if now >= next_dump and self.dumped is None:
                self.start_dump()
                next_dump = now + self.dump_every
            if now >= next_drops:
                self.flush_drops()
                next_drops = now + _DROPS
            if now >= next_flush:
                self.out.flush()
                next_flush = now + _FLUSH
            wait = max(0.0, min(next_dump, next_flush) - time.monotonic())
            ready, _, _ = select.select(list(socks), [], [], wait)
            for sock in ready:
                socks[sock]()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="shanzhi-flow-collector")
    ap.add_argument("--group", type=int, required=True, help="the NFLOG group the policy logs drops to")
    ap.add_argument(
        "--dump", type=float, default=DUMP_EVERY, help="seconds between conntrack dumps (counters of open flows)"
    )
    args = ap.parse_args(argv)
    _die_with_parent()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    collector = Collector(args.group, args.dump, sys.stdout)
    collector.emit({"e": "ready"})
    with contextlib.suppress(BrokenPipeError, KeyboardInterrupt):
        collector.run()


if __name__ == "__main__":
    main()
