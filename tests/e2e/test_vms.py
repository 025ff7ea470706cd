"""End to end with real virtual machines: libvirtd, QEMU (TCG here), the tiny image, a real server
and the CLI. A VM app with a volume boots and answers its health check; a file written to the
volume through the service survives a killed qemu (healed, same disk) and a server restart
(adopted, not rebooted); deleting the app leaves no domain and no disk behind."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shanzhi.providers.sandbox import server_id
from tests.e2e.harness import Cli, Server, stop_everything, wait_for
from tests.vm import require_vm, tiny_image

pytestmark = pytest.mark.e2e
__all__ = ["tiny_image"]

APP = """
apiVersion: shanzhi.io/v1
kind: App
metadata: {name: vmweb, vdc: gz}
spec:
  components:
    - name: web
      replicas: 2
      image: tiny
      resources: {cpu: 0.5, memory: 192Mi}
      ports: [{name: http, port: 8080}]
      health: {http: {path: /, port: http}}
      volumes: [{name: data, size: 64Mi, mountPath: /data}]
      env: {GREETING: hello from the seed}
  placement:
    clouds: {names: [vm-a, vm-b]}
"""


def our_domains(data: Path) -> list[str]:
    import libvirt  # type: ignore[import-untyped]

    conn = libvirt.open("qemu:///system")
    try:
        return sorted(d.name() for d in conn.listAllDomains() if d.name().startswith(f"shz-{server_id(data)}-"))
    finally:
        conn.close()


def pool_volumes(data: Path, cloud: str) -> list[str]:
    """What the cloud's libvirt storage pool lists (refreshed); nothing when it has no pool."""
    import libvirt  # type: ignore[import-untyped]

    conn = libvirt.open("qemu:///system")
    try:
        pool = conn.storagePoolLookupByName(f"shz-{server_id(data)}-{cloud}")
        pool.refresh(0)
        return sorted(pool.listVolumes())
    except libvirt.libvirtError:
        return []
    finally:
        conn.close()


@pytest.fixture
def vms(tmp_path: Path, tiny_image: str) -> Iterator[tuple[Server, Cli]]:
    require_vm()
    data = tmp_path / "data"
    data.mkdir()
    server = Server(data)
    try:
        cli = Cli(server)
        for cloud in ("vm-a", "vm-b"):
            cli.ok(
                "cloud",
                "add",
                cloud,
                "--kind",
                "libvirt",
                "--site",
                f"s-{cloud}",
                "--region",
                "gz",
                "--option",
                "stop_timeout=1",
                "--option",
                "cpu=4",
                "--option",
                "memory=4Gi",
            )
        cli.ok("vdc", "create", "gz", "--quota", "cpu=4,memory=4Gi,instances=10")
        yield server, cli
    finally:
        stop_everything(data, server)


def running(cli: Cli) -> dict[str, dict[str, object]]:
    return {i["name"]: i for i in cli.json("instance", "list", "--app", "vmweb") if i["state"] == "running"}


