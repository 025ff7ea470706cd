"""What routes get from the running server: the database, the fleet, the controller."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from shanzhi.config import Settings
from shanzhi.controllers import ControllerManager, Fleet
from shanzhi.ledger.service import Ledger
from shanzhi.store import Database


@dataclass
class Runtime:
    settings: Settings
    db: Database
    fleet: Fleet
    controller: ControllerManager | None
    ledger: Ledger | None = None

    def wake(self) -> None:
        if self.controller is not None:
            self.controller.wake()


async def runtime(request: Request) -> Runtime:
    """Async on purpose: a plain lookup, so FastAPI need not hop to a worker thread for it."""
    rt: Runtime = request.app.state.runtime
    return rt
