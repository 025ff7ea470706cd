"""Real VMs on this machine: how long from create to an answered health check, what one costs,
how many fit, and what a cold migration of a VM with a filled volume costs, side by side with the
floor (the same domain started by libvirt directly, as `virsh define` + `virsh start` would; a
plain copy of the disk) and with `local` processes.

Runs the libvirt provider against qemu:///system (TCG here: KVM is not usable on this machine),
the tiny image (kernel + busybox initramfs, built from local packages). Needs root, libvirtd
and virtlogd running (`virtlogd -d; libvirtd -d`) and `pip install -e '.[vm]'`.

    python bench/vms.py [--quick] [-o results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
from rich.console import Console
from rich.table import Table

from shanzhi.providers import InstanceRequest, load_provider
from shanzhi.providers.libvirt.domain_xml import Domain, Meta
from shanzhi.providers.libvirt.host import Hypervisor
from shanzhi.providers.libvirt.images import ImageStore
from shanzhi.providers.libvirt.provider import LibvirtProvider
from shanzhi.providers.local import LocalProvider, stop_all_under

console = Console(width=150)
MiB = 2**20


def answered(endpoint: str, timeout: float = 300) -> float:
    """Seconds until `endpoint` answers HTTP 200."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if httpx.get(f"http://{endpoint}/", timeout=1).status_code == 200:
                return time.monotonic() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{endpoint} did not answer in {timeout}s")


def at_once(n: int, start_one: Callable[[int], str]) -> list[float]:
    """Start n at the same moment; seconds from the start to each one's first answer."""
    t0 = time.monotonic()
    out: list[float] = [0.0] * n
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            endpoint = start_one(i)
            answered(endpoint)
            out[i] = time.monotonic() - t0
        except BaseException as err:  # reported after the join
            errors.append(err)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def request(i: int, prefix: str, **kw: Any) -> InstanceRequest:
    return InstanceRequest(
        name=f"{prefix}-{i}",
        app="bench",
        component="web",
        vdc="bench",
        host="node-0",
        cpu=500,
        memory=192 * MiB,
        ports=(("http", 8080),),
        **kw,
    )


