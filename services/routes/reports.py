"""Reports: per-sample outputs of a trained mini-batch, scored on arrival."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import re
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from starlette.types import Receive, Scope, Send

from docl.services.deps import EngineDep
from docl.services.embedded import die_with_parent
from docl.services.engine import Engine, report_arrays_from_json
from docl.services.errors import (
    ProblemError,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
    problem_response,
    store_error_kinds,
    store_error_response,
    unexpected_response,
)
from docl.services.routes._common import RUN_ID_DOC, problems
from docl.wire.encoding import (
    REPORT_CONTENT_TYPE,
    REPORTS_CONTENT_TYPE,
    ReportArrays,
    WireError,
    decode_report,
    decode_reports,
)
from docl.wire.models import ReportAck, ReportsAck

router = APIRouter(tags=["reports"])

_BINARY_DOC = (
    "The binary report of docs/api.md: a 32-byte little-endian header "
    "(magic 'DOCR', version 1, flags, report_id length L, B, c, d, epoch, lr_sum float64), "
    "the report_id padded to 8 bytes, then int64 indices[B], float32 outputs[B, c], "
    "int64 targets[B] (or float32 [B, c] for regression) and optional float32 features[B, d]."
)
_MULTI_DOC = (
    "Several binary reports in one request (docs/api.md): a 16-byte header (magic 'DOCM', "
    "version 1, K), then K times a uint64 length and one binary report of that length, "
    "padded to 8 bytes. The answer is a ReportsAck: one acknowledgement per report, in order."
)


@router.post(
    "/runs/{run_id}/reports",
    response_model=ReportAck,
    summary="Report a mini-batch's outputs (JSON or binary), or several at once",
    responses={
        200: {
            "description": "Applied (or recognised as a duplicate: nothing changed). A "
            "multi-report body is answered by a ReportsAck (one acknowledgement per report).",
            "content": {
                "application/json": {
                    "examples": {
                        "applied": {"value": {"accepted": 2, "scored": 2, "duplicate": False}},
                        "duplicate": {"value": {"accepted": 2, "scored": 0, "duplicate": True}},
                        "several": {
                            "value": {
                                "reports": [
                                    {"accepted": 2, "scored": 2, "duplicate": False},
                                    {"accepted": 2, "scored": 0, "duplicate": True},
                                ],
                                "accepted": 4,
                                "scored": 2,
                                "duplicates": 1,
                            }
                        },
                    }
                }
            },
        },
        **problems(404, 409, 413, 415, 422),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Report"}},
                REPORT_CONTENT_TYPE: {
                    "schema": {"type": "string", "format": "binary", "description": _BINARY_DOC},
                },
                REPORTS_CONTENT_TYPE: {
                    "schema": {"type": "string", "format": "binary", "description": _MULTI_DOC},
                },
            },
        }
    },
)
async def post_report(
    engine: EngineDep,
    request: Request,
    run_id: Annotated[str, Path(description=RUN_ID_DOC)],
) -> Response:
    """Score the reported samples (DESIGN §1): for each sample seen before whose
    `lr_sum` advanced, the dynamics (f − g)/ρ against the residual update its EMA
    score; every non-stale sample's stored output, lr-sum, visits and loss are
    replaced. A `report_id` is applied once: a replay answers `duplicate: true` and
    changes nothing. The whole report is validated before anything is written.
    Prefer the binary encoding (`Content-Type: application/vnd.docl.report.v1`):
    it is ~3× cheaper for the server than JSON. Several reports in one request
    (`application/vnd.docl.reports.v1`) are applied each exactly as if it came
    alone, and validated all before any is written."""
    body = await request.body()
    return await _answer(engine, run_id, request.headers.get("content-type", ""), body)


#: JSON bodies larger than this are parsed in a child process (:func:`parse_off_loop`);
#: smaller ones cost less than the hop and are parsed in place.
JSON_INLINE_BYTES = 64 * 1024

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _json_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # spawn: a fork of a process with threads (uvicorn, redis, executors) is unsafe.
            # die_with_parent: a SIGKILLed server leaves no parser behind.
            _pool = ProcessPoolExecutor(
                max_workers=1, mp_context=mp.get_context("spawn"), initializer=die_with_parent
            )
        return _pool


def shutdown_json_pool() -> None:
    """Stop the JSON-parsing child process, if one was started (the app's lifespan end)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def _parse_in_child(content_type: str, body: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse_reports(content_type, body)
    except ProblemError as e:  # sent back as plain values: exceptions may not pickle
        return "problem", (e.status_code, str(e.detail))


async def parse_off_loop(content_type: str, body: bytes) -> tuple[list[ReportArrays], bool]:
    """:func:`parse_reports` in a child process. Decoding JSON holds the interpreter for
    the whole call (a thread would not help): a 1 MiB report of one-digit numbers takes
    0.1-0.3 s of CPU here, which would stall every other request of this process."""
    loop = asyncio.get_running_loop()
    for attempt in range(2):
        try:
            kind, value = await loop.run_in_executor(
                _json_pool(), _parse_in_child, content_type, body
            )
            break
        except BrokenProcessPool:  # the child died (OOM killer, say): a new one, once
            shutdown_json_pool()
            if attempt:
                raise ServiceUnavailable(
                    "could not parse the JSON report: its parser died"
                ) from None
    if kind == "problem":
        status, detail = value
        raise (UnsupportedMediaType if status == 415 else Unprocessable)(detail)
    reps, multi = value
    return reps, multi


async def _answer(engine: Engine, run_id: str, content_type: str, body: bytes) -> Response:
    ctype = content_type or "application/json"
    if len(body) > JSON_INLINE_BYTES and not ctype.lower().startswith("application/vnd.docl."):
        reps, multi = await parse_off_loop(ctype, body)
    else:
        reps, multi = parse_reports(ctype, body)
    acks = await engine.apply_reports(run_id, reps)
    # Serialized here (not through response_model) to keep the path lean.
    if not multi:
        return Response(content=acks[0].model_dump_json(), media_type="application/json")
    doc = ReportsAck(
        reports=acks,
        accepted=sum(a.accepted for a in acks),
        scored=sum(a.scored for a in acks),
        duplicates=sum(a.duplicate for a in acks),
    )
    return Response(content=doc.model_dump_json(), media_type="application/json")


def parse_reports(content_type: str, body: bytes) -> tuple[list[ReportArrays], bool]:
    """Decode a report body by its Content-Type: (reports, whether it was a multi-report
    body). 422/415 problems when it does not parse."""
    ctype = content_type.split(";")[0].strip().lower()
    if ctype == REPORT_CONTENT_TYPE:
        try:
            return [decode_report(body)], False
        except WireError as e:
            raise Unprocessable(f"malformed binary report: {e}") from None
    if ctype == REPORTS_CONTENT_TYPE:
        try:
            return decode_reports(body), True
        except WireError as e:
            raise Unprocessable(f"malformed multi-report body: {e}") from None
    if ctype in ("application/json", "text/json", ""):
        return [report_arrays_from_json(body)], False
    raise UnsupportedMediaType(
        f"unsupported Content-Type {ctype!r}: send application/json, {REPORT_CONTENT_TYPE} "
        f"or {REPORTS_CONTENT_TYPE}"
    )


#: ``POST /v1/runs/{run}/reports`` as the gateway matches it (the run id alphabet of RunId).
#: What a store call may raise for a failure of the store (errors.store_error_kinds).
STORE_ERRORS = store_error_kinds()

FAST_PATH = re.compile(r"^/v1/runs/([A-Za-z0-9][A-Za-z0-9_.\-]{0,63})/reports$")


async def report_asgi(
    engine: Engine, run_id: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """The same route as :func:`post_report`, as a bare ASGI handler.

    The gateway middleware sends ``POST /v1/runs/{run}/reports`` here directly:
    FastAPI's routing and dependency solving cost more CPU than scoring a
    256-sample report, and this is the one route called thousands of times a
    second. Behaviour, responses and errors are identical; the FastAPI route
    above stays for OpenAPI and for paths the pattern does not match.
    """
    ctype = "application/json"
    for k, v in scope["headers"]:
        if k == b"content-type":
            ctype = v.decode("latin-1")
            break
    path = scope["path"]
    try:
        chunks = []
        while True:
            message = await receive()  # the gateway's receive: 413 when over the limit
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        response: Response = await _answer(engine, run_id, ctype, b"".join(chunks))
    except ProblemError as e:
        response = problem_response(
            e.status_code,
            str(e.detail),
            instance=path,
            headers=dict(e.headers) if e.headers else None,
        )
    except STORE_ERRORS as e:  # the same mapping as every FastAPI route (errors.install)
        response = store_error_response(e, method="POST", path=path)
    except Exception as e:
        response = unexpected_response(e, method="POST", path=path)
    await response(scope, receive, send)
