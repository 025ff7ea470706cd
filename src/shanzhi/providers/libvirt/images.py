"""Bootable images for the libvirt provider, kept where QEMU can read them.

`build_tiny` makes, from packages already on this machine (Debian's cloud kernel and
busybox-static), a direct-kernel-boot image: the kernel plus an initramfs whose `/init` loads
the virtio modules, reads who it is from the cloud-init NoCloud seed (`shanzhi.env` on the
`cidata` disk: name, ports, volumes, the component's env), formats (first boot) and mounts the
volumes, configures user-mode networking and serves HTTP on every port the component declares,
with `/cgi-bin/put?NAME=VALUE` writing into the first volume and `/env.txt` showing the seed. Nothing is downloaded. The
initramfs is a `newc` cpio archive written here in Python (the format is a fixed header per
file; no tool is needed). Every image has a manifest with the sha256 of its files, checked
before a VM boots from it.

Images live under `/var/lib/shanzhi/images` (`$SHANZHI_IMAGES_DIR` to move it): QEMU runs as
its own user and cannot enter the server's private data directory.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$")
VIRTIO_MODULES = ("virtio_pci", "virtio_net", "virtio_blk", "isofs")

INIT = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" || echo "shanzhi: cannot load $m"; done
# who it is comes from the cloud-init NoCloud seed (the last disk, labelled cidata): shanzhi.env
mkdir -p /seed
for d in /dev/vd?; do
  if mount -t iso9660 -o ro "$d" /seed 2>/dev/null; then
    [ -f /seed/shanzhi.env ] && break
    umount /seed
  fi
done
if [ -f /seed/shanzhi.env ]; then set -a; . /seed/shanzhi.env; set +a; else echo "shanzhi: no seed found"; fi
name="${SHANZHI_NAME:-vm}"; ports="${SHANZHI_PORTS:-8080}"; vols="$SHANZHI_VOLS"
hostname "$name"
# volumes: vda:/data,... formatted on first boot, mounted at every boot; the first is served as /data/
for v in $(echo "$vols" | tr ',' ' '); do
  dev="/dev/${v%%:*}"; dir="${v#*:}"; mkdir -p "$dir"
  i=0; while [ ! -b "$dev" ] && [ $i -lt 100 ]; do usleep 100000; i=$((i+1)); done  # the disk is probed async
  if ! mount -t ext4 "$dev" "$dir" 2>/dev/null; then
    echo "shanzhi: formatting $dev for $dir"; mke2fs -q "$dev" && mount -t ext4 "$dev" "$dir"
  fi
  if grep -q " $dir " /proc/mounts; then
    [ -e /www/data ] || ln -s "$dir" /www/data
    echo "shanzhi: $dev mounted at $dir"
  else
    echo "shanzhi: could not mount $dev at $dir"
  fi
done
ip link set lo up; ip link set eth0 up
if [ -n "$SHANZHI_ADDRESS" ]; then  # on the tenant fabric: its /32, everything through the host
  ip addr add "$SHANZHI_ADDRESS/32" dev eth0; ip route add default dev eth0
else
  ip addr add 10.0.2.15/24 dev eth0; ip route add default via 10.0.2.2
fi
echo "<html><body>shanzhi tiny vm $name</body></html>" > /www/index.html
cp /seed/shanzhi.env /www/env.txt 2>/dev/null  # what the seed told it, served back
for p in $(echo "$ports" | tr ',' ' '); do httpd -p "$p" -h /www; done
echo "shanzhi: $name serving on ports $ports"
while true; do sleep 3600; done
"""

# GET /cgi-bin/put?NAME=VALUE stores VALUE in the first volume as NAME (served back as /data/NAME)
PUT = """#!/bin/sh
printf 'Content-Type: text/plain\\r\\n\\r\\n'
f="${QUERY_STRING%%=*}"; v="${QUERY_STRING#*=}"
case "$f" in ""|*[!a-z0-9.-]*) echo "bad name"; exit 0;; esac
[ -d /www/data ] || { echo "no volume"; exit 0; }
echo "$v" > "/www/data/$f" && sync && echo "stored $f"
"""


RECIPE = hashlib.sha256((INIT + PUT + ",".join(VIRTIO_MODULES)).encode()).hexdigest()[:16]


class ImageError(Exception):
    """An image cannot be built, found or trusted; the message says what to do."""


