"""The `local` sandbox: a workload can reach neither the platform nor another VDC, and its
`resources` are enforced by the kernel. These run real workloads as real unprivileged uids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from shanzhi.providers import InstanceRequest
from shanzhi.providers.local import LocalProvider
from shanzhi.providers.sandbox import UID_BASE, UID_COUNT, Cgroups, Sandbox
from tests.providers.test_local import get, pid_of, provider, wait_until, workload

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the sandbox needs root (CI runs as root)")

PROBE = textwrap.dedent(
    """
    import json, os, sys
    targets = json.loads(sys.argv[1])
    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "env": sorted(os.environ),
           "cwd": os.getcwd(), "procs": sum(1 for p in os.listdir("/proc") if p.isdigit())}
    out["no_new_privs"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
    for name, path in targets.items():
        try:
            if os.path.isdir(path):
                out[name] = "listed " + ",".join(sorted(os.listdir(path)))
            else:
                out[name] = "read %d bytes" % len(open(path, "rb").read())
        except OSError as e:
            out[name] = "refused: " + e.strerror
    print("PROBE " + json.dumps(out), flush=True)
    import time; time.sleep(120)
    """
)


def req(
    name: str, command: tuple[str, ...], *, vdc: str = "gz/health", cpu: int = 500, memory: int = 2**28
) -> InstanceRequest:
    return InstanceRequest(
        name=name, app="a", component="c", vdc=vdc, host="node-0", cpu=cpu, memory=memory,
        command=command, env={"GREETING": "hi"}, ports=(("http", 8080),),
    )  # fmt: skip


def log_of(data_dir: Path, name: str) -> str:
    return (data_dir / "clouds" / "loc" / "instances" / name / "log").read_text(errors="replace")


def probe_result(data_dir: Path, name: str) -> dict[str, object]:
    assert wait_until(lambda: "PROBE " in log_of(data_dir, name), 20), log_of(data_dir, name)
    line = next(x for x in log_of(data_dir, name).splitlines() if x.startswith("PROBE "))
    return dict(json.loads(line[len("PROBE ") :]))


def platform_files(data_dir: Path) -> None:
    """What the bootstrap leaves in a data dir, deliberately readable (0755/0644): the
    sandbox must hold even where the file modes do not."""
    for name in ("admin.token", "security.token", "audit.token", "ledger.key", "platform.key", "shanzhi.db"):
        (data_dir / name).write_text(f"secret {name}\n")
        os.chmod(data_dir / name, 0o644)
    os.chmod(data_dir, 0o755)
    for parent in data_dir.parents:  # pytest's tmp root is 0700: open the way so only the sandbox stops us
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o005)


@root_only
def test_the_reported_attack_finds_nothing_of_the_platform(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The review's attack: a workload serving the file system, then reading the platform's
    tokens, keys and database, the server's environment, and another VDC's directory."""
    platform_files(data_dir)
    monkeypatch.setenv("SHANZHI_OIDC_CLIENT_SECRET", "the-server-secret")
    p = provider(data_dir)
    other = p.create_instance(req("other-1", ("sleep", "120"), vdc="gz/transport"))
    other_dir = json.loads((data_dir / "clouds/loc/instances/other-1/state.json").read_text())["workdir"]
    (Path(other_dir) / "records.csv").write_text("transport's data\n")
    targets = {
        "data_dir": str(data_dir),
        **{n: str(data_dir / n) for n in ("admin.token", "ledger.key", "platform.key", "shanzhi.db")},
        "server_environ": f"/proc/{os.getpid()}/environ",
        "other_vdc_dir": other_dir,
        "other_vdc_file": str(Path(other_dir) / "records.csv"),
        "state_dir": str(data_dir / "clouds" / "loc"),
    }
    p.create_instance(req("probe-1", ("python3", "-c", PROBE, json.dumps(targets))))
    out = probe_result(data_dir, "probe-1")
    for name in targets:
        assert str(out[name]).startswith("refused"), (name, out[name])
    assert out["data_dir"] == "refused: Permission denied"  # 0755 here: the root-only tmpfs over it says no
    uid = out["uid"]
    assert isinstance(uid, int) and UID_BASE <= uid < UID_BASE + UID_COUNT and uid != os.geteuid()
    assert out["gid"] == uid and out["groups"] == []
    assert out["no_new_privs"] == "1"
    assert isinstance(out["procs"], int) and out["procs"] <= 4  # its own PID namespace: not the server
    allowed = {"PATH", "HOME", "LANG", "PORT", "PORT_HTTP", "GREETING", "PWD", "SHLVL", "_"}
    allowed |= {"SHANZHI_INSTANCE", "SHANZHI_APP", "SHANZHI_COMPONENT", "SHANZHI_VDC"}
    assert set(out["env"]) <= allowed, set(out["env"]) - allowed  # type: ignore[arg-type]
    assert str(data_dir) not in str(out["cwd"])
    # and serving the whole file system, as in the review, shows no platform file either
    web = p.create_instance(req("web-1", ("python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1", "-d", "/")))
    assert web.endpoint and get(web.endpoint).status_code == 200
    for name in ("admin.token", "shanzhi.db"):
        r = httpx.get(f"http://{web.endpoint}{data_dir / name}", timeout=5)
        assert r.status_code == 404 and "secret" not in r.text
    # the other VDC's workload runs as another uid
    assert workload(other.detail, "sleep").uids().real not in (uid, 0)


@root_only
def test_vdcs_keep_their_uid_and_never_share_one(data_dir: Path) -> None:
    box = Sandbox.for_data_dir(data_dir)
    a, b = box.uid_for("gz/health"), box.uid_for("gz/transport")
    assert a != b and box.uid_for("gz/health") == a
    assert Sandbox.for_data_dir(data_dir).uid_for("gz/transport") == b  # kept across restarts
    assert oct(os.stat(data_dir / "workload-uids.json").st_mode & 0o777) == "0o600"


@root_only
def test_memory_past_the_limit_is_killed_by_the_kernel_and_neighbours_live(data_dir: Path) -> None:
    hog = ("python3", "-c", "b = bytearray(300 * 2**20); print('allocated', flush=True); import time; time.sleep(120)")
    p = provider(data_dir)
    small = p.create_instance(req("small-1", hog, memory=64 * 2**20))
    big = p.create_instance(req("big-1", hog, memory=512 * 2**20))  # the same program, room enough
    assert wait_until(lambda: {o.name: o.state for o in p.list_instances()}["small-1"] == "exited", 30)
    assert wait_until(lambda: "allocated" in log_of(data_dir, "big-1"), 30)
    states = {o.name: o.state for o in p.list_instances()}
    assert states == {"small-1": "exited", "big-1": "running"}
    assert "allocated" not in log_of(data_dir, "small-1")
    assert workload(big.detail, "python3").is_running()
    # started again under the same name (as the reconciler heals it), it gets a fresh cgroup
    again = p.create_instance(req("small-1", ("sleep", "60"), memory=64 * 2**20))
    assert again.state == "running" and again.detail != small.detail


@root_only
def test_cpu_quota_holds_a_busy_loop(data_dir: Path) -> None:
    p = provider(data_dir)
    busy = ("python3", "-c", "while True: pass")
    limited = p.create_instance(req("slow-1", busy, cpu=100))
    proc = workload(limited.detail, "python3")
    before = sum(proc.cpu_times()[:2])
    time.sleep(2)
    used = sum(proc.cpu_times()[:2]) - before
    assert used < 0.6, f"0.1 cpu used {used:.2f} s of cpu in 2 s"  # unlimited: ~2 s


@root_only
def test_pids_limit_stops_a_fork_bomb(data_dir: Path) -> None:
    bomb = textwrap.dedent(
        """
        import subprocess
        n = 0
        for _ in range(40):
            try:
                subprocess.Popen(["sleep", "60"]); n += 1
            except OSError:
                pass
        print("STARTED", n, flush=True)
        import time; time.sleep(60)
        """
    )
    p = LocalProvider("loc", LocalProvider.validate_options({"pids": 10}), data_dir / "clouds" / "loc")
    p.create_instance(req("bomb-1", ("python3", "-c", bomb)))
    assert wait_until(lambda: "STARTED" in log_of(data_dir, "bomb-1"), 20)
    started = int(log_of(data_dir, "bomb-1").split("STARTED")[1].split()[0])
    assert started < 10


@root_only
def test_delete_leaves_no_process_directory_or_cgroup(data_dir: Path) -> None:
    p = provider(data_dir)
    obs = p.create_instance(req("w-1", ("sh", "-c", "sleep 100 & sleep 100 & wait")))
    st = json.loads((data_dir / "clouds/loc/instances/w-1/state.json").read_text())
    cg = p.sandbox.cgroups
    assert cg is not None and cg.member_pids(p._cgroup("w-1"))
    tree = [psutil.Process(pid_of(obs.detail)), *psutil.Process(pid_of(obs.detail)).children(recursive=True)]
    p.delete_instance("w-1")
    assert all(not x.is_running() or x.status() == psutil.STATUS_ZOMBIE for x in tree)
    assert not Path(st["workdir"]).exists()
    assert not any(d.exists() for d in cg._dirs(p._cgroup("w-1")).values())


def test_cgroup_v2_files(tmp_path: Path) -> None:
    """The v2 layout, written into a stand-in tree (this project's CI machines have v1)."""
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    cg = Cgroups("shanzhi/abc", fs=tmp_path)
    assert cg.version() == 2
    procs = cg.create("loc.web-1", cpu_millis=250, memory=2**27, pids=64)
    d = tmp_path / "shanzhi/abc/loc.web-1"
    assert procs == [d / "cgroup.procs"]
    assert (d / "cpu.max").read_text() == "25000 100000"
    assert (d / "memory.max").read_text() == str(2**27)
    assert (d / "pids.max").read_text() == "64"
    for node in (tmp_path, tmp_path / "shanzhi", tmp_path / "shanzhi/abc"):
        assert (node / "cgroup.subtree_control").read_text() == "+cpu +memory +pids"
    assert Cgroups("x", fs=tmp_path / "nothing").version() is None
    # a background cgroup: the lowest CPU weight, found again by its name's start
    assert cg.background("copy-r7") == tmp_path / "shanzhi/abc/copy-r7/cgroup.procs"
    assert (tmp_path / "shanzhi/abc/copy-r7/cpu.weight").read_text() == "1"
    assert cg.named("copy-r") == ["copy-r7"]


@root_only
def test_a_background_cgroup_on_this_machine(tmp_path: Path) -> None:
    """cgroup v1 here: `cpu.shares` 2, listed by its name's start, and removed by the offline
    cleanup of restored copies (a copy left by a crash leaves no cgroup behind)."""
    from shanzhi.controllers.dr_backup import stop_restores

    cg = Sandbox.for_data_dir(tmp_path).cgroups
    if cg is None or cg.version() != 1:
        pytest.skip("no writable cgroup v1 cpu controller")
    procs = cg.background("copy-r3")
    try:
        assert (procs.parent / "cpu.shares").read_text().strip() == "2"
        assert cg.named("copy-r") == ["copy-r3"] and cg.named("other") == []
        stop_restores(tmp_path, remove=True)
        assert not procs.parent.exists() and cg.named("copy-r") == []
    finally:
        cg.remove("copy-r3")


def test_without_root_workloads_run_as_the_server_and_it_says_so(tmp_path: Path) -> None:
    """Run a provider as an ordinary user: it still works, and says tenants are not isolated."""
    if os.geteuid() == 0:
        os.chmod(tmp_path, 0o777)
        for parent in tmp_path.parents:
            if parent == Path("/tmp"):
                break
            os.chmod(parent, os.stat(parent).st_mode | 0o005)
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        probe = [*prefix, sys.executable, "-c", f"import sys; sys.path[:0] = {sys.path!r}; import shanzhi"]
        if subprocess.run(probe, capture_output=True, check=False).returncode != 0:
            pytest.skip("this checkout or its virtualenv is not readable by an unprivileged user (uid 65534)")
    else:
        prefix = []
    script = textwrap.dedent(
        f"""
        import json, os, sys, time
        sys.path[:0] = {sys.path!r}
        from pathlib import Path
        from shanzhi.providers import InstanceRequest
        from shanzhi.providers.local import LocalProvider, stop_all_under
        d = Path({str(tmp_path)!r}) / "data"
        p = LocalProvider("loc", LocalProvider.validate_options({{}}), d / "clouds" / "loc")
        r = InstanceRequest(name="w-1", app="a", component="c", vdc="gz", host="node-0", cpu=100,
                            memory=2**26, command=("sleep", "30"))
        obs = p.create_instance(r)
        import psutil
        child = psutil.Process(int(obs.detail.split()[1]))
        print(json.dumps({{"status": p.status().message, "uid": child.uids().real, "me": os.geteuid(),
                          "state": obs.state}}))
        stop_all_under(d / "clouds", remove=True)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "SHANZHI_WORKLOAD_ROOT"}
    out = subprocess.run(
        [*prefix, sys.executable, "-c", script], check=False, capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["state"] == "running" and res["uid"] == res["me"] != 0
    assert "NOT isolated from the platform" in res["status"]


@root_only
def test_memory_below_what_a_process_needs_is_refused(data_dir: Path) -> None:
    from shanzhi.domain.errors import InvalidInput

    with pytest.raises(InvalidInput, match="at least 8Mi"):
        provider(data_dir).create_instance(req("tiny-1", ("sleep", "1"), memory=2**20))
    assert provider(data_dir).list_instances() == []


def _fresh_workload_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A workload root (`<top>/not/yet`) that does not exist yet, under a top others may enter."""
    top = tmp_path / "wl"
    top.mkdir(mode=0o755)
    for parent in top.parents:
        if parent == Path("/tmp"):
            break
        os.chmod(parent, os.stat(parent).st_mode | 0o001)
    monkeypatch.setenv("SHANZHI_WORKLOAD_ROOT", str(top / "not" / "yet"))
    return top


@root_only
def test_a_fresh_workload_root_made_under_the_servers_umask_is_traversable(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` runs with umask 077: the directories it makes on the way to a workload's own must
    still let the workload's uid through (0711), or nothing could start on a fresh machine."""
    top = _fresh_workload_root(tmp_path, monkeypatch)
    old = os.umask(0o077)
    try:
        p = provider(data_dir)
        p.create_instance(req("w-1", ("python3", "-c", PROBE, "{}")))
        out = probe_result(data_dir, "w-1")
    finally:
        os.umask(old)
    assert str(out["cwd"]).startswith(str(top / "not" / "yet"))
    assert oct(os.stat(top / "not").st_mode & 0o777) == "0o711"


@root_only
def test_a_dr_archive_made_first_leaves_the_workload_root_traversable(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A managed database's WAL archive is made before its first member starts: on a fresh
    machine it is the first thing under the workload root, and the directories made on the way
    must let workload uids through like a workload's own (they were left 0700, and no workload
    could start after it)."""
    from shanzhi.controllers.dr_backup import prepare_archive

    top = _fresh_workload_root(tmp_path, monkeypatch)
    old = os.umask(0o077)
    try:
        archive = prepare_archive(data_dir, "gz/tax", 1, "db")
        p = provider(data_dir)
        p.create_instance(req("w-1", ("python3", "-c", PROBE, "{}")))
        out = probe_result(data_dir, "w-1")
    finally:
        os.umask(old)
    assert str(archive).startswith(str(top / "not" / "yet"))
    assert str(out["cwd"]).startswith(str(top / "not" / "yet"))
    assert oct(os.stat(top / "not").st_mode & 0o777) == "0o711"


@root_only
def test_a_workload_has_a_name_and_the_cloud_address_and_volume_are_substituted(data_dir: Path) -> None:
    """Programs that look their user up (initdb, ssh) need a passwd entry: the namespace gets
    one for its uid only, the machine's own /etc/passwd stays as it was. `${ADDRESS}` is the
    cloud's loopback address and `${VOLUME_<NAME>}` the volume's directory."""
    from shanzhi.domain.errors import InvalidInput
    from shanzhi.providers.base import VolumeRequest

    before = Path("/etc/passwd").read_text()
    p = LocalProvider("loc", LocalProvider.validate_options({"address": "127.0.3.7"}), data_dir / "clouds" / "loc")
    show = ("sh", "-c", 'echo "WHO $(id -un) $(id -gn) AT ${ADDRESS}:${PORT} IN ${VOLUME_DATA}"; sleep 60')
    r = req("named-1", show)
    r = InstanceRequest(**{**r.__dict__, "volumes": (VolumeRequest("k1", "data", 2**20, "/data"),)})
    obs = p.create_instance(r)
    assert wait_until(lambda: "WHO " in log_of(data_dir, "named-1"), 20), log_of(data_dir, "named-1")
    line = next(x for x in log_of(data_dir, "named-1").splitlines() if x.startswith("WHO "))
    uid = Sandbox.for_data_dir(data_dir).uid_for("gz/health")
    _, user, group, _, at, _, volume = line.split()
    assert (user, group) == (f"shz-{uid}", f"shz-{uid}")
    assert at == f"127.0.3.7:{obs.ports['http']}" and obs.endpoint == at
    assert volume.endswith("/volumes/k1") and Path(volume).is_dir() and os.stat(volume).st_uid == uid
    assert Path("/etc/passwd").read_text() == before
    with pytest.raises(InvalidInput, match="loopback"):
        LocalProvider.validate_options({"address": "10.0.0.1"})


def test_a_replica_with_a_volume_keeps_its_ports_when_it_comes_back(data_dir: Path) -> None:
    """Its endpoint follows its disk: clients' connection strings stay right."""
    from shanzhi.providers.base import VolumeRequest

    p = LocalProvider("loc", LocalProvider.validate_options({}), data_dir / "clouds" / "loc")
    vol = (VolumeRequest("k-ports", "data", 2**20, "/data"),)
    first = p.create_instance(InstanceRequest(**{**req("db-1", ("sleep", "60")).__dict__, "volumes": vol}))
    p.delete_instance("db-1")
    again = p.create_instance(InstanceRequest(**{**req("db-2", ("sleep", "60")).__dict__, "volumes": vol}))
    other = p.create_instance(req("web-1", ("sleep", "60")))
    assert again.ports == first.ports and other.ports != first.ports
    remembered = data_dir / "clouds" / "loc" / "volume-ports" / "k-ports.json"
    assert json.loads(remembered.read_text()) == first.ports
    p.delete_instance("db-2")
    p.delete_volume("k-ports")  # the disk gone, its ports are forgotten
    assert not remembered.exists()
