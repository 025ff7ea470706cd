"""The autoscaling rule: toward the target, within bounds, not within tolerance or cooldown."""

import pytest

from shanzhi.domain.autoscale import decide
from shanzhi.domain.spec import Autoscale, SpecInvalid, parse_app


def auto(**kw: object) -> Autoscale:
    return Autoscale.model_validate({"min": 1, "max": 6, "target": 0.5, "cooldown": "60s", **kw})


def test_decisions() -> None:
    a = auto()
    up = decide(a, 2, [0.9, 1.1], since_last=None)
    assert up is not None and up.replicas == 4 and "1 per replica (over 2) is above the target 0.5: 2 -> 4" in up.why
    assert decide(a, 2, [0.52, 0.5], since_last=None) is None  # within 10 %: steady
    down = decide(a, 4, [0.1, 0.1, 0.1, 0.1], since_last=120)
    assert down is not None and down.replicas == 1 and "below" in down.why
    assert decide(a, 4, [0.0] * 4, since_last=30) is None  # cooling down
    assert decide(a, 5, [5.0] * 5, since_last=None).replicas == 6  # type: ignore[union-attr]  # at most max
    assert decide(a, 2, [], since_last=None) is None  # no samples: no decision
    back = decide(a, 9, [], since_last=1)
    assert back is not None and back.replicas == 6 and "outside" in back.why  # applied above max: back at once
    mem = auto(metric="memory", target="256Mi")
    assert mem.target_value == 256 * 2**20
    assert decide(mem, 1, [512.0 * 2**20], since_last=None).replicas == 2  # type: ignore[union-attr]


def doc(autoscale: dict[str, object], **component: object) -> dict[str, object]:
    comp = {"name": "web", "replicas": 1, "run": {"command": ["true"]}, "autoscale": autoscale, **component}
    meta = {"name": "a", "vdc": "gz"}
    return {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": meta, "spec": {"components": [comp]}}


@pytest.mark.parametrize(
    ("autoscale", "extra", "problem"),
    [
        ({"min": 3, "max": 2, "target": 0.5}, {}, "min 3 is above max 2"),
        ({"max": 2, "target": 0}, {}, "more than 0"),
        ({"max": 2}, {}, "target"),
        ({"max": 2, "target": 0.5, "cooldown": "often"}, {}, "not a duration"),
        ({"max": 2, "target": 0.5, "metric": "gpu"}, {}, "metric"),
        ({"max": 2, "target": 0.5}, {"volumes": [{"name": "d", "size": "1Gi", "mountPath": "/d"}]}, "stateless"),
    ],
)
def test_bad_autoscale_is_refused(autoscale: dict[str, object], extra: dict[str, object], problem: str) -> None:
    with pytest.raises(SpecInvalid, match=problem):
        parse_app(doc(autoscale, **extra))


def test_autoscale_settings_do_not_roll_replicas() -> None:
    a = parse_app(doc({"max": 3, "target": 0.5})).spec
    b = parse_app(doc({"max": 9, "target": 0.8})).spec
    assert a.components[0].spec_hash(a.placement) == b.components[0].spec_hash(b.placement)
