"""Adopting a legacy system that runs as a plain process on a `local` cloud's host."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.e2e.harness import Cli, Server, free_port, wait_for

pytestmark = pytest.mark.e2e
# the system's Python, as a legacy service on the host runs it (a restart runs the same command
# sandboxed, as the VDC's uid: it must be able to run it)
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin") or "python3"


@pytest.fixture
def legacy(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A department's old web service, started by hand on this host (not by Shanzhi)."""
    port = free_port()
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("legacy tax portal")
    proc = subprocess.Popen(
        [SYSTEM_PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=www,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_for(lambda: _answers(f"127.0.0.1:{port}"), 15, "the legacy service")
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _answers(endpoint: str) -> bool:
    try:
        return httpx.get(f"http://{endpoint}/", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_process_found_on_the_host_is_adopted_without_a_restart_then_healed(
    server: Server, legacy: tuple[subprocess.Popen[bytes], int]
) -> None:
    proc, port = legacy
    cli = Cli(server)
    cli.ok("cloud", "add", "city", "--kind", "local", "--site", "gz-a", "--region", "gz")
    cli.ok("vdc", "create", "gz", "--quota", "cpu=4,memory=4Gi,instances=10")
    cli.ok("inventory", "sync", "--cloud", "city")

    def found() -> list[dict[str, object]]:
        rows = cli.json("inventory", "list", "--cloud", "city", "--kind", "server", "--unmanaged")
        return [r for r in rows if str(r["external_id"]).startswith(f"pid-{proc.pid}-")]

    (item,) = wait_for(found, 30, "the legacy process in the inventory")
    assert item["attrs"]["ports"] == [port] and item["attrs"]["command"][-3:] == [str(port), "--bind", "127.0.0.1"]
    rid = str(item["external_id"])
    base = ["adopt", rid, "--cloud", "city", "--vdc", "gz", "--app", "tax-portal", "--component", "web"]
    (comp,) = cli.json(*base, "--dry-run")["spec"]["spec"]["components"]
    assert comp["run"]["command"][-3:] == [f"${{PORT_P{port}}}", "--bind", "127.0.0.1"]
    assert comp["ports"] == [{"name": f"p{port}", "port": port}]

    (name,) = cli.json(*base)["instances"]
    row = wait_for(lambda: (r := cli.json("instance", "get", name))["state"] == "running" and r, 30, "running")
    assert row["endpoint"] == f"127.0.0.1:{port}" and row["provider"]["pid"] == proc.pid  # the same process
    assert proc.poll() is None and _answers(row["endpoint"])
    assert "InstanceAdopted" in [e["reason"] for e in cli.json("events", "--app", "tax-portal")]

    # the old process dies: the platform starts it again from the adopted spec, in its sandbox
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    healed = wait_for(
        lambda: (
            (r := cli.json("instance", "get", name))["state"] == "running"
            and r["provider"]["pid"] not in (None, proc.pid)
            and r
        ),
        60,
        "the instance started again",
    )
    assert wait_for(lambda: _answers(healed["endpoint"]), 15, "the restarted service")
    new_pid = int(healed["provider"]["pid"])
    cli.ok("app", "delete", "tax-portal", "--wait", "--timeout", "60")
    assert not psutil.pid_exists(new_pid) or psutil.Process(new_pid).status() == psutil.STATUS_ZOMBIE