def migrate(vm: LibvirtProvider, data: Path, mib: int) -> dict[str, float]:
    """A VM whose volume holds `mib` MiB of data, moved cold to a second cloud as the reconciler
    does it: stop, copy the disk (qemu-img convert), start there, wait for its answer."""
    import shutil
    import subprocess

    from shanzhi.providers import VolumeRequest

    there = load_provider("libvirt", "bench2", vm.opts, data / "clouds" / "bench2")
    assert isinstance(there, LibvirtProvider)
    key = f"bench_mig-{mib}_data"
    size = 2 * mib * MiB
    disk = vm._disk(key, size)
    write = ["qemu-io", "-f", "qcow2", "-c", f"write -P 0xab 0 {mib}M", str(disk)]
    subprocess.run(write, check=True, capture_output=True)
    vol = (VolumeRequest(key, "data", size, "/data", None),)
    o = vm.create_instance(request(0, f"mig{mib}", image="tiny", volumes=vol))
    answered(o.endpoint or "")
    floor = time.monotonic()
    shutil.copyfile(disk, disk.with_suffix(".cp"))
    cp = time.monotonic() - floor
    disk.with_suffix(".cp").unlink()
    t0 = time.monotonic()
    vm.delete_instance(o.name)
    c0 = time.monotonic()
    there._disk(key, size, copy_from="bench")
    copy = time.monotonic() - c0
    moved = there.create_instance(request(0, f"mig{mib}", image="tiny", volumes=vol))
    answered(moved.endpoint or "")
    downtime = time.monotonic() - t0
    there.delete_instance(moved.name)
    vm.delete_volume(key)
    there.delete_volume(key)
    return {"mib": mib, "downtime": downtime, "copy": copy, "per_gib": downtime / (mib / 1024), "cp": cp}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 and 3 at once, density 6 (a few minutes)")
    ap.add_argument("-o", "--output", help="write the results as JSON to this file")
    args = ap.parse_args()
    sizes = (1, 3) if args.quick else (1, 5, 10)
    density_target = 6 if args.quick else 24
    image = ImageStore().build_tiny("tiny")
    work = Path(tempfile.mkdtemp(prefix="shanzhi-bench-vms-"))
    data = work / "data"
    data.mkdir()
    opts = LibvirtProvider.validate_options({"stop_timeout": 0, "cpu": 64, "memory": "64Gi", "instances": 100})
    vm = load_provider("libvirt", "bench", opts, data / "clouds" / "bench")
    assert isinstance(vm, LibvirtProvider)
    local = load_provider("local", "benchlocal", LocalProvider.validate_options({}), data / "clouds" / "benchlocal")
    hv = Hypervisor("qemu:///system")
    results: dict[str, Any] = {"accel": vm.accel[1], "image": image.detail, "rows": []}
    serve = ("python3", "-m", "http.server", "${PORT}", "--bind", "127.0.0.1")

    def raw_start(i: int, n: int) -> str:
        """The floor: the same domain document, defined and started by libvirt directly."""
        from shanzhi.providers.base import free_port

        port = free_port(set())
        meta = Meta("raw", "bench", "web", "bench", f"raw{n}-{i}", "node-0", {"http": port}, {"http": 8080})
        dom = Domain(
            f"shz-rawbench-{n}-{i}",
            meta,
            1,
            192 * 1024,
            str(image.kernel),
            str(image.initrd),
            f"console=ttyS0 quiet shanzhi.name=raw{i} shanzhi.ports=8080",
            f"/tmp/shz-raw-{n}-{i}.log",
            vm.accel[0],
        )
        hv.define_and_start(dom.name, dom.xml())
        return f"127.0.0.1:{port}"

    try:
        for n in sizes:
            ours = at_once(n, lambda i, n=n: vm.create_instance(request(i, f"v{n}", image="tiny")).endpoint or "")
            raw = at_once(n, lambda i, n=n: raw_start(i, n))
            procs = at_once(n, lambda i, n=n: local.create_instance(request(i, f"p{n}", command=serve)).endpoint or "")
            results["rows"].append(
                {
                    "vms": n,
                    "shanzhi_p50": statistics.median(ours),
                    "shanzhi_p95": pct(ours, 0.95),
                    "raw_libvirt_p50": statistics.median(raw),
                    "raw_libvirt_p95": pct(raw, 0.95),
                    "local_process_p50": statistics.median(procs),
                    "local_process_p95": pct(procs, 0.95),
                }
            )
            for o in vm.list_instances():
                vm.delete_instance(o.name)
            for d in hv.domains():
                if d.name.startswith("shz-rawbench-"):
                    hv.undefine(d.name)
            stop_all_under(data / "clouds", remove=True)
        # density: how many stay up and answering at once
        started = []
        for i in range(density_target):
            started.append(vm.create_instance(request(i, "d", image="tiny")))
        healthy = 0
        for o in started:
            try:
                answered(o.endpoint or "", 180)
                healthy += 1
            except TimeoutError:
                pass
        rss = []
        for d in hv.domains():
            if d.pid:
                rss.append(psutil.Process(d.pid).memory_info().rss / MiB)
        results["density"] = {"started": density_target, "answering": healthy}
        results["qemu_rss_mib"] = {"median": statistics.median(rss) if rss else None, "max": max(rss, default=None)}
        for o in vm.list_instances():
            vm.delete_instance(o.name)
        results["migration"] = [migrate(vm, data, mib) for mib in ((256,) if args.quick else (256, 1024))]
    finally:
        for o in vm.list_instances():
            vm.delete_instance(o.name)
        for d in hv.domains():
            if d.name.startswith("shz-rawbench-"):
                hv.undefine(d.name)
        stop_all_under(data / "clouds", remove=True)

    t = Table(title=f"apply to answered HTTP, seconds ({results['accel']})")
    for col in ("VMs at once", "Shanzhi p50", "p95", "raw libvirt p50 (floor)", "p95", "local process p50", "p95"):
        t.add_column(col, justify="right")
    for r in results["rows"]:
        t.add_row(
            str(r["vms"]),
            *(
                f"{r[k]:.1f}"
                for k in (
                    "shanzhi_p50",
                    "shanzhi_p95",
                    "raw_libvirt_p50",
                    "raw_libvirt_p95",
                    "local_process_p50",
                    "local_process_p95",
                )
            ),
        )
    console.print(t)
    mig = Table(title="cold migration of a VM with a filled volume (stop, copy, start, answered)")
    for col in ("volume data", "downtime s", "copy s", "s per GiB", "plain copy of the disk s (floor)"):
        mig.add_column(col, justify="right")
    for r in results["migration"]:
        mig.add_row(f"{r['mib']} MiB", *(f"{r[k]:.1f}" for k in ("downtime", "copy", "per_gib", "cp")))
    console.print(mig)
    d, m = results["density"], results["qemu_rss_mib"]
    console.print(
        f"density: {d['answering']}/{d['started']} tiny VMs answering at once; "
        f"QEMU RSS per VM: median {m['median']:.0f} MiB, max {m['max']:.0f} MiB"
    )
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
