"""/flows and /alarms are VDC-scoped like every other read, and refuse bad filters."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient

from shanzhi.store.tables import Alarm, Flow, utcnow
from tests.api.conftest import Tenants


def _flow(src: tuple[str, str] | None, dst: tuple[str, str], verdict: str = "forwarded", age: float = 0) -> Flow:
    started = utcnow() - timedelta(seconds=age)
    return Flow(
        host="h0",
        ct_id=None,
        verdict=verdict,
        rule="cross-vdc gz/health" if verdict == "dropped" else "same-vdc gz/health/records",
        proto=6,
        src="10.0.0.1",
        sport=40000,
        dst="10.0.1.1",
        dport=8080,
        src_vdc=src[0] if src else None,
        src_app=src[1] if src else None,
        src_instance=None,
        dst_vdc=dst[0],
        dst_app=dst[1],
        dst_instance=None,
        packets_out=1,
        bytes_out=60,
        packets_in=0,
        bytes_in=0,
        started_at=started,
        ended_at=started,
        updated_at=started,
    )


def _seed(api: TestClient) -> None:
    with api.app.state.db.session() as s, s.begin():  # type: ignore[attr-defined]
        s.add(_flow(("gz/transport", "buses"), ("gz/health", "records"), "dropped"))
        s.add(_flow(("gz/health", "records"), ("gz/health", "records")))
        s.add(_flow(None, ("gz/transport", "buses"), age=3600))  # health checks from the platform
        s.add(Alarm(kind="cross-vdc-denied", vdc="gz/health", app="records", message="denied", detail={}))
        s.add(Alarm(kind="new-edge", vdc=None, app=None, message="platform-wide", detail={}))


def test_each_department_sees_the_flows_touching_its_vdcs(tenants: Tenants) -> None:
    _seed(tenants.api)
    health = tenants.as_("hviewer").get("/api/v1/flows").json()
    assert len(health) == 2 and all("gz/health" in (f["src_vdc"], f["dst_vdc"]) for f in health)
    transport = tenants.as_("tmember").get("/api/v1/flows").json()
    assert {(f["src_vdc"], f["dst_vdc"]) for f in transport} == {("gz/transport", "gz/health"), (None, "gz/transport")}
    assert tenants.as_("nobody").get("/api/v1/flows").status_code == 403
    # another department's app does not exist for them
    assert tenants.as_("tmember").get("/api/v1/flows?app=records&vdc=gz/health").status_code == 404
    dropped = tenants.as_("hviewer").get("/api/v1/flows?verdict=dropped").json()
    assert [f["rule"] for f in dropped] == ["cross-vdc gz/health"] and dropped[0]["proto"] == "tcp"
    recent = tenants.api.get("/api/v1/flows?since=10m").json()
    assert len(recent) == 2  # the hour-old health check is left out


def test_bad_flow_filters_are_refused_naming_them(tenants: Tenants) -> None:
    r = tenants.api.get("/api/v1/flows?since=yesterday")
    assert r.status_code == 422 and "since" in r.text and "10m" in r.text
    assert tenants.api.get("/api/v1/flows?verdict=maybe").status_code == 422


def test_alarms_are_scoped_and_acknowledged_once(tenants: Tenants) -> None:
    _seed(tenants.api)
    assert [a["kind"] for a in tenants.as_("hviewer").get("/api/v1/alarms").json()] == ["cross-vdc-denied"]
    assert tenants.as_("tmember").get("/api/v1/alarms").json() == []
    assert {a["kind"] for a in tenants.api.get("/api/v1/alarms").json()} == {"cross-vdc-denied", "new-edge"}
    mine = tenants.as_("hviewer").get("/api/v1/alarms").json()[0]["id"]
    assert tenants.as_("hviewer").post(f"/api/v1/alarms/{mine}/ack").status_code == 403  # a viewer
    assert tenants.as_("tmember").post(f"/api/v1/alarms/{mine}/ack").status_code == 404  # not theirs
    r = tenants.as_("hmember").post(f"/api/v1/alarms/{mine}/ack")
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "hmember"
    again = tenants.as_("hadmin").post(f"/api/v1/alarms/{mine}/ack").json()
    assert again["acknowledged_by"] == "hmember"  # the first acknowledgement stands
    assert tenants.as_("hviewer").get("/api/v1/alarms?open=true").json() == []


def test_hourly_sums_are_scoped_like_the_flows(tenants: Tenants) -> None:
    from shanzhi.store.tables import FlowHour

    hour = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    with tenants.api.app.state.db.session() as s, s.begin():  # type: ignore[attr-defined]
        s.add(FlowHour(hour=hour, src_vdc="gz/transport", src_app="buses", dst_vdc="gz/transport", dst_app="buses",
                       verdict="forwarded", proto=6, dport=80, flows=5, packets=50, bytes=5000))  # fmt: skip
        s.add(FlowHour(hour=hour, src_vdc="gz/health", src_app="records", dst_vdc="gz/health", dst_app="records",
                       verdict="forwarded", proto=17, dport=53, flows=1, packets=2, bytes=90))  # fmt: skip
    rows = tenants.as_("tmember").get("/api/v1/flows/hourly").json()
    assert [(r["src_app"], r["flows"], r["proto"]) for r in rows] == [("buses", 5, "tcp")]
    assert len(tenants.api.get("/api/v1/flows/hourly?since=2h").json()) == 2
    assert tenants.api.get("/api/v1/flows/hourly?since=soon").status_code == 422
