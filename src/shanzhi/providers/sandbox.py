"""Where and as whom a `local` workload runs: an unprivileged uid per VDC, cgroups, namespaces.

Running a tenant's command is what a `local` cloud is for; running it *as the platform* is not.
When the server runs as root, every workload:

- runs as a uid of its own VDC, allocated from a range no account uses (never root, never the
  server's), with no supplementary groups and `no_new_privs` (util-linux `setpriv`);
- works in its own directory (0700, owned by that uid) under a workload root outside the data
  directory, which stays 0700 and root's;
- gets a clean environment: the spec's `env`, the port variables, its identity
  (`SHANZHI_INSTANCE`/`_APP`/`_COMPONENT`/`_VDC`) and a minimal `PATH`/`HOME`/`LANG`;
- runs in private PID and mount namespaces (util-linux `unshare`): a fresh `/proc` that shows
  only its own processes, and the data directory covered by an empty tmpfs;
- has a name: inside its namespace `/etc/passwd` and `/etc/group` are copies that add its uid
  (`shz-<uid>`), so programs that look their user up (PostgreSQL's `initdb`, ssh, `whoami`)
  work, as OpenShift's nss_wrapper does for its random uids;
- is held to its `resources` by a cgroup per instance: `cpu` quota, `memory` limit (no swap) and
  a `pids` limit, on cgroup v1 (the controllers' own mounts) or v2 (a `shanzhi` subtree).

We drive `setpriv` and `unshare` rather than Python's own `preexec_fn`: the server is threaded,
and `preexec_fn` is not safe there; bubblewrap would do the same job but is rarely installed.

Without root none of this can be done: workloads then run as the server's user, and
`describe()` says plainly that tenants are not isolated from the platform.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from shanzhi.files import write_private

#: uids handed to VDCs: above the usual subordinate-uid ranges' first block, below nobody's
UID_BASE = 590_000
UID_COUNT = 10_000
MIN_CPU_QUOTA_US = 1_000  # the kernel's floor for cfs_quota_us
CPU_PERIOD_US = 100_000
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
CGROUP_FS = Path("/sys/fs/cgroup")


def is_root() -> bool:
    return os.geteuid() == 0


def server_id(data_dir: Path) -> str:
    """A short name for one server installation (its data directory), for shared roots."""
    return hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:12]


def make_reachable(path: Path) -> None:
    """Make `path` with its missing parents, each of them traversable by others (0711): made under
    the server's umask 077 they would shut every workload user out of what lies below."""
    missing = [d for d in (path, *path.parents) if not d.exists()]
    path.mkdir(parents=True, exist_ok=True)
    for d in missing:
        os.chmod(d, 0o711)


def default_workload_root(data_dir: Path) -> Path:
    env = os.environ.get("SHANZHI_WORKLOAD_ROOT")
    if env:
        return Path(env).expanduser() / server_id(data_dir)
    if is_root():
        return Path("/var/lib/shanzhi/workloads") / server_id(data_dir)
    return data_dir.parent / f"{data_dir.name}-workloads"


