"""Typed FastAPI dependencies: the engine, the store, the settings, and the bearer token.

    async def route(engine: EngineDep, settings: SettingsDep) -> ...

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

from docl.services.config import Settings
from docl.services.engine import Engine
from docl.services.storage import Store

__all__ = [
    "EngineDep",
    "SettingsDep",
    "StoreDep",
    "bearer",
    "get_engine",
    "get_settings",
    "get_store",
]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


async def get_store(request: Request) -> Store:
    engine: Engine = request.app.state.engine
    return engine.store


_scheme = HTTPBearer(
    auto_error=False,
    description="Needed on every /v1 route when the server runs with DOCL_API_TOKEN set.",
)


async def bearer(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_scheme)],
) -> None:
    """Documents the bearer scheme; the gateway middleware has already enforced it."""
    return None


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
StoreDep = Annotated[Store, Depends(get_store)]
