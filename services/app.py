"""The score server's FastAPI app: ``create_app(settings=None)``.

    uvicorn --factory docl.services.app:create_app      # or: docl serve

The lifespan owns the Redis connection pool and, when no Redis URL is
configured, an embedded redis-server (:class:`~docl.services.embedded.RedisProcess`)
that lives and dies with the app. :class:`GatewayMiddleware` does, before any
route runs and before a body is read: the bearer-token check of ``/v1`` routes,
the body-size limit (``Content-Length`` and the streamed size), the body timeouts
(the whole body within ``DOCL_BODY_TIMEOUT_S``, no gap between chunks over
``DOCL_BODY_IDLE_TIMEOUT_S``: 408 and the connection closed) and the request
metrics. The header timeout and the connection cap are ``docl serve``'s HTTP
protocol's (:mod:`docl.services.connections`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from docl.services import errors, methods, metrics, sampling
from docl.services.config import Settings
from docl.services.deps import bearer
from docl.services.embedded import RedisProcess, embedded_redis
from docl.services.engine import Engine
from docl.services.errors import PayloadTooLarge, ProblemError, problem_response
from docl.services.redis.store import RedisStore
from docl.services.routes import (
    epochs,
    health,
    index,
    plan,
    reports,
    runs,
    scores,
    signals,
    stats,
)
from docl.services.routes import methods as method_routes
from docl.services.routes._common import complete_openapi
from docl.services.storage import ClusterStateError
from docl.wire.encoding import INDICES_CONTENT_TYPE, REPORT_CONTENT_TYPE, REPORTS_CONTENT_TYPE

__all__ = ["GatewayMiddleware", "RequestTimeout", "create_app"]

_REPORTS_LABEL = "/v1/runs/{run_id}/reports"

log = logging.getLogger("docl.services")

_DESCRIPTION = """\
The docl score server keeps, for every training sample of every run, an
exponential moving average of how fast the model learns that sample toward its
target, and serves each epoch's training subset.

