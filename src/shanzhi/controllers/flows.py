"""The flow recorder: runs a collector in every host namespace of the tenant-network clouds
(see `shanzhi.providers.fabric.collector`), turns what they report into flow records with both
ends' VDC, app and instance and the rule that decided, and raises the network alarms.

Each connection is recorded once: by the host of its source instance, or, when the source is
not an instance (the management address), by the host of its destination. Drops happen on the
first host a packet meets, so each is reported once anyway. Records are written in one
transaction every half second; open connections get their counters from the collectors' dumps.

Alarms: a cross-VDC attempt the policy denied (once per pair of apps per 5 minutes), an
app-to-app edge never seen before, and a byte rate on an edge ten times its moving average
(and over 1 MiB a minute).
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from shanzhi.controllers.alarms import raise_alarm
from shanzhi.controllers.network import NetworkController
from shanzhi.network.policy import Endpoint, Rule
from shanzhi.store import Database
from shanzhi.store.events import record_event
from shanzhi.store.tables import Flow, FlowEdge, utcnow

log = logging.getLogger("shanzhi.flows")
FLUSH = 0.5
BATCH = 20_000  # records per transaction: a backlog is written in steps, each soon readable
DENIED_ALARM_EVERY = 300.0
SPIKE_FACTOR = 10.0
SPIKE_MIN_BYTES = 2**20
MINUTE = 60.0
_PROTO = {1: "icmp", 6: "tcp", 17: "udp"}
EdgeKey = tuple[str, str, str, str]


def _when(t: float | None) -> datetime:
    return datetime.fromtimestamp(t, UTC) if t else utcnow()


def rule_text(rule: Rule | None) -> str:
    if rule is None:
        return ""
    owner = f"{rule.vdc}/{rule.app}" if rule.app else rule.vdc or ""
    return f"{rule.name} {owner}".strip()


@dataclass
class _Open:
    edge: EdgeKey | None
    bytes: int = 0


@dataclass
class _Collector:
    proc: subprocess.Popen[bytes]
    reader: threading.Thread


@dataclass
class _Batch:
    new: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    updates: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    drops: list[dict[str, Any]] = field(default_factory=list)
    edges_new: dict[EdgeKey, int] = field(default_factory=dict)


class FlowController:
    def __init__(self, db: Database, network: NetworkController, is_leader: Callable[[], bool]) -> None:
        self.db = db
        self.network = network
        self.is_leader = is_leader
        self.queue: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.lost = {"nflog": 0, "conntrack": 0}
        self.recorded = 0
        self._reported_lost = dict(self.lost)
        self._collectors: dict[str, _Collector] = {}
        self._tracked: dict[tuple[str, int], _Open] = {}
        self._edges: dict[EdgeKey, int] | None = None  # edge -> FlowEdge id
        self._minute: dict[EdgeKey, int] = {}
        self._minute_started = time.monotonic()
        self._denied: dict[tuple[str, str, str, str], float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_ensure = 0.0

    # ----------------------------------------------------------------- thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flows", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._stop_collectors()

    def _run(self) -> None:
        wait = FLUSH
        while not self._stop.wait(wait):
            wait = FLUSH
            try:
                if not self.is_leader():
                    self._stop_collectors()
                    continue
                if time.monotonic() >= self._next_ensure:
                    self.ensure_collectors()
                    self._next_ensure = time.monotonic() + 2.0
                if self.run_once() >= BATCH:
                    wait = 0  # a backlog: the next batch at once
            except Exception:
                log.exception("flow recording pass failed; retrying")

    # ------------------------------------------------------------- collectors
    def ensure_collectors(self) -> None:
        wanted: dict[str, list[str]] = {}
        for _, p in self.network.tenant_clouds(healthy=True):  # as the reconciler last found them
            wanted.update(p.flow_collectors())
        for host in set(self._collectors) - set(wanted):
            self._stop_collector(host)
        for host, argv in wanted.items():
            c = self._collectors.get(host)
            if c is not None and c.proc.poll() is None:
                continue
            if c is not None:
                log.warning("flow collector of %s exited (%s); starting it again", host, c.proc.returncode)
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            reader = threading.Thread(target=self._read, args=(host, proc.stdout), name=f"flows-{host}", daemon=True)
            reader.start()
            self._collectors[host] = _Collector(proc, reader)

    def _read(self, host: str, stream: IO[bytes]) -> None:
        for line in stream:
            try:
                self.queue.put((host, json.loads(line)))
            except ValueError:
                continue

    def _stop_collector(self, host: str) -> None:
        c = self._collectors.pop(host, None)
        if c is None:
            return
        c.proc.terminate()
        try:
            c.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            c.proc.kill()
            c.proc.wait()

    def _stop_collectors(self) -> None:
        for host in list(self._collectors):
            self._stop_collector(host)

    def ready(self) -> set[str]:
        """Hosts whose collector is running."""
        return {h for h, c in self._collectors.items() if c.proc.poll() is None}

    # ---------------------------------------------------------------- records
    def run_once(self, limit: int = BATCH) -> int:
        items: list[tuple[str, dict[str, Any]]] = []
        while len(items) < limit:
            try:
                items.append(self.queue.get_nowait())
            except queue.Empty:
                break
        batch = _Batch()
        for host, rec in items:
            self._take(batch, host, rec)
        now = time.monotonic()
        minute_over = now - self._minute_started >= MINUTE
        if not (batch.new or batch.updates or batch.drops or minute_over or self.lost != self._reported_lost):
            return 0
        with self.db.session() as s, s.begin():
            self._write(s, batch)
            if minute_over:
                self._spikes(s, now - self._minute_started)
                self._minute_started = now
            if self.lost != self._reported_lost:
                record_event(
                    s,
                    "FlowRecordsLost",
                    "network",
                    "flows",
                    f"flow collection lost records: {self.lost['nflog']} dropped packets (NFLOG sequence gaps), "
                    f"{self.lost['conntrack']} conntrack event overruns",
                    warning=True,
                )
                self._reported_lost = dict(self.lost)
        self.recorded += len(batch.new) + len(batch.drops)
        return len(items)

    def _ends(self, rec: dict[str, Any]) -> tuple[Endpoint | None, Endpoint | None]:
        eps = self.network.endpoints
        return eps.get(str(rec.get("s"))), eps.get(str(rec.get("d")))

    def _mine(self, host: str, rec: dict[str, Any]) -> bool:
        src, dst = self._ends(rec)
        homes = self.network.homes
        if src is not None:
            return homes.get(src.address) == host
        return dst is not None and homes.get(dst.address) == host

    def _rule(self, rule_id: Any) -> str:
        """What the rule with this id (a mark or a log prefix's number) says, as records show it."""
        rules = self.network.ruleset.rules if self.network.ruleset else {}
        return rule_text(rules.get(int(rule_id or 0)))

    def _row(self, host: str, rec: dict[str, Any], verdict: str, rule: str) -> dict[str, Any]:
        src, dst = self._ends(rec)
        return {
            "host": host,
            "ct_id": rec.get("id"),
            "verdict": verdict,
            "rule": rule,
            "proto": int(rec["p"]),
            "src": str(rec["s"]),
            "sport": int(rec["sp"]),
            "dst": str(rec["d"]),
            "dport": int(rec["dp"]),
            "src_vdc": src.vdc if src else None,
            "src_app": src.app if src else None,
            "src_instance": src.instance if src else None,
            "dst_vdc": dst.vdc if dst else None,
            "dst_app": dst.app if dst else None,
            "dst_instance": dst.instance if dst else None,
            "packets_out": 0,
            "bytes_out": 0,
            "packets_in": 0,
            "bytes_in": 0,
            "started_at": _when(rec.get("t")),
            "ended_at": None,
            "updated_at": utcnow(),
        }

    @staticmethod
    def _edge(row: dict[str, Any]) -> EdgeKey | None:
        if not (row["src_app"] and row["dst_app"]):
            return None
        if (row["src_vdc"], row["src_app"]) == (row["dst_vdc"], row["dst_app"]):
            return None
        return (row["src_vdc"], row["src_app"], row["dst_vdc"], row["dst_app"])

    def _take(self, b: _Batch, host: str, rec: dict[str, Any]) -> None:
        kind = rec.get("e")
        if kind == "loss":
            ch = str(rec.get("ch"))
            self.lost[ch] = self.lost.get(ch, 0) + int(rec.get("n", 0))
            return
        if kind == "drop":
            row = self._row(host, rec, "dropped", self._rule(rec.get("r")))
            row.update(ct_id=None, packets_out=int(rec["n"]), bytes_out=int(rec["b"]), ended_at=_when(rec.get("t1")))
            b.drops.append(row)
            return
        key = (host, int(rec.get("id", 0)))
        if kind == "new" or (kind == "end" and key not in self._tracked and "s" in rec):
            if not self._mine(host, rec):
                return
            row = self._row(host, rec, "forwarded", self._rule(rec.get("m")))
            edge = self._edge(row)
            b.new[key] = row
            self._tracked[key] = _Open(edge)
            if edge is not None:
                b.edges_new[edge] = b.edges_new.get(edge, 0) + 1
        tracked = self._tracked.get(key)
        if tracked is None or kind not in ("upd", "end"):
            return
        values: dict[str, Any] = {
            "packets_out": int(rec.get("po", 0)),
            "bytes_out": int(rec.get("bo", 0)),
            "packets_in": int(rec.get("pr", 0)),
            "bytes_in": int(rec.get("br", 0)),
            "updated_at": utcnow(),
        }
        total = values["bytes_out"] + values["bytes_in"]
        if tracked.edge is not None and total > tracked.bytes:
            self._minute[tracked.edge] = self._minute.get(tracked.edge, 0) + total - tracked.bytes
        tracked.bytes = max(tracked.bytes, total)
        if kind == "end":
            values["ended_at"] = _when(rec.get("t1"))
            del self._tracked[key]
        if key in b.new:
            b.new[key].update(values)
        else:
            b.updates[key] = {**b.updates.get(key, {}), **values}

    def _write(self, s: Session, b: _Batch) -> None:
        rows = [*b.new.values(), *b.drops]
        if rows:
            s.execute(insert(Flow), rows)
        self._update(s, b.updates)
        if self._edges is None:
            self._edges = {(e.src_vdc, e.src_app, e.dst_vdc, e.dst_app): e.id for e in s.scalars(select(FlowEdge))}
        for edge, n in b.edges_new.items():
            if edge in self._edges:
                s.execute(
                    update(FlowEdge)
                    .where(FlowEdge.id == self._edges[edge])
                    .values(flows=FlowEdge.flows + n, last_seen=utcnow())
                )
                continue
            seen = FlowEdge(src_vdc=edge[0], src_app=edge[1], dst_vdc=edge[2], dst_app=edge[3], flows=n, bytes=0)
            s.add(seen)
            s.flush()
            self._edges[edge] = seen.id
            raise_alarm(
                s,
                "new-edge",
                f"new traffic: {edge[0]}/{edge[1]} -> {edge[2]}/{edge[3]} (never seen before)",
                vdc=edge[2],
                app=edge[3],
                severity="info",
                detail={"src_vdc": edge[0], "src_app": edge[1], "dst_vdc": edge[2], "dst_app": edge[3]},
            )
        for row in b.drops:
            self._denied_alarm(s, row)

    @staticmethod
    def _update(s: Session, updates: dict[tuple[str, int], dict[str, Any]]) -> None:
        """Counters (and ends) of open flows, as one executemany per shape of change."""
        shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for (host, ct_id), values in updates.items():
            shapes.setdefault(tuple(sorted(values)), []).append({"k_host": host, "k_ct": ct_id, **values})
        for keys, params in shapes.items():
            stmt = (
                update(Flow)
                .where(Flow.host == bindparam("k_host"), Flow.ct_id == bindparam("k_ct"), Flow.ended_at.is_(None))
                .values({k: bindparam(k) for k in keys})
            )
            s.connection().execute(stmt, params)

    def _denied_alarm(self, s: Session, row: dict[str, Any]) -> None:
        if not row["rule"].startswith("cross-vdc") or row["src_vdc"] is None:
            return
        pair = (str(row["src_vdc"]), str(row["src_app"]), str(row["dst_vdc"]), str(row["dst_app"]))
        now = time.monotonic()
        if now - self._denied.get(pair, -DENIED_ALARM_EVERY) < DENIED_ALARM_EVERY:
            return
        self._denied[pair] = now
        proto = _PROTO.get(int(row["proto"]), str(row["proto"]))
        raise_alarm(
            s,
            "cross-vdc-denied",
            f"denied: {pair[0]}/{pair[1]} ({row['src_instance']}, {row['src']}) tried {pair[2]}/{pair[3]} "
            f"({row['dst_instance']}, {row['dst']}:{row['dport']}/{proto}); rule {row['rule']}, "
            f"{row['packets_out']} packets",
            vdc=pair[2],
            app=pair[3],
            detail={k: row[k] for k in ("src", "sport", "dst", "dport", "proto", "rule", "packets_out")}
            | {"src_vdc": pair[0], "src_app": pair[1]},
        )

    def _spikes(self, s: Session, seconds: float) -> None:
        minute, self._minute = self._minute, {}
        if not self._edges:
            return
        for edge, edge_id in self._edges.items():
            got = minute.get(edge, 0)
            rate = got / max(seconds, 1.0)
            row = s.get(FlowEdge, edge_id)
            if row is None:
                continue
            base = float(row.rate)
            if base > 0 and rate > SPIKE_FACTOR * base and got > SPIKE_MIN_BYTES:
                raise_alarm(
                    s,
                    "rate-spike",
                    f"traffic spike: {edge[0]}/{edge[1]} -> {edge[2]}/{edge[3]} at {rate / 1024:.0f} KiB/s, "
                    f"{rate / base:.0f} times its average of {base / 1024:.1f} KiB/s",
                    vdc=edge[2],
                    app=edge[3],
                    detail={"rate": rate, "baseline": base},
                )
            row.rate = rate if base == 0 else 0.8 * base + 0.2 * rate
            row.bytes = row.bytes + got
