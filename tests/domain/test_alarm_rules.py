"""Alarm rules as written, and the duration a breach must last."""

import pytest
from pydantic import ValidationError

from shanzhi.domain.alarm_rules import RuleIn, Tracker, breached


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"name": "x"}, "needs a metric"),
        ({"name": "x", "metric": "cpu"}, "exactly one of above, below or absent"),
        ({"name": "x", "metric": "cpu", "above": 1, "below": 0}, "exactly one"),
        ({"name": "x", "metric": "cpu", "above": 1, "absent": True}, "exactly one"),
        ({"name": "x", "event": "CloudDown", "metric": "cpu"}, "an event rule takes no metric"),
        ({"name": "x", "metric": "9disk", "above": 1}, "nor a Prometheus metric name"),
        ({"name": "Bad Name", "metric": "cpu", "above": 1}, "lowercase"),
        ({"name": "x", "metric": "cpu", "above": 1, "for": "soon"}, "not a duration"),
        ({"name": "x", "metric": "cpu", "above": 1, "webhook": "ftp://x"}, "must be an http"),
        ({"name": "x", "metric": "cpu", "above": 1, "colour": "red"}, "Extra inputs"),
    ],
)
def test_bad_rules_say_what_is_wrong(body: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        RuleIn.model_validate(body)


def test_good_rules() -> None:
    r = RuleIn.model_validate({"name": "hot", "metric": "cpu", "above": 0.8, "for": "2m"})
    assert r.seconds == 120 and r.severity == "warning"
    assert RuleIn.model_validate({"name": "gone", "event": "CloudDown"}).event == "CloudDown"


def test_breached() -> None:
    assert breached(0.9, 0.8, None) and not breached(0.8, 0.8, None)
    assert breached(1.0, None, 2.0) and not breached(None, 0.0, None)


def test_a_breach_fires_after_its_duration_and_resolves_when_it_ends() -> None:
    t = Tracker()
    key = (1, "web-0")
    assert t.step(key, True, 30, now=100) is None  # breach starts
    assert t.step(key, True, 30, now=120) is None  # not long enough
    assert t.step(key, False, 30, now=125) is None  # over before it fired: nothing
    assert t.step(key, True, 30, now=130) is None  # starts again
    assert t.step(key, True, 30, now=160) == "fire"
    assert t.step(key, True, 30, now=200) is None  # fires once
    assert t.step(key, False, 30, now=210) == "resolve"
    assert t.step(key, False, 30, now=220) is None
    assert t.step(key, True, 0, now=230) == "fire"  # no duration: at once
    assert t.forget(set()) == [key] and t.firing == set() and t.since == {}
