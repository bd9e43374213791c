"""``GET /`` (what this server is and where to go) and the Swagger UI at ``/docs``.

The Swagger UI's JavaScript and CSS are served by this server from the
``swagger-ui-bundle`` wheel (``/docs/assets``), not from a CDN: the page works
on a cluster without internet access.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

__all__ = ["ASSETS", "DOCS", "install", "router"]

DOCS = "/docs"
ASSETS = "/docs/assets"

router = APIRouter(tags=["health"])


@router.get("/", summary="What this server is, and links to its docs and API")
async def index(request: Request) -> dict[str, Any]:
    """The server's name and version, and where its docs, API and probes are."""
    app = request.app
    return {
        "name": app.title,
        "version": app.version,
        "docs": DOCS,
        "openapi": app.openapi_url,
        "api": "/v1",
        "healthz": "/healthz",
        "readyz": "/readyz",
        "metrics": "/metrics",
    }


@router.get(DOCS, include_in_schema=False)
async def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - Swagger UI",
        swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS}/favicon-32x32.png",
    )


def install(app: FastAPI) -> None:
    """Add ``/``, ``/docs`` and the Swagger UI's assets (create the app with ``docs_url=None``)."""
    app.include_router(router)
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui-assets")