@dataclass(frozen=True)
class Image:
    name: str
    kind: str  # tiny (kernel + initramfs, direct kernel boot) | disk (an imported bootable disk)
    path: Path  # its directory
    size: int
    sha256: dict[str, str]
    detail: str

    @property
    def kernel(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.gz"

    @property
    def disk(self) -> Path:
        return self.path / "disk.qcow2"

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "size": self.size,
            "sha256": self.sha256,
            "detail": self.detail,
            "path": str(self.path),
        }


def images_root() -> Path:
    return Path(os.environ.get("SHANZHI_IMAGES_DIR") or "/var/lib/shanzhi/images")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ImageStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root or images_root()

    def _dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise ImageError(f"image name {name!r} must be lower-case letters, digits, dots and dashes")
        return self.root / name

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        _traversable(self.root)
        with open(self.root / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # builds by several servers or test workers take turns
            yield

    def list(self) -> list[Image]:
        if not self.root.is_dir():
            return []
        found = []
        for d in sorted(self.root.iterdir()):
            if (d / "manifest.json").is_file():
                try:
                    found.append(self.get(d.name, verify=False))
                except ImageError:
                    continue
        return found

    def get(self, name: str, verify: bool = True) -> Image:
        d = self._dir(name)
        try:
            m = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            raise ImageError(f"image {name} does not exist; build it with 'shanzhi image build {name}'") from None
        image = Image(name, m["kind"], d, int(m["size"]), dict(m["sha256"]), m["detail"])
        if verify:
            for file, digest in image.sha256.items():
                if not (d / file).is_file() or _sha256(d / file) != digest:
                    raise ImageError(f"image {name}: {file} does not match its checksum; rebuild or delete the image")
        return image

    def delete(self, name: str) -> bool:
        d = self._dir(name)
        with self._locked():
            if not d.exists():
                return False
            shutil.rmtree(d)
            return True

    def import_disk(self, name: str, source: Path, sha256: str | None = None) -> Image:
        """Take an operator's bootable disk image (qcow2 or raw), checked against `sha256` when
        given, stored as qcow2; VMs boot copy-on-write overlays of it and read a cloud-init seed."""
        d = self._dir(name)
        if not source.is_file():
            raise ImageError(f"no file {source} on the server's machine")
        digest = _sha256(source)
        if sha256 is not None and digest != sha256.lower():
            raise ImageError(f"{source} has sha256 {digest}, not the {sha256} given: refused")
        with self._locked():
            if d.exists():
                raise ImageError(f"image {name} exists already; delete it first")
            info = json.loads(_qemu_img("info", "--output=json", str(source)))
            fmt = info.get("format")
            if fmt not in ("qcow2", "raw"):
                raise ImageError(f"{source} is {fmt}, not a qcow2 or raw disk image")
            tmp = d.with_name(f".{name}.importing")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            _qemu_img("convert", "-q", "-f", fmt, "-O", "qcow2", str(source), str(tmp / "disk.qcow2"))
            sums = {"disk.qcow2": _sha256(tmp / "disk.qcow2")}
            size = info.get("virtual-size", 0)
            detail = f"imported from {source.name} ({fmt}, sha256 {digest[:16]}...), {size} bytes"
            manifest = {
                "kind": "disk",
                "size": (tmp / "disk.qcow2").stat().st_size,
                "sha256": sums,
                "detail": detail,
                "source_sha256": digest,
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            for p in (tmp, tmp / "disk.qcow2", tmp / "manifest.json"):
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            tmp.rename(d)
            return self.get(name)

    def build_tiny(self, name: str, kernel_version: str | None = None) -> Image:
        """Build (or return, when already built) the tiny image `name` from this machine's packages."""
        d = self._dir(name)
        with self._locked():
            if (d / "manifest.json").exists():
                try:
                    built_from = json.loads((d / "manifest.json").read_text()).get("recipe")
                except ValueError:
                    built_from = None
                if built_from == RECIPE:
                    return self.get(name)
                # made by an older recipe (another /init): built again below
            kver = kernel_version or _cloud_kernel()
            vmlinuz = Path(f"/boot/vmlinuz-{kver}")
            busybox = Path("/bin/busybox")
            if not vmlinuz.is_file():
                raise ImageError(f"no kernel {vmlinuz}: apt-get install linux-image-cloud-amd64")
            if not busybox.is_file() or b"ld-linux" in busybox.read_bytes()[:4096]:
                raise ImageError("no static busybox at /bin/busybox: apt-get install busybox-static")
            modules = _module_order(Path(f"/lib/modules/{kver}"), VIRTIO_MODULES)
            tmp = d.with_name(f".{name}.building")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            shutil.copyfile(vmlinuz, tmp / "vmlinuz")
            archive = _initramfs(busybox, Path(f"/lib/modules/{kver}"), modules)
            (tmp / "initrd.gz").write_bytes(gzip.compress(archive, compresslevel=6, mtime=0))
            files = ("vmlinuz", "initrd.gz")
            sums = {f: _sha256(tmp / f) for f in files}
            size = sum((tmp / f).stat().st_size for f in files)
            detail = f"kernel {kver}, busybox, virtio modules {', '.join(m.rsplit('/', 1)[-1] for m in modules)}"
            manifest = {"kind": "tiny", "size": size, "sha256": sums, "detail": detail, "recipe": RECIPE}
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
            for p in (tmp, *(tmp / f for f in (*files, "manifest.json"))):
                os.chmod(p, 0o755 if p.is_dir() else 0o644)  # QEMU's own user reads them
            shutil.rmtree(d, ignore_errors=True)
            tmp.rename(d)
            return self.get(name)


def _qemu_img(*args: str) -> str:
    import subprocess

    try:
        done = subprocess.run(["qemu-img", *args], check=False, capture_output=True, text=True)
    except FileNotFoundError:
        raise ImageError("qemu-img is not installed: apt-get install qemu-utils") from None
    if done.returncode != 0:
        raise ImageError(f"qemu-img {args[0]}: {done.stderr.strip()[-300:]}")
    return done.stdout


def _traversable(root: Path) -> None:
    for p in (root, *root.parents):
        if p == Path("/"):
            break
        mode = os.stat(p).st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(p, stat.S_IMODE(mode) | stat.S_IXOTH)


def _cloud_kernel() -> str:
    found = sorted(p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*"))
    cloud = [k for k in found if k.endswith("-cloud-amd64")] or found
    if not cloud:
        raise ImageError("no kernel in /boot: apt-get install linux-image-cloud-amd64")
    return cloud[-1]


def _module_order(moddir: Path, wanted: tuple[str, ...]) -> list[str]:
    """The module files to load, each after its dependencies (from modules.dep), as paths under moddir."""
    try:
        lines = (moddir / "modules.dep").read_text().splitlines()
    except OSError:
        raise ImageError(f"no {moddir}/modules.dep: is the kernel's package installed?") from None
    deps: dict[str, list[str]] = {}
    for line in lines:
        mod, _, rest = line.partition(":")
        deps[mod] = rest.split()
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    order: list[str] = []

    def visit(m: str) -> None:
        if m in order:
            return
        for d in reversed(deps.get(m, [])):
            visit(d)
        order.append(m)

    for w in wanted:
        m = by_name.get(w)
        if m is None:
            continue  # built into the kernel: nothing to load
        if m.endswith((".xz", ".zst", ".gz")):
            raise ImageError(f"module {m} is compressed; busybox insmod needs plain .ko files")
        visit(m)
    return order


def _initramfs(busybox: Path, moddir: Path, modules: list[str]) -> bytes:
    out = io.BytesIO()
    ino = iter(range(1, 1 << 30))

    def entry(path: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        name = path.encode() + b"\0"
        fields = (next(ino), mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name), 0)
        out.write(b"070701" + b"".join(b"%08X" % f for f in fields) + name)
        out.write(b"\0" * (-out.tell() % 4))
        out.write(data)
        out.write(b"\0" * (-out.tell() % 4))

    for d in ("bin", "dev", "etc", "proc", "sys", "www", "www/cgi-bin", "lib", "lib/modules", "tmp"):
        entry(d, stat.S_IFDIR | 0o755)
    entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    entry("init", stat.S_IFREG | 0o755, INIT.encode())
    entry("www/cgi-bin/put", stat.S_IFREG | 0o755, PUT.encode())
    entry("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes())
    names = []
    for m in modules:
        base = Path(m).name
        names.append(base)
        entry(f"lib/modules/{base}", stat.S_IFREG | 0o644, (moddir / m).read_bytes())
    entry("etc/modules.order", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode())
    entry("TRAILER!!!", 0)
    out.write(b"\0" * (-out.tell() % 512))
    return out.getvalue()
