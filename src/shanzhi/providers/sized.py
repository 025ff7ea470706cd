"""A `local` process's volume with its size enforced: an ext4 file system in a sparse image file
beside the volume's directory, mounted on it through a loop device. Where that cannot be done
(not root, no loop devices, no mkfs.ext4) the volume is a plain directory whose size nothing
limits, and the cloud says so.

Written here rather than taken from a library: it is three commands (truncate, mkfs.ext4,
mount -o loop) and a read of /proc/self/mountinfo.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

from shanzhi.providers.sandbox import is_root


@functools.cache
def unavailable() -> str | None:
    """Why sizes cannot be enforced here (None: they can)."""
    if not is_root():
        return "not root (loop mounts need it)"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    missing = [c for c in ("mkfs.ext4", "mount", "umount") if shutil.which(c) is None]
    if missing:
        return f"{', '.join(missing)} not installed"
    return None


def image_of(path: Path) -> Path:
    return path.parent / f"{path.name}.img"


def mounted(path: Path) -> bool:
    return str(path) in mounts_under(path)


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below `root`, deepest first (the order to unmount them)."""
    prefix = str(root)
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # mountinfo escapes spaces as \040
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def ensure(path: Path, size: int, uid: int) -> None:
    """`path` a mounted file system of `size` bytes owned by `uid` (made the first time; mounted
    again after a reboot)."""
    image = image_of(path)
    if not image.exists():
        partial = image.with_suffix(".partial")
        with open(partial, "wb") as f:
            f.truncate(size)  # sparse: takes disk only as it fills
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"root_owner={uid}:{uid}", str(partial))
        os.chmod(partial, 0o600)
        partial.rename(image)
    path.mkdir(mode=0o700, exist_ok=True)
    if not mounted(path):
        _run("mount", "-o", "loop,nosuid,nodev", str(image), str(path))
        os.chmod(path, 0o700)  # the file system's root: its owner alone enters, as a directory volume


def release(path: Path) -> None:
    """Unmount `path` and everything mounted below it."""
    for point in mounts_under(path):
        subprocess.run(["umount", point], capture_output=True, check=False)
        if os.path.ismount(point):  # still held: detach it, the kernel frees it when last used
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def _run(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise OSError(f"{argv[0]} failed: {(r.stderr or r.stdout).strip()}")
