"""What applying a spec would change: the fields that differ and the replicas that would roll.

`shanzhi diff` and `apply --dry-run` show this before anything changes, as `kubectl diff` and
`terraform plan` do. A component rolls when its hash (everything but `replicas`, with the app's
placement) changes; a change of `replicas` alone only adds or removes replicas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shanzhi.domain.spec import AppSpec


@dataclass(frozen=True)
class Change:
    path: str  # e.g. spec.components[0].replicas
    old: Any  # None: added
    new: Any  # None: removed


@dataclass(frozen=True)
class Roll:
    component: str
    action: str  # create | roll | scale | remove
    replicas: int  # how many replicas the action touches
    detail: str


def changes(old: Any, new: Any, path: str = "") -> list[Change]:
    """Every leaf that differs between two JSON documents, in document order."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[Change] = []
        for k in [*old, *(k for k in new if k not in old)]:
            sub = f"{path}.{k}" if path else str(k)
            if k not in new:
                out.append(Change(sub, old[k], None))
            elif k not in old:
                out.append(Change(sub, None, new[k]))
            else:
                out.extend(changes(old[k], new[k], sub))
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new, strict=True)) for c in changes(a, b, f"{path}[{i}]")]
    return [] if old == new else [Change(path, old, new)]


def rolls(old: AppSpec | None, new: AppSpec) -> list[Roll]:
    """What the reconciler would do to each component's replicas."""
    before = {c.name: c for c in old.spec.components} if old is not None else {}
    out: list[Roll] = []
    for c in new.spec.components:
        was = before.pop(c.name, None)
        if was is None:
            out.append(Roll(c.name, "create", c.replicas, f"{c.replicas} new replicas"))
            continue
        assert old is not None
        if was.spec_hash(old.spec.placement) != c.spec_hash(new.spec.placement):
            kept = min(was.replicas, c.replicas)
            out.append(Roll(c.name, "roll", kept, f"{kept} replicas replaced one by one (spec changed)"))
        if was.replicas != c.replicas:
            n = abs(c.replicas - was.replicas)
            verb = "added" if c.replicas > was.replicas else "removed"
            out.append(Roll(c.name, "scale", n, f"{was.replicas} -> {c.replicas} replicas ({n} {verb})"))
    for name, was in before.items():
        out.append(Roll(name, "remove", was.replicas, f"component removed: {was.replicas} replicas stop"))
    return out