The flow: **run → plan → epoch → indices → report → score**. Create a run,
read its plan, draw each epoch, fetch your rank's indices, train, and report
each mini-batch's outputs. Errors are `application/problem+json` (RFC 9457).
Binary encodings (reports, scores, indices) are described byte by byte in
docs/api.md.
"""


class RequestTimeout(ProblemError):
    """408: the request body did not arrive in time; the connection is closed after it
    (what is left of the body would otherwise be read as the next request)."""

    status = 408

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Connection": "close"})


class GatewayMiddleware:
    """Auth, body limit and timeouts, and metrics in one pure-ASGI layer (cheaper than three)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.body_timeout = settings.body_timeout_s
        self.body_idle = settings.body_idle_timeout_s
        self.fast_reports = settings.fast_reports
        self.max_body = settings.max_body_bytes
        self.max_json = min(settings.max_json_bytes, settings.max_body_bytes)
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        path: str = scope["path"]
        method: str = scope["method"]
        status_holder = [500]
        label: str | None = None

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = int(message["status"])
            await send(message)

        try:
            rejected = self._reject(scope, path)
            if rejected is not None:
                await rejected(scope, receive, send_wrapper)
                return
            limit = self._body_limit(scope)
            if method == "POST" and self.fast_reports:
                m = reports.FAST_PATH.match(path)
                if m is not None:
                    label = _REPORTS_LABEL
                    engine = scope["app"].state.engine
                    limited = self._limited(receive, limit)
                    await reports.report_asgi(engine, m.group(1), scope, limited, send_wrapper)
                    return
            await self.app(scope, self._limited(receive, limit), send_wrapper)
        finally:
            if label is None:
                route = scope.get("route")
                label = getattr(route, "path_format", None) or getattr(route, "path", None)
                if label is None:
                    label = _plain_route_label(scope, path)
                elif path.startswith("/v1/") and not label.startswith("/v1"):
                    label = "/v1" + label  # the route of a router included under /v1
            metrics.HTTP_REQUESTS.labels(method, label, str(status_holder[0])).inc()
            metrics.HTTP_SECONDS.labels(method, label).observe(time.perf_counter() - t0)

    def _body_limit(self, scope: Scope) -> tuple[int, str]:
        """(limit, its setting) for this request's body: the binary report encodings may
        use DOCL_MAX_BODY_BYTES; everything else is JSON (or refused), parsed while holding
        the interpreter, and gets the smaller DOCL_MAX_JSON_BYTES."""
        for k, v in scope["headers"]:
            if k == b"content-type":
                ctype = v.split(b";")[0].strip().lower()
                if ctype in _BINARY_TYPES:
                    return self.max_body, "DOCL_MAX_BODY_BYTES"
                break
        return self.max_json, "DOCL_MAX_JSON_BYTES"

    def _reject(self, scope: Scope, path: str) -> Any:
        headers = dict(scope["headers"])
        if self.token is not None and path.startswith("/v1"):
            got = headers.get(b"authorization")
            if got is None:
                return problem_response(
                    401,
                    "this server needs 'Authorization: Bearer <token>' on /v1 routes",
                    instance=path,
                    headers={"WWW-Authenticate": 'Bearer realm="docl"'},
                )
            # RFC 9110 §11.1: the scheme is case-insensitive ("bearer", "BEARER").
            scheme, _, credentials = got.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(
                credentials.strip(b" \t"), self.token
            ):
                return problem_response(
                    401,
                    "wrong bearer token",
                    instance=path,
                    headers={"WWW-Authenticate": 'Bearer realm="docl", error="invalid_token"'},
                )
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return problem_response(400, "Content-Length is not a number", instance=path)
            limit, setting = self._body_limit(scope)
            if size > limit:
                return problem_response(
                    413,
                    f"request body of {size} bytes is over this server's limit of "
                    f"{limit} bytes ({setting}){_hint(setting)}",
                    instance=path,
                )
        return None

    def _limited(self, receive: Receive, limit: tuple[int, str]) -> Receive:
        """Count the streamed body (a chunked or lying client hits the same 413) and time
        it: the whole body within DOCL_BODY_TIMEOUT_S of the headers, each chunk within
        DOCL_BODY_IDLE_TIMEOUT_S of the one before (408 otherwise). Once the body is in,
        receive() is passed through untimed (it then waits for a disconnect)."""
        most, setting = limit
        seen = 0
        done = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout
        idle = self.body_idle

        async def wrapped() -> Message:
            nonlocal seen, done
            if done:
                return await receive()
            now = loop.time()
            whole = deadline <= now + idle  # the request's deadline comes first
            try:
                async with asyncio.timeout(min(deadline - now, idle)):
                    message = await receive()
            except TimeoutError:
                if whole:
                    why = (
                        f"the request body did not arrive within {self.body_timeout:g} s "
                        "(DOCL_BODY_TIMEOUT_S)"
                    )
                else:
                    why = f"no byte of the request body for {idle:g} s (DOCL_BODY_IDLE_TIMEOUT_S)"
                raise RequestTimeout(
                    f"{why}; {seen} bytes received; the connection is closed"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > most:
                    raise PayloadTooLarge(
                        f"request body is over this server's limit of {most} bytes "
                        f"({setting}){_hint(setting)}"
                    )
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        return wrapped


#: Bodies that may use DOCL_MAX_BODY_BYTES: the binary reports and raw float32 (signals).
_BINARY_TYPES = (
    REPORT_CONTENT_TYPE.encode(),
    REPORTS_CONTENT_TYPE.encode(),
    INDICES_CONTENT_TYPE.encode(),
)


def _hint(setting: str) -> str:
    if setting == "DOCL_MAX_JSON_BYTES":
        return f"; send large reports in the binary encoding ({REPORT_CONTENT_TYPE})"
    return ""


def _plain_route_label(scope: Scope, path: str) -> str:
    """The metrics label of a request no FastAPI route matched: Starlette's own
    routes (``/openapi.json``) by their path, a mount (the Swagger UI's assets)
    by its prefix, anything else ``unmatched`` (404s must not grow the label set)."""
    for route in getattr(scope.get("app"), "routes", ()):
        prefix = getattr(route, "path", None)
        if isinstance(route, Mount) and prefix and path.startswith(prefix + "/"):
            return prefix + "/{path}"
        if isinstance(route, Route) and prefix == path:
            return path
    return "unmatched"


def create_app(settings: Settings | None = None) -> FastAPI:
    """The score server app. ``settings`` default: read from ``DOCL_*`` environment variables."""
    settings = settings or Settings()
    # Selection methods of the docl.methods entry points and $DOCL_METHODS (docs/methods.md).
    methods.load_plugins()
    sampling.set_draw_threads(settings.draw_threads)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded: RedisProcess | None = None
        url = settings.redis_url
        if url is None:
            embedded = embedded_redis(settings)
            # Started from this (the main) thread on purpose: the child's parent-death
            # signal is tied to the thread that forked it, and executor threads come and go.
            embedded.start()
            url = embedded.unix_url
            log.info("%s", embedded.describe())
        store = RedisStore.from_url(
            url,
            timeout_s=settings.redis_timeout_s,
            max_connections=settings.redis_max_connections,
            dedup_ttl_s=settings.dedup_ttl_s,
            wait_replicas=settings.redis_wait_replicas,
            wait_ms=settings.redis_wait_ms,
        )
        try:
            await store.load_scripts()
        except ClusterStateError:  # a cluster that answers but does not serve: refuse to start
            await store.close()
            raise
        except Exception as e:  # Redis not up yet: scripts load on first use (NOSCRIPT -> load)
            log.warning("could not load Lua scripts at start-up (%s); /readyz will say so", e)
        app.state.engine = Engine(store, settings)
        app.state.redis_url = url
        app.state.embedded = embedded
        try:
            yield
        finally:
            reports.shutdown_json_pool()
            await store.close()
            if embedded is not None:
                embedded.stop()

    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("docl")
    except PackageNotFoundError:
        ver = "0"
    app = FastAPI(
        title="docl score server",
        version=ver,
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served by routes.index with local assets (no CDN)
        redoc_url=None,
        openapi_tags=[
            {"name": "runs", "description": "Create, list, read and delete runs."},
            {"name": "methods", "description": "The selection methods this server knows."},
            {"name": "plan", "description": "The epoch plan of a run."},
            {"name": "epochs", "description": "Draw epochs and read per-rank index shards."},
            {
                "name": "reports",
                "description": "Report mini-batch outputs; scores update on arrival.",
            },
            {"name": "scores", "description": "Per-sample scores, visits, lr-sums."},
            {
                "name": "signals",
                "description": "Named per-sample float32 columns a run keeps (e.g. an "
                "irreducible loss), uploaded once and read by draws.",
            },
            {"name": "stats", "description": "Aggregates for dashboards."},
            {"name": "health", "description": "Liveness, readiness, Prometheus metrics."},
        ],
    )
    app.state.settings = settings
    errors.install(app)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(bearer)])
    for module in (runs, method_routes, plan, epochs, reports, scores, signals, stats):
        v1.include_router(module.router)
    app.include_router(v1)
    app.include_router(health.router)
    index.install(app)
    app.add_middleware(GatewayMiddleware, settings=settings)
    fastapi_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        return complete_openapi(fastapi_openapi())  # in place on FastAPI's cached document

    app.openapi = openapi  # type: ignore[method-assign]
    return app
