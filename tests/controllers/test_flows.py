"""The flow recorder's decisions without a kernel: which host records a connection, the rule
and identities it carries, edges and the alarms they raise."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from shanzhi.controllers.fleet import Fleet
from shanzhi.controllers.flows import SPIKE_MIN_BYTES, FlowController
from shanzhi.controllers.network import NetworkController
from shanzhi.network.policy import AppNet, Endpoint, compile_ruleset
from shanzhi.store import Database
from shanzhi.store.tables import Alarm, Event, Flow, FlowEdge

WEB, DB, OTHER = "10.9.1.1", "10.9.2.1", "10.9.3.1"


@pytest.fixture
def recorder(db: Database, data_dir: Path) -> FlowController:
    fleet = Fleet(data_dir)
    net = NetworkController(db, fleet, "10.9.0.0/16")
    eps = [
        Endpoint(WEB, "gz", "web", "web-0", "za"),
        Endpoint(DB, "gz", "db", "db-0", "zb"),
        Endpoint(OTHER, "sz", "aid", "aid-0", "zc"),
    ]
    net.ruleset = compile_ruleset(
        eps, [AppNet("gz", "web", None), AppNet("gz", "db", None), AppNet("sz", "aid", None)], "10.9.0.1"
    )
    net.endpoints = {e.address: e for e in eps}
    net.homes = {WEB: "h0", DB: "h1", OTHER: "h0"}
    return FlowController(db, net, lambda: True)


def _rule(rec: FlowController, name: str, app: str | None = None, vdc: str | None = None) -> int:
    assert rec.network.ruleset is not None
    return next(
        r.id
        for r in rec.network.ruleset.rules.values()
        if r.name == name and r.app == app and (vdc is None or r.vdc == vdc)
    )


def test_a_connection_is_recorded_once_by_its_source_host_with_its_rule(recorder: FlowController, db: Database) -> None:
    mark = _rule(recorder, "same-vdc", "db")
    new = {"e": "new", "id": 5, "p": 6, "s": WEB, "sp": 40000, "d": DB, "dp": 8080, "m": mark, "t": 1.7e9}
    recorder.queue.put(("h0", new))
    recorder.queue.put(("h1", {**new, "id": 9}))  # the destination host saw it too
    recorder.queue.put(("h0", {"e": "upd", "id": 5, "po": 3, "bo": 180, "pr": 2, "br": 500}))
    recorder.queue.put(("h1", {"e": "upd", "id": 9, "po": 3, "bo": 180, "pr": 2, "br": 500}))
    recorder.run_once()
    recorder.queue.put(("h0", {"e": "end", "id": 5, "po": 4, "bo": 240, "pr": 3, "br": 560, "t1": 1.7e9 + 2}))
    recorder.run_once()
    with db.session() as s:
        (f,) = s.scalars(select(Flow)).all()
        assert (f.host, f.src_app, f.dst_app, f.src_instance, f.dst_instance) == ("h0", "web", "db", "web-0", "db-0")
        assert f.rule == "same-vdc gz/db" and f.verdict == "forwarded"
        assert (f.packets_out, f.bytes_out, f.packets_in, f.bytes_in) == (4, 240, 3, 560)
        assert f.ended_at is not None and (f.ended_at - f.started_at).total_seconds() == pytest.approx(2)
        (edge,) = s.scalars(select(FlowEdge)).all()
        assert (edge.src_app, edge.dst_app, edge.flows) == ("web", "db", 1)
        (alarm,) = s.scalars(select(Alarm)).all()
        assert alarm.kind == "new-edge" and alarm.severity == "info" and alarm.vdc == "gz"


def test_a_denied_cross_vdc_attempt_raises_one_alarm_per_pair(recorder: FlowController, db: Database) -> None:
    rid = _rule(recorder, "cross-vdc", None, "gz")
    drop = {
        "e": "drop",
        "r": rid,
        "p": 17,
        "s": OTHER,
        "sp": 5000,
        "d": DB,
        "dp": 8080,
        "n": 7,
        "b": 300,
        "t": 1.7e9,
        "t1": 1.7e9,
    }
    recorder.queue.put(("h0", drop))
    recorder.queue.put(("h0", {**drop, "sp": 5001}))
    recorder.run_once()
    recorder.queue.put(("h0", {**drop, "sp": 5002}))
    recorder.run_once()
    with db.session() as s:
        flows = s.scalars(select(Flow)).all()
        assert sum(f.packets_out for f in flows) == 21 and {f.rule for f in flows} == {"cross-vdc gz"}
        (alarm,) = s.scalars(select(Alarm)).all()
        assert alarm.kind == "cross-vdc-denied" and alarm.vdc == "gz" and alarm.app == "db"
        assert "sz/aid (aid-0, 10.9.3.1) tried gz/db (db-0, 10.9.2.1:8080/udp)" in alarm.message
        assert s.scalars(select(Event).where(Event.reason == "Alarm")).first() is not None


def test_a_byte_rate_far_above_an_edges_average_raises_a_spike(recorder: FlowController, db: Database) -> None:
    mark = _rule(recorder, "same-vdc", "db")
    recorder.queue.put(
        ("h0", {"e": "new", "id": 1, "p": 6, "s": WEB, "sp": 1, "d": DB, "dp": 80, "m": mark, "t": 1.7e9})
    )
    recorder.run_once()
    with db.session() as s, s.begin():
        edge = s.scalars(select(FlowEdge)).one()
        edge.rate = 1000.0  # bytes/s, the moving average so far
    recorder.queue.put(("h0", {"e": "upd", "id": 1, "po": 1000, "bo": 2 * SPIKE_MIN_BYTES, "pr": 0, "br": 0}))
    recorder.run_once()
    with db.session() as s, s.begin():
        recorder._spikes(s, 60.0)
    with db.session() as s:
        kinds = [a.kind for a in s.scalars(select(Alarm).order_by(Alarm.id))]
        assert kinds == ["new-edge", "rate-spike"]
        edge = s.scalars(select(FlowEdge)).one()
        assert edge.bytes == 2 * SPIKE_MIN_BYTES and 1000 < edge.rate < 2 * SPIKE_MIN_BYTES / 60


def test_losses_become_an_event(recorder: FlowController, db: Database) -> None:
    recorder.queue.put(("h0", {"e": "loss", "ch": "nflog", "n": 12}))
    recorder.queue.put(("h1", {"e": "loss", "ch": "conntrack", "n": 1}))
    recorder.run_once()
    assert recorder.lost == {"nflog": 12, "conntrack": 1}
    with db.session() as s:
        (ev,) = s.scalars(select(Event).where(Event.reason == "FlowRecordsLost")).all()
        assert "12 dropped packets" in ev.message and "1 conntrack event overruns" in ev.message


def test_flows_are_summed_per_hour_once_and_outlive_their_records(db: Database) -> None:
    from datetime import UTC, datetime, timedelta

    from shanzhi.controllers.flow_rollup import roll_up_flows
    from shanzhi.controllers.housekeeping import prune_flows
    from shanzhi.store.tables import FlowHour

    h0 = datetime(2026, 12, 1, 9, tzinfo=UTC)

    def flow(start: datetime, verdict: str = "forwarded", size: int = 100) -> Flow:
        return Flow(
            host="h0", verdict=verdict, rule="", proto=6, src=WEB, sport=1, dst=DB, dport=8080,
            src_vdc="gz", src_app="web", dst_vdc="gz", dst_app="db", packets_out=2, bytes_out=size,
            packets_in=1, bytes_in=0, started_at=start, ended_at=start, updated_at=start,
        )  # fmt: skip

    with db.session() as s, s.begin():
        s.add_all([flow(h0 + timedelta(minutes=5)), flow(h0 + timedelta(minutes=50), size=300)])
        s.add_all([flow(h0 + timedelta(hours=1, minutes=1), "dropped"), flow(h0 + timedelta(hours=2, minutes=1))])
    now = h0 + timedelta(hours=2, minutes=30)  # hours 9 and 10 are complete, 11 is not
    with db.session() as s, s.begin():
        assert roll_up_flows(s, now) == 2
    with db.session() as s, s.begin():
        assert roll_up_flows(s, now) == 0  # nothing summed twice
        assert prune_flows(s, now) == 4  # the records go (retention) ...
    with db.session() as s:
        rows = {(r.hour.hour, r.verdict): (r.flows, r.packets, r.bytes) for r in s.scalars(select(FlowHour))}
    assert rows == {(9, "forwarded"): (2, 6, 400), (10, "dropped"): (1, 3, 100)}  # ... their sums stay
