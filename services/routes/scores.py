"""Scores: every sample's EMA score, visits and lr-sum (JSON or binary)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from docl.services.deps import EngineDep
from docl.services.routes._common import RUN_ID_DOC, problems
from docl.wire.encoding import SCORES_CONTENT_TYPE, encode_scores
from docl.wire.models import Scores

router = APIRouter(tags=["scores"])


@router.get(
    "/runs/{run_id}/scores",
    response_model=Scores,
    summary="Per-sample scores, visits and lr-sums (a page)",
    responses={
        200: {
            "description": "JSON (unset values are null) or, with `Accept: application/vnd.docl.scores.v1`, "
            "the binary layout of docs/api.md. Header X-Docl-Next-Offset when more samples follow.",
            "content": {
                "application/json": {
                    "example": {
                        "offset": 0,
                        "scores": [0.12, None],
                        "visits": [3, 0],
                        "lr_sums": [1.5, None],
                    }
                },
                SCORES_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **problems(404, 422),
    },
)
async def get_scores(
    engine: EngineDep,
    request: Request,
    run_id: Annotated[str, Path(description=RUN_ID_DOC)],
    offset: Annotated[int, Query(description="First sample.")] = 0,
    limit: Annotated[
        int | None,
        Query(
            description="At most this many samples (default: up to the page size, ~64 MB of records)."
        ),
    ] = None,
) -> Response:
    off, scores, visits, lr_sums = await engine.scores(run_id, offset, limit)
    st = await engine.state(run_id)
    headers = {"X-Docl-Total": str(st.config.num_samples)}
    end = off + int(scores.shape[0])
    if end < st.config.num_samples and (limit is None or scores.shape[0] == limit):
        headers["X-Docl-Next-Offset"] = str(end)
    if SCORES_CONTENT_TYPE in request.headers.get("accept", ""):
        return Response(
            content=encode_scores(scores, visits, lr_sums, offset=off),
            media_type=SCORES_CONTENT_TYPE,
            headers=headers,
        )
    import numpy as np

    doc = Scores(
        offset=off,
        scores=[None if np.isnan(v) else v for v in scores.astype(np.float64).tolist()],
        visits=visits.astype(np.int64).tolist(),
        lr_sums=[None if np.isnan(v) else v for v in lr_sums.tolist()],
    )
    return Response(content=doc.model_dump_json(), media_type="application/json", headers=headers)
