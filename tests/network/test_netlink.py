"""The conntrack and NFLOG parsers and the collector's bookkeeping, on messages built here
byte by byte as the kernel lays them out (no root needed)."""

from __future__ import annotations

import io
import json
import socket
import struct
import time

from shanzhi.providers.fabric import netlink
from shanzhi.providers.fabric.collector import Collector
from shanzhi.providers.fabric.netlink import _attr

NESTED = 0x8000


def _nest(kind: int, *children: bytes) -> bytes:
    return _attr(kind | NESTED, b"".join(children))


def _msg(kind: int, body: bytes, flags: int = 0) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, 0, 0) + body


def conntrack_body(
    cid: int, *, proto: int = 6, counters: tuple[int, int, int, int] = (3, 180, 2, 120), state: int = 3
) -> bytes:
    tup = _nest(
        1,
        _nest(1, _attr(1, socket.inet_aton("10.1.0.5")), _attr(2, socket.inet_aton("10.1.0.9"))),
        _nest(2, _attr(1, bytes([proto])), _attr(2, struct.pack("!H", 40000)), _attr(3, struct.pack("!H", 8080))),
    )
    c_out = _nest(9, _attr(1, struct.pack("!Q", counters[0])), _attr(2, struct.pack("!Q", counters[1])))
    c_in = _nest(10, _attr(1, struct.pack("!Q", counters[2])), _attr(2, struct.pack("!Q", counters[3])))
    info = _nest(4, _nest(1, _attr(1, bytes([state]))))
    ts = _nest(20, _attr(1, struct.pack("!Q", 1_700_000_000 * 10**9)))
    return (
        struct.pack("=BBH", socket.AF_INET, 0, 0)
        + tup
        + info
        + _attr(8, struct.pack("!I", 7))
        + c_out
        + c_in
        + _attr(12, struct.pack("!I", cid))
        + ts
    )


def nflog_body(seq: int, prefix: str = "d9", proto: int = 17) -> bytes:
    ip = bytes([0x45, 0]) + struct.pack("!H", 33) + b"\0" * 5 + bytes([proto]) + b"\0\0"
    ip += socket.inet_aton("10.1.0.5") + socket.inet_aton("10.1.0.9") + struct.pack("!HH", 5353, 8080)
    body = struct.pack("=BBH", socket.AF_INET, 0, socket.htons(7))
    body += _attr(10, prefix.encode() + b"\0") + _attr(12, struct.pack("!I", seq)) + _attr(9, ip)
    body += _attr(3, struct.pack("!QQ", 1_700_000_000, 500_000))
    return body


def test_a_conntrack_event_parses_to_its_tuple_mark_counters_and_times() -> None:
    data = _msg((1 << 8) | netlink.CT_NEW, conntrack_body(42)) + _msg((1 << 8) | netlink.CT_DELETE, conntrack_body(43))
    msgs = list(netlink.messages(data))
    assert [k & 0xFF for k, _, _ in msgs] == [netlink.CT_NEW, netlink.CT_DELETE]
    c = netlink.parse_conntrack(msgs[0][2])
    assert c is not None
    assert (c.id, c.proto, c.src, c.sport, c.dst, c.dport, c.mark) == (42, 6, "10.1.0.5", 40000, "10.1.0.9", 8080, 7)
    assert (c.packets_out, c.bytes_out, c.packets_in, c.bytes_in) == (3, 180, 2, 120)
    assert c.start_ns == 1_700_000_000 * 10**9 and c.tcp_state == 3
    assert netlink.summary(msgs[0][2]) == (42, (3, 180, 2, 120), 3)


def test_an_nflog_packet_parses_to_its_rule_sequence_and_tuple() -> None:
    d = netlink.parse_nflog(nflog_body(5))
    assert d is not None
    assert (d.prefix, d.seq, d.proto, d.src, d.sport, d.dst, d.dport, d.length) == (
        "d9",
        5,
        17,
        "10.1.0.5",
        5353,
        "10.1.0.9",
        8080,
        33,
    )
    assert d.time == 1_700_000_000.5
    assert netlink.parse_nflog(struct.pack("=BBH", 2, 0, 0) + _attr(9, b"\x60" + b"\0" * 39)) is None  # IPv6


class _Quiet(Collector):
    """The collector's bookkeeping without its sockets."""

    def __init__(self) -> None:  # no sockets: only the bookkeeping
        self.out = io.StringIO()
        self.open = {}
        self.drops = {}
        self.last_seq = None
        self.closed = set()
        self.dumped = None
        self.dump_started = 0.0

    def lines(self) -> list[dict[str, object]]:
        self.flush_drops()
        return [json.loads(x) for x in self.out.getvalue().splitlines()]


def test_drops_are_summed_per_tuple_and_sequence_gaps_counted_as_loss() -> None:
    c = _Quiet()
    data = b"".join(_msg(4 << 8, nflog_body(seq)) for seq in (1, 2, 3, 7, 8))
    c._logged(data)
    out = c.lines()
    assert {"e": "loss", "ch": "nflog", "n": 3} in out  # 4, 5 and 6 never came
    (drop,) = [x for x in out if x["e"] == "drop"]
    assert (drop["r"], drop["n"], drop["b"], drop["s"], drop["dp"]) == (9, 5, 165, "10.1.0.5", 8080)


def test_connections_are_reported_new_updated_and_ended_once() -> None:
    c = _Quiet()
    c._events(_msg((1 << 8) | netlink.CT_NEW, conntrack_body(42, counters=(1, 60, 0, 0)), flags=0x400))
    done = _msg(netlink.NLMSG_DONE, b"\0\0\0\0")
    for counters, state in (((5, 400, 4, 900), 3), ((5, 400, 4, 900), 3), ((6, 460, 5, 1000), 7)):
        c.dumped, c.dump_started = set(), time.monotonic()
        c._dumped(_msg((1 << 8) | netlink.CT_NEW, conntrack_body(42, counters=counters, state=state)) + done)
    c._events(_msg((1 << 8) | netlink.CT_DELETE, conntrack_body(42)))  # conntrack lets go: no second end
    kinds = [(x["e"], x.get("po")) for x in c.lines()]
    assert kinds == [("new", None), ("upd", 5), ("end", 6)]  # the unchanged second dump says nothing


def test_a_connection_missing_from_a_dump_is_ended_and_one_never_heard_of_is_added() -> None:
    c = _Quiet()
    c._events(_msg((1 << 8) | netlink.CT_NEW, conntrack_body(42)))
    c.dumped, c.dump_started = set(), time.monotonic() + 1  # 42 was known before this dump began
    c._dumped(_msg((1 << 8) | netlink.CT_NEW, conntrack_body(77)) + _msg(netlink.NLMSG_DONE, b"\0\0\0\0"))
    out = c.lines()
    assert [(x["e"], x["id"]) for x in out] == [("new", 42), ("new", 77), ("upd", 77), ("end", 42)]
    assert out[1]["late"] is True
