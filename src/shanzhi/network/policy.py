"""Compile VDCs, apps and `spec.network` into one nftables ruleset (libnftables JSON).

The same ruleset goes to every host namespace of the tenant fabric, as one table `inet shanzhi`
replaced in one transaction (add, delete, add again: no rule handles to keep). Its forward chain,
first match wins, policy drop:

1. replies of accepted connections;
2. anti-spoofing: a packet from an instance's link must carry that instance's address
   (set `bind`: interface . address), else it is dropped and logged;
3. the management address (health checks) reaches every instance;
4. per app, what may reach it: its own replicas; its own VDC when the app has no `network`
   section; each `allow` rule; each `expose`d port. An accept marks the connection with the
   rule's id (`ct mark`), so a flow record names the rule that let it in;
5. per app, everything else is dropped, counted and logged (NFLOG) as "not allowed into app X",
   or "cross-VDC" when it came from another VDC's instance; anything to a non-instance is dropped
   as well.

Every rule has a named counter (`r<id>`) and every drop logs with the prefix `d<id>`, so a drop
record names its rule and counters equal logged drops. Sets per VDC (`v<n>`) and per app
(`a<n>`) hold instance addresses; the rules table says which is which.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shanzhi.domain.spec import AllowRule, Network

TABLE = "shanzhi"
FAMILY = "inet"
LOG_GROUP = 7
INSTANCE_LINK_PREFIX = "z"  # the host-side interface of every instance starts with this


@dataclass(frozen=True)
class Endpoint:
    """An instance on the fabric: its address, owners and the host-side name of its link."""

    address: str
    vdc: str
    app: str
    instance: str
    ifname: str


@dataclass(frozen=True)
class AppNet:
    vdc: str
    app: str
    network: Network | None
    ports: Mapping[str, tuple[int, str]] = field(default_factory=dict)  # name -> (port, protocol)


@dataclass(frozen=True)
class Rule:
    """One rule as people read it: id (the ct mark, counter `r<id>`, log prefix `d<id>`)."""

    id: int
    verdict: str  # accept | drop
    name: str  # e.g. "same-app", "allow[0]", "expose", "cross-vdc", "default-deny", "spoof"
    vdc: str | None  # the app the rule protects (None: fabric-wide)
    app: str | None
    text: str  # what it says, in words


@dataclass(frozen=True)
class Ruleset:
    commands: dict[str, Any]  # the libnftables JSON document
    rules: dict[int, Rule]


def _m(left: Any, right: Any, op: str = "==") -> dict[str, Any]:
    return {"match": {"op": op, "left": left, "right": right}}


_SADDR = {"payload": {"protocol": "ip", "field": "saddr"}}
_DADDR = {"payload": {"protocol": "ip", "field": "daddr"}}


def _within(vdc: str, root: str) -> bool:
    return vdc == root or vdc.startswith(root + "/")


class _Compiler:
    def __init__(self, endpoints: Sequence[Endpoint], apps: Sequence[AppNet], mgmt: str) -> None:
        self.endpoints = endpoints
        self.apps = sorted(apps, key=lambda a: (a.vdc, a.app))
        self.mgmt = mgmt
        vdcs = sorted({e.vdc for e in endpoints} | {a.vdc for a in apps})
        self.vdc_set = {v: f"v{i}" for i, v in enumerate(vdcs)}
        pairs = sorted({(e.vdc, e.app) for e in endpoints} | {(a.vdc, a.app) for a in apps})
        self.app_set = {p: f"a{i}" for i, p in enumerate(pairs)}
        self.rules: dict[int, Rule] = {}
        self.body: list[dict[str, Any]] = []

    def _rule(self, verdict: str, name: str, vdc: str | None, app: str | None, text: str) -> int:
        rid = len(self.rules) + 1
        self.rules[rid] = Rule(rid, verdict, name, vdc, app, text)
        return rid

    def _emit(self, rid: int, matches: list[dict[str, Any]]) -> None:
        rule = self.rules[rid]
        if rule.verdict == "accept":
            tail = [
                {"counter": f"r{rid}"},
                {"mangle": {"key": {"ct": {"key": "mark"}}, "value": rid}},
                {"accept": None},
            ]
        else:
            tail = [{"counter": f"r{rid}"}, {"log": {"prefix": f"d{rid}", "group": LOG_GROUP}}, {"drop": None}]
        self.body.append({"expr": [*matches, *tail]})

    def _sources(self, rule: AllowRule, app: AppNet) -> list[dict[str, Any]]:
        """The source matches of an allow rule: one per nft rule (a VDC subtree is several sets)."""
        peer = rule.from_
        if peer.cidr is not None:
            net, plen = peer.cidr.split("/")
            return [_m(_SADDR, {"prefix": {"addr": net, "len": int(plen)}})]
        if peer.app is not None:
            key = (peer.vdc or app.vdc, peer.app)
            name = self.app_set.get(key)
            return [_m(_SADDR, f"@{name}")] if name else []
        assert peer.vdc is not None
        return [_m(_SADDR, f"@{s}") for v, s in self.vdc_set.items() if _within(v, peer.vdc)]

    def _ports(self, refs: Iterable[int | str], protocol: str | None, app: AppNet) -> list[list[dict[str, Any]]]:
        """The l4 matches for ports given by number or name: one match list per protocol."""
        refs = list(refs)
        if protocol == "any" and not refs:
            return [[]]
        if protocol == "icmp":
            return [[_m({"meta": {"key": "l4proto"}}, "icmp")]]
        if not refs:  # no ports: every port of the protocol (tcp unless told)
            return [[_m({"meta": {"key": "l4proto"}}, protocol or "tcp")]]
        by_proto: dict[str, set[int]] = {}
        for ref in refs:
            if isinstance(ref, str):
                number, proto = app.ports[ref]
                by_proto.setdefault(protocol or proto, set()).add(number)
            else:
                by_proto.setdefault(protocol or "tcp", set()).add(ref)
        return [
            [_m({"payload": {"protocol": proto, "field": "dport"}}, {"set": sorted(ports)})]
            for proto, ports in sorted(by_proto.items())
        ]

    def compile(self) -> Ruleset:
        spoof = self._rule("drop", "spoof", None, None, "a packet from an instance with an address not its own")
        self._emit(
            spoof,
            [
                _m({"meta": {"key": "iifname"}}, f"{INSTANCE_LINK_PREFIX}*"),
                _m({"concat": [{"meta": {"key": "iifname"}}, _SADDR]}, "@bind", "!="),
            ],
        )
        mgmt = self._rule("accept", "management", None, None, f"health checks from the platform ({self.mgmt})")
        self._emit(mgmt, [_m(_SADDR, self.mgmt)])
        for app in self.apps:
            self._app(app)
        cross: dict[str, int] = {}
        for app in self.apps:
            into = [_m(_DADDR, f"@{self.app_set[(app.vdc, app.app)]}")]
            if app.vdc not in cross:
                cross[app.vdc] = self._rule(
                    "drop", "cross-vdc", app.vdc, None, f"from another VDC's instance into VDC {app.vdc}"
                )
            vset = self.vdc_set[app.vdc]
            self._emit(cross[app.vdc], [*into, _m(_SADDR, f"@{vset}", "!="), _m(_SADDR, "@instances")])
            deny = self._rule("drop", "default-deny", app.vdc, app.app, f"not allowed into app {app.vdc}/{app.app}")
            self._emit(deny, into)
        rest = self._rule("drop", "no-destination", None, None, "to an address no instance holds")
        self._emit(rest, [])
        return Ruleset(self._document(), self.rules)

    def _app(self, app: AppNet) -> None:
        dst = _m(_DADDR, f"@{self.app_set[(app.vdc, app.app)]}")
        own = self.app_set[(app.vdc, app.app)]
        rid = self._rule("accept", "same-app", app.vdc, app.app, "between the app's own replicas")
        self._emit(rid, [dst, _m(_SADDR, f"@{own}")])
        if app.network is None:
            rid = self._rule(
                "accept", "same-vdc", app.vdc, app.app, f"from VDC {app.vdc} (the app has no network rules)"
            )
            self._emit(rid, [dst, _m(_SADDR, f"@{self.vdc_set[app.vdc]}")])
            return
        for i, rule in enumerate(app.network.allow):
            peer = rule.from_
            who = peer.cidr or (f"app {peer.vdc or app.vdc}/{peer.app}" if peer.app else f"VDC {peer.vdc}")
            what = ", ".join(map(str, rule.ports)) or rule.protocol or "all ports"
            rid = self._rule("accept", f"allow[{i}]", app.vdc, app.app, f"from {who} to {what}")
            for src in self._sources(rule, app):
                for l4 in self._ports(rule.ports, rule.protocol, app):
                    self._emit(rid, [dst, src, *l4])
        if app.network.expose:
            ports = ", ".join(map(str, app.network.expose))
            rid = self._rule("accept", "expose", app.vdc, app.app, f"ports {ports} from anywhere")
            for l4 in self._ports(app.network.expose, None, app):
                self._emit(rid, [dst, *l4])

    def _document(self) -> dict[str, Any]:
        t = {"family": FAMILY, "table": TABLE}
        cmds: list[dict[str, Any]] = list(closed_ruleset()["nftables"])  # the table anew, its chain empty

        def addr_set(name: str, members: Iterable[str]) -> None:
            body: dict[str, Any] = {**t, "name": name, "type": "ipv4_addr"}
            elems = sorted(set(members))
            if elems:
                body["elem"] = elems
            cmds.append({"add": {"set": body}})

        addr_set("instances", (e.address for e in self.endpoints))
        for vdc, name in self.vdc_set.items():
            addr_set(name, (e.address for e in self.endpoints if e.vdc == vdc))
        for (vdc, app), name in self.app_set.items():
            addr_set(name, (e.address for e in self.endpoints if (e.vdc, e.app) == (vdc, app)))
        bind: dict[str, Any] = {**t, "name": "bind", "type": ["ifname", "ipv4_addr"]}
        if self.endpoints:
            bind["elem"] = [{"concat": [e.ifname, e.address]} for e in sorted(self.endpoints, key=lambda e: e.ifname)]
        cmds.append({"add": {"set": bind}})
        for rid in self.rules:
            cmds.append({"add": {"counter": {**t, "name": f"r{rid}"}}})
        fixed: list[list[dict[str, Any]]] = [
            [_m({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}],
            [_m({"meta": {"key": "nfproto"}}, "ipv6"), {"drop": None}],
            [_m({"ct": {"key": "state"}}, "invalid"), {"drop": None}],
        ]
        for expr in fixed:
            cmds.append({"add": {"rule": {**t, "chain": "forward", "expr": expr}}})
        for rule in self.body:
            cmds.append({"add": {"rule": {**t, "chain": "forward", **rule}}})
        return {"nftables": [{"metainfo": {"json_schema_version": 1}}, *cmds]}


def closed_ruleset() -> dict[str, Any]:
    """What a host enforces from its creation until the first compiled policy replaces it:
    nothing is forwarded (a host that never hears from the controller fails closed)."""
    table = {"table": {"family": FAMILY, "name": TABLE}}
    chain: dict[str, Any] = {"family": FAMILY, "table": TABLE, "name": "forward", "type": "filter"}
    chain |= {"hook": "forward", "prio": 0, "policy": "drop"}
    return {"nftables": [{"add": table}, {"delete": table}, {"add": table}, {"add": {"chain": chain}}]}


def compile_ruleset(endpoints: Sequence[Endpoint], apps: Sequence[AppNet], mgmt: str) -> Ruleset:
    """The fabric's ruleset for these instances and apps (an app with no instance still gets its
    rules, so its first replica is governed from its first packet)."""
    return _Compiler(endpoints, apps, mgmt).compile()
