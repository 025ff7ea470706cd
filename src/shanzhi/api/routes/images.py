"""/images: the VM images libvirt clouds on this machine boot from."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from shanzhi.api.audit import transaction
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
def build_image(request: Request, body: BuildIn) -> dict[str, Any]:
    """Build an image from this machine's packages (kind `tiny`: kernel, busybox, virtio modules)."""
    request.state.target = f"image {body.name}"
    with transaction(request):
        return svc.build_image(body.name, body.kind)


@router.delete("/{name}", status_code=204)
def delete_image(request: Request, name: str) -> None:
    request.state.target = f"image {name}"
    with transaction(request):
        svc.delete_image(name)
