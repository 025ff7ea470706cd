"""The FastAPI application: startup (migrate, token, controller), routers, error handling."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse

from shanzhi import __version__
from shanzhi.api import audit, console, docs, errors
from shanzhi.api.auth import authorize
from shanzhi.api.deps import Runtime, relying_party
from shanzhi.api.guard import Guard, Limits
from shanzhi.api.headers import SecurityHeaders
from shanzhi.api.metrics import RequestTimer, registry, request_histogram
from shanzhi.api.policy import check_routes
from shanzhi.api.processes import controllers, make_ledger, prepare
from shanzhi.api.routes import (
    alarm_rules,
    approvals,
    apps,
    clouds,
    dr,
    identity,
    images,
    inventory,
    metering,
    metrics,
    network,
    observe,
    oidc,
    plans,
    vdcs,
    volumes,
)
from shanzhi.api.routes import audit as audit_routes
from shanzhi.api.routes import ledger as ledger_routes
from shanzhi.config import Settings
from shanzhi.controllers import Fleet
from shanzhi.sealing import Vault
from shanzhi.store import open_database

log = logging.getLogger("shanzhi.api")


def create_app(settings: Settings) -> FastAPI:
    db = open_database(settings.database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads
        if not settings.prepared:
            prepare(settings, db)
        fleet = Fleet(settings.data_dir)
        ledger = make_ledger(settings, db)
        if ledger is not None:
            ledger.start(publish=settings.publisher)
        controller = None
        if settings.controller:
            controller = controllers(db, fleet, settings)
            controller.start()
        oidc = relying_party(settings)
        vault = Vault.for_data_dir(settings.data_dir)
        app.state.runtime = Runtime(settings, db, fleet, controller, ledger, oidc, vault)
        if oidc is not None:
            log.info("single sign-on through %s (client %s)", oidc.config.issuer, oidc.config.client_id)
        log.info("shanzhi %s up: database %s, data dir %s", __version__, db.engine.dialect.name, settings.data_dir)
        # what start-up made (modules, models, tables, routes) lives as long as the process: out of
        # the collector's way, so that its full passes no longer walk it while requests wait
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if controller is not None:
                controller.stop()  # stops reconciling; workloads keep running by design
            if ledger is not None:
                ledger.stop()
            if oidc is not None:
                oidc.close()
            db.dispose()
            log.info("shanzhi stopped; workloads left running")

    app = FastAPI(
        title="Shanzhi",
        version=__version__,
        description="One cloud from many: government hybrid multi-cloud management.",
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served from the package by shanzhi.api.docs (no CDN)
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.db = db
    errors.install(app)
    # the busiest first: FastAPI walks the routers in this order for every request, route by route
    # (no path is in two modules, so the order decides nothing else)
    routes = (
        apps,
        observe,
        identity,
        oidc,
        clouds,
        images,
        vdcs,
        volumes,
        inventory,
        network,
        dr,
        plans,
        approvals,
        metering,
        metrics,
        alarm_rules,
        audit_routes,
        ledger_routes,
    )
    for module in routes:  # each on the app itself: FastAPI walks every level of nesting per request
        app.include_router(module.router, prefix="/api/v1", dependencies=[Depends(authorize)])
    table = check_routes(app, [m.router for m in routes])
    limits = Limits(settings.max_body_bytes, settings.logins_per_minute, settings.failures_per_minute)
    app.add_middleware(Guard, table=table, limits=limits)
    app.add_middleware(audit.AuditMiddleware)  # it sees the guard's refusals too
    app.add_middleware(SecurityHeaders, tls=bool(settings.tls_cert))
    requests = request_histogram()
    app.add_middleware(RequestTimer, histogram=requests)  # outermost: it times the guard's refusals too
    app.state.metrics_registry = registry(app, requests)
    docs.install(app)
    console.install(app)

    @app.get("/metrics", include_in_schema=False)
    async def metrics_alias() -> RedirectResponse:
        """Where Prometheus looks by default; the exposition itself is an API route (a token)."""
        return RedirectResponse("/api/v1/metrics", status_code=307)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
