"""The plan: every epoch's phase, loss, size, steps and learning-rate range."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from docl.services.deps import EngineDep
from docl.services.routes._common import RUN_ID_DOC, problems
from docl.wire.models import Plan

router = APIRouter(tags=["plan"])


@router.get(
    "/runs/{run_id}/plan",
    response_model=Plan,
    summary="The run's epoch plan",
    responses=problems(404),
)
async def get_plan(engine: EngineDep, run_id: Annotated[str, Path(description=RUN_ID_DOC)]) -> Plan:
    """A pure function of the run's config (cyclical training: warmup, selection episodes,
    refresh epochs). Workers follow it; each drawn epoch repeats its row with per-step LRs."""
    return await engine.get_plan(run_id)