def qemu_pid(cli: Cli, name: str) -> int | None:
    """The qemu process of an instance's domain (libvirt's pid file), None when it is not running."""
    clouds = [i["cloud"] for i in cli.json("instance", "list", "--app", "vmweb") if i["name"] == name]
    if not clouds:
        return None
    domain = f"shz-{server_id(cli.server.data_dir)}-{clouds[0]}-{name}"
    try:
        pid = int(Path(f"/run/libvirt/qemu/{domain}.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def test_a_vm_app_boots_heals_is_adopted_and_leaves_nothing_behind(vms: tuple[Server, Cli], tmp_path: Path) -> None:
    server, cli = vms
    images = cli.json("image", "list")
    assert "tiny" in [i["name"] for i in images]
    spec = tmp_path / "vmweb.yaml"
    spec.write_text(APP)
    cli.ok("apply", "-f", str(spec), "--wait", "--timeout", "240")
    up = running(cli)
    assert len(up) == 2
    for inst in up.values():
        r = httpx.get(f"http://{inst['endpoint']}/", timeout=5)
        assert r.status_code == 200 and f"shanzhi tiny vm {inst['name']}" in r.text
        seeded = httpx.get(f"http://{inst['endpoint']}/env.txt", timeout=5).text  # its cloud-init seed
        assert f"SHANZHI_NAME={inst['name']}\n" in seeded and "GREETING='hello from the seed'\n" in seeded
    health = cli.json("cloud", "get", "vm-a")["health_message"]
    assert "TCG" in health or "KVM" in health  # how the VMs are accelerated is said
    # what libvirt says of it: its domain, qemu process, disks (the volume, then the seed)
    said = cli.json("instance", "get", sorted(up)[0])["provider"]
    assert said["domain"].startswith(f"shz-{server_id(server.data_dir)}-") and isinstance(said["qemu_pid"], int)
    assert said["generation"] == "1"  # the metadata names the spec generation it was made for
    assert [(d["device"], d["format"]) for d in said["disks"]] == [("vda", "qcow2"), ("vdb", "raw")]
    assert said["disks"][1]["file"].endswith("/seed.iso")
    # the console is the instance's log
    first = sorted(up)[0]
    wait_for(lambda: "serving on ports 8080" in cli.ok("instance", "logs", first), 180, "console output")
    # write through the service onto the volume of the first replica
    endpoint = up[first]["endpoint"]
    assert httpx.get(f"http://{endpoint}/cgi-bin/put?note=kept-{first}", timeout=10).text.strip() == "stored note"
    vols = cli.json("volume", "list", "--app", "vmweb")
    assert sorted((v["ordinal"], v["state"]) for v in vols) == [(0, "attached"), (1, "attached")]
    root = Path("/var/lib/shanzhi/workloads") / server_id(server.data_dir)
    disks = sorted(root.glob("vm-*/volumes/*.qcow2"))
    assert sorted(d.name for d in disks) == ["gz_vmweb_web-0_data.qcow2", "gz_vmweb_web-1_data.qcow2"]
    # kill one VM's qemu: the server starts the same domain again, with the same disk
    pid = qemu_pid(cli, first)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: first in running(cli) and qemu_pid(cli, first) not in (None, pid), 240, "the killed VM healed")
    assert cli.json("app", "get", "vmweb")["status"] == "Ready"

    def note() -> str:
        try:
            return httpx.get(f"http://{running(cli)[first]['endpoint']}/data/note", timeout=5).text.strip()
        except (httpx.HTTPError, KeyError):
            return ""

    wait_for(lambda: note() == f"kept-{first}", 180, "the volume's file after the heal")
    assert [i["restarts"] for i in cli.json("instance", "list", "--app", "vmweb") if i["name"] == first] == [1]
    # a restarted server adopts the VMs: same qemu processes, nothing rebooted
    pids = {n: qemu_pid(cli, n) for n in running(cli)}
    server.kill()
    again = Server(server.data_dir)
    cli.server = again
    again.passes_after(3, 60)
    assert {n: qemu_pid(cli, n) for n in running(cli)} == pids
    assert len(our_domains(server.data_dir)) == 2
    assert note() == f"kept-{first}"
    # snapshot, change, restore: the volume goes back (its replica stopped meanwhile, said how long)
    (vol,) = [v for v in cli.json("volume", "list", "--app", "vmweb") if v["instance"] == first]
    taken = cli.json("volume", "snapshot", vol["key"], "before")
    assert taken["outcome"] == "created" and taken["instance"] == first and taken["downtime_seconds"] > 0
    assert [(x["name"], x["kind"]) for x in cli.json("volume", "snapshots", vol["key"])] == [("before", "external")]
    here = str(vol["cloud"])
    assert pool_volumes(server.data_dir, here) == [f"{vol['key']}.qcow2", f"{vol['key']}@before.qcow2"]
    wait_for(lambda: note() == f"kept-{first}", 120, "the replica back after the snapshot")
    httpx.get(f"http://{running(cli)[first]['endpoint']}/cgi-bin/put?note=changed", timeout=10)
    assert note() == "changed"
    assert cli.json("volume", "restore", vol["key"], "before")["outcome"] == "restored"
    wait_for(lambda: note() == f"kept-{first}", 120, "the restored volume")
    r = cli.run("volume", "restore", vol["key"], "nope")
    assert r.returncode == 1 and "has no snapshot 'nope'" in r.stderr
    # cold migration to the other cloud: stopped, its disk copied, started there, the source deleted
    source = running(cli)[first]["cloud"]
    other = "vm-b" if source == "vm-a" else "vm-a"
    cli.ok("app", "move", first, "--to", other)

    def moved() -> str | None:
        now = [i for i in running(cli).values() if i["cloud"] == other and i["name"] != first]
        mine = [i for i in now if i["name"] not in pids]
        return str(mine[0]["name"]) if mine and len(running(cli)) == 2 and first not in running(cli) else None

    successor = wait_for(moved, 240, "the replica moved")
    first = successor
    wait_for(lambda: note() == f"kept-{vol['instance']}", 120, "the volume's file on the other cloud")
    events = [e for e in cli.json("events", "--app", "vmweb", "--limit", "500") if e["reason"] == "Migrated"]
    assert len(events) == 1 and f"{source} -> {other}" in events[0]["message"] and "; down " in events[0]["message"]
    wait_for(lambda: not (root / source / "volumes" / f"{vol['key']}.qcow2").exists(), 180, "the source disk deleted")
    assert (root / other / "volumes" / f"{vol['key']}.qcow2").exists()
    disks = sorted(root.glob("vm-*/volumes/*.qcow2"))
    # deleting the app leaves no domain behind
    cli.ok("app", "delete", "vmweb", "--wait", "--timeout", "120")
    assert our_domains(server.data_dir) == []
    wait_for(lambda: cli.json("volume", "list") == [], 180, "the volumes reclaimed")
    assert not any(d.exists() for d in disks)
    assert pool_volumes(again.data_dir, "vm-a") == [] and pool_volumes(again.data_dir, "vm-b") == []
    again.kill()
