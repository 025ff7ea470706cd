"""Serving the web console: its page at `/`, its assets under `/static/console`.

The assets are files of the `shanzhi.web` package (found with importlib.resources; nothing of
it is imported: the console reaches data through the API only). The page goes out with a
content security policy that lets it load and call nothing but this server.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(str(resources.files("shanzhi.web") / "static"))
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def install(app: FastAPI) -> None:
    app.mount("/static/console", StaticFiles(directory=ASSETS), name="console-assets")

    @app.get("/", include_in_schema=False)
    async def console() -> FileResponse:
        return FileResponse(
            ASSETS / "index.html",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )
