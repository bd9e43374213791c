"""Every error the server returns is an RFC 9457 problem (``application/problem+json``).

Raise one of the :class:`ProblemError` subclasses anywhere (route, engine,
middleware); :func:`install` registers handlers that render them, FastAPI's
request-validation errors (422 with a readable ``detail`` naming each bad field)
and Starlette's own HTTP errors (404 unknown path, 405, ...) the same way. An
unexpected exception becomes a 500 problem (logged with its traceback); every
failure of the store (storage's :class:`~docl.services.storage.StoreError`: the Redis
store translates redis-py's errors into it) a 503 with ``Retry-After``
(:func:`classify_store_error`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from docl.services.storage import NotReplicated, PartitionUnavailable, StoreError
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
    "allowed_methods",
    "classify_store_error",
    "format_validation_errors",
    "install",
    "problem_response",
    "store_error_kinds",
    "store_error_response",
    "unexpected_response",
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


def store_error_kinds() -> tuple[type[Exception], ...]:
    """Every exception class a call to the store raises for a failure of the store:
    storage's :class:`~docl.services.storage.StoreError` (the Redis store translates
    redis-py's and its cluster client's errors into it). Each maps to an answer in
    :func:`store_error_response`."""
    return (StoreError,)


def classify_store_error(exc: BaseException) -> tuple[int, int, str] | None:
    """(HTTP status, Retry-After seconds, what failed, for the client) of a store error,
    or None for a bug of ours (a 500). The one mapping (issue 19: never a 500 for the
    store being away, failing over or refusing writes; the text names what failed, never
    where the store lives), on storage's error types:

    * :class:`~docl.services.storage.NotReplicated` (a report applied but not on enough
      replicas in time, ``DOCL_REDIS_WAIT_REPLICAS``): 503, Retry-After 1;
    * :class:`~docl.services.storage.PartitionUnavailable` (a partition of a partitioned
      run unreachable): 503, Retry-After 1, naming the partition;
    * :class:`~docl.services.storage.StoreUnavailable` (the connection lost or refused, a
      timeout, the store still loading) and :class:`~docl.services.storage.StoreFailover`
      (a Redis Cluster failing over or not serving every slot, ``cluster_state`` not ok):
      503, Retry-After 1;
    * :class:`~docl.services.storage.StoreRefused` (up but refusing writes: ``OOM``,
      ``MISCONF``, ``READONLY``): 503, Retry-After 5;
    * :class:`~docl.services.storage.StoreFault` and anything else: None (a 500, logged).

    Which redis-py error is which of these is ``services/redis/errors.py``'s.
    """
    if isinstance(exc, StoreError) and exc.retry_after is not None:
        return 503, exc.retry_after, exc.detail
    return None


def store_error_response(exc: BaseException, *, method: str, path: str) -> JSONResponse:
    """The one mapping of a store error to an HTTP answer (both report paths and every
    route): :func:`classify_store_error`'s, logged with the full text (addresses
    included); anything it does not know is a 500 (a bug of ours), logged with its
    traceback."""
    from docl.services import metrics

    got = classify_store_error(exc)
    if got is None:
        log.error("store error in %s %s", method, path, exc_info=exc)
        detail = exc.detail if isinstance(exc, StoreError) else f"internal error: {exc}"
        return problem_response(500, detail, instance=path)
    assert isinstance(exc, StoreError)
    status, retry_after, detail = got
    metrics.REDIS_ERRORS.labels(kind=exc.kind).inc()
    if isinstance(exc, PartitionUnavailable) and exc.reason is not None:
        metrics.partition_unavailable(exc.reason)
    elif isinstance(exc, NotReplicated) and exc.where:  # a partition's replicas did not ack
        metrics.partition_unavailable("not_replicated")
    level = logging.ERROR if retry_after > 1 else logging.WARNING
    log.log(level, "redis error during %s %s: %s: %s", method, path, exc.kind, exc)
    return problem_response(
        status, detail, instance=path, headers={"Retry-After": str(retry_after)}
    )


def unexpected_response(exc: Exception, *, method: str, path: str) -> JSONResponse:
    """A 500 problem for an exception nobody expected (logged with its traceback)."""
    log.error("unhandled error in %s %s", method, path, exc_info=exc)
    return problem_response(500, f"internal error: {type(exc).__name__}: {exc}", instance=path)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers at this path (for ``Allow``): Starlette
    names only the methods of the first route whose path matched. Read from the app's
    OpenAPI paths and its undocumented plain routes (/docs, /openapi.json), compiled once."""
    from starlette.routing import Route, compile_path

    app = request.app
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        table = []
        for path, operations in app.openapi().get("paths", {}).items():
            table.append((compile_path(path)[0], {m.upper() for m in operations}))
        for route in app.router.routes:
            if isinstance(route, Route) and route.methods:
                table.append((route.path_regex, set(route.methods)))
        app.state.allow_table = table
    methods: set[str] = set()
    for regex, ms in table:
        if regex.match(request.url.path):
            methods |= ms
    return sorted(methods)  # HEAD only where a route answers it (plain Routes; not APIRoutes)


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on ``app``."""

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        status = exc.status_code
        headers = dict(exc.headers) if exc.headers else None
        if not isinstance(exc, ProblemError) and status == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        elif status == 405:
            allow = allowed_methods(request)
            headers = {**(headers or {}), "Allow": ", ".join(allow)}
            detail = f"{request.method} is not allowed on {request.url.path}; allowed: {', '.join(allow)}"
        elif status == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI answers 400 when the body is not UTF-8 or nests deeper than Python's
            # json can go; any other undecodable JSON is a 422 (json_invalid), as here.
            why = (
                "nested too deeply" if isinstance(exc.__cause__, RecursionError) else exc.__cause__
            )
            status, detail = 422, f"body: Invalid JSON: {why}"
        return problem_response(
            status,
            detail,
            instance=request.url.path,
            headers=headers,
            type=getattr(exc, "type", "about:blank"),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            422, format_validation_errors(exc.errors()), instance=request.url.path
        )

    async def _store(request: Request, exc: Exception) -> JSONResponse:
        return store_error_response(exc, method=request.method, path=request.url.path)

    for kind in store_error_kinds():
        app.add_exception_handler(kind, _store)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return unexpected_response(exc, method=request.method, path=request.url.path)
