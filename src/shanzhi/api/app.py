"""The FastAPI application: startup (migrate, token, controller), routers, error handling."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI

from shanzhi import __version__
from shanzhi.api import audit, errors
from shanzhi.api.auth import ensure_admin_token, require_token
from shanzhi.api.deps import Runtime
from shanzhi.api.routes import apps, clouds, observe, vdcs
from shanzhi.config import Settings
from shanzhi.controllers import ControllerManager, Fleet
from shanzhi.services.demo import seed_demo
from shanzhi.store import open_database

log = logging.getLogger("shanzhi.api")


def create_app(settings: Settings) -> FastAPI:
    db = open_database(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db.migrate()
        ensure_admin_token(db, settings.token_file)
        fleet = Fleet(settings.data_dir)
        if settings.demo:
            with db.session() as s, s.begin():
                seed_demo(s)
        controller = None
        if settings.controller:
            controller = ControllerManager(
                db, fleet, interval=settings.interval, failover_grace=settings.failover_grace
            )
            controller.start()
        app.state.runtime = Runtime(settings, db, fleet, controller)
        log.info("shanzhi %s up: database %s, data dir %s", __version__, db.engine.dialect.name, settings.data_dir)
        try:
            yield
        finally:
            if controller is not None:
                controller.stop()  # stops reconciling; workloads keep running by design
            db.dispose()
            log.info("shanzhi stopped; workloads left running")

    app = FastAPI(
        title="Shanzhi",
        version=__version__,
        description="One cloud from many: government hybrid multi-cloud management.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.db = db
    errors.install(app)
    audit.install(app)
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(require_token)])
    for module in (clouds, vdcs, apps, observe):
        api.include_router(module.router)
    app.include_router(api)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
