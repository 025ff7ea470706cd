"""VM images on this server's machine: build the tiny image from local packages, list, delete.

The store is files (see `shanzhi.providers.libvirt.images`), shared by every libvirt cloud
whose hypervisor runs here; these functions turn its errors into the API's.
"""

from __future__ import annotations

from typing import Any

from shanzhi.domain.errors import InvalidInput, NotFound
from shanzhi.providers.libvirt.images import ImageError, ImageStore


def list_images(store: ImageStore | None = None) -> list[dict[str, Any]]:
    return [i.as_dict() for i in (store or ImageStore()).list()]


def get_image(name: str, store: ImageStore | None = None) -> dict[str, Any]:
    try:
        return (store or ImageStore()).get(name).as_dict()
    except ImageError as err:
        raise NotFound(str(err), field="name") from None


def build_image(name: str, kind: str = "tiny", store: ImageStore | None = None) -> dict[str, Any]:
    if kind != "tiny":
        raise InvalidInput(f"unknown image kind {kind!r}: only 'tiny' is built here", field="kind")
    try:
        return (store or ImageStore()).build_tiny(name).as_dict()
    except ImageError as err:
        raise InvalidInput(str(err), field="name") from None


def import_image(name: str, path: str, sha256: str | None = None, store: ImageStore | None = None) -> dict[str, Any]:
    from pathlib import Path

    source = Path(path)
    if not source.is_absolute():
        raise InvalidInput(f"{path}: give the image's absolute path on the server's machine", field="path")
    try:
        return (store or ImageStore()).import_disk(name, source, sha256).as_dict()
    except ImageError as err:
        raise InvalidInput(str(err), field="path") from None


def delete_image(name: str, store: ImageStore | None = None) -> None:
    try:
        gone = (store or ImageStore()).delete(name)
    except ImageError as err:
        raise InvalidInput(str(err), field="name") from None
    if not gone:
        raise NotFound(f"image {name} does not exist; see 'shanzhi image list'", field="name")
