"""/images: the VM images libvirt clouds on this machine boot from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api.audit import transaction
from shanzhi.api.threads import slow
from shanzhi.services import images as svc

router = APIRouter(prefix="/images", tags=["images"])


class BuildIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    kind: str = "tiny"


@router.get("")
def list_images() -> list[dict[str, Any]]:
    return svc.list_images()


@router.get("/{name}")
def get_image(name: str) -> dict[str, Any]:
    return svc.get_image(name)


@router.post("", status_code=201)
@slow
def build_image(request: Request, body: BuildIn) -> dict[str, Any]:
    """Build an image from this machine's packages (kind `tiny`: kernel, busybox, virtio modules)."""
    request.state.target = f"image {body.name}"
    with transaction(request):
        return svc.build_image(body.name, body.kind)


class ImportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=63)
    path: str = Field(min_length=1, max_length=4096, description="absolute path on the server's machine")
    sha256: str | None = Field(None, pattern="^[0-9a-fA-F]{64}$")


@router.post("/import", status_code=201)
@slow
def import_image(request: Request, body: ImportIn) -> dict[str, Any]:
    """Take an operator's bootable qcow2 or raw disk image from the server's machine (checked
    against `sha256` when given); VMs boot overlays of it and read a cloud-init NoCloud seed."""
    request.state.target = f"image {body.name}"
    with transaction(request):
        return svc.import_image(body.name, body.path, body.sha256)


@router.delete("/{name}", status_code=204)
@slow
def delete_image(request: Request, name: str) -> None:
    request.state.target = f"image {name}"
    with transaction(request):
        svc.delete_image(name)