# --------------------------------------------------------------------------- cgroups
@dataclass(frozen=True)
class Cgroups:
    """One cgroup per instance under `<controller mount>/<prefix>/<instance>`.

    v1 (hybrid hierarchies, as on this project's CI machines): cpu, memory and pids each have
    their own mount. v2: one tree; the `prefix` directories delegate the three controllers.
    `fs` is the cgroup filesystem's root, a parameter so the file formats can be unit-tested.
    """

    prefix: str
    fs: Path = CGROUP_FS

    def version(self) -> int | None:
        if (self.fs / "memory" / "memory.limit_in_bytes").exists() and (self.fs / "cpu").is_dir():
            return 1
        controllers = self.fs / "cgroup.controllers"
        if controllers.exists():
            have = set(controllers.read_text().split())
            if {"cpu", "memory", "pids"} <= have:
                return 2
        return None

    def usable(self) -> tuple[bool, str]:
        v = self.version()
        if v is None:
            return False, "no cgroup v1 cpu/memory mounts and no v2 tree with cpu, memory and pids"
        if not os.access(self.fs / ("memory" if v == 1 else ""), os.W_OK):
            return False, f"cgroup v{v} found but not writable by uid {os.geteuid()}"
        return True, f"cgroup v{v} (cpu, memory, pids)"

    def _dirs(self, instance: str) -> dict[str, Path]:
        if self.version() == 1:
            return {c: self.fs / c / self.prefix / instance for c in ("cpu", "memory", "pids")}
        return {"unified": self.fs / self.prefix / instance}

    def create(self, instance: str, cpu_millis: int, memory: int, pids: int) -> list[Path]:
        """Make the instance's cgroups with their limits; the `cgroup.procs` files to join."""
        quota = max(MIN_CPU_QUOTA_US, cpu_millis * CPU_PERIOD_US // 1000)
        dirs = self._dirs(instance)
        if "unified" in dirs:
            self._delegate_v2()
            d = dirs["unified"]
            d.mkdir(exist_ok=True)
            _write(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
            _write(d / "memory.max", str(memory))
            if (d / "memory.swap.max").exists():
                _write(d / "memory.swap.max", "0")
            _write(d / "pids.max", str(pids))
            return [d / "cgroup.procs"]
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        _write(dirs["cpu"] / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota))
        _write(dirs["memory"] / "memory.limit_in_bytes", str(memory))
        if (dirs["memory"] / "memory.memsw.limit_in_bytes").exists():
            with contextlib.suppress(OSError):
                _write(dirs["memory"] / "memory.memsw.limit_in_bytes", str(memory))
        with contextlib.suppress(OSError):
            _write(dirs["memory"] / "memory.swappiness", "0")
        _write(dirs["pids"] / "pids.max", str(pids))
        return [d / "cgroup.procs" for d in dirs.values()]

    def background(self, instance: str) -> Path:
        """A cgroup that gets the CPU only when nothing else wants it (v1 `cpu.shares` 2, v2
        `cpu.weight` 1), no limit otherwise: for work beside production (a drill's copy). Its
        processes are scheduled as one group whose share is spent, where a new process at nice
        19 would start level with production's. The `cgroup.procs` file to join."""
        dirs = self._dirs(instance)
        if "unified" in dirs:
            self._delegate_v2()
            d = dirs["unified"]
            d.mkdir(exist_ok=True)
            _write(d / "cpu.weight", "1")
        else:
            d = dirs["cpu"]
            d.mkdir(parents=True, exist_ok=True)
            _write(d / "cpu.shares", "2")
        return d / "cgroup.procs"

    def named(self, start: str) -> list[str]:
        """The instances whose cgroups' names begin with `start` (cpu's, on v1)."""
        dirs = self._dirs(start)
        parent = (dirs["cpu"] if "cpu" in dirs else dirs["unified"]).parent
        return sorted(d.name for d in parent.glob(f"{start}*") if d.is_dir()) if parent.is_dir() else []

    def _delegate_v2(self) -> None:
        node = self.fs
        for part in Path(self.prefix).parts:
            _write(node / "cgroup.subtree_control", "+cpu +memory +pids")
            node = node / part
            node.mkdir(exist_ok=True)
        _write(node / "cgroup.subtree_control", "+cpu +memory +pids")

    def remove(self, instance: str) -> None:
        """Remove the instance's cgroups (once empty) and the prefix directories left empty."""
        if self.version() is None:
            return
        for d in self._dirs(instance).values():
            for node in (d, *d.parents):
                if node in (self.fs, *self.fs.parents) or node.parent == self.fs:
                    break  # never the filesystem's root nor a v1 controller's mount
                try:
                    node.rmdir()
                except FileNotFoundError:
                    continue
                except OSError:
                    break  # still has processes or children

    def member_pids(self, instance: str) -> set[int]:
        out: set[int] = set()
        for d in self._dirs(instance).values():
            with contextlib.suppress(OSError):
                out.update(int(x) for x in (d / "cgroup.procs").read_text().split())
        return out


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


# --------------------------------------------------------------------------- the sandbox
@dataclass(frozen=True)
class Sandbox:
    """How one server's `local` clouds run workloads. Built once per server from its data dir."""

    data_dir: Path
    root: Path  # working directories: <root>/<cloud>/<instance>
    isolate: bool  # run as a VDC's uid in namespaces (root only)
    cgroups: Cgroups | None  # None: limits counted, not enforced
    cgroup_note: str

    @classmethod
    def for_data_dir(cls, data_dir: Path, root: Path | None = None) -> Sandbox:
        isolate = is_root() and shutil.which("setpriv") is not None and shutil.which("unshare") is not None
        cg: Cgroups | None = Cgroups(f"shanzhi/{server_id(data_dir)}")
        ok, note = cg.usable() if cg else (False, "")
        if not ok:
            cg = None
        return cls(data_dir, root or default_workload_root(data_dir), isolate, cg, note)

    def describe(self) -> str:
        """One line for `cloud get` and the start-up log."""
        limits = (
            f"limits enforced by {self.cgroup_note}" if self.cgroups else f"limits NOT enforced: {self.cgroup_note}"
        )
        if self.isolate:
            return f"workloads sandboxed (a uid per VDC, pid and mount namespaces, no_new_privs); {limits}"
        why = "server not running as root" if not is_root() else "setpriv/unshare (util-linux) missing"
        return (
            f"WARNING: workloads run as the server's own user ({why}): tenants are NOT isolated from the "
            f"platform; {limits}"
        )

    # ------------------------------------------------------------------ uids
    def uid_for(self, vdc: str) -> int:
        """The uid of a VDC's workloads, allocated on first use and kept in the data dir."""
        if not self.isolate:
            return os.geteuid()
        path = self.data_dir / "workload-uids.json"
        lock = self.data_dir / "workload-uids.lock"
        with open(lock, "a") as lf:
            fcntl.flock(lf, fcntl.LOCK_EX)
            try:
                table: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
            except ValueError:
                table = {}
            if vdc in table:
                return int(table[vdc])
            used = set(table.values())
            for uid in range(UID_BASE, UID_BASE + UID_COUNT):
                if uid in used or _uid_exists(uid):
                    continue
                table[vdc] = uid
                write_private(path, json.dumps(table, sort_keys=True, indent=1))
                return uid
        raise RuntimeError(f"no free workload uid left in {UID_BASE}..{UID_BASE + UID_COUNT - 1}")

    # ------------------------------------------------------------------ directories
    def make_workdir(self, cloud: str, instance: str, uid: int) -> Path:
        """A fresh working directory only its uid can enter (the parents only traversable)."""
        base = self.root / cloud
        if not self.isolate:
            base.mkdir(parents=True, exist_ok=True)
        else:
            make_reachable(base)
            for d in (self.root, base):
                os.chmod(d, 0o711)
            blocked = [p for p in self.root.parents if p.exists() and not os.stat(p).st_mode & 0o001]
            if blocked:
                raise RuntimeError(
                    f"workload root {self.root} is not reachable by workload users: {blocked[0]} is not "
                    "searchable by others (chmod o+x it, or set SHANZHI_WORKLOAD_ROOT)"
                )
        workdir = base / instance
        if workdir.exists():
            shutil.rmtree(workdir)
        workdir.mkdir(mode=0o700)
        if self.isolate:
            os.chown(workdir, uid, uid)
        return workdir

    def environment(self, workdir: Path, extra: dict[str, str]) -> dict[str, str]:
        env = {"PATH": SAFE_PATH, "HOME": str(workdir), "LANG": "C.UTF-8"}
        env.update(extra)
        return env

    def command_prefix(self, uid: int) -> list[str]:
        """What runs before the workload's own command (its gate shell) to drop into the sandbox."""
        setpriv = ["setpriv", "--no-new-privs"]
        if not self.isolate:
            return setpriv if shutil.which("setpriv") else []
        names = str(self._identity(uid))
        return [
            "unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child", "--propagation", "private",
            "/bin/sh", "-c", _NS_INIT, str(self.data_dir), names,
            *setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
    ]  # fmt: skip

    def _identity(self, uid: int) -> Path:
        """`passwd` and `group` for the uid's namespaces (bound over `/etc/passwd` and `/etc/group`
        there): under the workload root, not the data directory, as they must be world-readable."""
        directory = self.root / ".identity" / str(uid)
        make_reachable(directory)
        for d in (self.root / ".identity", directory):
            os.chmod(d, 0o755)
        _write_identity(directory, uid)
        return directory


def _write_identity(directory: Path, uid: int) -> None:
    """`passwd` and `group` as the machine has them, plus the workload's own uid and gid."""
    name = f"shz-{uid}"
    for fname, line in (("passwd", f"{name}:x:{uid}:{uid}:shanzhi workload:/nonexistent:/usr/sbin/nologin\n"),
                        ("group", f"{name}:x:{uid}:\n")):  # fmt: skip
        base = Path("/etc", fname).read_text()
        if not base.endswith("\n"):
            base += "\n"
        tmp = directory / f".{fname}.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(base + line)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / fname)  # a namespace starting now binds a whole file


#: PID 1 of the workload's namespace, as root inside it: give its uid a name, cover the data
#: dir, start the workload as a child (PID 1 would ignore a plain SIGTERM) and pass termination
#: signals on to it. $0: the data dir; $1: the identity directory (or empty).
_NS_INIT = """trap 'exit 143' TERM INT HUP
if [ -n "$1" ]; then mount --bind "$1/passwd" /etc/passwd && mount --bind "$1/group" /etc/group || exit 113; fi
shift
mount -t tmpfs -o size=4k,mode=0700 shanzhi-private "$0" 2>/dev/null
exec 3<&0
"$@" <&3 3<&- &
c=$!
trap 'kill -TERM $c 2>/dev/null' TERM INT HUP
s=0
while kill -0 $c 2>/dev/null; do wait $c; s=$?; done
exit $s"""


def _uid_exists(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
