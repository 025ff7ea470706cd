"""Running the API with uvicorn (SIGTERM stops the server, never the workloads)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from typing import Any

import uvicorn
from fastapi import FastAPI

from shanzhi.api.app import create_app
from shanzhi.api.processes import prepare, run_controllers, settings_from_env, worker_settings
from shanzhi.config import Settings
from shanzhi.store import open_database

log = logging.getLogger("shanzhi.api")


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # health probes are not news
    if settings.workers <= 1:
        uvicorn.run(create_app(settings), **_options(settings))
        return
    db = open_database(settings.database_url)
    prepare(settings, db)
    db.dispose()
    controllers = multiprocessing.get_context("spawn").Process(
        target=run_controllers, args=(settings,), name="shanzhi-controllers"
    )
    controllers.start()
    os.environ.update(worker_settings(settings))
    log.info("%d API workers; controllers in process %s", settings.workers, controllers.pid)
    try:
        uvicorn.run("shanzhi.api.server:worker_app", factory=True, workers=settings.workers, **_options(settings))
    finally:
        controllers.terminate()
        controllers.join(30)


def worker_app() -> FastAPI:
    """The application of one API worker (uvicorn imports this in each worker process)."""
    return create_app(settings_from_env())


def _options(settings: Settings) -> dict[str, Any]:
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": "info",
        "access_log": False,
        # X-Forwarded-For/-Proto only from the proxies named: from anyone else (a workload on
        # loopback included) the header would forge the audit trail's source
        "proxy_headers": bool(settings.forwarded_allow_ips),
        "forwarded_allow_ips": ",".join(settings.forwarded_allow_ips) or None,
        "ssl_certfile": str(settings.tls_cert) if settings.tls_cert else None,
        "ssl_keyfile": str(settings.tls_key) if settings.tls_key else None,
        "timeout_graceful_shutdown": 10,
    }
