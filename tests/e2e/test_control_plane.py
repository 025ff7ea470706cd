"""End to end: real servers, the real CLI, real workload processes, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.harness import ROOT, Cli, Server, stop_everything, wait_for, workload_pids

pytestmark = pytest.mark.e2e
EXAMPLE = ROOT / "examples" / "hello.yaml"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    return d


@pytest.fixture
def server(data_dir: Path, database_url: str) -> Iterator[Server]:
    s = Server(data_dir, None if database_url.startswith("sqlite") else database_url)
    yield s
    stop_everything(data_dir, s)


def setup_world(cli: Cli) -> None:
    cli.ok("cloud", "add", "city-a", "--kind", "local", "--site", "huangpu", "--region", "gz", "--tag", "level=city")
    cli.ok(
        "cloud",
        "add",
        "city-b",
        "--kind",
        "local",
        "--site",
        "nansha",
        "--region",
        "gz",
        "--tag",
        "level=city",
        "--option",
        "cpu=2",
        "--option",
        "memory=2Gi",
        "--option",
        "instances=20",
    )
    cli.ok("vdc", "create", "gz", "--quota", "cpu=8,memory=16Gi,instances=100")
    cli.ok("vdc", "create", "gz/health", "--quota", "cpu=2,memory=4Gi,instances=10")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_the_example_runs_across_two_sites_and_serves_http(server: Server) -> None:
    cli = Cli(server)
    setup_world(cli)
    out = cli.ok("apply", "-f", str(EXAMPLE), "--wait", "--timeout", "90")
    assert "app/hello (gz/health) created" in out and "app/hello ready" in out
    instances = cli.json("instance", "list", "--app", "hello")
    assert len(instances) == 4
    for i in instances:
        assert {"name", "app", "component", "cloud", "site", "host", "state", "endpoint"} <= set(i)
        assert (i["app"], i["component"], i["state"]) == ("hello", "web", "running")
        assert httpx.get(f"http://{i['endpoint']}/", timeout=5).status_code == 200
    assert sorted(i["site"] for i in instances) == ["huangpu", "huangpu", "nansha", "nansha"]
    # applying the same spec again changes nothing
    again = cli.json("apply", "-f", str(EXAMPLE))
    assert again["outcome"] == "unchanged" and again["app"]["generation"] == 1
    assert [i["name"] for i in cli.json("instance", "list", "--app", "hello")] == [i["name"] for i in instances]
    # why each replica is where it is
    detail = cli.ok("app", "get", "hello")
    assert "placed on city-a/node-0" in detail and "spread over site" in detail
    assert {c["name"] for c in cli.json("cloud", "list")} == {"city-a", "city-b"}
    usage = cli.json("vdc", "get", "gz")["usage"]
    assert usage == {"cpu": 400, "memory": 4 * 64 * 2**20, "instances": 4, "storage": 0}
    reasons = {e["reason"] for e in cli.json("events", "--app", "hello")}
    assert {"AppApplied", "Scheduled", "InstanceReady"} <= reasons
    # delete stops every process
    pids = workload_pids(server.data_dir)
    cli.ok("app", "delete", "hello", "--wait", "--timeout", "60")
    assert cli.json("instance", "list") == []
    assert not any(alive(p) for p in pids.values())


def test_bad_input_exits_non_zero_with_the_problem_on_stderr(server: Server, tmp_path: Path) -> None:
    cli = Cli(server)
    setup_world(cli)
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.read_text().replace("replicas: 4", "replica: 4"))
    r = cli.run("apply", "-f", str(bad))
    assert r.returncode == 1 and "spec.components[0].replica: unknown field 'replica'" in r.stderr
    over = tmp_path / "over.yaml"
    over.write_text(EXAMPLE.read_text().replace("replicas: 4", "replicas: 30"))
    r = cli.run("apply", "-f", str(over))
    assert r.returncode == 1 and "VDC gz/health quota exceeded" in r.stderr
    r = cli.run("cloud", "get", "nowhere")
    assert r.returncode == 1 and "cloud nowhere does not exist" in r.stderr
    r = cli.run("cloud", "add", "x", "--kind", "vmware", "--site", "s", "--region", "r")
    assert r.returncode == 1 and "unknown cloud kind 'vmware'" in r.stderr
    r = cli.run("vdc", "create", "gz/health/it", "--quota", "cpu=3")
    assert r.returncode == 1 and "exceeds the limit 2 set by VDC gz/health" in r.stderr
    r = cli.run("cloud", "list", token="szt_wrong")
    assert r.returncode == 1 and "invalid token" in r.stderr
    r = cli.run("apply", "-f", str(tmp_path / "missing.yaml"))
    assert r.returncode == 1 and "cannot read" in r.stderr
    assert cli.json("app", "list") == []  # nothing changed


def test_the_cli_reports_an_unreachable_server(tmp_path: Path) -> None:
    class Down:
        url = "http://127.0.0.1:9"
        data_dir = tmp_path

    r = Cli(Down()).run("cloud", "list")  # type: ignore[arg-type]
    assert r.returncode == 2 and "cannot reach Shanzhi" in r.stderr and "shanzhi serve" in r.stderr


def test_every_command_takes_json_output(server: Server) -> None:
    cli = Cli(server)
    setup_world(cli)
    for args in (
        ["cloud", "list"],
        ["cloud", "get", "city-a"],
        ["vdc", "list"],
        ["vdc", "get", "gz"],
        ["app", "list"],
        ["instance", "list"],
        ["events"],
        ["status"],
    ):
        json.loads(cli.ok(*args, "-o", "json"))


def test_kill_9_and_restart_adopts_workloads_without_duplicates(data_dir: Path, database_url: str) -> None:
    url = None if database_url.startswith("sqlite") else database_url
    first = Server(data_dir, url)
    try:
        cli = Cli(first)
        setup_world(cli)
        cli.ok("apply", "-f", str(EXAMPLE), "--wait", "--timeout", "90")
        before = {i["name"]: i["endpoint"] for i in cli.json("instance", "list")}
        pids = workload_pids(data_dir)
        first.kill()
        assert all(alive(p) for p in pids.values())  # workloads outlive the server
        second = Server(data_dir, url)
        cli = Cli(second)
        second.passes_after(5)
        after = {i["name"]: i["endpoint"] for i in cli.json("instance", "list")}
        assert after == before
        assert workload_pids(data_dir) == pids  # same processes: adopted, not restarted
        assert all(i["state"] == "running" for i in cli.json("instance", "list"))
    finally:
        stop_everything(data_dir, first, *(s for s in [locals().get("second")] if s))


def test_sigterm_stops_the_server_but_not_the_workloads(server: Server) -> None:
    cli = Cli(server)
    setup_world(cli)
    cli.ok("apply", "-f", str(EXAMPLE), "--wait", "--timeout", "90")
    endpoints = [i["endpoint"] for i in cli.json("instance", "list")]
    # uvicorn shuts down gracefully, then re-raises SIGTERM (exit status -15) as a well-behaved daemon
    assert server.terminate() in (0, -15)
    assert "workloads left running" in server.log.read_text()
    for e in endpoints:
        assert httpx.get(f"http://{e}/", timeout=5).status_code == 200


def test_a_killed_workload_is_restarted_by_the_server(server: Server) -> None:
    cli = Cli(server)
    setup_world(cli)
    cli.ok("apply", "-f", str(EXAMPLE), "--wait", "--timeout", "90")
    name, pid = next(iter(workload_pids(server.data_dir).items()))
    psutil.Process(pid).kill()
    wait_for(lambda: workload_pids(server.data_dir).get(name) not in (None, pid), 30, "a new process")
    wait_for(lambda: all(i["state"] == "running" for i in cli.json("instance", "list")), 30, "all running")
    restarted = next(i for i in cli.json("app", "get", "hello")["instances"] if i["name"] == name)
    assert restarted["restarts"] == 1


def test_site_loss_fails_over_to_the_remaining_sites(server: Server) -> None:
    cli = Cli(server)
    setup_world(cli)
    cli.ok("cloud", "add", "city-c", "--kind", "local", "--site", "baiyun", "--region", "gz", "--tag", "level=city")
    cli.ok("apply", "-f", str(EXAMPLE), "--wait", "--timeout", "90")
    lost_cloud = cli.json("instance", "list")[0]["cloud"]
    cli.ok("cloud", "fail", lost_cloud)

    def failed_over() -> bool:
        running = [i for i in cli.json("instance", "list") if i["state"] == "running"]
        return len(running) == 4 and all(i["cloud"] != lost_cloud for i in running)

    wait_for(failed_over, 60, "failover")
    running = [i for i in cli.json("instance", "list") if i["state"] == "running"]
    assert len({i["site"] for i in running}) >= 2
    for i in running:
        assert httpx.get(f"http://{i['endpoint']}/", timeout=5).status_code == 200
    cli.ok("cloud", "recover", lost_cloud)
    wait_for(lambda: len(cli.json("instance", "list")) == 4, 60, "lost instances cleaned up")


def test_two_servers_on_one_postgres_split_the_apps_and_one_takes_all_when_the_other_dies(
    data_dir: Path, pg_url: str
) -> None:
    a = Server(data_dir, pg_url)
    b = Server(data_dir, pg_url)
    try:
        wait_for(lambda: a.status()["leader"] != b.status()["leader"], 20, "one leader")
        wait_for(lambda: a.status()["shards"] == b.status()["shards"] == 32, 20, "the apps split in two")
        assert a.status()["replicas"] == b.status()["replicas"] == 2
        leader, standby = (a, b) if a.status()["leader"] else (b, a)
        cli = Cli(standby)  # the API of either server works
        setup_world(cli)
        for name in ("hello", "hello-2", "hello-3"):  # apps in different shards (ids 1, 2, 3)
            doc = EXAMPLE.read_text().replace("name: hello", f"name: {name}", 1).replace("replicas: 4", "replicas: 2")
            (data_dir / f"{name}.yaml").write_text(doc)
            cli.ok("apply", "-f", str(data_dir / f"{name}.yaml"), "--wait", "--timeout", "90")
        # the other controllers run once, on the leader; each server reconciles its own share
        assert standby.status()["controller_passes"] == 0
        assert standby.status()["reconcile_passes"] > 0 and leader.status()["reconcile_passes"] > 0
        pids = workload_pids(data_dir)
        assert len(pids) == 6
        leader.kill()
        wait_for(lambda: standby.status()["leader"], 20, "the standby to take over")
        wait_for(lambda: standby.status()["shards"] == 64, 20, "every app on the survivor")
        standby.passes_after(5)
        assert workload_pids(data_dir) == pids
        assert len(Cli(standby).json("instance", "list")) == 6
    finally:
        stop_everything(data_dir, a, b)


def test_concurrent_applies_never_oversubscribe_a_quota(server: Server) -> None:
    cli = Cli(server)
    setup_world(cli)
    cli.ok("vdc", "create", "gz/race", "--quota", "cpu=1")
    token = (server.data_dir / "admin.token").read_text().strip()
    results: list[int] = []

    def apply(i: int) -> None:
        doc = {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": f"r{i}", "vdc": "gz/race"},
            "spec": {
                "components": [{"name": "c", "replicas": 1, "resources": {"cpu": "100m"}, "image": "x"}],
                "placement": {"clouds": {"names": ["none"]}},
            },
        }
        r = httpx.post(f"{server.url}/api/v1/apps", json=doc, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        results.append(r.status_code)

    threads = [threading.Thread(target=apply, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [201] * 10 + [403] * 14
    assert cli.json("vdc", "get", "gz/race")["usage"]["cpu"] == 1000


def test_concurrent_applies_of_one_app_take_one_generation_each(server: Server) -> None:
    """Applies of one app at once (on PostgreSQL an advisory lock per app; VDCs without a quota
    are locked shared): created once, every change a generation of its own, no error."""
    cli = Cli(server)
    setup_world(cli)
    cli.ok("vdc", "create", "gz/free")  # no quota: applies there run side by side
    token = (server.data_dir / "admin.token").read_text().strip()
    answers: list[tuple[int, str]] = []

    def apply(name: str, replicas: int) -> None:
        doc = {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": name, "vdc": "gz/free"},
            "spec": {
                "components": [{"name": "c", "replicas": replicas, "resources": {"cpu": "10m"}, "image": "x"}],
                "placement": {"clouds": {"names": ["none"]}},
            },
        }
        r = httpx.post(f"{server.url}/api/v1/apps", json=doc, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        answers.append((r.status_code, r.json().get("outcome", r.text) if r.status_code < 300 else r.text))

    threads = [threading.Thread(target=apply, args=("same", 1 + i % 2)) for i in range(12)]
    threads += [threading.Thread(target=apply, args=(f"other{i}", 1)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    same = [a for a in answers if a[1] in ("created", "configured", "unchanged")]
    assert len(answers) == 20 and all(code in (200, 201) for code, _ in answers), answers
    outcomes = [o for _, o in same]
    assert outcomes.count("created") == 9  # "same" once, and the eight others
    got = cli.json("app", "get", "same")
    assert got["generation"] == 1 + outcomes.count("configured")
    history = cli.json("app", "rollout", "history", "same")
    assert [r["generation"] for r in history] == list(range(1, got["generation"] + 1))


def test_plan_evacuate_through_the_cli(server: Server) -> None:
    cli = Cli(server)
    for name in ("d1", "d2", "d3"):
        cli.ok(
            "cloud",
            "add",
            name,
            "--kind",
            "sim",
            "--site",
            f"site-{name}",
            "--region",
            "gz",
            "--tag",
            "level=district",
            "--option",
            "hosts=6",
            "--option",
            "boot=0",
        )
    cli.ok("vdc", "create", "gz/transport", "--parents")
    cli.ok("apply", "-f", str(ROOT / "examples" / "permits.yaml"), "--wait", "--timeout", "60")
    before = {i["name"] for i in cli.json("instance", "list") if i["cloud"] == "d1"}
    proposed = cli.json("plan", "evacuate", "d1", "--time-limit", "5")
    assert proposed["status"] == "proposed" and {m["instance"] for m in proposed["moves"]} == before
    assert "review, then: shanzhi plan apply" in cli.ok("plan", "get", str(proposed["id"]))
    cli.json("plan", "apply", str(proposed["id"]))

    def evacuated() -> bool:
        rows = cli.json("instance", "list")
        return len(rows) == 8 and all(i["cloud"] != "d1" and i["state"] == "running" for i in rows)

    wait_for(evacuated, 60, "evacuation")
    again = cli.run("plan", "apply", str(proposed["id"]))
    assert again.returncode == 1 and "already applied" in again.stderr
