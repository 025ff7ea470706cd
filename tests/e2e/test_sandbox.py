"""The hardening review's attack, replayed against a real demo server by a department member."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shanzhi.services.demo import DEMO_PASSWORD
from tests.e2e.harness import Cli, Server, stop_everything, wait_for
from tests.providers.test_sandbox import PROBE

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI is root)")]


def _spec(name: str, vdc: str, command: list[str], memory: str = "128Mi", cpu: float = 0.5) -> str:
    return json.dumps(
        {
            "apiVersion": "shanzhi.io/v1",
            "kind": "App",
            "metadata": {"name": name, "vdc": vdc},
            "spec": {
                "components": [
                    {
                        "name": "main",
                        "replicas": 1,
                        "resources": {"cpu": cpu, "memory": memory},
                        "run": {"command": command},
                    }
                ],
                "placement": {"clouds": {"tags": {"level": "city"}}},
            },
        }
    )


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[Server, Cli]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # single sign-on configured, so the server holds a client secret in its environment
    s = Server(
        data_dir, None, "--demo", "--oidc-issuer", "http://127.0.0.1:9/", env={"SHANZHI_OIDC_CLIENT_SECRET": "s3cret"}
    )
    yield s, Cli(s)
    stop_everything(data_dir, s)


def _instance(server: Server, cli: Cli, app: str) -> tuple[dict[str, object], Path]:
    inst = wait_for(
        lambda: [i for i in cli.json("instance", "list", "--app", app) if i.get("state") == "running"],
        60,
        f"{app} running",
    )[0]
    state = server.data_dir / "clouds" / inst["cloud"] / "instances" / inst["name"]
    return inst, state


def test_a_member_s_workload_reaches_nothing_of_the_platform(demo: tuple[Server, Cli], tmp_path: Path) -> None:
    server, cli = demo
    # the data dir, the database and its WAL, keys and tokens: the server's alone
    for path in (server.data_dir, *server.data_dir.rglob("*")):
        assert path.stat().st_mode & 0o077 == 0, f"{path} is {oct(path.stat().st_mode)}"
    assert (server.data_dir / "shanzhi.db-wal").exists()

    # another department's workload, started by the administrator
    (tmp_path / "other.json").write_text(_spec("registry", "gz/transport", ["sleep", "600"]))
    cli.ok("apply", "-f", str(tmp_path / "other.json"))
    _, other_state = _instance(server, cli, "registry")
    other_dir = json.loads((other_state / "state.json").read_text())["workdir"]
    Path(other_dir, "records.csv").write_text("transport's records\n")

    targets = {n: str(server.data_dir / n) for n in ("admin.token", "security.token", "audit.token")}
    targets |= {n: str(server.data_dir / n) for n in ("ledger.key", "platform.key", "shanzhi.db", "shanzhi.db-wal")}
    targets |= {
        "data_dir": str(server.data_dir),
        "server_environ": f"/proc/{server.proc.pid}/environ",
        "other_vdc_dir": other_dir,
        "other_vdc_file": str(Path(other_dir, "records.csv")),
    }
    (tmp_path / "probe.json").write_text(_spec("probe", "gz/health", ["python3", "-c", PROBE, json.dumps(targets)]))
    r = cli.run("login", "-u", "zhang.min", env={"SHANZHI_PASSWORD": DEMO_PASSWORD})
    assert r.returncode == 0, r.stderr
    cli.ok("apply", "-f", str(tmp_path / "probe.json"))
    _, state = _instance(server, cli, "probe")
    log = wait_for(lambda: "PROBE " in (state / "log").read_text() and (state / "log").read_text(), 30, "probe output")
    out = json.loads(next(x for x in log.splitlines() if x.startswith("PROBE "))[6:])
    for name in targets:
        assert str(out[name]).startswith("refused"), (name, out[name])
    assert out["uid"] != 0 and out["no_new_privs"] == "1"
    assert not any(k.startswith("SHANZHI_OIDC") for k in out["env"])
    cloud = cli.json("cloud", "get", "city-a")
    assert "workloads sandboxed" in cloud["health_message"]


def test_a_workload_past_its_memory_is_killed_and_healed_others_untouched(
    demo: tuple[Server, Cli], tmp_path: Path
) -> None:
    _, cli = demo
    hog = ["python3", "-c", "import time; time.sleep(1); b = bytearray(400 * 2**20); time.sleep(600)"]
    (tmp_path / "hog.json").write_text(_spec("hog", "gz/health", hog, memory="96Mi"))
    cli.ok("apply", "-f", str(tmp_path / "hog.json"))
    before = wait_for(
        lambda: (
            (xs := cli.json("instance", "list", "--app", "hello")) and all(i["state"] == "running" for i in xs) and xs
        ),
        60,
        "hello running",
    )

    def restarted() -> bool:
        return any(i["restarts"] >= 2 for i in cli.json("instance", "list", "--app", "hog"))

    wait_for(restarted, 90, "the hog killed and started again twice")
    events = cli.json("events", "--app", "hog")
    assert any(e["reason"] == "InstanceRestarting" for e in events)
    after = cli.json("instance", "list", "--app", "hello")
    assert [(i["name"], i["state"], i["restarts"], i["endpoint"]) for i in after] == [
        (i["name"], "running", 0, i["endpoint"]) for i in before
    ]
