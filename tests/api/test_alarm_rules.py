"""Alarm rules and silences through the API: bad input refused naming the problem (nothing made),
each department within its own VDCs, platform rules for system administrators only."""

from __future__ import annotations

from tests.api.conftest import Tenants


def test_bad_rules_are_refused_and_change_nothing(tenants: Tenants) -> None:
    admin = tenants.as_("admin")
    for body, problem in (
        ({"name": "x", "vdc": "gz/health", "metric": "cpu"}, "exactly one of above, below or absent"),
        ({"name": "x", "vdc": "gz/health", "metric": "heat level", "above": 1}, "metric"),
        ({"name": "x", "vdc": "gz/nowhere", "metric": "cpu", "above": 1}, "gz/nowhere"),
        ({"name": "x", "vdc": "gz/health", "metric": "cpu", "above": 1, "for": "ages"}, "not a duration"),
        ({"name": "x", "vdc": "gz/health", "metric": "cpu", "above": 1, "extra": 1}, "unknown field"),
    ):
        r = admin.post("/api/v1/alarm-rules", json=body)
        assert r.status_code in (404, 422) and problem in r.json()["detail"], (body, r.text)
    assert admin.get("/api/v1/alarm-rules").json() == []
    ok = {"name": "hot", "vdc": "gz/health", "metric": "cpu", "above": 0.9, "for": "5m"}
    made = admin.post("/api/v1/alarm-rules", json=ok)
    assert made.status_code == 201 and made.json()["for"] == 300.0
    again = admin.post("/api/v1/alarm-rules", json=ok)
    assert again.status_code == 409 and "already has an alarm rule hot" in again.json()["detail"]
    for body, problem in (
        ({"vdc": "gz/health", "for": "90d"}, "at most 30d"),
        ({"vdc": "gz/health", "for": "x"}, "for"),
    ):
        r = admin.post("/api/v1/alarm-silences", json=body)
        assert r.status_code == 422 and problem in r.json()["detail"], r.text
    assert admin.get("/api/v1/alarm-silences").json() == []


def test_departments_keep_to_their_own_vdcs(tenants: Tenants) -> None:
    member, outsider = tenants.as_("hmember"), tenants.as_("tmember")
    r = member.post("/api/v1/alarm-rules", json={"name": "lost", "event": "CloudDown"})
    assert r.status_code == 403 and "give vdc" in r.json()["detail"]  # a platform rule: not theirs
    mine = member.post("/api/v1/alarm-rules", json={"name": "hot", "vdc": "gz/health", "metric": "cpu", "above": 1})
    assert mine.status_code == 201
    rule_id = mine.json()["id"]
    assert outsider.get("/api/v1/alarm-rules").json() == []  # transport does not see health's rules
    assert outsider.delete(f"/api/v1/alarm-rules/{rule_id}").status_code == 404
    r = outsider.post("/api/v1/alarm-silences", json={"rule": rule_id, "vdc": "gz/transport", "for": "1h"})
    assert r.status_code == 404  # another VDC's rule does not exist for them
    assert outsider.post("/api/v1/alarm-silences", json={"for": "1h"}).status_code == 403
    silence = member.post("/api/v1/alarm-silences", json={"rule": rule_id, "vdc": "gz/health", "for": "2h"})
    assert silence.status_code == 201
    assert [x["id"] for x in member.get("/api/v1/alarm-silences").json()] == [silence.json()["id"]]
    assert outsider.get("/api/v1/alarm-silences").json() == []
    ended = member.delete(f"/api/v1/alarm-silences/{silence.json()['id']}")
    assert ended.status_code == 200 and member.get("/api/v1/alarm-silences").json() == []
    assert member.delete(f"/api/v1/alarm-rules/{rule_id}").json() == {"deleted": rule_id}
