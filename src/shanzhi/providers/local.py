"""`local`: each instance is a real OS process on this machine, in a sandbox.

Every instance gets a working directory outside the data directory, a log file and ports
allocated on the cloud's loopback address (`--option address=127.0.2.1`; 127.0.0.1 by
default, so that clouds standing for separate centres can be told apart and cut apart by
address); `${PORT}` (first port), `${PORT_<NAME>}`, `${ADDRESS}` (where it listens) and
`${VOLUME_<NAME>}` (a volume's directory) are substituted in the command and environment.
A request with `fixed_ports` (the DR quorum's etcd members, whose peers must know where they
listen before they start) gets exactly the ports it asks for or a Conflict, and keeps them
reserved while it is down.
As root, it runs as its VDC's own uid in private namespaces and cgroups (see
`shanzhi.providers.sandbox`); its state (`state.json`) and log stay in the cloud's private
state directory, where the workload can neither read nor replace them.

Workloads are started through a launcher shell that backgrounds them and exits, so they are
never children of Shanzhi: they run in their own session, outlive the server, leave no zombies
in it, and are found again after a restart through `state.json` (pid plus the process start
time, so a recycled pid is never ours).

The start is gated: the workload is a `sh` that waits for a line on stdin before it execs
the command, and we send that line only after `state.json` is durable. If Shanzhi dies in
between, the pipe closes, the gate reads EOF and the shell exits: no untracked process.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from shanzhi.domain.errors import Conflict, InvalidInput, NotFound
from shanzhi.domain.metrics import Usage
from shanzhi.domain.quantity import parse_cpu, parse_memory
from shanzhi.providers import sized, usage
from shanzhi.providers.base import (
    CloudStatus,
    InstanceRequest,
    LogChunk,
    MachineCloud,
    ObservedInstance,
    OptionSpec,
    Resource,
    free_port,
    positive_int,
    tail_file,
)
from shanzhi.providers.sandbox import Sandbox, make_reachable

_GATE = 'read -r go && [ "$go" = go ] && exec "$@"; exit 111'
# fd 3 keeps our pipe as the gate's stdin (a background job's stdin is /dev/null otherwise);
# the launcher's stderr is the instance log. It first joins the instance's cgroups, so that
# everything it starts is held to the limits from the first instruction on.
_LAUNCH = """exec 3<&0
IFS=:
for f in $SHANZHI_CGROUP_PROCS; do echo $$ > "$f" || exit 112; done
unset IFS SHANZHI_CGROUP_PROCS
"$@" <&3 >&2 3<&- &
echo $!"""
MIN_MEMORY = 8 * 2**20  # below this even a shell is killed at start (Kubernetes refuses under 6 MB)
_VAR = re.compile(r"\$\{(PORT(?:_[A-Z0-9_]+)?|ADDRESS|VOLUME_[A-Z0-9_]+)\}")


def _default_memory() -> int:
    return int(psutil.virtual_memory().total // 2)


def _default_cpu() -> int:
    return (os.cpu_count() or 1) * 1000


def _loopback(value: Any) -> str:
    addr = ipaddress.ip_address(str(value))
    if addr.version != 4 or not addr.is_loopback:
        raise ValueError(f"must be an IPv4 loopback address (127.x.y.z), not {value!r}")
    return str(addr)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _bindable(address: str, port: int) -> bool:
    """Whether a server could listen there now (as servers do, past connections in TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


def _env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def _running(st: dict[str, Any]) -> bool:
    return bool(st.get("pid")) and _alive(int(st["pid"]), float(st["create_time"]))


def _alive(pid: int, create_time: float) -> bool:
    try:
        p = psutil.Process(pid)
        return abs(p.create_time() - create_time) < 0.05 and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class LocalProvider(MachineCloud):
    kind = "local"
    runtimes = frozenset({"process"})
    probes_endpoints = True
    options = {
        "cpu": OptionSpec(parse_cpu, _default_cpu, "cpu capacity of the cloud (default: all cores)"),
        "memory": OptionSpec(parse_memory, _default_memory, "memory capacity (default: half of RAM)"),
        "instances": OptionSpec(positive_int, 50, "maximum number of instances"),
        "hosts": OptionSpec(positive_int, 1, "split the capacity into this many logical hosts"),
        "pids": OptionSpec(positive_int, 1024, "most processes one instance may run (cgroup pids limit)"),
        "address": OptionSpec(_loopback, "127.0.0.1", "loopback address the instances listen on (127.x.y.z)"),
    }

    @property
    def _instances(self) -> Path:
        return self.state_dir / "instances"

    def status(self) -> CloudStatus:
        if self._failed_marker.exists():
            return CloudStatus(False, "cloud marked failed (failure injection)")
        why = sized.unavailable()
        sizes = "volume sizes enforced (ext4 on loop devices)" if why is None else f"volume sizes NOT enforced: {why}"
        return CloudStatus(True, f"ok; {self.sandbox.describe()}; {sizes}")

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
        endpoint = f"{st.get('address') or '127.0.0.1'}:{first}" if first else None
        if _running(st):
            return ObservedInstance(name, str(st["host"]), "running", endpoint, ports, f"pid {st['pid']}")
        return ObservedInstance(name, str(st.get("host", "")), "exited", endpoint, ports, "process not running")

    def list_instances(self) -> list[ObservedInstance]:
        self._refuse_if_failed()
        return [self._observe(st) for st in self._states().values()]

    def usage(self) -> dict[str, Usage]:
        out: dict[str, Usage] = {}
        cg = self.sandbox.cgroups
        for name, st in self._states().items():
            pid = st.get("pid")
            if not pid or not _alive(int(pid), float(st.get("create_time", 0))):
                continue
            members = cg.member_pids(self._cgroup(name)) if cg is not None else set()
            found = usage.of_processes(members or usage.tree(int(pid)))
            if found is not None:
                out[name] = self._with_network(st, found)
        return out

    def _with_network(self, st: dict[str, Any], found: Usage) -> Usage:
        """A process on this machine's own network has no traffic counters of its own."""
        return found

    @functools.cached_property
    def sandbox(self) -> Sandbox:
        return Sandbox.for_data_dir(self.state_dir.parent.parent)

    def create_instance(self, req: InstanceRequest) -> ObservedInstance:
        self._refuse_if_failed()
        if not req.command:
            raise InvalidInput(f"a local cloud runs processes: component {req.component} has no run.command")
        if self.sandbox.cgroups is not None and req.memory < MIN_MEMORY:
            raise InvalidInput(
                f"component {req.component} asks for {req.memory} bytes of memory: a process needs at least "
                f"{MIN_MEMORY // 2**20}Mi here, where memory limits are enforced",
                field="resources.memory",
            )
        states = self._states()
        existing = states.get(req.name)
        if existing and _running(existing):
            return self._observe(existing)
        ports = self._ports(req, states)  # may refuse: before anything is made
        statedir = self._instances / req.name
        if statedir.exists():
            self._kill({"name": req.name, **(existing or {})})
        statedir.mkdir(parents=True, exist_ok=True, mode=0o700)
        box = self.sandbox
        uid = box.uid_for(req.vdc)
        workdir = box.make_workdir(self.name, req.name, uid)
        address = req.network.address if req.network else str(self.opts.get("address", "127.0.0.1"))
        subst: dict[str, str] = {"PORT": str(next(iter(ports.values()))), "ADDRESS": address}
        subst.update({f"PORT_{_env_name(k)}": str(v) for k, v in ports.items()})
        volumes = {
            f"VOLUME_{_env_name(v.name)}": str(self._volume(v.key, uid, v.size, v.copy_from)) for v in req.volumes
        }

        def expand(text: str) -> str:
            return _VAR.sub(lambda m: {**subst, **volumes}.get(m.group(1), m.group(0)), text)

        argv = [expand(a) for a in req.command]
        env = box.environment(workdir, {k: expand(v) for k, v in req.env.items()})
        # a volume is a directory that outlives the replica, found through its env
        env.update({f"SHANZHI_{k}": v for k, v in volumes.items()})
        env.update({k: v for k, v in subst.items() if k != "ADDRESS"})  # PORT and every PORT_<NAME>
        env.update(
            {
                "SHANZHI_INSTANCE": req.name,
                "SHANZHI_APP": req.app,
                "SHANZHI_COMPONENT": req.component,
                "SHANZHI_VDC": req.vdc,
            }
        )
        procs: list[Path] = []
        if box.cgroups is not None:
            procs = box.cgroups.create(self._cgroup(req.name), req.cpu, req.memory, int(self.opts.get("pids", 1024)))
        enter, extra = self._enter(req)
        gated = [*enter, *box.command_prefix(uid), "/bin/sh", "-c", _GATE, "sh", *argv]
        with open(statedir / "log", "ab") as log:
            os.chmod(statedir / "log", 0o600)
            launcher = subprocess.Popen(
                ["/bin/sh", "-c", _LAUNCH, "sh", *gated],
                cwd=workdir,
                env={**env, "SHANZHI_CGROUP_PROCS": ":".join(map(str, procs))},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        assert launcher.stdin is not None and launcher.stdout is not None
        line = launcher.stdout.readline()
        launcher.stdout.close()
        if launcher.wait() != 0 or not line.strip():
            launcher.stdin.close()
            tail = (statedir / "log").read_bytes()[-500:].decode(errors="replace")
            raise OSError(f"could not start instance {req.name} (launcher exit {launcher.returncode}): {tail}")
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
            "address": address,
            "argv": argv,
            "uid": uid,
            "workdir": str(workdir),
            "started_at": time.time(),
            "fixed": req.fixed_ports,
            **extra,
        }
        _write_json(statedir / "state.json", state)
        with contextlib.suppress(BrokenPipeError):
            launcher.stdin.write(b"go\n")
            launcher.stdin.close()
        return self._observe(state)

    def _ports(self, req: InstanceRequest, states: dict[str, dict[str, Any]]) -> dict[str, int]:
        """Ports on the cloud's address, free now and not handed to another instance of this cloud.
        A replica with volumes keeps the ports its disk had here (its endpoint follows the disk,
        so a database member that comes back is where its clients' connection strings say)."""
        address = str(self.opts.get("address", "127.0.0.1"))
        # another live instance's ports, and fixed ones even while their owner is down (it comes back there)
        held = [st for st in states.values() if st.get("name") != req.name and (st.get("fixed") or _running(st))]
        taken = {int(p) for st in held for p in st.get("ports", {}).values()}
        if req.fixed_ports:
            return self._fixed_ports(req, address, taken)
        remembered = self._volume_ports(req)
        ports: dict[str, int] = {}
        for pname, _ in req.ports or (("port", 0),):
            old = remembered.get(pname)
            if old is not None and old not in taken | set(ports.values()) and _bindable(address, old):
                ports[pname] = old
            else:
                ports[pname] = free_port(taken | set(ports.values()), address)
        if req.volumes:
            self._ports_file("").parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_json(self._ports_file(req.volumes[0].key), ports)
        return ports

    def _fixed_ports(self, req: InstanceRequest, address: str, taken: set[int]) -> dict[str, int]:
        ports = dict(req.ports)
        for pname, port in ports.items():
            if port in taken:
                raise Conflict(f"port {port} ({pname}) on {address} belongs to another instance of cloud {self.name}")
            if not _bindable(address, port):
                raise Conflict(f"port {port} ({pname}) on {address} is in use by a process outside cloud {self.name}")
        return ports

    def _ports_file(self, key: str) -> Path:
        return self.state_dir / "volume-ports" / f"{key}.json"

    def _volume_ports(self, req: InstanceRequest) -> dict[str, int]:
        if not req.volumes:
            return {}
        try:
            return {str(k): int(v) for k, v in json.loads(self._ports_file(req.volumes[0].key).read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _enter(self, req: InstanceRequest) -> tuple[list[str], dict[str, Any]]:
        """What to run the sandboxed command under, and what to remember of it in state.json
        (nothing here: a process of this machine's own network)."""
        return [], {}

    def _release(self, st: dict[str, Any]) -> None:
        """Undo `_enter` once the instance's processes are gone."""
        return

    def _cgroup(self, instance: str) -> str:
        return f"{self.name}.{instance}"

    def _kill(self, st: dict[str, Any], *, hard: bool = False) -> None:
        """Stop an instance: SIGTERM, then SIGKILL after 5 s (`hard`: SIGKILL at once)."""
        pid = st.get("pid")
        cg = self.sandbox.cgroups
        if pid and st.get("adopted") and _alive(int(pid), float(st["create_time"])):
            self._stop_adopted(int(pid), float(st["create_time"]), hard)
        elif pid and _alive(int(pid), float(st.get("create_time", 0))):
            pgid = int(st.get("pgid", pid))
            deadline = time.monotonic() + (0 if hard else 5)
            resend = 0.0
            while time.monotonic() < deadline and _alive(int(pid), float(st["create_time"])):
                if time.monotonic() >= resend:  # again now and then: a namespace's init may not listen yet
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGTERM)
                    resend = time.monotonic() + 0.25
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        if cg is not None and st.get("name"):
            name = self._cgroup(str(st["name"]))
            for _ in range(100):  # whatever left the process group is still in the cgroup
                members = cg.member_pids(name)
                if not members:
                    break
                for member in members:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(member, signal.SIGKILL)
                time.sleep(0.02)
            cg.remove(name)

    @staticmethod
    def _stop_adopted(pid: int, create_time: float, hard: bool) -> None:
        """An adopted process is not a group we made: signal it alone."""
        deadline = time.monotonic() + (0 if hard else 5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
        while time.monotonic() < deadline and _alive(pid, create_time):
            time.sleep(0.02)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if _alive(pid, create_time):
                os.kill(pid, signal.SIGKILL)

    def delete_instance(self, name: str) -> None:
        statedir = self._instances / name
        if not statedir.exists():
            return
        st = self._states().get(name, {})
        self._kill({"name": name, **st})
        self._release({"name": name, **st})
        if st.get("workdir"):
            shutil.rmtree(st["workdir"], ignore_errors=True)
        shutil.rmtree(statedir, ignore_errors=True)

    #: whether the host's own listening processes are in the inventory (not for namespaced kinds)
    finds_processes = True

    def inventory(self) -> list[Resource]:
        """The hosts, Shanzhi's instances, and the processes listening on the cloud's address
        that Shanzhi did not start (legacy systems on this host, to adopt)."""
        out = super().inventory()
        if not self.finds_processes:
            return out
        ours = {int(st["pid"]) for st in self._states().values() if st.get("pid")}
        address = str(self.opts.get("address", "127.0.0.1"))
        listening: dict[int, set[int]] = {}
        for c in psutil.net_connections(kind="tcp"):
            if c.status == psutil.CONN_LISTEN and c.pid and c.laddr and c.laddr.ip in (address, "0.0.0.0"):
                listening.setdefault(c.pid, set()).add(int(c.laddr.port))
        me = {os.getpid(), *(p.pid for p in psutil.Process().parents())}
        host = out[0].name  # the first host: a found process is on this machine, not on one of its slices
        for pid, ports in sorted(listening.items()):
            if pid in ours or pid in me:
                continue
            try:
                proc = psutil.Process(pid)
                if ours & {a.pid for a in proc.parents()} or "SHANZHI_INSTANCE" in proc.environ():
                    continue  # a workload of this cloud, or any Shanzhi's (they carry their name)
                with proc.oneshot():
                    rid = f"pid-{pid}-{int(proc.create_time() * 1000)}"
                    attrs = {
                        "command": proc.cmdline(),
                        "ports": sorted(ports),
                        "user": proc.username(),
                        "host": host,
                        "cpu": 1000,
                        "memory": max(64 * 2**20, -(-proc.memory_info().rss * 2 // 2**20) * 2**20),
                    }
                    out.append(Resource("server", rid, proc.name(), proc.status(), attrs=attrs))
            except psutil.Error:
                continue  # gone meanwhile, or not ours to read
        return out

    def adopt(self, resource_id: str, req: InstanceRequest) -> ObservedInstance:
        """A process found listening becomes the instance `req.name` as it runs: same pid, user
        and directory. When it dies, the instance is started again from its spec, sandboxed."""
        try:
            _, pid_text, ms = resource_id.split("-")
            proc = psutil.Process(int(pid_text))
            born = proc.create_time()
            if int(born * 1000) != int(ms):
                raise psutil.NoSuchProcess(int(pid_text))
        except (ValueError, psutil.Error):
            raise NotFound(f"cloud {self.name} runs no process {resource_id} (any more)", field="id") from None
        held = self._states().get(req.name)
        if held is not None:
            if int(held.get("pid") or 0) == proc.pid:
                return self._observe(held)
            raise Conflict(f"cloud {self.name} already has an instance {req.name}", field="name")
        statedir = self._instances / req.name
        statedir.mkdir(parents=True, exist_ok=True, mode=0o700)
        state = {
            "name": req.name,
            "host": req.host,
            "pid": proc.pid,
            "create_time": born,
            "ports": dict(req.ports),
            "address": str(self.opts.get("address", "127.0.0.1")),
            "argv": proc.cmdline(),
            "uid": proc.uids().real,
            "adopted": resource_id,  # not started by us: stopped by its pid, its directory left alone
            "cwd": proc.cwd(),
            "started_at": born,
        }
        _write_json(statedir / "state.json", state)
        return self._observe(state)

    def describe(self, name: str) -> dict[str, Any]:
        """The process: pid, its user, working directory and command."""
        st = self._states().get(name)
        if st is None:
            return {"pid": None}
        alive = bool(st.get("pid")) and _alive(int(st["pid"]), float(st.get("create_time", 0)))
        keys = ("pid", "uid", "workdir", "argv", "ports")
        return {**{k: st.get(k) for k in keys}, "alive": alive, "log": str(self._instances / name / "log")}

    def _volume(self, key: str, uid: int, size: int, copy_from: str | None = None) -> Path:
        """A volume of a process: a directory under the workload root (only its VDC's uid enters
        it), created the first time or copied from the one it had on cloud `copy_from`; a file
        system of its size where this machine can mount one (`providers.sized`)."""
        base = self.sandbox.root / self.name / "volumes"
        path = base / key
        new = not path.exists()
        if new:
            make_reachable(base)
            for p in (base, base.parent, self.sandbox.root):
                os.chmod(p, 0o711)
        if sized.unavailable() is None:
            sized.ensure(path, size, uid if self.sandbox.isolate else os.getuid())
        if new:
            source = self.sandbox.root / str(copy_from) / "volumes" / key
            if copy_from and source.is_dir():
                shutil.copytree(source, path, symlinks=True, dirs_exist_ok=True)
            else:
                path.mkdir(mode=0o700, exist_ok=True)
            if self.sandbox.isolate:
                for dirpath, _, files in os.walk(path):
                    os.chown(dirpath, uid, uid)
                    for f in files:
                        os.chown(os.path.join(dirpath, f), uid, uid, follow_symlinks=False)
        return path

    def delete_volume(self, key: str) -> None:
        path = self._volume_path(key)
        sized.release(path)
        shutil.rmtree(path, ignore_errors=True)
        sized.image_of(path).unlink(missing_ok=True)
        self._ports_file(key).unlink(missing_ok=True)

    def _volume_path(self, key: str) -> Path:
        return self.sandbox.root / self.name / "volumes" / key

    def remove_from_volume(self, key: str, names: Sequence[str]) -> list[str]:
        path = self._volume_path(key)
        bad = [n for n in names if not n or "/" in n or n.startswith(".")]
        if bad:
            raise InvalidInput(f"not a top-level entry of a volume: {', '.join(map(repr, bad))}", field="names")
        # the workload owns the volume: a symlink it put there is never followed (nor is one inside:
        # rmtree works on file descriptors)
        removed = [n for n in names if (path / n).is_dir() and not (path / n).is_symlink()]
        for n in removed:
            shutil.rmtree(path / n)
        return removed

    def read_log(self, name: str, tail: int) -> LogChunk:
        """The instance's stdout and stderr (one file, kept in the state dir, never the workload's)."""
        return tail_file(self._instances / name / "log", tail)

    def inject_failure(self, host: str | None = None) -> None:
        """Simulate losing the whole cloud: its processes stop and it stops answering."""
        if host is not None:
            raise InvalidInput("a local cloud can only fail as a whole; omit --host")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._failed_marker.touch()
        for st in self._states().values():  # a lost machine does not shut down gracefully
            self._kill(st, hard=True)


def stop_all_under(clouds_dir: Path, *, remove: bool = False) -> int:
    """Stop every local workload whose state lies under `clouds_dir` (offline cleanup).

    With `remove`, also delete their working directories, cgroups and state (as tests do).
    Returns how many processes were running and are now stopped.
    """
    stopped = 0
    for state_file in sorted(clouds_dir.glob("*/instances/*/state.json")):
        cloud_dir = state_file.parents[2]
        p = LocalProvider(cloud_dir.name, {"hosts": 1}, cloud_dir)
        name = state_file.parent.name
        st = p._states().get(name, {})
        if _running(st):
            stopped += 1
        if remove:
            p.delete_instance(name)
        else:
            p._kill({"name": name, **st})
    if remove:
        root = Sandbox.for_data_dir(clouds_dir.parent).root
        sized.release(root)  # volumes' file systems first: rmtree cannot remove a mount point
        shutil.rmtree(root, ignore_errors=True)
    return stopped
