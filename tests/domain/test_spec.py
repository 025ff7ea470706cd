import pytest

from shanzhi.domain.spec import SpecInvalid, load_app_text, parse_app

EXAMPLE = """
apiVersion: shanzhi.io/v1
kind: App
metadata:
  name: hello
  vdc: gz/health
spec:
  components:
    - name: web
      replicas: 4
      resources: {cpu: 0.1, memory: 64Mi}
      run:
        command: ["python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"]
      ports: [{name: http, port: 8080}]
      health: {http: {path: /, port: http}}
  placement:
    clouds: {tags: {level: city}}
    spread: {over: site, minGroups: 2}
"""


def test_the_issue_example_is_accepted_as_written() -> None:
    app = load_app_text(EXAMPLE)
    web = app.spec.components[0]
    assert (app.metadata.name, app.metadata.vdc) == ("hello", "gz/health")
    assert web.replicas == 4
    assert web.resources.cpu_millis == 100
    assert web.resources.memory_bytes == 64 * 2**20
    assert app.spec.placement.spread is not None and app.spec.placement.spread.min_groups == 2
    assert app.spec.placement.clouds.tags == {"level": "city"}


def test_json_is_accepted_too() -> None:
    doc = load_app_text(EXAMPLE).to_json()
    again = parse_app(doc)
    assert again.to_json() == doc


def _problems(text: str) -> list[dict[str, str]]:
    with pytest.raises(SpecInvalid) as info:
        load_app_text(text)
    return info.value.problems


def test_unknown_field_is_named_with_its_path() -> None:
    problems = _problems(EXAMPLE.replace("replicas: 4", "replica: 4"))
    assert {"field": "spec.components[0].replica", "message": "unknown field 'replica'"} in problems


def test_unknown_top_level_field() -> None:
    problems = _problems(EXAMPLE + "status: {}\n")
    assert problems[0]["field"] == "status"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (("replicas: 4", "replicas: -1"), "spec.components[0].replicas"),
        (("memory: 64Mi", "memory: lots"), "spec.components[0].resources.memory"),
        (("name: hello", "name: Hello_World"), "metadata.name"),
        (("apiVersion: shanzhi.io/v1", "apiVersion: v2"), "apiVersion"),
        (("over: site", "over: planet"), "spec.placement.spread.over"),
        (("port: http}}", "port: admin}}"), "spec.components[0]"),
    ],
)
def test_bad_values_are_named(change: tuple[str, str], field: str) -> None:
    problems = _problems(EXAMPLE.replace(*change))
    assert problems[0]["field"] == field, problems


def test_missing_runtime_and_duplicates_are_refused() -> None:
    no_run = EXAMPLE.replace(
        '      run:\n        command: ["python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1"]\n', ""
    )
    assert "needs 'run'" in _problems(no_run)[0]["message"]
    doubled = EXAMPLE.replace("  placement:", "    - name: web\n      image: x\n  placement:")
    assert "repeated: web" in _problems(doubled)[0]["message"]


def test_not_yaml_and_not_a_mapping() -> None:
    assert _problems("a: [")[0]["field"] == "(document)"
    assert _problems("- 1\n- 2")[0]["message"] == "an App spec must be a mapping"


def test_spec_hash_ignores_replicas_but_not_the_command() -> None:
    a = load_app_text(EXAMPLE)
    b = load_app_text(EXAMPLE.replace("replicas: 4", "replicas: 9"))
    c = load_app_text(EXAMPLE.replace("--bind", "-b"))
    h = [x.spec.components[0].spec_hash(x.spec.placement) for x in (a, b, c)]
    assert h[0] == h[1]
    assert h[0] != h[2]


