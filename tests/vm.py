"""What the VM tests need: libvirtd and virtlogd running (started here when absent, stopped after
by whoever started them), libvirt-python, QEMU, the cloud kernel and busybox-static.

Without them the VM tests skip saying what to install; CI sets SHANZHI_REQUIRE_VM=1 and fails instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

REQUIRE_VM = bool(os.environ.get("SHANZHI_REQUIRE_VM"))
DAEMONS = (("virtlogd", Path("/run/virtlogd.pid")), ("libvirtd", Path("/run/libvirtd.pid")))


def missing() -> str | None:
    """What this machine lacks for real VMs, or None."""
    if os.geteuid() != 0:
        return "VM tests need root (libvirt's system driver)"
    try:
        import libvirt  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return "libvirt-python is missing: pip install -e '.[vm]' (apt-get install libvirt-dev pkg-config first)"
    need = {
        "qemu-system-x86_64": "qemu-system-x86",
        "libvirtd": "libvirt-daemon-system",
        "virtlogd": "libvirt-daemon-system",
    }
    for exe, pkg in need.items():
        if shutil.which(exe) is None and not Path(f"/usr/sbin/{exe}").exists():
            return f"{exe} is missing: apt-get install {pkg}"
    if not list(Path("/boot").glob("vmlinuz-*-cloud-amd64")):
        return "no cloud kernel: apt-get install linux-image-cloud-amd64"
    if not Path("/bin/busybox").exists():
        return "no busybox: apt-get install busybox-static"
    return None


def _running(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def start_daemons() -> list[Path]:
    """Start what is not running; returns the pid files of those this call started."""
    started = []
    for exe, pidfile in DAEMONS:
        if _running(pidfile):
            continue
        subprocess.run([exe, "-d"], check=True, timeout=30)
        started.append(pidfile)
    deadline = time.monotonic() + 30
    while not Path("/run/libvirt/libvirt-sock").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("libvirtd did not open its socket in 30 s")
        time.sleep(0.1)
    return started


def stop_daemons(pidfiles: list[Path]) -> None:
    for pidfile in reversed(pidfiles):
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            continue


def require_vm() -> None:
    why = missing()
    if why is None:
        return
    if REQUIRE_VM:
        pytest.fail(f"real VMs required (SHANZHI_REQUIRE_VM=1) but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def tiny_image() -> str:
    """The tiny image, built once (builds by several workers take turns on the store's lock)."""
    require_vm()
    from shanzhi.providers.libvirt.images import ImageStore

    ImageStore().build_tiny("tiny")
    return "tiny"
