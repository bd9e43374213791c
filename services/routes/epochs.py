"""Epochs: draw (idempotent per epoch number), re-read, and per-rank index shards."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request, Response

from docl.services.deps import EngineDep
from docl.services.routes._common import RUN_ID_DOC, problems
from docl.wire.encoding import INDICES_CONTENT_TYPE
from docl.wire.models import Epoch, EpochDraw, Indices

router = APIRouter(tags=["epochs"])

RunIdPath = Annotated[str, Path(description=RUN_ID_DOC)]
EpochPath = Annotated[int, Path(ge=0, description="Epoch number, from 0.")]


@router.post(
    "/runs/{run_id}/epochs",
    response_model=Epoch,
    summary="Draw the next epoch, or epoch e (idempotent)",
    responses=problems(404, 409, 422),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {
                "application/json": {
                    "schema": {"$ref": "#/components/schemas/EpochDraw"},
                    "examples": {
                        "next": {"summary": "draw the next epoch", "value": {}},
                        "numbered": {"summary": "draw (or re-read) epoch 3", "value": {"epoch": 3}},
                    },
                }
            },
        }
    },
)
async def draw_epoch(
    engine: EngineDep,
    run_id: RunIdPath,
    body: Annotated[EpochDraw | None, Body()] = None,
) -> Epoch:
    """Draw epoch `e` (body `{"epoch": e}`) or the next one (`{}` or no body).

    Drawing is idempotent per epoch number: the first call stores the drawn subset,
    every later call (from any rank, concurrently or not) returns the same epoch.
    Epochs are drawn in order: asking for `e > last + 1` is a 409, and `e` beyond
    the plan a 422. Warmup and refresh epochs are uniform permutations of all
    samples; selection epochs are drawn by the run's method from the stored scores.
    """
    return await engine.draw_epoch(run_id, body.epoch if body is not None else None)


@router.get(
    "/runs/{run_id}/epochs/{epoch}",
    response_model=Epoch,
    summary="Re-read a drawn epoch",
    responses=problems(404, 422),
)
async def get_epoch(engine: EngineDep, run_id: RunIdPath, epoch: EpochPath) -> Epoch:
    return await engine.get_epoch(run_id, epoch)


@router.get(
    "/runs/{run_id}/epochs/{epoch}/indices",
    response_model=Indices,
    summary="A rank's shard of a drawn epoch (JSON or raw int64)",
    responses={
        200: {
            "description": "The shard in training order: JSON, or with `Accept: application/octet-stream` "
            "the raw little-endian int64 array (headers X-Docl-Shard-Size, X-Docl-Offset, X-Docl-Epoch-Size).",
            "content": {
                "application/json": {
                    "example": {
                        "epoch": 0,
                        "rank": 1,
                        "world": 2,
                        "offset": 0,
                        "shard_size": 3,
                        "epoch_size": 6,
                        "indices": [5, 0, 3],
                    }
                },
                INDICES_CONTENT_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **problems(404, 410, 422),
    },
)
async def get_indices(
    engine: EngineDep,
    request: Request,
    run_id: RunIdPath,
    epoch: EpochPath,
    rank: Annotated[int, Query(description="This rank, 0 <= rank < world.")] = 0,
    world: Annotated[int, Query(description="Number of ranks sharing the epoch.")] = 1,
    offset: Annotated[int, Query(description="Skip this many indices of the shard.")] = 0,
    limit: Annotated[int | None, Query(description="Return at most this many.")] = None,
) -> Response | Indices:
    """Rank `r` of `w` gets the contiguous slice `[r·size//w, (r+1)·size//w)` of the
    epoch's stored order, pageable with `offset`/`limit` inside that slice."""
    data, shard, size = await engine.indices(
        run_id, epoch, rank=rank, world=world, offset=offset, limit=limit
    )
    if INDICES_CONTENT_TYPE in request.headers.get("accept", ""):
        return Response(
            content=data,
            media_type=INDICES_CONTENT_TYPE,
            headers={
                "X-Docl-Shard-Size": str(shard),
                "X-Docl-Offset": str(offset),
                "X-Docl-Epoch-Size": str(size),
            },
        )
    import numpy as np

    return Indices(
        epoch=epoch,
        rank=rank,
        world=world,
        offset=offset,
        shard_size=shard,
        epoch_size=size,
        indices=np.frombuffer(data, dtype="<i8").tolist(),
    )
