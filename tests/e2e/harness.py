"""Real `shanzhi serve` processes and real CLI invocations for the end-to-end tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from shanzhi.controllers.dr import stop_quorum
from shanzhi.providers.fabric.member import remove_fabric
from shanzhi.providers.local import stop_all_under

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    args: list[str], log: Path, up: Callable[[], bool], what: str, timeout: float = 60
) -> subprocess.Popen[bytes]:
    """A helper server process (a cloud's stand-in), its output in `log`, once `up()` says so."""
    with open(log, "ab") as f:
        proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if up():
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{what} did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)


def reap(proc: subprocess.Popen[bytes]) -> None:
    """Stop a helper process: politely, then not."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_for(cond: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


class Server:
    """One `shanzhi serve` process."""

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        *extra: str,
        env: dict[str, str] | None = None,
        demo_vms: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.extra = extra  # to start it again the same way
        self.port = free_port()
        self.tls = "--tls-cert" in extra
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        self.log = data_dir.parent / f"server-{self.port}.log"
        args = [sys.executable, "-m", "shanzhi", "serve", "--data-dir", str(data_dir), "--port", str(self.port)]
        # every test client calls from 127.0.0.1: the per-address limits are tested on their own
        args += ["--interval", "0.3", "--failover-grace", "1", "--logins-per-minute", "10000"]
        args += ["--failures-per-minute", "10000", *extra]
        if "--demo" in extra and not demo_vms:  # a VM per demo is for the tests that look at it
            args.append("--no-demo-vms")
        if database_url:
            args += ["--database-url", database_url]
        extra_env = env
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
        env.update(extra_env or {})
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._up, 30, f"server on {self.url} (log {self.log})")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1, verify=not self.tls).status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> dict[str, Any]:
        token = (self.data_dir / "admin.token").read_text().strip()
        r = httpx.get(f"{self.url}/api/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=5)
        return dict(r.json())

    def passes_after(self, n: int = 3, timeout: float = 30) -> None:
        """Wait until this server has led `n` more reconcile passes."""
        start = self.status()["controller_passes"]
        wait_for(lambda: self.status()["controller_passes"] >= start + n, timeout, f"{n} controller passes")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


class Cli:
    def __init__(self, server: Server) -> None:
        self.server = server

    def run(
        self, *args: str, stdin: str | None = None, token: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        extra = env
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHANZHI_")}
        env["SHANZHI_URL"] = self.server.url
        env["SHANZHI_HOME"] = str(self.server.data_dir)
        env["XDG_CONFIG_HOME"] = str(self.server.data_dir.parent / "config")  # where 'shanzhi login' saves
        if token is not None:
            env["SHANZHI_TOKEN"] = token
        env.update(extra or {})
        return subprocess.run(
            [sys.executable, "-m", "shanzhi", *args],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            input=stdin,
            timeout=180,
        )

    def ok(self, *args: str) -> str:
        r = self.run(*args)
        assert r.returncode == 0, f"shanzhi {' '.join(args)} failed ({r.returncode}): {r.stderr}"
        return r.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "-o", "json"))


def workload_pids(data_dir: Path) -> dict[str, int]:
    out = {}
    for f in sorted((data_dir / "clouds").glob("*/instances/*/state.json")):
        st = json.loads(f.read_text())
        out[st["name"]] = st["pid"]
    return out


def stop_everything(data_dir: Path, *servers: Server) -> None:
    for s in servers:
        s.kill()
    stop_all_under(data_dir / "clouds", remove=True)
    stop_quorum(data_dir, remove=True)
    remove_fabric(data_dir)
    remove_vms(data_dir)


def remove_vms(data_dir: Path) -> None:
    """Every libvirt domain and volume disk a server of this data dir made (nothing else's)."""
    from shanzhi.providers.sandbox import default_workload_root, server_id

    try:
        import libvirt  # type: ignore[import-untyped]
    except ImportError:
        return
    if not Path("/run/libvirt/libvirt-sock").exists():
        return
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError:
        return
    try:
        for d in conn.listAllDomains():
            if d.name().startswith(f"shz-{server_id(data_dir)}-"):
                if d.isActive():
                    d.destroy()
                d.undefine()
        for pool in conn.listAllStoragePools():
            if pool.name().startswith(f"shz-{server_id(data_dir)}-"):
                persistent = pool.isPersistent()  # a transient one is gone once stopped
                if pool.isActive():
                    pool.destroy()
                if persistent:
                    pool.undefine()
    finally:
        conn.close()
    shutil.rmtree(default_workload_root(data_dir), ignore_errors=True)
