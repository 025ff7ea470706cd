"""Roles, the actions they allow, and where: the pure core of authorization (default deny).

Platform roles follow MLPS 2.0 level 3's three separated administrators and share no action:
`system-admin` runs the platform (clouds, VDCs, quotas, apps, plans, rates), `security-admin`
runs identities and keys (users, grants, tokens, ledger keys), `audit-admin` reads and keeps
the audit trail and the ledger. None of them can do another's work, and nobody can erase audit
records younger than the retention period.

VDC roles (`vdc-admin`, `member`, `viewer`) are granted on one VDC and hold on its whole
subtree. A principal's `Scope` for an action is the set of subtree roots where it may do it;
everything outside is invisible (404), so a name in another VDC is never confirmed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

PLATFORM_ROLES = ("system-admin", "security-admin", "audit-admin")
VDC_ROLES = ("vdc-admin", "member", "viewer")

# action -> what it covers. The API's route table (shanzhi.api.policy) names one per route.
ACTIONS: dict[str, str] = {
    "cloud.read": "list and inspect clouds, hosts and their use",
    "cloud.write": "register, drain, remove clouds; inject failures",
    "vdc.read": "list and inspect VDCs, quotas and usage",
    "vdc.write": "create, re-quota and delete VDCs (VDC admins: only below their own VDC)",
    "app.read": "list and inspect apps, instances and events",
    "app.write": "apply and delete apps",
    "plan.read": "inspect re-placement plans",
    "plan.write": "propose and apply re-placement plans",
    "approval.read": "list and inspect approval requests and rules",
    "approval.rules": "define approval rules for a VDC subtree",
    "bill.read": "metering records and chargeback reports",
    "rate.write": "set per-cloud rates",
    "user.read": "list and inspect users",
    "user.write": "create, lock, unlock, delete users and reset passwords",
    "grant.read": "list role grants",
    "grant.write": "grant and revoke roles (VDC admins: VDC roles in their subtree)",
    "token.admin": "list and revoke any user's API tokens",
    "ledger.read": "read the directory ledger: tiles, entries, proofs, checkpoints",
    "ledger.submit": "submit department-signed ledger entries",
    "ledger.keys": "register department and witness keys",
    "audit.read": "read and verify the audit trail",
    "audit.prune": "remove audit records older than the retention period",
}

ROLE_ACTIONS: dict[str, frozenset[str]] = {
    "system-admin": frozenset(
        {
            "cloud.read",
            "cloud.write",
            "vdc.read",
            "vdc.write",
            "app.read",
            "app.write",
            "plan.read",
            "plan.write",
            "approval.read",
            "approval.rules",
            "bill.read",
            "rate.write",
            "ledger.read",
            "ledger.submit",
        }
    ),
    "security-admin": frozenset(
        {"user.read", "user.write", "grant.read", "grant.write", "token.admin", "ledger.read", "ledger.keys"}
    ),
    "audit-admin": frozenset({"audit.read", "audit.prune", "ledger.read"}),
    "vdc-admin": frozenset(
        {
            "cloud.read",
            "vdc.read",
            "vdc.write",
            "app.read",
            "app.write",
            "approval.read",
            "approval.rules",
            "bill.read",
            "grant.read",
            "grant.write",
            "ledger.submit",
        }
    ),
    "member": frozenset({"cloud.read", "vdc.read", "app.read", "app.write", "approval.read"}),
    "viewer": frozenset({"cloud.read", "vdc.read", "app.read", "approval.read"}),
}
ROLES = (*PLATFORM_ROLES, *VDC_ROLES)


def in_subtree(path: str, root: str) -> bool:
    return path == root or path.startswith(root + "/")


@dataclass(frozen=True)
class Scope:
    """Where an action is allowed: everywhere (`roots is None`), or in these subtrees."""

    roots: frozenset[str] | None = frozenset()

    @property
    def everywhere(self) -> bool:
        return self.roots is None

    @property
    def empty(self) -> bool:
        return self.roots is not None and not self.roots

    def contains(self, path: str | None) -> bool:
        if self.roots is None:
            return True
        return path is not None and any(in_subtree(path, r) for r in self.roots)

    def minimal_roots(self) -> list[str]:
        """The roots with any root inside another dropped (for building queries)."""
        roots = sorted(self.roots or ())
        return [r for r in roots if not any(r != o and in_subtree(r, o) for o in roots)]


EVERYWHERE = Scope(None)


@dataclass(frozen=True)
class Principal:
    """Who is calling, with their grants: platform roles and (VDC path -> roles)."""

    user: str
    platform: frozenset[str] = frozenset()
    vdc: Mapping[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, user: str, grants: Iterable[tuple[str, str | None]]) -> Principal:
        platform: set[str] = set()
        vdc: dict[str, set[str]] = {}
        for role, path in grants:
            if path is None:
                platform.add(role)
            else:
                vdc.setdefault(path, set()).add(role)
        return cls(user, frozenset(platform), {p: frozenset(r) for p, r in vdc.items()})

    def platform_allows(self, action: str) -> bool:
        return any(action in ROLE_ACTIONS.get(r, frozenset()) for r in self.platform)

    def scope(self, action: str) -> Scope:
        if self.platform_allows(action):
            return EVERYWHERE
        return Scope(
            frozenset(p for p, roles in self.vdc.items() if any(action in ROLE_ACTIONS.get(r, ()) for r in roles))
        )

    def allows(self, action: str, path: str | None = None) -> bool:
        """Allowed at all (`path` None), or on the VDC `path`."""
        sc = self.scope(action)
        return not sc.empty if path is None else sc.contains(path)

    def roles_at(self, path: str) -> set[str]:
        """The VDC roles that hold on `path` (granted there or on an ancestor)."""
        return {r for p, roles in self.vdc.items() if in_subtree(path, p) for r in roles}

    @property
    def label(self) -> str:
        """How the audit trail names the caller's roles, e.g. `system-admin` or `member@gz/health`."""
        parts = sorted(self.platform) + sorted(f"{r}@{p}" for p, roles in self.vdc.items() for r in roles)
        return ",".join(parts)[:255] or "(no role)"
