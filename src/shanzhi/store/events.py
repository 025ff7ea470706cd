"""Recording events: what happened, to what, and why."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from shanzhi.store.tables import Event

log = logging.getLogger("shanzhi.events")


def record_event(
    session: Session,
    reason: str,
    object_kind: str,
    object_name: str,
    message: str,
    *,
    warning: bool = False,
    vdc: str | None = None,
    app: str | None = None,
) -> None:
    session.add(
        Event(
            type="Warning" if warning else "Normal",
            reason=reason,
            object_kind=object_kind,
            object_name=object_name,
            vdc=vdc,
            app=app,
            message=message,
        )
    )
    log.log(logging.WARNING if warning else logging.INFO, "%s %s/%s: %s", reason, object_kind, object_name, message)
