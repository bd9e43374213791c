"""Typed FastAPI dependencies: the engine and the bearer token.

    async def route(engine: EngineDep) -> ...

Every dependency is ``async def`` on purpose: FastAPI runs a plain ``def``
dependency in a worker thread, which costs more than the whole route.

The token is enforced by :class:`docl.services.app.GatewayMiddleware` before a
request body is read (so an unauthenticated client learns nothing, not even
whether its body parses); :data:`bearer` only declares the scheme so that
OpenAPI shows it and /docs offers an "Authorize" button.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from docl.services.engine import Engine

__all__ = ["EngineDep", "bearer", "get_engine"]


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


_scheme = HTTPBearer(
    auto_error=False,
    description="Needed on every /v1 route when the server runs with DOCL_API_TOKEN set.",
)


async def bearer(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)],
) -> None:
    """Documents the bearer scheme; the gateway middleware has already enforced it."""
    return None


EngineDep = Annotated[Engine, Depends(get_engine)]
