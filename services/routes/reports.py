"""Reports: per-sample outputs of a trained mini-batch, scored on arrival."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response

from docl.client.models import ReportAck
from docl.client.wire import REPORT_CONTENT_TYPE, WireError, decode_report
from docl.services.deps import EngineDep
from docl.services.engine import report_arrays_from_json
from docl.services.errors import Unprocessable, UnsupportedMediaType
from docl.services.routes._common import RUN_ID_DOC, problems

router = APIRouter(tags=["reports"])

_BINARY_DOC = (
    "The binary report of docs/api.md: a 32-byte little-endian header "
    "(magic 'DOCR', version 1, flags, report_id length L, B, c, d, epoch, lr_sum float64), "
    "the report_id padded to 8 bytes, then int64 indices[B], float32 outputs[B, c], "
    "int64 targets[B] (or float32 [B, c] for regression) and optional float32 features[B, d]."
)


@router.post(
    "/runs/{run_id}/reports",
    response_model=ReportAck,
    summary="Report a mini-batch's outputs (JSON or binary)",
    responses={
        200: {
            "description": "Applied (or recognised as a duplicate: nothing changed).",
            "content": {
                "application/json": {
                    "examples": {
                        "applied": {"value": {"accepted": 2, "scored": 2, "duplicate": False}},
                        "duplicate": {"value": {"accepted": 2, "scored": 0, "duplicate": True}},
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
    it is ~3× cheaper for the server than JSON."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    body = await request.body()
    if ctype == REPORT_CONTENT_TYPE:
        try:
            rep = decode_report(body)
        except WireError as e:
            raise Unprocessable(f"malformed binary report: {e}") from None
    elif ctype in ("application/json", "text/json", ""):
        rep = report_arrays_from_json(body)
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {ctype!r}: send application/json or {REPORT_CONTENT_TYPE}"
        )
    ack = await engine.apply_report(run_id, rep)
    # Serialized here (not through response_model) to keep the hot path lean.
    return Response(content=ack.model_dump_json(), media_type="application/json")
