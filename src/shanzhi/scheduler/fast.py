"""Placement at city scale: fleet state in numpy arrays, vectorised filters and scores.

Hosts are stored grouped by cloud (one contiguous slice per cloud), and per-cloud usage is
kept up to date incrementally, so one decision touches a few 500-host slices, never the
whole fleet. An app's new replicas are first divided across clouds (Sainte-Laguë highest
averages over the clouds' free capacity or static weights, after seating enough distinct
groups for `min_groups`), then each cloud's share goes to hosts by a vectorised filter
(health, capacity, anti-affinity) and score (least-allocated or bin-packing). Like
kube-scheduler's percentageOfNodesToScore, only a sample of the feasible hosts is scored;
feasibility itself is always computed exactly, so sampling never admits a violation.

Hard constraints, never violated: capacity (cpu, memory, instances), health, data
residency (allowed regions), cloud selector, spread (`min_groups` distinct sites or
clouds), anti-affinity (an app's replicas, and apps of one group, on distinct hosts).
Decisions are all-or-nothing per app: an app that cannot be placed changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class CloudInfo:
    name: str
    site: str
    region: str
    tags: Mapping[str, str] = field(default_factory=dict)
    runtimes: frozenset[str] = frozenset({"process", "vm"})


@dataclass(frozen=True)
class HostSpec:
    cloud: str
    cpu: int  # millicores
    memory: int  # bytes
    max_instances: int = 110


@dataclass(frozen=True)
class AppRequest:
    name: str
    cpu: int
    memory: int
    replicas: int
    regions: frozenset[str] | None = None  # data residency: allowed regions (None: any)
    tags: Mapping[str, str] = field(default_factory=dict)
    clouds: frozenset[str] | None = None  # allowed clouds by name (None: any)
    spread_over: Literal["cloud", "site"] | None = None
    min_groups: int = 1
    anti_affinity: bool = False  # replicas of this app on distinct hosts
    group: str | None = None  # apps of one group never share a host
    strategy: Literal["least-allocated", "binpack"] = "least-allocated"
    weights: Mapping[str, float] | None = None  # static division weights per cloud
    runtime: str | None = None  # "process" or "vm": clouds must support it


@dataclass(frozen=True)
class Outcome:
    app: str
    hosts: tuple[int, ...]  # host index per new replica; empty when refused
    reason: str
    explain: Mapping[str, object] = field(default_factory=dict)

    @property
    def placed(self) -> bool:
        return bool(self.hosts)


class FleetState:
    """Every host's capacity and usage, and every app's placement, in arrays."""

    def __init__(self, clouds: Sequence[CloudInfo], hosts: Sequence[HostSpec], sample: int = 64, seed: int = 0) -> None:
        self.clouds = list(clouds)
        self.cloud_ix = {c.name: i for i, c in enumerate(self.clouds)}
        sites = sorted({c.site for c in self.clouds})
        regions = sorted({c.region for c in self.clouds})
        self.site_ix = {s: i for i, s in enumerate(sites)}
        self.region_ix = {r: i for i, r in enumerate(regions)}
        self.cloud_site = np.array([self.site_ix[c.site] for c in self.clouds], dtype=np.int64)
        self.cloud_region = np.array([self.region_ix[c.region] for c in self.clouds], dtype=np.int64)
        self.cloud_healthy = np.ones(len(self.clouds), dtype=bool)
        ordered = sorted(hosts, key=lambda h: self.cloud_ix[h.cloud])
        self.host_cloud = np.array([self.cloud_ix[h.cloud] for h in ordered], dtype=np.int64)
        self.cap_cpu = np.array([h.cpu for h in ordered], dtype=np.int64)
        self.cap_mem = np.array([h.memory for h in ordered], dtype=np.int64)
        self.cap_inst = np.array([h.max_instances for h in ordered], dtype=np.int64)
        self.used_cpu = np.zeros(len(ordered), dtype=np.int64)
        self.used_mem = np.zeros(len(ordered), dtype=np.int64)
        self.used_inst = np.zeros(len(ordered), dtype=np.int64)
        self.host_healthy = np.ones(len(ordered), dtype=bool)
        counts = np.bincount(self.host_cloud, minlength=len(self.clouds))
        self.cloud_end = np.cumsum(counts)
        self.cloud_start = self.cloud_end - counts
        self.c_cap_cpu = np.bincount(self.host_cloud, self.cap_cpu, len(self.clouds)).astype(np.int64)
        self.c_cap_mem = np.bincount(self.host_cloud, self.cap_mem, len(self.clouds)).astype(np.int64)
        self.c_cap_inst = np.bincount(self.host_cloud, self.cap_inst, len(self.clouds)).astype(np.int64)
        self.c_used_cpu = np.zeros(len(self.clouds), dtype=np.int64)
        self.c_used_mem = np.zeros(len(self.clouds), dtype=np.int64)
        self.c_used_inst = np.zeros(len(self.clouds), dtype=np.int64)
        self.apps: dict[str, AppRequest] = {}
        self.placement: dict[str, list[int]] = {}
        self.groups: dict[str, set[int]] = {}
        # apps a failure left short of replicas: their survivors stay put, so spread may be
        # below `min_groups` until room appears; reported, not counted as violations
        self.degraded: set[str] = set()
        self.sample = sample
        self.rng = np.random.default_rng(seed)
        self._tag_cache: dict[tuple[tuple[str, str], ...], BoolArray] = {}

    # -------------------------------------------------------------- usage
    def charge(self, hosts: Sequence[int], cpu: int, mem: int, sign: int = 1) -> None:
        """Add (sign=1) or release (sign=-1) one replica's usage on each of `hosts`."""
        if not hosts:
            return
        h = np.asarray(hosts, dtype=np.int64)
        np.add.at(self.used_cpu, h, sign * cpu)
        np.add.at(self.used_mem, h, sign * mem)
        np.add.at(self.used_inst, h, sign)
        c = self.host_cloud[h]
        np.add.at(self.c_used_cpu, c, sign * cpu)
        np.add.at(self.c_used_mem, c, sign * mem)
        np.add.at(self.c_used_inst, c, sign)

    def group_of(self, host: int, over: str) -> int:
        c = int(self.host_cloud[host])
        return c if over == "cloud" else int(self.cloud_site[c])

    # ---------------------------------------------------------- filters
    def eligible_clouds(self, req: AppRequest) -> tuple[BoolArray, dict[str, int]]:
        """Clouds passing the static filters, and how many each filter removed."""
        n = len(self.clouds)
        mask = np.ones(n, dtype=bool)
        removed: dict[str, int] = {}

        def apply(name: str, keep: BoolArray) -> None:
            nonlocal mask
            removed[name] = int((mask & ~keep).sum())
            mask &= keep

        if req.clouds is not None:
            apply("names", np.array([c.name in req.clouds for c in self.clouds], dtype=bool))
        if req.tags:
            key = tuple(sorted(req.tags.items()))
            cached = self._tag_cache.get(key)
            if cached is None:
                cached = np.array([all(c.tags.get(k) == v for k, v in key) for c in self.clouds], dtype=bool)
                self._tag_cache[key] = cached
            apply("tags", cached)
        if req.runtime is not None:
            apply("runtime", np.array([req.runtime in c.runtimes for c in self.clouds], dtype=bool))
        if req.regions is not None:
            allowed = np.zeros(len(self.region_ix), dtype=bool)
            for r in req.regions:
                if r in self.region_ix:
                    allowed[self.region_ix[r]] = True
            apply("residency", allowed[self.cloud_region])
        apply("health", self.cloud_healthy.copy())
        return mask, removed

    def _slots(self, req: AppRequest) -> IntArray:
        free_cpu = self.c_cap_cpu - self.c_used_cpu
        free_mem = self.c_cap_mem - self.c_used_mem
        free_inst = self.c_cap_inst - self.c_used_inst
        s = np.minimum(free_cpu // max(req.cpu, 1), free_mem // max(req.memory, 1))
        out: IntArray = np.maximum(np.minimum(s, free_inst), 0)
        return out

    # -------------------------------------------------------- division
    def _divide(self, req: AppRequest, eligible: BoolArray, slots: IntArray, have: IntArray, m: int) -> IntArray | str:
        """Seats per cloud for m new replicas: spread first, then Sainte-Laguë."""
        seats = np.zeros(len(self.clouds), dtype=np.int64)
        if req.weights is not None:
            w = np.array([float(req.weights.get(c.name, 0.0)) for c in self.clouds])
        else:
            cap = self.c_cap_cpu / max(req.cpu, 1)
            w = slots.astype(float) if req.strategy == "least-allocated" else (cap - slots).astype(float) + 1.0
        w = np.where(eligible & (slots > 0), w, 0.0)
        room = np.where(eligible, slots, 0)
        if req.spread_over is not None:
            gid = np.arange(len(self.clouds)) if req.spread_over == "cloud" else self.cloud_site
            need = min(req.min_groups, int(have.sum()) + m)
            used = set(gid[have > 0].tolist())
            while len(used) < need:
                cand = np.flatnonzero((room > seats) & ~np.isin(gid, list(used)) & (w > 0))
                if cand.size == 0:
                    feasible = len(set(gid[(room > 0)].tolist()) | used)
                    return f"spread over {req.spread_over} needs {need} groups, only {feasible} feasible"
                best = cand[np.argmax(w[cand] / (2 * (have[cand] + seats[cand]) + 1))]
                seats[best] += 1
                used.add(int(gid[best]))
                if int(seats.sum()) == m:
                    break
        while int(seats.sum()) < m:
            open_ = (room > seats) & (w > 0)
            if not open_.any():
                return "not enough capacity in the eligible clouds"
            q = np.where(open_, w / (2 * (have + seats) + 1), -1.0)
            seats[int(np.argmax(q))] += 1
        return seats

    # ----------------------------------------------------------- hosts
    def _hosts_in(self, req: AppRequest, c: int, k: int, taken: set[int]) -> list[int]:
        s, e = int(self.cloud_start[c]), int(self.cloud_end[c])
        fc = self.cap_cpu[s:e] - self.used_cpu[s:e]
        fm = self.cap_mem[s:e] - self.used_mem[s:e]
        fi = self.cap_inst[s:e] - self.used_inst[s:e]
        fits = (fc >= req.cpu) & (fm >= req.memory) & (fi >= 1) & self.host_healthy[s:e]
        distinct = req.anti_affinity or req.group is not None
        if distinct and taken:
            block = np.fromiter((h - s for h in taken if s <= h < e), dtype=np.int64)
            fits[block] = False
        idx = np.flatnonzero(fits)
        if idx.size == 0:
            return []
        if idx.size > self.sample:
            idx = self.rng.choice(idx, self.sample, replace=False)
        free = (fc[idx] / self.cap_cpu[s:e][idx] + fm[idx] / self.cap_mem[s:e][idx]) / 2
        order = idx[np.argsort(-free if req.strategy == "least-allocated" else free, kind="stable")]
        if distinct or req.strategy == "least-allocated":
            # one replica per host, in score order (a second round only when not distinct)
            chosen = [int(i) + s for i in order[:k]]
            if len(chosen) < k and not distinct:
                per = np.minimum(np.minimum(fc[order] // max(req.cpu, 1), fm[order] // max(req.memory, 1)), fi[order])
                for i, x in zip(order, per - 1, strict=True):
                    more = min(int(x), k - len(chosen))
                    chosen.extend([int(i) + s] * max(more, 0))
            return chosen
        per = np.minimum(np.minimum(fc[order] // max(req.cpu, 1), fm[order] // max(req.memory, 1)), fi[order])
        chosen = []
        for i, x in zip(order, per, strict=True):
            take = min(int(x), k - len(chosen))
            chosen.extend([int(i) + s] * take)
            if len(chosen) == k:
                break
        return chosen

    # ------------------------------------------------------------ place
    def place(self, req: AppRequest, existing: Sequence[int] = ()) -> Outcome:
        """Place `req.replicas - len(existing)` new replicas; all or nothing."""
        m = req.replicas - len(existing)
        if m <= 0:
            return Outcome(req.name, (), "nothing to place")
        eligible, removed = self.eligible_clouds(req)
        if not eligible.any():
            why = ", ".join(f"{k} removed {v}" for k, v in removed.items() if v)
            return Outcome(req.name, (), f"no cloud passes the filters ({why})", {"removed": removed})
        have = np.bincount(self.host_cloud[np.asarray(existing, dtype=np.int64)], minlength=len(self.clouds))
        taken: set[int] = set(existing) if req.anti_affinity else set()
        if req.group is not None:
            taken |= self.groups.get(req.group, set())
        slots = self._slots(req)
        chosen: list[int] = []
        blocked = np.zeros(len(self.clouds), dtype=bool)
        for _ in range(8):  # re-divide when a cloud's hosts cannot take its share
            seats = self._divide(req, eligible & ~blocked, slots, have, m - len(chosen))
            if isinstance(seats, str):
                self.charge(chosen, req.cpu, req.memory, -1)
                return Outcome(req.name, (), f"unschedulable: {seats}", {"removed": removed})
            short = False
            for c in np.flatnonzero(seats):
                got = self._hosts_in(req, int(c), int(seats[c]), taken)
                self.charge(got, req.cpu, req.memory)
                chosen.extend(got)
                have[c] += len(got)
                if req.anti_affinity or req.group is not None:
                    taken.update(got)
                if len(got) < seats[c]:
                    blocked[c] = True
                    short = True
            if not short:
                break
            slots = self._slots(req)
        if len(chosen) < m:
            self.charge(chosen, req.cpu, req.memory, -1)
            return Outcome(req.name, (), "unschedulable: not enough feasible hosts", {"removed": removed})
        self.apps[req.name] = req
        self.placement.setdefault(req.name, []).extend(chosen)
        if req.group is not None:
            self.groups.setdefault(req.group, set()).update(chosen)
        clouds = sorted({self.clouds[int(self.host_cloud[h])].name for h in chosen})
        seats_by_cloud = dict(Counter(self.clouds[int(self.host_cloud[h])].name for h in chosen))
        scores = {
            str(h): round(1 - (float(self.used_cpu[h]) / float(self.cap_cpu[h])), 4) for h in sorted(set(chosen))
        }  # free cpu fraction of each chosen host after placing
        return Outcome(
            req.name,
            tuple(chosen),
            f"placed {m} on {len(clouds)} clouds ({req.strategy})",
            {
                "eligible_clouds": int(eligible.sum()),
                "removed": removed,
                "clouds": clouds,
                "seats": seats_by_cloud,
                "host_scores": scores,
            },
        )

    def add_app(self, req: AppRequest) -> Outcome:
        existing = self.placement.get(req.name, [])
        if req.name in self.apps and len(existing) > req.replicas:
            raise ValueError("use remove_replicas to scale down")
        return self.place(req, existing)

    def remove_app(self, name: str) -> None:
        req = self.apps.pop(name)
        hosts = self.placement.pop(name, [])
        self.charge(hosts, req.cpu, req.memory, -1)
        if req.group is not None:
            self.groups[req.group].difference_update(hosts)

    # --------------------------------------------------------- failover
    def fail_site(self, site: str) -> dict[str, int]:
        """Mark every cloud of a site failed and re-decide their replicas in one batch."""
        return self.fail_clouds([c.name for c in self.clouds if c.site == site])

    def fail_cloud(self, cloud: str) -> dict[str, int]:
        return self.fail_clouds([cloud])

    def fail_clouds(self, clouds: Sequence[str]) -> dict[str, int]:
        """Mark clouds failed, then re-decide every replica they held, in one batch.

        All of them are marked first, so no replacement lands on another failing cloud.
        Replicas elsewhere do not move. Returns counts: affected, re-placed, unplaced.
        """
        down = np.zeros(len(self.host_cloud), dtype=bool)
        for cloud in clouds:
            c = self.cloud_ix[cloud]
            self.cloud_healthy[c] = False
            s, e = int(self.cloud_start[c]), int(self.cloud_end[c])
            self.host_healthy[s:e] = False
            down[s:e] = True
        affected = replaced = unplaced = 0
        for name in sorted(self.placement):
            hosts = self.placement[name]
            lost = [h for h in hosts if down[h]]
            if not lost:
                continue
            req = self.apps[name]
            keep = [h for h in hosts if not down[h]]
            self.charge(lost, req.cpu, req.memory, -1)
            if req.group is not None:
                self.groups[req.group].difference_update(lost)
            self.placement[name] = keep
            affected += len(lost)
            # as many as the constraints allow: losing two replicas and finding room for one
            # should bring one back, not none (the rest stay wanted and wait for room)
            n_keep = len(keep)
            for k in range(len(lost), 0, -1):
                if self.place(replace(req, replicas=n_keep + k), list(keep)).placed:
                    replaced += k
                    break
            self.apps[name] = req
            short = len(lost) - (len(self.placement[name]) - n_keep)
            unplaced += short
            if short:
                self.degraded.add(name)
        return {"affected": affected, "replaced": replaced, "unplaced": unplaced}

    # ------------------------------------------------------- invariants
    def violations(self) -> list[str]:
        """Every broken hard constraint (empty when all hold); used by tests and benchmarks."""
        out = []
        over = np.flatnonzero(
            (self.used_cpu > self.cap_cpu) | (self.used_mem > self.cap_mem) | (self.used_inst > self.cap_inst)
        )
        out += [f"host {h} overcommitted" for h in over.tolist()]
        group_hosts: dict[str, list[int]] = {}
        for name, hosts in self.placement.items():
            req = self.apps[name]
            eligible, _ = self.eligible_clouds(req)
            for h in hosts:
                if not self.host_healthy[h] or not eligible[self.host_cloud[h]]:
                    out.append(f"{name}: replica on host {h} breaks a cloud filter or health")
            if req.anti_affinity and len(set(hosts)) != len(hosts):
                out.append(f"{name}: two replicas share a host")
            if req.spread_over is not None and hosts and name not in self.degraded:
                groups = {self.group_of(h, req.spread_over) for h in hosts}
                if len(groups) < min(req.min_groups, len(hosts)):
                    out.append(f"{name}: spread over {req.spread_over} is {len(groups)} < {req.min_groups}")
            if req.group is not None:
                group_hosts.setdefault(req.group, []).extend(set(hosts))
        for g, hs in group_hosts.items():
            if len(set(hs)) != len(hs):
                out.append(f"group {g}: two apps share a host")
        return out


def sainte_lague(weights: Sequence[float], n: int, start: Sequence[int] | None = None) -> list[int]:
    """Highest-averages (Webster / Sainte-Laguë) division of n seats; house-monotone.

    Seats are given one at a time to the largest w / (2s + 1), so the division of n + 1
    seats is the division of n plus one seat: growing never takes a seat away.
    """
    seats = list(start) if start is not None else [0] * len(weights)
    for _ in range(n):
        best = max(
            (i for i, w in enumerate(weights) if w > 0),
            key=lambda i: (weights[i] / (2 * seats[i] + 1), -i),
            default=None,
        )
        if best is None:
            break
        seats[best] += 1
    return seats
