"""Volumes: the disks that follow a replica's ordinal, as the store knows them (the reconciler
creates and reclaims them; here they are listed, inspected and released for deletion)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from shanzhi.domain.errors import Conflict, NotFound
from shanzhi.domain.rbac import EVERYWHERE, Scope
from shanzhi.services.vdcs import scope_filter
from shanzhi.store.events import record_event
from shanzhi.store.tables import Vdc, VolumeRecord


def list_volumes(
    s: Session, app: str | None = None, vdc: str | None = None, scope: Scope = EVERYWHERE
) -> list[VolumeRecord]:
    q = select(VolumeRecord).join(Vdc).where(scope_filter(scope)).order_by(Vdc.path, VolumeRecord.key)
    if vdc is not None:
        q = q.where((Vdc.path == vdc) | Vdc.path.startswith(vdc + "/", autoescape=True))
    if app is not None:
        q = q.where(VolumeRecord.app_name == app)
    return list(s.scalars(q))


def get_volume(s: Session, key: str, scope: Scope = EVERYWHERE) -> list[VolumeRecord]:
    """Every copy of a volume key (one per cloud its ordinal ran on), among those in `scope`."""
    found = list(s.scalars(select(VolumeRecord).join(Vdc).where(VolumeRecord.key == key, scope_filter(scope))))
    if not found:
        raise NotFound(f"volume {key} does not exist; see 'shanzhi volume list'", field="key")
    return found


def delete_volume(s: Session, key: str, cloud: str | None = None, scope: Scope = EVERYWHERE) -> list[VolumeRecord]:
    """Mark a volume no replica uses for deletion (its disk goes at the next pass)."""
    found = [v for v in get_volume(s, key, scope) if cloud is None or v.cloud.name == cloud]
    if not found:
        raise NotFound(f"volume {key} has no copy on cloud {cloud}", field="cloud")
    for v in found:
        if v.state == "attached":
            raise Conflict(
                f"volume {key} on {v.cloud.name} is attached to {v.instance}: scale the component down or delete "
                "the app first",
                field="key",
            )
    for v in found:
        if v.state != "deleting":
            v.state = "deleting"
            record_event(
                s,
                "VolumeDeleting",
                "volume",
                key,
                f"volume {key} on {v.cloud.name} will be deleted",
                vdc=v.vdc.path,
                app=v.app_name,
            )
    return found


def one_copy(s: Session, key: str, cloud: str | None, scope: Scope = EVERYWHERE) -> VolumeRecord:
    """The volume `key` on `cloud` (which may be left out when it has a disk on one cloud only)."""
    found = [v for v in get_volume(s, key, scope) if cloud is None or v.cloud.name == cloud]
    if not found:
        raise NotFound(f"volume {key} has no disk on cloud {cloud}", field="cloud")
    if len(found) > 1:
        clouds = ", ".join(sorted(v.cloud.name for v in found))
        raise Conflict(f"volume {key} has disks on several clouds ({clouds}); pass --cloud", field="cloud")
    if found[0].state == "deleting":
        raise Conflict(f"volume {key} is being deleted", field="key")
    return found[0]
