"""The local provider starts real processes; these tests talk to them over loopback."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import httpx
import psutil
import pytest

from shanzhi.domain.errors import CloudUnavailable, InvalidInput
from shanzhi.providers import InstanceRequest, load_provider
from shanzhi.providers.local import LocalProvider, stop_all_under

SERVE = ("python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1")


def provider(data_dir: Path, **opts: object) -> LocalProvider:
    p = load_provider("local", "loc", LocalProvider.validate_options(opts), data_dir / "clouds" / "loc")
    assert isinstance(p, LocalProvider)
    return p


def request(
    name: str = "web-1", command: tuple[str, ...] = SERVE, env: dict[str, str] | None = None
) -> InstanceRequest:
    return InstanceRequest(
        name=name,
        app="hello",
        component="web",
        vdc="gz",
        host="node-0",
        cpu=100,
        memory=2**26,
        command=command,
        env=env or {},
        ports=(("http", 8080),),
    )


def pid_of(detail: str) -> int:
    return int(detail.split()[1])


def workload(detail: str, program: str, timeout: float = 15) -> psutil.Process:
    """The workload's own process: the tracked pid, or (in a PID namespace) its last descendant.

    Just after start the chain (unshare, the namespace's shell, setpriv) is still exec'ing and
    forking, so a link can vanish under us: look again until the leaf runs `program` (its name, e.g. "python3").
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            proc = psutil.Process(pid_of(detail))
            while children := proc.children():
                proc = children[0]
            if proc.name() == program:  # not yet the shell that will exec it
                return proc
        except psutil.NoSuchProcess:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no process running {program!r} under {detail}")
        time.sleep(0.05)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_until(cond, timeout: float = 10) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def get(endpoint: str) -> httpx.Response:
    for _ in range(200):
        try:
            return httpx.get(f"http://{endpoint}/", timeout=1)
        except httpx.HTTPError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answers on {endpoint}")


def test_options_are_validated_and_defaulted() -> None:
    opts = LocalProvider.validate_options({"cpu": "2", "memory": "1Gi", "hosts": 2})
    assert (opts["cpu"], opts["memory"], opts["hosts"], opts["instances"]) == (2000, 2**30, 2, 50)
    with pytest.raises(InvalidInput, match="unknown option 'gpus'"):
        LocalProvider.validate_options({"gpus": 1})
    with pytest.raises(InvalidInput, match="option hosts"):
        LocalProvider.validate_options({"hosts": 0})


def test_hosts_split_capacity(data_dir: Path) -> None:
    hs = provider(data_dir, cpu=4, memory="4Gi", instances=10, hosts=2).hosts()
    assert [(h.name, h.cpu, h.memory, h.max_instances) for h in hs] == [
        ("node-0", 2000, 2 * 2**30, 5),
        ("node-1", 2000, 2 * 2**30, 5),
    ]


def test_instance_is_a_real_process_serving_on_its_port(data_dir: Path) -> None:
    p = provider(data_dir)
    obs = p.create_instance(request(env={"GREETING": "port=${PORT}"}))
    assert obs.state == "running" and obs.endpoint is not None
    assert get(obs.endpoint).status_code == 200
    statedir = data_dir / "clouds" / "loc" / "instances" / "web-1"
    assert (statedir / "log").exists()
    workdir = Path(json.loads((statedir / "state.json").read_text())["workdir"])
    assert data_dir not in workdir.parents  # never inside the data directory
    proc = workload(obs.detail, "python3")
    assert "http.server" in proc.cmdline()
    env = proc.environ()
    assert env["GREETING"] == f"port={obs.ports['http']}"
    assert env["SHANZHI_INSTANCE"] == "web-1"
    assert env["PORT_HTTP"] == env["PORT"] == str(obs.ports["http"])
    assert proc.cwd() == str(workdir)
    # its own session, and not our child: it outlives us and a signal to our group never reaches it
    assert os.getpgid(proc.pid) != os.getpgid(0)
    assert os.getsid(proc.pid) != os.getsid(0)
    assert proc.ppid() != os.getpid()


def test_create_is_idempotent_by_name(data_dir: Path) -> None:
    p = provider(data_dir)
    a = p.create_instance(request())
    b = p.create_instance(request())
    assert a.endpoint == b.endpoint and a.detail == b.detail
    assert len(p.list_instances()) == 1


def test_a_new_provider_object_adopts_running_processes(data_dir: Path) -> None:
    a = provider(data_dir).create_instance(request())
    (seen,) = provider(data_dir).list_instances()  # as after a restart of Shanzhi
    assert (seen.name, seen.state, seen.endpoint, seen.detail) == ("web-1", "running", a.endpoint, a.detail)


def test_exit_is_observed_and_delete_stops_the_process(data_dir: Path) -> None:
    p = provider(data_dir)
    obs = p.create_instance(request())
    os.kill(pid_of(obs.detail), signal.SIGKILL)
    assert wait_until(lambda: p.list_instances()[0].state == "exited")
    second = p.create_instance(request())  # same name: restarts in place
    assert second.state == "running" and second.detail != obs.detail
    p.delete_instance("web-1")
    assert p.list_instances() == []
    assert gone(pid_of(second.detail))
    p.delete_instance("web-1")  # idempotent


def test_a_recycled_pid_is_not_mistaken_for_ours(data_dir: Path) -> None:
    p = provider(data_dir)
    p.create_instance(request())
    state_file = data_dir / "clouds" / "loc" / "instances" / "web-1" / "state.json"
    state = json.loads(state_file.read_text())
    p.delete_instance("web-1")
    state_file.parent.mkdir(parents=True)
    state["pid"] = os.getpid()  # a live process, but not the one that was started
    state_file.write_text(json.dumps(state))
    (seen,) = p.list_instances()
    assert seen.state == "exited"


def test_the_start_gate_leaves_no_process_if_the_starter_dies(tmp_path: Path) -> None:
    """Kill the parent between spawning and releasing the gate: the workload never runs."""
    from shanzhi.providers.local import _GATE

    marker = tmp_path / "ran"
    code = (
        "import subprocess, os\n"
        f"p = subprocess.Popen(['/bin/sh', '-c', {_GATE!r}, 'sh', 'touch', {str(marker)!r}],"
        " stdin=subprocess.PIPE, start_new_session=True)\n"
        "print(p.pid, flush=True)\n"
        "os._exit(0)\n"  # dies before writing 'go'
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert wait_until(lambda: gone(int(out.stdout)))
    assert not marker.exists()


def test_failure_injection_stops_processes_and_refuses_work(data_dir: Path) -> None:
    p = provider(data_dir)
    pid = pid_of(p.create_instance(request()).detail)
    p.inject_failure()
    assert not p.status().healthy
    with pytest.raises(CloudUnavailable):
        p.list_instances()
    with pytest.raises(CloudUnavailable):
        p.create_instance(request("web-2"))
    assert gone(pid)
    p.recover()
    assert [o.state for o in p.list_instances()] == ["exited"]


def test_a_component_without_a_command_is_refused(data_dir: Path) -> None:
    with pytest.raises(InvalidInput, match=r"no run\.command"):
        provider(data_dir).create_instance(request(command=()))


def test_stop_all_under_stops_everything(data_dir: Path) -> None:
    p = provider(data_dir)
    pids = [pid_of(p.create_instance(request(f"w-{i}")).detail) for i in range(3)]
    assert stop_all_under(data_dir / "clouds") == 3
    assert all(gone(pid) for pid in pids)


def test_fixed_ports_are_given_exactly_refused_when_taken_and_kept_while_their_owner_is_down(data_dir: Path) -> None:
    from shanzhi.domain.errors import Conflict
    from shanzhi.providers.base import free_port

    p = provider(data_dir)
    port = free_port(set())
    fixed = replace(request("etcd.a"), ports=(("http", port),), fixed_ports=True)
    obs = p.create_instance(fixed)
    assert obs.ports == {"http": port} and get(obs.endpoint or "").status_code == 200
    with pytest.raises(Conflict, match=rf"port {port} \(http\) on 127.0.0.1 belongs to another instance of cloud loc"):
        p.create_instance(replace(fixed, name="etcd.b"))
    os.kill(pid_of(obs.detail), signal.SIGKILL)  # its owner down: the port stays its own
    assert wait_until(lambda: p.list_instances()[0].state == "exited")
    others = [p.create_instance(request(f"web-{i}")) for i in range(20)]
    assert all(port not in o.ports.values() for o in others)
    with pytest.raises(Conflict, match="belongs to another instance"):
        p.create_instance(replace(fixed, name="etcd.b"))
    assert p.create_instance(fixed).ports == {"http": port}  # made again where its peers know it
    with socket.socket() as held:  # a port some other process of the machine listens on
        held.bind(("127.0.0.1", 0))
        held.listen()
        busy = held.getsockname()[1]
        with pytest.raises(Conflict, match=rf"port {busy} \(http\) on 127.0.0.1 is in use by a process outside"):
            p.create_instance(replace(fixed, name="etcd.c", ports=(("http", busy),)))
    assert {i.name for i in p.list_instances()} == {"etcd.a", *(f"web-{i}" for i in range(20))}


def test_a_volume_is_a_directory_that_outlives_the_process(data_dir: Path) -> None:
    from shanzhi.providers import VolumeRequest

    p = provider(data_dir)
    vol = VolumeRequest("gz_hello_web-0_data", "data", 2**20, "/data")
    writer = ("/bin/sh", "-c", 'echo kept >> "$SHANZHI_VOLUME_DATA/f"; sleep 60')
    req = InstanceRequest(
        name="w-1",
        app="hello",
        component="web",
        vdc="gz",
        host="node-0",
        cpu=100,
        memory=2**26,
        command=writer,
        volumes=(vol,),
    )
    o = p.create_instance(req)
    path = Path(workload(o.detail, "sleep").environ()["SHANZHI_VOLUME_DATA"])
    assert path.name == vol.key and data_dir not in path.parents
    assert wait_until(lambda: (path / "f").exists() and (path / "f").read_text() == "kept\n")
    if os.geteuid() == 0:  # only its VDC's uid enters it
        st = path.stat()
        assert st.st_mode & 0o777 == 0o700 and st.st_uid == workload(o.detail, "sleep").uids().real != 0
    p.delete_instance("w-1")
    p.create_instance(req)  # the replica again: the same directory, the file still there
    assert wait_until(lambda: (path / "f").read_text() == "kept\nkept\n")
    p.delete_instance("w-1")
    # a move: the directory is copied from where it was
    other = load_provider("local", "loc2", LocalProvider.validate_options({}), data_dir / "clouds" / "loc2")
    moved = other.create_instance(replace(req, volumes=(replace(vol, copy_from="loc"),)))
    there = Path(workload(moved.detail, "sleep").environ()["SHANZHI_VOLUME_DATA"])
    assert there != path and wait_until(lambda: (there / "f").read_text() == "kept\nkept\nkept\n")
    p.delete_volume(vol.key)
    assert not path.exists() and there.exists()


def test_superseded_data_is_removed_from_a_volume_never_through_a_link_the_workload_made(data_dir: Path) -> None:
    from shanzhi.providers import VolumeRequest

    p = provider(data_dir)
    vol = VolumeRequest("gz_tax_db-0_data", "data", 2**20, "/data")
    req = replace(request("db-0", ("sleep", "60")), volumes=(vol,))
    o = p.create_instance(req)
    path = Path(workload(o.detail, "sleep").environ()["SHANZHI_VOLUME_DATA"])
    outside = data_dir / "precious"
    outside.mkdir()
    (outside / "f").write_text("keep")
    for d in ("pgdata", "pgdata-p1", "pgdata-p2"):
        (path / d).mkdir()
        (path / d / "PG_VERSION").write_text("15")
    (path / "pgdata-p3").symlink_to(outside)  # put there by the workload, which owns the volume
    (path / "pgdata-p1" / "escape").symlink_to(outside)
    removed = p.remove_from_volume(vol.key, ["pgdata", "pgdata-p1", "pgdata-p3", "pgdata-p9"])
    assert removed == ["pgdata", "pgdata-p1"]  # the link and what is not there: left alone
    assert sorted(x.name for x in path.iterdir() if x.name != "lost+found") == ["pgdata-p2", "pgdata-p3"]
    assert (outside / "f").read_text() == "keep"
    for bad in ("../x", "", ".hidden", "a/b"):
        with pytest.raises(InvalidInput, match="not a top-level entry"):
            p.remove_from_volume(vol.key, [bad])
    assert (path / "pgdata-p2" / "PG_VERSION").exists()


def test_the_inventory_finds_processes_shanzhi_did_not_start_and_adopt_takes_one(data_dir: Path) -> None:
    from shanzhi.domain.errors import Conflict, NotFound
    from tests.e2e.harness import free_port

    p = provider(data_dir)
    mine = p.create_instance(request())
    port = free_port()
    legacy = subprocess.Popen(
        ["python3", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            servers = [r for r in p.inventory() if r.kind == "server"]
            found = [r for r in servers if r.id.startswith(f"pid-{legacy.pid}-")]
            if found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        (item,) = found
        assert not item.managed and item.attrs["ports"] == [port] and "http.server" in item.attrs["command"]
        assert [r.instance for r in servers if r.managed] == ["web-1"]
        # Shanzhi's own workload (whatever its pid in its namespace) is never listed as found
        unmanaged = {int(r.id.split("-")[1]) for r in servers if not r.managed}
        assert workload(mine.detail, "python3").pid not in unmanaged
        obs = p.adopt(item.id, replace(request("legacy-0"), ports=(("p", port),)))
        assert (obs.state, obs.endpoint, pid_of(obs.detail)) == ("running", f"127.0.0.1:{port}", legacy.pid)
        assert p.adopt(item.id, replace(request("legacy-0"), ports=(("p", port),))).name == "legacy-0"
        with pytest.raises(Conflict):
            p.adopt(item.id, request("web-1"))
        with pytest.raises(NotFound):
            p.adopt(f"pid-{legacy.pid}-1", request("legacy-1"))  # a recycled pid is not the process found
        assert not [r for r in p.inventory() if r.id == item.id and r.kind == "server" and not r.managed]
        p.delete_instance("legacy-0")  # the adopted process is stopped by its pid, its directory left alone
        assert legacy.wait(10) is not None
        assert Path("/").exists() and p.list_instances()[0].name == "web-1"
    finally:
        if legacy.poll() is None:
            legacy.kill()
        legacy.wait()


def test_a_volume_holds_no_more_than_its_size(data_dir: Path) -> None:
    """As root with loop devices, a process volume is a file system of its size: writing past it
    fails with ENOSPC (the rest of the machine's disk is not the tenant's); elsewhere the cloud
    says sizes are not enforced."""
    from shanzhi.providers import VolumeRequest, sized

    p = provider(data_dir)
    if sized.unavailable() is not None:
        assert "volume sizes NOT enforced" in p.status().message
        pytest.skip(f"sizes cannot be enforced here: {sized.unavailable()}")
    assert "volume sizes enforced" in p.status().message
    vol = VolumeRequest("gz_hello_db-0_data", "data", 8 * 2**20, "/data")
    fill = 'cd "$SHANZHI_VOLUME_DATA" && dd if=/dev/zero of=big bs=1M count=20 2>err; echo $? > rc; sleep 60'
    req = replace(request(), name="db-1", volumes=(vol,), command=("/bin/sh", "-c", fill))
    o = p.create_instance(req)
    path = Path(workload(o.detail, "sleep").environ()["SHANZHI_VOLUME_DATA"])
    assert wait_until(lambda: (path / "rc").exists() and (path / "rc").read_text().strip() != "")
    assert (path / "rc").read_text().strip() != "0" and "No space left" in (path / "err").read_text()
    assert (path / "big").stat().st_size < 8 * 2**20
    assert sized.mounted(path)
    p.delete_instance("db-1")
    p.delete_volume(vol.key)
    assert not sized.mounted(path) and not path.exists() and not sized.image_of(path).exists()
