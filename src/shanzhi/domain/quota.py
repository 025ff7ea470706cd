"""VDC paths, nested quotas and usage roll-up.

A VDC path is like `gz/health/it`; its ancestors are `gz` and `gz/health`. A quota limits cpu
(millicores), memory and storage (bytes) and instances; `None` means "no limit of its own" (the
nearest ancestor's limit still applies, because usage rolls up the tree). Invariants:
a child's limit never exceeds the effective limit of its ancestors; the usage of a VDC's
whole subtree never exceeds any limit on the path from it to the root; and under a *strict*
VDC the children's own limits together never exceed the parent's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from shanzhi.domain.errors import InvalidInput, QuotaExceeded
from shanzhi.domain.quantity import format_cpu, format_memory, parse_count, parse_cpu, parse_memory

RESOURCES = ("cpu", "memory", "instances", "storage")


@dataclass(frozen=True)
class Usage:
    cpu: int = 0  # millicores
    memory: int = 0  # bytes
    instances: int = 0
    storage: int = 0  # bytes

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu + other.cpu,
            self.memory + other.memory,
            self.instances + other.instances,
            self.storage + other.storage,
        )

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu - other.cpu,
            self.memory - other.memory,
            self.instances - other.instances,
            self.storage - other.storage,
        )


@dataclass(frozen=True)
class Quota:
    cpu: int | None = None  # millicores
    memory: int | None = None  # bytes
    instances: int | None = None
    storage: int | None = None  # bytes

    def items(self) -> Iterable[tuple[str, int | None]]:
        return ((f.name, getattr(self, f.name)) for f in fields(self))

    def to_json(self) -> dict[str, int | None]:
        return dict(self.items())

    @property
    def limits_anything(self) -> bool:
        return any(limit is not None for _, limit in self.items())


def format_amount(resource: str, amount: int) -> str:
    if resource == "cpu":
        return format_cpu(amount)
    if resource in ("memory", "storage"):
        return format_memory(amount)
    return str(amount)


def parse_quota(text: str | Mapping[str, str | int | float | None] | None) -> Quota:
    """Parse `cpu=2,memory=4Gi,instances=10` (or a mapping); raise InvalidInput naming the key."""
    if text is None or text == "":
        return Quota()
    if isinstance(text, str):
        pairs: dict[str, str | int | float | None] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise InvalidInput(f"quota item {part!r} is not key=value", field="quota")
            pairs[key.strip()] = value.strip()
    else:
        pairs = dict(text)
    values: dict[str, int | None] = {}
    for key, raw in pairs.items():
        if key not in RESOURCES:
            raise InvalidInput(
                f"unknown quota resource {key!r}; use one of {', '.join(RESOURCES)}",
                field=f"quota.{key}",
            )
        if raw is None:
            values[key] = None
            continue
        try:
            if key == "cpu":
                values[key] = parse_cpu(raw)
            elif key in ("memory", "storage"):
                values[key] = parse_memory(raw)
            else:
                values[key] = parse_count(raw, key)
        except (ValueError, TypeError) as err:
            raise InvalidInput(str(err), field=f"quota.{key}") from None
    return Quota(**values)


def ancestors(path: str) -> list[str]:
    """`gz/health/it` -> [`gz`, `gz/health`] (root first)."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def parent_of(path: str) -> str | None:
    head, sep, _ = path.rpartition("/")
    return head if sep else None


def effective_limits(path: str, quotas: Mapping[str, Quota]) -> dict[str, tuple[int, str] | None]:
    """For each resource, the tightest limit on the path root..path and the VDC that sets it."""
    out: dict[str, tuple[int, str] | None] = dict.fromkeys(RESOURCES)
    for p in [*ancestors(path), path]:
        q = quotas.get(p)
        if q is None:
            continue
        for resource, limit in q.items():
            current = out[resource]
            if limit is not None and (current is None or limit < current[0]):
                out[resource] = (limit, p)
    return out


