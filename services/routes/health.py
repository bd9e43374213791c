"""Liveness, readiness and Prometheus metrics: open even when a token is set."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Response

from docl.services import metrics
from docl.services.deps import EngineDep
from docl.services.errors import ServiceUnavailable, classify_store_error

log = logging.getLogger("docl.services")
router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, Any]:
    """Always 200 while the process serves HTTP; it does not touch Redis."""
    return {"status": "ok", "version": _VERSION}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("docl")
    except PackageNotFoundError:  # running from a source tree without an install
        return "unknown"


_VERSION = _version()  # read once: importlib.metadata parses files on every call


@router.get(
    "/readyz",
    summary="Readiness: Redis is reachable",
    responses={503: {"description": "Redis is not reachable"}},
)
async def readyz(engine: EngineDep) -> dict[str, Any]:
    """200 when Redis answers PING, 503 (problem+json) otherwise. Open without a token,
    so the answer says what failed, never where the store lives (the log has that)."""
    try:
        await engine.store.ping()
    except Exception as e:  # any failure to reach Redis means "not ready"
        log.warning("/readyz: the score store is not ready: %s: %s", type(e).__name__, e)
        got = classify_store_error(e)
        what = got[2] if got is not None else f"{type(e).__name__} (see the server log)"
        raise ServiceUnavailable(f"not ready: {what}") from None
    return {"status": "ready", "redis": "ok"}


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}},
)
async def prometheus() -> Response:
    body, ctype = metrics.render()
    return Response(content=body, media_type=ctype)
