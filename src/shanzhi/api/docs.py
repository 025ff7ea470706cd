"""The API's own documentation, served with no network: Swagger UI and ReDoc from the package.

FastAPI's default docs page loads Swagger UI from a CDN, which is a blank page on an air-gapped
government network. The assets come from `fastapi-offline` (a wheel that ships Swagger UI and
ReDoc, nothing else), mounted under `/static/docs`. The OpenAPI document declares the bearer
scheme and puts it on every route that needs a token (from `shanzhi.api.policy`), so Swagger UI's
"Authorize" works: paste a token from `shanzhi token create`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from shanzhi.api.policy import PREFIX, RULES

ASSETS = Path(fastapi_offline.__file__).parent / "static"
STATIC = "/static/docs"
SCHEME = "bearer"


def install(app: FastAPI) -> None:
    """Docs at /api/v1/docs (Swagger UI) and /api/v1/redoc, with their assets from the package."""
    app.mount(STATIC, StaticFiles(directory=ASSETS), name="docs-assets")
    openapi_url = str(app.openapi_url)

    @app.get(f"{PREFIX}/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{STATIC}/favicon.png",
            # no badge fetched from validator.swagger.io; the token kept across reloads
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    @app.get(f"{PREFIX}/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{STATIC}/favicon.png",
            with_google_fonts=False,
        )

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            schema.setdefault("components", {})["securitySchemes"] = {
                SCHEME: {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a session token from 'shanzhi login' or an API token from 'shanzhi token create'",
                }
            }
            for path, operations in schema.get("paths", {}).items():
                for method, operation in operations.items():
                    rule = RULES.get((method.upper(), path.removeprefix(PREFIX)))
                    if rule is not None and rule.kind != "public":  # public_if: a token works too
                        operation["security"] = [{SCHEME: []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
