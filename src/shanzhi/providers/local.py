"""`local`: each instance is a real OS process on this machine.

Every instance gets its own working directory (`<state>/instances/<name>/`), a log file and
ports allocated on 127.0.0.1; `${PORT}` (first port) and `${PORT_<NAME>}` are substituted
in the command and environment. Workloads are started through a launcher shell that
backgrounds them and exits, so they are never children of Shanzhi: they run in their own
session, outlive the server, leave no zombies in it, and are found again after a restart
through `state.json` (pid plus the process start time, so a recycled pid is never ours).

The start is gated: the workload is a `sh` that waits for a line on stdin before it execs
the command, and we send that line only after `state.json` is durable. If Shanzhi dies in
between, the pipe closes, the gate reads EOF and the shell exits: no untracked process.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from shanzhi.domain.errors import CloudUnavailable, InvalidInput
from shanzhi.domain.quantity import parse_cpu, parse_memory
from shanzhi.providers.base import (
    CloudStatus,
    HostInfo,
    InstanceRequest,
    ObservedInstance,
    OptionSpec,
    Provider,
    positive_int,
)

_GATE = 'read -r go && [ "$go" = go ] && exec "$@"; exit 111'
# fd 3 keeps our pipe as the gate's stdin (a background job's stdin is /dev/null otherwise)
_LAUNCH = f"""exec 3<&0
/bin/sh -c '{_GATE}' sh "$@" <&3 >>log 2>&1 3<&- &
echo $!"""
_VAR = re.compile(r"\$\{(PORT(?:_[A-Z0-9_]+)?)\}")


def _default_memory() -> int:
    return int(psutil.virtual_memory().total // 2)


def _default_cpu() -> int:
    return (os.cpu_count() or 1) * 1000


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _free_port(taken: set[int]) -> int:
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError("could not find a free port on 127.0.0.1")


def _alive(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class LocalProvider(Provider):
    kind = "local"
    runtimes = frozenset({"process"})
    probes_endpoints = True
    options = {
        "cpu": OptionSpec(parse_cpu, _default_cpu, "cpu capacity of the cloud (default: all cores)"),
        "memory": OptionSpec(parse_memory, _default_memory, "memory capacity (default: half of RAM)"),
        "instances": OptionSpec(positive_int, 50, "maximum number of instances"),
        "hosts": OptionSpec(positive_int, 1, "split the capacity into this many logical hosts"),
    }

    @property
    def _instances(self) -> Path:
        return self.state_dir / "instances"

    @property
    def _failed_marker(self) -> Path:
        return self.state_dir / "FAILED"

    def status(self) -> CloudStatus:
        if self._failed_marker.exists():
            return CloudStatus(False, "cloud marked failed (failure injection)")
        return CloudStatus(True, "ok")

    def hosts(self) -> list[HostInfo]:
        n = int(self.opts["hosts"])
        healthy = not self._failed_marker.exists()
        return [
            HostInfo(
                name=f"node-{i}",
                cpu=int(self.opts["cpu"]) // n,
                memory=int(self.opts["memory"]) // n,
                max_instances=max(1, int(self.opts["instances"]) // n),
                healthy=healthy,
            )
            for i in range(n)
        ]

    def _states(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        if not self._instances.is_dir():
            return out
        for d in sorted(self._instances.iterdir()):
            f = d / "state.json"
            try:
                out[d.name] = json.loads(f.read_text())
            except (OSError, ValueError):
                out[d.name] = {"name": d.name, "host": "", "pid": None}
        return out

    def _observe(self, st: dict[str, Any]) -> ObservedInstance:
        name = str(st["name"])
        ports = {str(k): int(v) for k, v in st.get("ports", {}).items()}
        first = next(iter(ports.values()), None)
        endpoint = f"127.0.0.1:{first}" if first else None
        pid = st.get("pid")
        if pid and _alive(int(pid), float(st["create_time"])):
            return ObservedInstance(name, str(st["host"]), "running", endpoint, ports, f"pid {pid}")
        return ObservedInstance(name, str(st.get("host", "")), "exited", endpoint, ports, "process not running")

    def list_instances(self) -> list[ObservedInstance]:
        if self._failed_marker.exists():
            raise CloudUnavailable(f"cloud {self.name} is marked failed")
        return [self._observe(st) for st in self._states().values()]

    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        if self._failed_marker.exists():
            raise CloudUnavailable(f"cloud {self.name} is marked failed")
        if not req.command:
            raise InvalidInput(f"a local cloud runs processes: component {req.component} has no run.command")
        states = self._states()
        existing = states.get(req.name)
        if existing and existing.get("pid") and _alive(int(existing["pid"]), float(existing["create_time"])):
            return self._observe(existing)
        workdir = self._instances / req.name
        if workdir.exists():
            self._kill(existing or {})
        workdir.mkdir(parents=True, exist_ok=True)
        taken = {int(p) for st in states.values() for p in st.get("ports", {}).values()}
        ports: dict[str, int] = {}
        for pname, _ in req.ports or (("port", 0),):
            ports[pname] = _free_port(taken | set(ports.values()))
        subst = {"PORT": next(iter(ports.values()))}
        subst.update({f"PORT_{k.upper().replace('-', '_')}": v for k, v in ports.items()})

        def expand(text: str) -> str:
            return _VAR.sub(lambda m: str(subst.get(m.group(1), m.group(0))), text)

        argv = [expand(a) for a in req.command]
        env = dict(os.environ)
        env.update({k: expand(v) for k, v in req.env.items()})
        env.update(
            {
                "PORT": str(subst["PORT"]),
                "SHANZHI_INSTANCE": req.name,
                "SHANZHI_APP": req.app,
                "SHANZHI_COMPONENT": req.component,
                "SHANZHI_VDC": req.vdc,
            }
        )
        launcher = subprocess.Popen(
            ["/bin/sh", "-c", _LAUNCH, "sh", *argv],
            cwd=workdir,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert launcher.stdin is not None and launcher.stdout is not None
        line = launcher.stdout.readline()
        launcher.stdout.close()
        launcher.wait()
        pid = int(line)
        try:
            create_time = psutil.Process(pid).create_time()
        except psutil.Error:
            create_time = time.time()
        state = {
            "name": req.name,
            "host": req.host,
            "pid": pid,
            "pgid": launcher.pid,  # the launcher's session; the workload stays in it
            "create_time": create_time,
            "ports": ports,
            "argv": argv,
            "started_at": time.time(),
        }
        _write_json(workdir / "state.json", state)
        with contextlib.suppress(BrokenPipeError):
            launcher.stdin.write(b"go\n")
            launcher.stdin.close()
        return self._observe(state)

    def _kill(self, st: dict[str, Any]) -> None:
        pid = st.get("pid")
        if not pid or not _alive(int(pid), float(st.get("create_time", 0))):
            return
        pgid = int(st.get("pgid", pid))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _alive(int(pid), float(st["create_time"])):
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def delete_instance(self, name: str) -> None:
        workdir = self._instances / name
        if not workdir.exists():
            return
        self._kill(self._states().get(name, {}))
        shutil.rmtree(workdir, ignore_errors=True)

    def inject_failure(self, host: str | None = None) -> None:
        """Simulate losing the whole cloud: its processes stop and it stops answering."""
        if host is not None:
            raise InvalidInput("a local cloud can only fail as a whole; omit --host")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._failed_marker.touch()
        for st in self._states().values():
            self._kill(st)

    def recover(self, host: str | None = None) -> None:
        self._failed_marker.unlink(missing_ok=True)


def stop_all_under(clouds_dir: Path) -> int:
    """Stop every local workload whose state lies under `clouds_dir` (offline cleanup).

    Returns how many processes were running and are now stopped.
    """
    stopped = 0
    for state_file in sorted(clouds_dir.glob("*/instances/*/state.json")):
        cloud_dir = state_file.parents[2]
        p = LocalProvider(cloud_dir.name, {"hosts": 1}, cloud_dir)
        st = p._states().get(state_file.parent.name, {})
        if st.get("pid") and _alive(int(st["pid"]), float(st["create_time"])):
            stopped += 1
        p._kill(st)
    return stopped
