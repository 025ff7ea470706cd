"""`spec.dr`, `kind: postgres` and what each DR tier needs of the topology."""

from __future__ import annotations

from typing import Any

import pytest

from shanzhi.domain.dr import links, missing_for, parse_duration, quorum_sites
from shanzhi.domain.spec import POSTGRES_MOUNT, SpecInvalid, parse_app

PG = "spec.components[0].postgres."
TOPOLOGY = {"gz-a": "production", "gz-b": "same-city", "sz": "remote"}


def app(components: list[dict[str, Any]], dr: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"components": components}
    if dr is not None:
        body["dr"] = dr
    return {"apiVersion": "shanzhi.io/v1", "kind": "App", "metadata": {"name": "tax", "vdc": "gz"}, "spec": body}


def test_a_postgres_gets_one_member_per_centre_a_data_volume_and_its_ports() -> None:
    spec = parse_app(
        app([{"name": "db", "kind": "postgres", "postgres": {"size": "2Gi"}}], {"tier": "two-sites-three-centres"})
    )
    db = spec.spec.components[0]
    assert db.replicas == 3 and db.runtime == "process"
    assert [(v.name, v.size_bytes, v.mount_path) for v in db.volumes] == [("data", 2 * 2**30, POSTGRES_MOUNT)]
    assert [p.name for p in db.ports] == ["pg", "api"]
    assert db.resources.memory_bytes == 256 * 2**20
    # what is stored parses again to the same thing (the platform's ports are no conflict)
    assert parse_app(spec.to_json()) == spec
    assert parse_app(app([{"name": "db", "kind": "postgres"}], {"tier": "same-city"})).spec.components[0].replicas == 2
    assert parse_app(app([{"name": "db", "kind": "postgres"}])).spec.components[0].replicas == 1


@pytest.mark.parametrize(
    ("component", "dr", "field", "says"),
    [
        (
            {"name": "db", "kind": "postgres", "replicas": 2},
            {"tier": "two-sites-three-centres"},
            "spec",
            "leave out replicas",
        ),
        ({"name": "db", "kind": "postgres", "run": {"command": ["x"]}}, None, "spec.components[0]", "leave out run"),
        (
            {"name": "db", "kind": "postgres", "postgres": {"parameters": {"port": 1}}},
            None,
            PG + "parameters",
            "set by the platform",
        ),
        (
            {"name": "db", "kind": "postgres", "postgres": {"version": "9"}},
            None,
            PG + "version",
            "'15'",
        ),
        (
            {"name": "db", "kind": "postgres", "postgres": {"colour": "x"}},
            None,
            PG + "colour",
            "unknown field",
        ),
        ({"name": "web", "run": {"command": ["x"]}, "postgres": {}}, None, "spec.components[0]", "kind: postgres"),
        ({"name": "web", "run": {"command": ["x"]}}, {"tier": "gold"}, "spec.dr.tier", "none"),
        ({"name": "web", "run": {"command": ["x"]}}, {"rpo": "soon"}, "spec.dr.rpo", "not a duration"),
        (
            {"name": "web", "run": {"command": ["x"]}},
            {"backups": {"every": "daily"}},
            "spec.dr.backups.every",
            "not a duration",
        ),
        ({"name": "web", "run": {"command": ["x"]}}, {"backups": {"keep": 0}}, "spec.dr.backups.keep", "1"),
        (
            {"name": "web", "run": {"command": ["x"]}},
            {"backups": {"when": "1h"}},
            "spec.dr.backups.when",
            "unknown field",
        ),
    ],
)
def test_bad_dr_specs_are_refused_naming_the_field(component: dict[str, Any], dr: Any, field: str, says: str) -> None:
    with pytest.raises(SpecInvalid) as err:
        parse_app(app([component], dr))
    assert err.value.problems[0]["field"] == field and says in str(err.value), err.value.problems


def test_durations() -> None:
    assert [parse_duration(x) for x in ("0s", "30s", "5m", "500ms", "1h", 7)] == [0, 30, 300, 0.5, 3600, 7]
    with pytest.raises(ValueError):
        parse_duration(-1)


def test_each_tier_says_what_the_topology_lacks() -> None:
    assert missing_for("two-sites-three-centres", TOPOLOGY) is None
    assert missing_for("same-city", TOPOLOGY) is None  # the remote centre is the arbiter
    assert missing_for("none", {}) is None
    lacks = missing_for("two-sites-three-centres", {"gz-a": "production", "gz-b": "same-city"})
    assert lacks is not None and "missing: remote" in lacks and "gz-a=production" in lacks
    lacks = missing_for("same-city", {"gz-a": "production", "gz-b": "same-city"})
    assert lacks is not None and "missing: arbiter" in lacks
    assert missing_for("same-city", {"gz-a": "production", "gz-b": "same-city", "x": "arbiter"}) is None
    down = missing_for("two-sites-three-centres", TOPOLOGY, {"gz-a": True, "gz-b": False, "sz": True})
    assert down is not None and "gz-b (same-city)" in down


def test_the_quorum_survives_any_one_centre() -> None:
    assert quorum_sites(TOPOLOGY) == ["gz-a", "gz-b", "sz"]
    assert quorum_sites({**TOPOLOGY, "hk": "arbiter"}) == ["gz-a", "gz-b", "hk"]  # the remote keeps its own
    assert quorum_sites({"gz-a": "production", "sz": "remote"}) == ["gz-a"]
    assert quorum_sites({}) == []
    kinds = [(x["from"], x["to"]) for x in links(TOPOLOGY)]
    assert ("gz-a", "gz-b") in kinds and ("gz-b", "sz") in kinds and ("sz", "quorum") in kinds
