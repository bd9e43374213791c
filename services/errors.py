"""Every error the server returns is an RFC 9457 problem (``application/problem+json``).

Raise one of the :class:`ProblemError` subclasses anywhere (route, engine,
middleware); :func:`install` registers handlers that render them, FastAPI's
request-validation errors (422 with a readable ``detail`` naming each bad field)
and Starlette's own HTTP errors (404 unknown path, 405, ...) the same way. An
unexpected exception becomes a 500 problem (logged with its traceback) and a
lost Redis connection a 503 with ``Retry-After``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from docl.wire.models import Problem

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "Conflict",
    "Gone",
    "NotFound",
    "PayloadTooLarge",
    "ProblemError",
    "ServiceUnavailable",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
    "format_validation_errors",
    "install",
    "problem_response",
]

log = logging.getLogger("docl.services")

PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemError(StarletteHTTPException):
    """An HTTP error with a problem document. A Starlette HTTPException, so that
    FastAPI re-raises it untouched even from inside its own body parsing."""

    status = 500

    def __init__(
        self, detail: str, *, headers: dict[str, str] | None = None, type: str = "about:blank"
    ) -> None:
        super().__init__(status_code=self.status, detail=detail, headers=headers)
        self.type = type


class Unauthorized(ProblemError):
    status = 401

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer realm="docl"'})


class NotFound(ProblemError):
    status = 404


class Conflict(ProblemError):
    status = 409


class Gone(ProblemError):
    status = 410


class PayloadTooLarge(ProblemError):
    status = 413


class UnsupportedMediaType(ProblemError):
    status = 415


class Unprocessable(ProblemError):
    status = 422


class ServiceUnavailable(ProblemError):
    status = 503

    def __init__(self, detail: str, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


def problem_response(
    status: int,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    type: str = "about:blank",
) -> JSONResponse:
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body = Problem(type=type, title=title, status=status, detail=detail, instance=instance)
    return JSONResponse(
        body.model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_CONTENT_TYPE,
    )


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header"):
        head, rest = parts[0], parts[1:]
        return f"{head} field '{'.'.join(rest)}'" if rest else head
    return ".".join(parts) or "request"


def format_validation_errors(errors: Sequence[Any], *, limit: int = 5) -> str:
    """One readable sentence per error, e.g. "body field 'num_samples': Input should be
    greater than or equal to 1 (got 0)"."""
    lines = []
    for err in list(errors)[:limit]:
        msg = str(err.get("msg", "invalid"))
        where = _loc(err.get("loc", ()))
        got = ""
        if "input" in err and err.get("type") not in ("missing", "json_invalid"):
            text = repr(err["input"])
            got = f" (got {text[:60] + '…' if len(text) > 60 else text})"
        lines.append(f"{where}: {msg}{got}")
    more = len(errors) - limit
    if more > 0:
        lines.append(f"… and {more} more error(s)")
    return "; ".join(lines) or "invalid request"


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if not isinstance(exc, ProblemError) and exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        return problem_response(
            exc.status_code,
            detail,
            instance=request.url.path,
            headers=dict(exc.headers) if exc.headers else None,
            type=getattr(exc, "type", "about:blank"),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            422, format_validation_errors(exc.errors()), instance=request.url.path
        )

    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def _redis_down(request: Request, exc: Exception) -> JSONResponse:
        from docl.services import metrics

        metrics.REDIS_ERRORS.labels(kind=type(exc).__name__).inc()
        log.warning("redis unavailable during %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            503,
            f"the score store (Redis) is unavailable ({type(exc).__name__}: {exc}); retry shortly",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    app.add_exception_handler(RedisConnectionError, _redis_down)
    app.add_exception_handler(RedisTimeoutError, _redis_down)

    from redis.exceptions import ResponseError

    async def _redis_refused(request: Request, exc: Exception) -> JSONResponse:
        text = str(exc)
        if text.startswith(("OOM", "MISCONF", "READONLY")):
            # Redis is up but refuses writes: out of memory, a failing disk, a replica.
            log.error(
                "redis refused a write during %s %s: %s", request.method, request.url.path, text
            )
            return problem_response(
                503,
                f"the score store (Redis) refuses writes: {text}",
                instance=request.url.path,
                headers={"Retry-After": "5"},
            )
        log.exception("redis error in %s %s", request.method, request.url.path)
        return problem_response(
            500, f"internal error: Redis said: {text}", instance=request.url.path
        )

    app.add_exception_handler(ResponseError, _redis_refused)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return problem_response(
            500, f"internal error: {type(exc).__name__}: {exc}", instance=request.url.path
        )
