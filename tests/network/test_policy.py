"""The policy compiler and address plans, without a kernel."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shanzhi.domain.errors import Conflict, InvalidInput
from shanzhi.domain.spec import Network, SpecInvalid, parse_app
from shanzhi.network.addressing import allocate_address, allocate_subnet, management_address, parse_pool
from shanzhi.network.policy import AppNet, Endpoint, compile_ruleset


def _rules(doc: dict[str, Any]) -> list[str]:
    """Each forward rule as compact JSON, in order."""
    return [json.dumps(c["add"]["rule"]["expr"]) for c in doc["nftables"] if "rule" in c.get("add", {})]


def _sets(doc: dict[str, Any]) -> dict[str, list[Any]]:
    sets = [c["add"]["set"] for c in doc["nftables"] if "set" in c.get("add", {})]
    return {s["name"]: s.get("elem", []) for s in sets}


EPS = [
    Endpoint("10.1.1.1", "gz", "web", "web-0", "za"),
    Endpoint("10.1.1.2", "gz/health", "api", "api-0", "zb"),
    Endpoint("10.1.2.1", "sz", "db", "db-0", "zc"),
]


def test_the_table_is_replaced_whole_and_drops_by_default() -> None:
    rs = compile_ruleset(EPS, [AppNet("gz", "web", None)], "10.1.0.1")
    cmds = rs.commands["nftables"]
    assert [next(iter(c)) for c in cmds[1:4]] == ["add", "delete", "add"]  # one transaction replaces it
    chain = next(c["add"]["chain"] for c in cmds if "chain" in c.get("add", {}))
    assert chain["hook"] == "forward" and chain["policy"] == "drop"
    sets = _sets(rs.commands)
    assert sorted(sets["instances"]) == ["10.1.1.1", "10.1.1.2", "10.1.2.1"]
    assert {"concat": ["za", "10.1.1.1"]} in sets["bind"]
    names = [r.name for r in rs.rules.values()]
    assert names[:2] == ["spoof", "management"] and names[-1] == "no-destination"
    assert [r.verdict for r in rs.rules.values()].count("drop") == 4  # spoof, cross-vdc, default-deny, rest


def test_an_app_without_network_rules_admits_its_vdc_and_no_other() -> None:
    rs = compile_ruleset(EPS, [AppNet("gz", "web", None), AppNet("sz", "db", None)], "10.1.0.1")
    web = {r.name: r for r in rs.rules.values() if r.app == "web"}
    assert set(web) == {"same-app", "same-vdc", "default-deny"}
    rules = _rules(rs.commands)
    gz = next(n for n, e in _sets(rs.commands).items() if e == ["10.1.1.1"] and n.startswith("v"))
    assert any(f'"@{gz}"' in r and "r" + str(web["same-vdc"].id) in r for r in rules)
    cross = [r for r in rs.rules.values() if r.name == "cross-vdc"]
    assert {r.vdc for r in cross} == {"gz", "sz"}


def test_allow_rules_compile_to_their_peers_ports_and_protocols() -> None:
    net = Network.model_validate(
        {
            "allow": [
                {"from": {"vdc": "gz"}, "ports": ["http", 9000]},  # gz and its sub-VDC gz/health
                {"from": {"app": "web", "vdc": "gz"}, "protocol": "icmp"},
                {"from": {"cidr": "192.0.2.0/24"}, "ports": [53], "protocol": "udp"},
            ],
            "expose": ["http"],
        }
    )
    rs = compile_ruleset(EPS, [AppNet("sz", "db", net, {"http": (8080, "tcp")}), AppNet("gz", "web", None)], "10.1.0.1")
    by = {r.name: r.id for r in rs.rules.values() if r.app == "db"}
    rules = _rules(rs.commands)
    vdc_rules = [r for r in rules if f'"r{by["allow[0]"]}"' in r]
    assert len(vdc_rules) == 2  # one per VDC set in the gz subtree
    assert all('{"set": [8080, 9000]}' in r and '"tcp"' in r for r in vdc_rules)
    icmp = next(r for r in rules if f'"r{by["allow[1]"]}"' in r)
    assert '"icmp"' in icmp and "dport" not in icmp
    cidr = next(r for r in rules if f'"r{by["allow[2]"]}"' in r)
    assert '"addr": "192.0.2.0", "len": 24' in cidr and '"udp"' in cidr and "[53]" in cidr
    expose = next(r for r in rules if f'"r{by["expose"]}"' in r)
    assert "saddr" not in expose and "[8080]" in expose
    assert "same-vdc" not in by  # a network section replaces the VDC default


def test_an_allow_naming_an_app_that_does_not_exist_admits_nothing() -> None:
    net = Network.model_validate({"allow": [{"from": {"app": "ghost"}}]})
    rs = compile_ruleset(EPS, [AppNet("sz", "db", net)], "10.1.0.1")
    rid = next(r.id for r in rs.rules.values() if r.name == "allow[0]")
    assert not any(f'"r{rid}"' in r for r in _rules(rs.commands))


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ({"allow": [{"from": {"cidr": "10.0.0.0/8", "app": "x"}}]}, "'cidr' stands alone"),
        ({"allow": [{"from": {}}]}, "name an app, a vdc or a cidr"),
        ({"allow": [{"from": {"cidr": "10.0.0.1/8"}}]}, "not an address range"),
        ({"allow": [{"from": {"cidr": "fd00::/8"}}]}, "only IPv4"),
        ({"allow": [{"from": {"app": "web"}, "ports": [80], "protocol": "icmp"}]}, "icmp has no ports"),
        ({"expose": ["nope"]}, "network names port nope, which no component declares"),
        ({"allow": [{"form": {"app": "web"}}]}, "allow[0].form: unknown field 'form'"),
    ],
)
def test_bad_network_sections_are_refused_naming_the_problem(network: dict[str, Any], message: str) -> None:
    doc = {
        "apiVersion": "shanzhi.io/v1",
        "kind": "App",
        "metadata": {"name": "a", "vdc": "gz"},
        "spec": {"components": [{"name": "c", "run": {"command": ["x"]}, "ports": [{"name": "http", "port": 80}]}]},
    }
    doc["spec"]["network"] = network  # type: ignore[index]
    with pytest.raises(SpecInvalid) as err:
        parse_app(doc)
    assert any(message in f"{p['field']}: {p['message']}" for p in err.value.problems), err.value.problems


def test_subnets_come_from_the_pool_never_overlap_and_skip_the_management_address() -> None:
    pool = "10.9.0.0/22"
    assert management_address(pool) == "10.9.0.1"
    first = allocate_subnet(pool, 24, [])
    assert first == "10.9.1.0/24"  # 10.9.0.0/24 holds the management address
    assert allocate_subnet(pool, 24, [first, "10.9.2.0/24"]) == "10.9.3.0/24"
    with pytest.raises(Conflict, match="no free /24"):
        allocate_subnet(pool, 24, ["10.9.1.0/24", "10.9.2.0/24", "10.9.3.0/24"])
    assert allocate_address("10.9.1.0/30", ["10.9.1.1"]) == "10.9.1.2"
    with pytest.raises(Conflict, match="no free address"):
        allocate_address("10.9.1.0/30", ["10.9.1.1", "10.9.1.2"])


@pytest.mark.parametrize(("pool", "prefix"), [("10.9.0.1/16", 24), ("fd00::/64", 24), ("10.9.0.0/24", 16), ("x", 24)])
def test_bad_pools_are_refused(pool: str, prefix: int) -> None:
    with pytest.raises(InvalidInput):
        parse_pool(pool, prefix)


def test_a_netns_cloud_is_refused_where_it_cannot_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from shanzhi.providers.fabric import member, nft
    from shanzhi.providers.netns.provider import NetnsProvider

    monkeypatch.setattr(member.os, "geteuid", lambda: 1000)
    with pytest.raises(InvalidInput, match=r"need root .* use a local cloud"):
        NetnsProvider.validate_options({"hosts": 2})
    monkeypatch.setattr(member.os, "geteuid", lambda: 0)
    monkeypatch.setattr(nft.shutil, "which", lambda _: None)
    with pytest.raises(InvalidInput, match="apt-get install nftables"):
        NetnsProvider.validate_options({})
