"""`shanzhi image ...`: the VM images libvirt clouds on the server's machine boot from."""

from __future__ import annotations

from pathlib import Path

import typer

from shanzhi.cli.output import Columns, Fmt, OutputOpt, emit, err, handle_errors, mem, out
from shanzhi.client import Client, discover_token

image_app = typer.Typer(help="VM images: build the tiny image from local packages, list, delete.", no_args_is_help=True)
DataDirOpt = typer.Option(None, "--data-dir", envvar="SHANZHI_HOME", help="Data directory (for the token).")
IMAGE_COLS: Columns = [
    ("NAME", lambda r: r["name"]),
    ("KIND", lambda r: r["kind"]),
    ("SIZE", lambda r: mem(r["size"])),
    ("DETAIL", lambda r: r["detail"]),
]


@image_app.command("build")
def build(
    name: str,
    kind: str = typer.Option("tiny", "--kind", help="tiny: the cloud kernel, busybox and the virtio modules."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Build an image from the server machine's packages (nothing is downloaded); a no-op when it exists."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c, err.status(f"building image {name}"):
        r = c.build_image(name, kind)
    emit(r, output, IMAGE_COLS)


@image_app.command("import")
def import_(
    name: str,
    file: Path = typer.Argument(..., help="A bootable qcow2 or raw disk image on the server's machine."),
    sha256: str | None = typer.Option(None, "--sha256", help="Refuse the file unless it has this sha256."),
    data_dir: Path | None = DataDirOpt,
    output: Fmt = OutputOpt,
) -> None:
    """Import a disk image (a distribution's cloud image): VMs boot copy-on-write overlays of it and
    get their name, ports, env and SSH key from a cloud-init NoCloud seed."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c, err.status(f"importing {file}"):
        r = c.import_image(name, str(file.resolve()), sha256)
    emit(r, output, IMAGE_COLS)


@image_app.command("list")
def list_(data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """The images libvirt clouds on the server's machine can boot."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        emit(c.list_images(), output, IMAGE_COLS)


@image_app.command("get")
def get(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """One image, with the sha256 of each of its files."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        r = c.get_image(name)
    emit(r, output, IMAGE_COLS)
    if output is Fmt.table:
        for f, digest in r["sha256"].items():
            out.print(f"  {f}: sha256 {digest}")


@image_app.command("delete")
def delete(name: str, data_dir: Path | None = DataDirOpt, output: Fmt = OutputOpt) -> None:
    """Delete an image (VMs already running keep their copy in memory; new ones cannot start)."""
    with handle_errors(), Client(token=discover_token(data_dir)) as c:
        c.delete_image(name)
    emit(
        {"name": name, "outcome": "deleted"},
        output,
        [("NAME", lambda r: r["name"]), ("OUTCOME", lambda r: r["outcome"])],
    )
