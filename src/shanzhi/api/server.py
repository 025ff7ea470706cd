"""Running the API with uvicorn (SIGTERM stops the server, never the workloads)."""

from __future__ import annotations

import logging

import uvicorn

from shanzhi.api.app import create_app
from shanzhi.config import Settings


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # health probes are not news
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level="info",
        access_log=False,
        # X-Forwarded-For/-Proto only from the proxies named: from anyone else (a workload on
        # loopback included) the header would forge the audit trail's source
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=",".join(settings.forwarded_allow_ips) or None,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        timeout_graceful_shutdown=10,
    )
