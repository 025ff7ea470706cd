"""How many replicas a component's load asks for (the rule Kubernetes' HPA uses, in our units).

desired = ceil(current * average / target), kept between min and max; no change while the
average is within 10 % of the target (so a steady load does not flap), and none before the
cooldown since the last change has passed. Pure: the autoscaler feeds it the latest samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from shanzhi.domain.spec import Autoscale

TOLERANCE = 0.1


@dataclass(frozen=True)
class Decision:
    replicas: int
    why: str


def decide(auto: Autoscale, current: int, values: list[float], since_last: float | None) -> Decision | None:
    """The new replica count and why, or None to leave it. `values`: the metric of each running
    replica; `since_last`: seconds since this component was last scaled (None: never)."""
    target = auto.target_value
    bounded = min(max(current, auto.min), auto.max)
    if bounded != current:  # outside its bounds (just applied so): back inside at once
        return Decision(bounded, f"{current} replicas is outside min {auto.min} / max {auto.max}")
    if not values:
        return None
    average = sum(values) / len(values)
    ratio = average / target
    if abs(ratio - 1) <= TOLERANCE:
        return None
    desired = min(max(math.ceil(current * ratio - 1e-9), auto.min), auto.max)
    if desired == current:
        return None
    if since_last is not None and since_last < auto.cooldown_seconds:
        return None
    direction = "above" if ratio > 1 else "below"
    why = (
        f"{auto.metric} {average:.4g} per replica (over {len(values)}) is {direction} the target {target:.4g}: "
        f"{current} -> {desired} replicas (min {auto.min}, max {auto.max})"
    )
    return Decision(desired, why)
