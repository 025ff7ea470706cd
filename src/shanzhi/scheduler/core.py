"""Filter-and-score placement of a component's replicas, one decision per replica.

Filters (hard): cloud selector (names, tags), health, runtime support, capacity,
anti-affinity, spread (`minGroups`). Scores: spread balance across groups, then
least-allocated or bin-packing, then name (deterministic). Each decision carries an
explanation: the clouds considered and, for each excluded cloud, the filter that removed it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shanzhi.domain.quantity import format_cpu, format_memory
from shanzhi.domain.spec import Placement


@dataclass
class HostState:
    """One host as the scheduler sees it: where it is, what it has, what is used."""

    cloud: str
    site: str
    region: str
    host: str
    cpu: int  # millicores
    memory: int  # bytes
    max_instances: int
    used_cpu: int = 0
    used_memory: int = 0
    used_instances: int = 0
    healthy: bool = True
    closed: str = ""  # why the cloud takes no new placements (draining, fenced by a plan), if it does not
    cloud_tags: dict[str, str] = field(default_factory=dict)
    runtimes: frozenset[str] = frozenset({"process", "vm"})

    def fits(self, cpu: int, memory: int) -> bool:
        return (
            self.used_cpu + cpu <= self.cpu
            and self.used_memory + memory <= self.memory
            and self.used_instances + 1 <= self.max_instances
        )

    def free_fraction(self) -> float:
        fc = 1 - self.used_cpu / self.cpu if self.cpu else 0.0
        fm = 1 - self.used_memory / self.memory if self.memory else 0.0
        return (fc + fm) / 2

    def group(self, over: str) -> str:
        return {"site": self.site, "cloud": self.cloud, "host": f"{self.cloud}/{self.host}"}[over]


@dataclass(frozen=True)
class Replica:
    """Where an existing replica of the component runs (counts toward spread/anti-affinity)."""

    cloud: str
    site: str
    host: str


@dataclass(frozen=True)
class Request:
    cpu: int
    memory: int
    runtime: str  # "process" or "vm"
    placement: Placement
    total_replicas: int
    existing: tuple[Replica, ...] = ()


@dataclass(frozen=True)
class Decision:
    cloud: str | None
    site: str | None
    host: str | None
    reason: str
    explain: dict[str, Any]

    @property
    def placed(self) -> bool:
        return self.host is not None


def _replica_group(r: Replica, over: str) -> str:
    return {"site": r.site, "cloud": r.cloud, "host": f"{r.cloud}/{r.host}"}[over]


def _static_filter(h: HostState, req: Request) -> str | None:
    refused = req.placement.refuses_cloud(h.cloud, h.region, h.cloud_tags)
    if refused is not None:
        return refused
    if req.runtime not in h.runtimes:
        return f"cannot run a {req.runtime} component (supports {', '.join(sorted(h.runtimes))})"
    if not h.healthy:
        return "unhealthy"
    return h.closed or None


def place(hosts: Sequence[HostState], req: Request, count: int) -> list[Decision]:
    """Place `count` new replicas; mutates `hosts` usage for every placed replica.

    Returns one decision per replica; an unplaced decision says which filter stopped it.
    """
    policy = req.placement
    eligible: list[HostState] = []
    cloud_reasons: dict[str, str] = {}
    for h in hosts:
        why = _static_filter(h, req)
        if why is None:
            eligible.append(h)
        else:
            cloud_reasons.setdefault(h.cloud, why)
    clouds_considered = sorted({h.cloud for h in hosts})
    placed: list[Replica] = list(req.existing)
    decisions: list[Decision] = []
    spread_over = policy.spread.over if policy.spread else None
    needed_groups = min(policy.spread.min_groups, req.total_replicas) if policy.spread else 0
    anti_over = policy.anti_affinity.over if policy.anti_affinity else None

    for _ in range(count):
        reasons = dict(cloud_reasons)
        fitting = [h for h in eligible if h.fits(req.cpu, req.memory)]
        for h in eligible:
            if not h.fits(req.cpu, req.memory) and h.cloud not in {f.cloud for f in fitting}:
                reasons.setdefault(
                    h.cloud,
                    f"no host with {format_cpu(req.cpu)} cpu, {format_memory(req.memory)} memory, "
                    "and an instance slot free",
                )
        if anti_over:
            taken = {_replica_group(r, anti_over) for r in placed}
            before = fitting
            fitting = [h for h in fitting if h.group(anti_over) not in taken]
            for h in before:
                if h.cloud not in {f.cloud for f in fitting}:
                    reasons.setdefault(h.cloud, f"anti-affinity: a replica already runs on this {anti_over}")
        if spread_over:
            used = Counter(_replica_group(r, spread_over) for r in placed)
            if len(used) < needed_groups:
                fresh = [h for h in fitting if h.group(spread_over) not in used]
                feasible_groups = {h.group(spread_over) for h in fitting} | set(used)
                if len(feasible_groups) < needed_groups:
                    spread = (
                        f"spread over {spread_over} needs {needed_groups} groups, only "
                        f"{len(feasible_groups)} feasible ({', '.join(sorted(feasible_groups)) or 'none'})"
                    )
                    # when the filters left nothing at all, they are the story, not the spread
                    lead = _emptied(clouds_considered, reasons) if not fitting and not used else spread
                    decisions.append(_unplaced(lead, clouds_considered, reasons))
                    continue
                fitting = fresh
        if not fitting:
            decisions.append(_unplaced(_emptied(clouds_considered, reasons), clouds_considered, reasons))
            continue
        best = min(fitting, key=lambda h: (*(-x for x in _score(h, req, placed)), h.cloud, h.host))
        best_score = _score(best, req, placed)
        best.used_cpu += req.cpu
        best.used_memory += req.memory
        best.used_instances += 1
        rep = Replica(best.cloud, best.site, best.host)
        placed.append(rep)
        ranked = sorted({h.cloud for h in fitting})
        why = f"strategy {policy.strategy}"
        if spread_over:
            why += f", spread over {spread_over} ({best.group(spread_over)})"
        decisions.append(
            Decision(
                cloud=best.cloud,
                site=best.site,
                host=best.host,
                reason=f"placed on {best.cloud}/{best.host}: {why}; {_count(len(fitting), 'feasible host')} in "
                f"{_count(len(ranked), 'cloud')}",
                explain={
                    "considered": clouds_considered,
                    "feasible": ranked,
                    "excluded": {c: r for c, r in sorted(reasons.items()) if c not in ranked},
                    "score": [round(x, 4) for x in best_score],
                },
            )
        )
    return decisions


def _emptied(considered: list[str], reasons: dict[str, str]) -> str:
    """Lead with the filter that removed the most clouds: a misspelt tag reads as just that."""
    if not considered:
        return "no clouds are registered"
    by_reason: dict[str, list[str]] = {}
    for cloud in considered:
        by_reason.setdefault(reasons.get(cloud, "no feasible host"), []).append(cloud)
    ranked = sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    parts = [f"{why} ({_names(clouds)})" for why, clouds in ranked[:3]]
    if len(ranked) > 3:
        parts.append(f"{len(ranked) - 3} more reasons")
    return f"no cloud fits: {'; '.join(parts)}"


def _names(clouds: list[str]) -> str:
    return ", ".join(clouds) if len(clouds) <= 3 else f"{', '.join(clouds[:3])} and {len(clouds) - 3} more"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _unplaced(reason: str, considered: list[str], reasons: dict[str, str]) -> Decision:
    return Decision(
        None,
        None,
        None,
        f"unschedulable: {reason}",
        {"considered": considered, "feasible": [], "excluded": dict(sorted(reasons.items()))},
    )


def _score(h: HostState, req: Request, placed: Sequence[Replica]) -> tuple[float, float]:
    """Higher is better: (spread balance, fit); ties break on the cloud/host name."""
    policy = req.placement
    balance = 0.0
    if policy.spread or policy.strategy == "spread":
        over = policy.spread.over if policy.spread else "cloud"
        same = sum(1 for r in placed if _replica_group(r, over) == h.group(over))
        balance = -float(same)
    free = h.free_fraction()
    fit = -free if policy.strategy == "binpack" else free
    return (balance, fit)
