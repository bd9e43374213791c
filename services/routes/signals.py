"""Signals: named per-sample float32 columns of a run (binary on the wire).

``PUT /v1/runs/{run}/signals/{name}?start=&stop=`` takes exactly 4·(stop − start) bytes
of little-endian float32 (``application/octet-stream``; default the whole column,
[0, num_samples)): a DDP rank uploads its own contiguous slice. The body's size is
checked from its Content-Length before a byte is read (and counted while streamed
without one): more than a whole column's 4·n bytes is 413, any other size than the
slice's 422. ``GET …/signals/{name}?start=&stop=`` answers the values as the same bytes
(one page of at most ``DOCL_MAX_PAGE_BYTES``; ``X-Docl-Next-Offset`` when more follow);
``GET …/signals`` lists the names.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Path, Query, Request, Response

from docl.services.deps import EngineDep
from docl.services.engine.signals import check_slice
from docl.services.errors import ProblemError, Unprocessable, UnsupportedMediaType
from docl.services.routes._common import RUN_ID_DOC, problems
from docl.wire.encoding import INDICES_CONTENT_TYPE as OCTET_STREAM
from docl.wire.models import SIGNAL_NAME_PATTERN, SignalAck, SignalList

router = APIRouter(tags=["signals"])

NAME_DOC = "The signal's name: 1-32 characters of [a-z0-9_], starting with a letter."
_BODY_DOC = "n little-endian float32 values (n = stop − start), finite or NaN (unknown)."


class ContentTooLarge(ProblemError):
    """413: the body is larger than any slice of this run's signal can be."""

    status = 413


@router.put(
    "/runs/{run_id}/signals/{name}",
    response_model=SignalAck,
    summary="Upload a per-sample signal column, or a contiguous slice of it (binary)",
    responses=problems(404, 409, 403, 413, 415, 422),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                OCTET_STREAM: {
                    "schema": {"type": "string", "format": "binary", "description": _BODY_DOC}
                }
            },
        }
    },
)
async def put_signal(
    engine: EngineDep,
    request: Request,
    run_id: Annotated[str, Path(description=RUN_ID_DOC)],
    name: Annotated[str, Path(description=NAME_DOC, pattern=SIGNAL_NAME_PATTERN)],
    start: Annotated[int, Query(description="First sample of the slice written.")] = 0,
    stop: Annotated[
        int | None, Query(description="One past its last sample (default: num_samples).")
    ] = None,
) -> Response:
    """Write samples [start, stop) of signal `name` (registering the name on its first
    upload). Values no upload wrote read as NaN. At most `DOCL_MAX_SIGNALS` names per
    run (409 for a new one past it); each takes 4 bytes per sample of the run's memory
    quota (403/422 as for a create). Nothing is written unless the whole body is valid."""
    st = await engine.state(run_id)  # 404 before a byte of the body is read
    n = st.config.num_samples
    lo, hi = check_slice(st, start, stop)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != OCTET_STREAM:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype!r}: a signal is sent as {OCTET_STREAM} "
            "(little-endian float32)"
        )
    want = 4 * (hi - lo)
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        _check_size(int(length), want, n, lo, hi)
    body = bytearray()
    async for chunk in request.stream():  # without a Content-Length: counted as it comes
        body += chunk
        if len(body) > 4 * n:
            _check_size(len(body), want, n, lo, hi)
    _check_size(len(body), want, n, lo, hi)
    values = np.frombuffer(bytes(body), dtype="<f4")
    ack = await engine.put_signal(run_id, name, lo, values)
    return Response(content=ack.model_dump_json(), media_type="application/json")


def _check_size(size: int, want: int, n: int, lo: int, hi: int) -> None:
    if size > 4 * n:
        raise ContentTooLarge(
            f"a signal body of {size} bytes is larger than a whole column of this run "
            f"({n} float32 = {4 * n} bytes)"
        )
    if size != want:
        raise Unprocessable(
            f"the body has {size} bytes; the slice [{lo}, {hi}) needs exactly "
            f"4 × {hi - lo} = {want} bytes of little-endian float32"
        )


@router.get(
    "/runs/{run_id}/signals/{name}",
    summary="Read a per-sample signal column (binary float32)",
    responses={
        200: {
            "description": "Little-endian float32 values of samples [start, stop) (NaN: "
            "unknown). Headers X-Docl-Start, X-Docl-Total and, when the page stopped "
            "short of `stop`, X-Docl-Next-Offset.",
            "content": {OCTET_STREAM: {"schema": {"type": "string", "format": "binary"}}},
        },
        **problems(404, 422),
    },
)
async def get_signal(
    engine: EngineDep,
    run_id: Annotated[str, Path(description=RUN_ID_DOC)],
    name: Annotated[str, Path(description=NAME_DOC, pattern=SIGNAL_NAME_PATTERN)],
    start: Annotated[int, Query(description="First sample.")] = 0,
    stop: Annotated[
        int | None, Query(description="One past the last sample (default: num_samples).")
    ] = None,
) -> Response:
    values, lo, hi, n = await engine.get_signal(run_id, name, start, stop)
    headers = {"X-Docl-Start": str(lo), "X-Docl-Total": str(n)}
    if hi < (n if stop is None else stop):
        headers["X-Docl-Next-Offset"] = str(hi)
    return Response(
        content=np.ascontiguousarray(values, dtype="<f4").tobytes(),
        media_type=OCTET_STREAM,
        headers=headers,
    )


@router.get(
    "/runs/{run_id}/signals",
    response_model=SignalList,
    summary="The run's signal columns",
    responses=problems(404),
)
async def list_signals(
    engine: EngineDep, run_id: Annotated[str, Path(description=RUN_ID_DOC)]
) -> SignalList:
    return await engine.list_signals(run_id)
