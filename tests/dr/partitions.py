"""Partition cycles between three centres: cut, hold, heal, and probe every node all along.

Each cycle is one of four faults, named from where the primary is when it starts (after a
failover the same-city centre is production):

- `isolate-production`: production cut from same-city and the arbiter. Patroni must demote the
  old primary before its leader key expires and promote the synchronous standby after.
- `cut-production-same-city`: only that link cut; the arbiter still sees both. The primary keeps
  its key; with `synchronous_mode_strict` its commits wait for the standby (no acknowledged write
  can be lost), and no failover may happen.
- `arbiter-down`: the arbiter cut from both: etcd keeps its quorum with the other two.
- `etcd-member-loss`: production's etcd member killed, then restarted with its data.

A prober asks every PostgreSQL node, all at once about five times a second, whether it accepts
writes (`pg_is_in_recovery()` false, the same probe the DR controller uses before activating the
remote centre). A round where two answer yes is a split brain. Probing goes on through the heal
until the cluster is healthy again (a primary and its synchronous standby).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from shanzhi.controllers.dr_activate import writable
from tests.dr.bare import BareCluster, Writer, wait
from tests.dr.centres import Centres

KINDS = ("isolate-production", "cut-production-same-city", "arbiter-down", "etcd-member-loss")
FAILOVER_WAIT = 90.0  # an isolation with no promotion this long after it is reported, not waited on


class Prober:
    """Every node probed in parallel each round until stopped."""

    def __init__(self, cluster: BareCluster, interval: float = 0.2) -> None:
        self.cluster = cluster
        self.interval = interval
        self.rounds = 0
        self.split: list[tuple[float, list[str]]] = []  # (when, the nodes that took writes)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(len(cluster.nodes))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nodes = list(self.cluster.nodes)
        password = self.cluster.secrets.superuser
        while not self._stop.is_set():
            at = time.monotonic()
            answers = list(self._pool.map(lambda n: writable(self.cluster.nodes[n]["pg"], password), nodes))
            self.rounds += 1
            primaries = [n for n, ok in zip(nodes, answers, strict=True) if ok]
            if len(primaries) > 1:
                self.split.append((at, primaries))
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - at)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._pool.shutdown()


def behind_last_optime(cluster: BareCluster, standby: str) -> int | None:
    """How far (bytes) `standby`'s WAL is behind the last position the primary wrote to etcd
    (the `/status` key): what Patroni's `maximum_lag_on_failover` is compared with when the
    standby races for the leader key (negative: the standby is ahead of it)."""
    status = cluster.dcs("status")
    try:
        xlog = httpx.get(f"{cluster.nodes[standby]['api']}/patroni", timeout=2).json()["xlog"]
        optime = int(status["optime"])
    except (httpx.HTTPError, ValueError, LookupError, TypeError):
        return None
    return optime - max(int(xlog.get("received_location") or 0), int(xlog.get("replayed_location") or 0))


def run_cycle(cluster: BareCluster, centres: Centres, writer: Writer, kind: str, hold: float = 8.0) -> dict[str, Any]:
    """One fault: wait until healthy, apply it, hold it (an isolation: until the standby is
    promoted), heal, wait until healthy again; what the probes and the writer saw."""
    wait(cluster.healthy, 240, "a primary and a running synchronous standby")
    old = cluster.primary()
    other = next(n for n in cluster.nodes if n != old)
    prod, same = cluster.nodes[old]["centre"], cluster.nodes[other]["centre"]
    acked_before = len(writer.acked)
    dropped_before = centres.dropped()
    prober = Prober(cluster)
    t0 = time.monotonic()
    promoted_after: float | None = None
    race_lag: int | None = None
    try:
        if kind == "isolate-production":
            centres.cut((prod, same), (prod, "arb"))
            time.sleep(3.0)  # what reached the standby before the cut has been received
            race_lag = behind_last_optime(cluster, other)
            try:
                wait(lambda: cluster.role(other) == "primary", FAILOVER_WAIT, "the same-city standby promoted")
                promoted_after = time.monotonic() - t0
            except TimeoutError:
                pass
            time.sleep(2.0)  # the old primary, still cut off, watched a little longer
        elif kind == "cut-production-same-city":
            centres.cut((prod, same))
            time.sleep(hold)
        elif kind == "arbiter-down":
            centres.cut(("arb", prod), ("arb", same))
            time.sleep(hold)
        elif kind == "etcd-member-loss":
            cluster.kill_etcd(prod)
            time.sleep(hold)
        else:
            raise ValueError(f"unknown fault {kind}")
        acked_during = len(writer.acked) - acked_before
        healed = time.monotonic()
    finally:
        centres.heal()
        if kind == "etcd-member-loss":
            cluster.start_etcd(prod)
    try:
        wait(cluster.healthy, 240, f"the cluster healthy after {kind}")
        recovered: float | None = time.monotonic() - healed
        # and writes flowing again (a stream that stalled under the cut resumes by itself, later)
        writes_back: float | None = wait(lambda: writer.recovered_after(healed, any_ack=True), 120, "writes") - healed
    except TimeoutError:
        recovered = writes_back = None
    prober.stop()
    new = cluster.primary() if recovered is not None else None
    return {
        "kind": kind,
        "primary_before": old,
        "primary_after": new,
        "failover": new is not None and new != old,
        "promoted_after_s": promoted_after,
        "race_lag_bytes": race_lag,
        "probe_rounds": prober.rounds,
        "split_rounds": len(prober.split),
        "split": [{"at": round(at - t0, 2), "nodes": nodes} for at, nodes in prober.split],
        "acked_during_fault": acked_during,
        "outage_s": writer.longest_gap(t0, time.monotonic()),
        "recovered_s": recovered,
        "writes_back_after_heal_s": writes_back,
        "packets_dropped": centres.dropped() - dropped_before,
    }
