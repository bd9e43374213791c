"""Stats: what a dashboard plots (score quantiles and histogram, selection counts, counters)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from docl.services.deps import EngineDep
from docl.services.routes._common import RUN_ID_DOC, problems
from docl.wire.models import Stats

router = APIRouter(tags=["stats"])


@router.get(
    "/runs/{run_id}/stats",
    response_model=Stats,
    summary="Score quantiles, histograms, counters",
    responses=problems(404),
)
async def get_stats(
    engine: EngineDep, run_id: Annotated[str, Path(description=RUN_ID_DOC)]
) -> Stats:
    """Quantiles, mean/std and a 20-bin histogram of the set scores; how many samples were
    drawn 0, 1, 2, … times (`selection`); visit totals and report counters."""
    return await engine.stats(run_id)
