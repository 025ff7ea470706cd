"""Batch re-planning with OR-Tools CP-SAT: rebalance toward a target utilisation, or evacuate.

The model (one boolean per replica and candidate host) keeps every hard constraint of the
fast scheduler (capacity, health, cloud filters, anti-affinity, spread) and minimises, in
order, replicas left on evacuated or failed hosts, then moves, then utilisation above the
target. Candidates per replica are its current host plus the best few alternatives in each
eligible cloud, which keeps the model small enough for a time limit of seconds. The result
is a reviewable plan (moves with a reason); `apply_plan` enacts it on a fleet state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from ortools.sat.python import cp_model

from shanzhi.scheduler.fast import FleetState


@dataclass(frozen=True)
class Move:
    app: str
    replica: int  # index in the app's placement list
    source: int  # host index
    target: int
    reason: str


@dataclass
class Plan:
    kind: str
    moves: list[Move] = field(default_factory=list)
    status: str = "unknown"
    objective: float = 0.0
    seconds: float = 0.0
    stuck: int = 0  # replicas that had to move but could not


def _candidates(state: FleetState, app: str, per_cloud: int, avoid: set[int]) -> list[int]:
    req = state.apps[app]
    eligible, _ = state.eligible_clouds(req)
    out: list[int] = []
    for c in np.flatnonzero(eligible):
        s, e = int(state.cloud_start[c]), int(state.cloud_end[c])
        fc = state.cap_cpu[s:e] - state.used_cpu[s:e]
        fm = state.cap_mem[s:e] - state.used_mem[s:e]
        ok = (fc >= req.cpu) & (fm >= req.memory) & state.host_healthy[s:e]
        idx = np.flatnonzero(ok)
        if idx.size == 0:
            continue
        free = fc[idx] / state.cap_cpu[s:e][idx]
        best = idx[np.argsort(-free, kind="stable")[:per_cloud]] + s
        out.extend(int(h) for h in best if int(h) not in avoid)
    return out


def plan(
    state: FleetState,
    *,
    evacuate: Iterable[str] = (),
    target_utilisation: float | None = None,
    time_limit: float = 10.0,
    per_cloud: int = 3,
    max_moves: int | None = None,
) -> Plan:
    """Plan moves: off the `evacuate` clouds (and failed hosts), and toward the target."""
    evac = {state.cloud_ix[c] for c in evacuate}
    bad_host = ~state.host_healthy.copy()
    for c in evac:
        bad_host[int(state.cloud_start[c]) : int(state.cloud_end[c])] = True
    m = cp_model.CpModel()
    # choices[app][replica] = [(host, var), ...]: every lookup below stays within one app
    choices: dict[str, list[list[tuple[int, cp_model.IntVar]]]] = {}
    host_terms: dict[int, list[tuple[int, int, cp_model.IntVar]]] = {}
    must_move = 0
    moves_expr = []
    stuck_vars = []
    for app in sorted(state.placement):
        req = state.apps[app]
        hosts = state.placement[app]
        alt = _candidates(state, app, per_cloud, set())
        wide: list[int] | None = None
        for i, cur in enumerate(hosts):
            if bad_host[cur]:  # must move: look wider
                wide = wide if wide is not None else _candidates(state, app, per_cloud * 4, set())
                cands = sorted({*wide, cur})
            else:
                cands = sorted({*alt, cur})
            vs = []
            options = []
            for h in cands:
                v = m.new_bool_var(f"x_{app}_{i}_{h}")
                options.append((h, v))
                host_terms.setdefault(h, []).append((req.cpu, req.memory, v))
                vs.append(v)
                if h == cur:
                    moves_expr.append(1 - v)
                if bad_host[h]:
                    if h == cur:
                        must_move += 1
                    stuck_vars.append(v)
            m.add_exactly_one(vs)
            choices.setdefault(app, []).append(options)
        mine = [hv for options in choices.get(app, []) for hv in options]
        if req.anti_affinity:
            _at_most_one_per_host(m, mine)
        if req.spread_over is not None and len(hosts) > 1:
            need = min(req.min_groups, len(hosts))
            by_group: dict[int, list[cp_model.IntVar]] = {}
            for h, v in mine:
                by_group.setdefault(state.group_of(h, req.spread_over), []).append(v)
            ys = []
            for g, vs2 in by_group.items():
                y = m.new_bool_var(f"y_{app}_{g}")
                m.add(y <= sum(vs2))
                ys.append(y)
            m.add(sum(ys) >= need)
    groups: dict[str, list[str]] = {}
    for app, req in state.apps.items():
        if req.group is not None and app in state.placement:
            groups.setdefault(req.group, []).append(app)
    for members in groups.values():
        if len(members) > 1:
            _at_most_one_per_host(m, [hv for a in members for options in choices[a] for hv in options])
    over_terms = []
    for h, terms in host_terms.items():
        m.add(sum(c * v for c, _, v in terms) <= int(state.cap_cpu[h]))
        m.add(sum(mm * v for _, mm, v in terms) <= int(state.cap_mem[h]))
        m.add(sum(v for _, _, v in terms) <= int(state.cap_inst[h]))
        if target_utilisation is not None:
            # overload above the target, in percent of the host (so hosts of any size weigh alike)
            cap = int(state.cap_cpu[h])
            over = m.new_int_var(0, 100, f"over_{h}")
            m.add(100 * sum(c * v for c, _, v in terms) - int(target_utilisation * 100) * cap <= over * cap)
            over_terms.append(over)
    if max_moves is not None:
        m.add(sum(moves_expr) <= max_moves)
    # a move must buy more than 5 percentage points of overload relief to be worth making
    m.minimize(10_000 * sum(stuck_vars) + 5 * sum(moves_expr) + sum(over_terms))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit
    solver.parameters.num_workers = 2
    status = solver.solve(m)
    result = Plan("evacuate" if evac else "rebalance", status=solver.status_name(status))
    result.seconds = solver.wall_time
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        result.stuck = must_move
        return result
    result.objective = solver.objective_value
    for app in sorted(state.placement):
        for i, cur in enumerate(state.placement[app]):
            target = next(h for h, v in choices[app][i] if solver.value(v))
            if target != cur:
                why = "leaves an evacuated or failed host" if bad_host[cur] else "rebalances toward the target"
                result.moves.append(Move(app, i, cur, target, why))
            elif bad_host[cur]:
                result.stuck += 1
    return result


def _at_most_one_per_host(m: cp_model.CpModel, options: Iterable[tuple[int, cp_model.IntVar]]) -> None:
    per_host: dict[int, list[cp_model.IntVar]] = {}
    for h, v in options:
        per_host.setdefault(h, []).append(v)
    for vs in per_host.values():
        if len(vs) > 1:
            m.add(sum(vs) <= 1)


def apply_plan(state: FleetState, p: Plan) -> None:
    """Enact a plan on the fleet state (the platform does start-new, wait-healthy, stop-old)."""
    for mv in p.moves:
        req = state.apps[mv.app]
        hosts = state.placement[mv.app]
        assert hosts[mv.replica] == mv.source
        state.charge([mv.source], req.cpu, req.memory, -1)
        state.charge([mv.target], req.cpu, req.memory)
        hosts[mv.replica] = mv.target
        if req.group is not None:
            state.groups[req.group].discard(mv.source)
            state.groups[req.group].add(mv.target)