def check_child_quota(path: str, quota: Quota, quotas: Mapping[str, Quota]) -> None:
    """Refuse a quota for `path` above its ancestors' limits (the nesting invariant)."""
    parent = parent_of(path)
    if parent is None:
        return
    limits = effective_limits(parent, quotas)
    for resource, value in quota.items():
        bound = limits[resource]
        if value is not None and bound is not None and value > bound[0]:
            raise InvalidInput(
                f"quota {resource}={format_amount(resource, value)} for VDC {path} exceeds "
                f"the limit {format_amount(resource, bound[0])} set by VDC {bound[1]}",
                field=f"quota.{resource}",
            )


def check_descendants_fit(path: str, quota: Quota, child_quotas: Mapping[str, Quota]) -> None:
    """Refuse lowering a quota below a descendant's own quota."""
    for child, cq in sorted(child_quotas.items()):
        for resource, value in quota.items():
            cv = getattr(cq, resource)
            if value is not None and cv is not None and cv > value:
                raise InvalidInput(
                    f"quota {resource}={format_amount(resource, value)} for VDC {path} is below "
                    f"the {format_amount(resource, cv)} already granted to VDC {child}",
                    field=f"quota.{resource}",
                )


def check_usage_fits(path: str, quota: Quota, usage_by_vdc: Mapping[str, Usage]) -> None:
    """Refuse a quota below what the subtree already uses (it could never be honoured)."""
    used = rollup(path, usage_by_vdc)
    for resource, limit in quota.items():
        amount = getattr(used, resource)
        if limit is not None and amount > limit:
            raise InvalidInput(
                f"quota {resource}={format_amount(resource, limit)} for VDC {path} is below what its apps "
                f"already use ({format_amount(resource, amount)}); scale them down or delete some first",
                field=f"quota.{resource}",
            )


def children_of(path: str, paths: Iterable[str]) -> list[str]:
    prefix = path + "/"
    return sorted(p for p in paths if p.startswith(prefix) and "/" not in p[len(prefix) :])


def check_strict(path: str, quotas: Mapping[str, Quota], strict: Iterable[str]) -> None:
    """Refuse if `path` or its parent is strict and its children's own limits together exceed
    its limit (`quotas` holds the proposed quotas). A child without a limit of its own takes
    nothing out of the parent's: it shares what the others leave."""
    strict_set = set(strict)
    for p in (parent_of(path), path):
        if p is None or p not in strict_set or p not in quotas:
            continue
        kids = children_of(p, quotas)
        for resource, limit in quotas[p].items():
            if limit is None:
                continue
            given = sum(getattr(quotas[k], resource) or 0 for k in kids)
            if given > limit:
                raise InvalidInput(
                    f"VDC {p} is strict: its children's {resource} quotas would total "
                    f"{format_amount(resource, given)}, above its own {format_amount(resource, limit)}; "
                    f"lower a child's quota or raise {p}'s",
                    field=f"quota.{resource}",
                )


def rollup(path: str, usage_by_vdc: Mapping[str, Usage]) -> Usage:
    """Usage of `path` and all its descendants."""
    total = Usage()
    prefix = path + "/"
    for p, u in usage_by_vdc.items():
        if p == path or p.startswith(prefix):
            total = total + u
    return total


def check_usage(path: str, delta: Usage, quotas: Mapping[str, Quota], usage_by_vdc: Mapping[str, Usage]) -> None:
    """Refuse adding `delta` to `path` if any VDC on the way to the root would go over quota."""
    for p in [path, *reversed(ancestors(path))]:
        q = quotas.get(p)
        if q is None:
            continue
        after = rollup(p, usage_by_vdc) + delta
        for resource, limit in q.items():
            amount = getattr(after, resource)
            if limit is not None and getattr(delta, resource) > 0 and amount > limit:
                raise QuotaExceeded(
                    f"VDC {p} quota exceeded: {resource} would be {format_amount(resource, amount)}, "
                    f"limit is {format_amount(resource, limit)}; lower the request or raise the quota "
                    f"with 'shanzhi vdc set-quota {p} {resource}=...'",
                    vdc=p,
                    resource=resource,
                    limit=limit,
                    requested=amount,
                )