def test_spec_hash_ignores_fields_left_at_their_defaults() -> None:
    a = load_app_text(EXAMPLE)
    b = load_app_text(
        EXAMPLE.replace(
            "    spread: {over: site, minGroups: 2}", "    spread: {over: site, minGroups: 2}\n    regions: []"
        )
    )
    c = load_app_text(
        EXAMPLE.replace(
            "    spread: {over: site, minGroups: 2}", "    spread: {over: site, minGroups: 2}\n    regions: [gz]"
        )
    )
    h = [x.spec.components[0].spec_hash(x.spec.placement) for x in (a, b, c)]
    assert h[0] == h[1] != h[2]


def test_every_example_is_a_valid_spec() -> None:
    from pathlib import Path

    import yaml

    from shanzhi.domain.spec import parse_app

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert len(examples) >= 3
    for f in examples:
        spec = parse_app(yaml.safe_load(f.read_text()))
        assert spec.metadata.name == f.stem


LAUGHS = "\n".join(
    ["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
)


def test_a_billion_laughs_is_refused_before_it_expands() -> None:
    import tracemalloc

    from shanzhi.domain.spec import load_yaml_documents

    tracemalloc.start()
    with pytest.raises(ValueError, match="expand to more than 100000 nodes"):
        load_yaml_documents(LAUGHS)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 2**20  # refused from the parsed nodes, never built
    with pytest.raises(SpecInvalid, match="billion laughs"):
        load_app_text(LAUGHS)
    with pytest.raises(ValueError, match="over the 4194304 allowed"):
        load_yaml_documents("a: " + "x" * (4 * 2**20))
    # a reasonable use of anchors is fine
    assert load_yaml_documents("base: &b {cpu: 1}\nother: *b\n") == [{"base": {"cpu": 1}, "other": {"cpu": 1}}]


VM = """
apiVersion: shanzhi.io/v1
kind: App
metadata: {name: db, vdc: gz}
spec:
  components:
    - name: db
      image: tiny
      resources: {cpu: 1, memory: 256Mi, storage: 1Gi}
      volumes: [{name: data, size: 10Gi, mountPath: /var/lib/db}, {name: wal, size: 2Gi, mountPath: /wal,
                 reclaimPolicy: retain}]
      env: {MODE: primary}
"""


def test_volumes_are_disks_counted_with_storage() -> None:
    comp = load_app_text(VM).spec.components[0]
    assert [(v.name, v.size_bytes, v.mount_path, v.reclaim_policy) for v in comp.volumes] == [
        ("data", 10 * 2**30, "/var/lib/db", "delete"),
        ("wal", 2 * 2**30, "/wal", "retain"),
    ]
    assert comp.storage_bytes == 13 * 2**30


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("size: 10Gi", "size: 10k"), "at least 1Mi"),
        (("mountPath: /wal", "mountPath: wal"), "should match pattern"),
        (("name: wal", "name: data"), "volume names must be unique"),
        (("reclaimPolicy: retain", "reclaimPolicy: keep"), "'delete' or 'retain'"),
        (("image: tiny", 'run: {command: ["sleep", "1"]}'), "goes under 'run.env'"),
    ],
)
def test_bad_volumes_are_named(change: tuple[str, str], message: str) -> None:
    problems = _problems(VM.replace(*change))
    assert any(message in p["message"] for p in problems), problems


def test_a_flavor_names_cpu_and_memory() -> None:
    flavored = VM.replace(
        "resources: {cpu: 1, memory: 256Mi, storage: 1Gi}", "flavor: s1.medium\n      resources: {storage: 1Gi}"
    )
    comp = load_app_text(flavored).spec.components[0]
    assert (comp.resources.cpu_millis, comp.resources.memory_bytes, comp.resources.storage_bytes) == (
        2000,
        4 * 2**30,
        2**30,
    )
    both = VM.replace("resources: {cpu: 1,", "flavor: s1.small\n      resources: {cpu: 1,")
    assert any("leave out resources.cpu and resources.memory" in p["message"] for p in _problems(both))
    unknown = VM.replace("resources: {cpu: 1, memory: 256Mi, storage: 1Gi}", "flavor: huge")
    assert any("unknown flavor 'huge'" in p["message"] for p in _problems(unknown))
