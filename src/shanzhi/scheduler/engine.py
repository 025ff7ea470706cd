"""The platform's placement path: the city-scale engine first, the explained scheduler second.

One `Engine` serves a whole reconcile pass: it turns the pass's host list into a
`FleetState` once, places each component's new replicas with the vectorised engine, and
keeps the host list's usage in step. When the engine refuses (it is all-or-nothing) or the
policy needs what only the exact scheduler expresses (anti-affinity over one scope and
spread over another), `core.place` decides instead, replica by replica, with its per-cloud
explanation; its decisions are written back into the fleet state, so the two never disagree
about what is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shanzhi.scheduler.core import Decision, HostState, Replica, Request, place
from shanzhi.scheduler.fast import AppRequest, CloudInfo, FleetState, HostSpec


class Engine:
    def __init__(self, hosts: Sequence[HostState]) -> None:
        self.hosts = list(hosts)
        clouds: dict[str, CloudInfo] = {}
        for h in self.hosts:
            if h.cloud not in clouds:
                clouds[h.cloud] = CloudInfo(h.cloud, h.site, h.region, dict(h.cloud_tags), h.runtimes)
        specs = [HostSpec(h.cloud, h.cpu, h.memory, h.max_instances) for h in self.hosts]
        self.state = FleetState(list(clouds.values()), specs)  # keeps this host order: hosts come grouped by cloud
        self.index = {(h.cloud, h.host): i for i, h in enumerate(self.hosts)}
        st = self.state
        st.host_healthy[:] = [h.healthy and not h.closed for h in self.hosts]  # closed: no new placements
        st.used_cpu[:] = [h.used_cpu for h in self.hosts]
        st.used_mem[:] = [h.used_memory for h in self.hosts]
        st.used_inst[:] = [h.used_instances for h in self.hosts]
        n = len(clouds)
        st.c_used_cpu[:] = np.bincount(st.host_cloud, st.used_cpu, n)
        st.c_used_mem[:] = np.bincount(st.host_cloud, st.used_mem, n)
        st.c_used_inst[:] = np.bincount(st.host_cloud, st.used_inst, n)
        st.cloud_healthy[:] = np.bincount(st.host_cloud, st.host_healthy, n) > 0

    def _request(self, key: str, req: Request, count: int) -> AppRequest | None:
        p = req.placement
        spread_over, min_groups = (p.spread.over, p.spread.min_groups) if p.spread else (None, 1)
        anti = False
        if p.anti_affinity is not None:
            if p.anti_affinity.over == "host":
                anti = True
            elif spread_over in (None, p.anti_affinity.over):
                spread_over, min_groups = p.anti_affinity.over, len(req.existing) + count
            else:
                return None  # two different scopes: only the exact scheduler expresses that
        return AppRequest(
            key,
            req.cpu,
            req.memory,
            len(req.existing) + count,
            regions=frozenset(p.regions) if p.regions else None,
            tags=dict(p.clouds.tags),
            clouds=frozenset(p.clouds.names) if p.clouds.names else None,
            spread_over=spread_over,
            min_groups=min_groups,
            anti_affinity=anti,
            strategy="binpack" if p.strategy == "binpack" else "least-allocated",
            weights=dict(p.weights) if p.weights else None,
            runtime=req.runtime,
        )

    def decide(self, key: str, req: Request, count: int) -> list[Decision]:
        """Decisions for `count` new replicas of one component (identified by `key`)."""
        existing = [self.index[(r.cloud, r.host)] for r in req.existing if (r.cloud, r.host) in self.index]
        fast = self._request(key, req, count) if len(existing) == len(req.existing) else None
        if fast is not None:
            self.state.placement.pop(key, None)
            self.state.apps.pop(key, None)
            out = self.state.place(fast, existing)
            if out.placed:
                decisions = []
                for i in out.hosts:
                    h = self.hosts[i]
                    h.used_cpu += req.cpu
                    h.used_memory += req.memory
                    h.used_instances += 1
                    why = f"strategy {req.placement.strategy}"
                    if fast.spread_over:
                        group = h.site if fast.spread_over == "site" else h.cloud
                        why += f", spread over {fast.spread_over} ({group})"
                    reason = f"placed on {h.cloud}/{h.host}: {why}; {out.reason}"
                    decisions.append(Decision(h.cloud, h.site, h.host, reason, {"engine": "fleet", **out.explain}))
                return decisions
        decisions = place(self.hosts, req, count)  # exact, explained, replica by replica
        taken = [self.index[(d.cloud, d.host)] for d in decisions if d.placed and d.cloud and d.host]
        self.state.charge(taken, req.cpu, req.memory)
        return decisions


__all__ = ["Decision", "Engine", "HostState", "Replica", "Request"]
