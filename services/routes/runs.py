"""Runs: create, list, read, delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Response, status

from docl.services.deps import EngineDep
from docl.services.routes._common import RUN_ID_DOC, problems
from docl.wire.models import Run, RunCreate, RunList

router = APIRouter(tags=["runs"])

#: ``GET /v1/runs``: runs per page unless ``limit`` says otherwise, and the most it may say.
RUNS_PAGE = 100
RUNS_PAGE_MAX = 1000

RunIdPath = Annotated[str, Path(description=RUN_ID_DOC)]


@router.post(
    "/runs",
    response_model=Run,
    status_code=status.HTTP_201_CREATED,
    summary="Create a run (idempotent for the same config)",
    responses={
        200: {"model": Run, "description": "A run with this id and the same config exists already"},
        **problems(403, 409, 413, 422),
    },
)
async def create_run(
    engine: EngineDep,
    response: Response,
    body: Annotated[RunCreate, Body()],
) -> Run:
    """Create a run: 201 with the new run; 200 if a run with this `run_id` and the same
    config exists (a retried create is harmless); 409 if it exists with another config;
    403 when the server holds `DOCL_MAX_RUNS` runs or the new one would take the runs'
    memory over `DOCL_MAX_TOTAL_BYTES`. Without `run_id` the server generates one."""
    run, created = await engine.create_run(body)
    if not created:
        response.status_code = status.HTTP_200_OK
    return run


@router.get(
    "/runs",
    response_model=RunList,
    summary="List runs, one page at a time",
    responses=problems(422),
)
async def list_runs(
    engine: EngineDep,
    after: Annotated[
        str | None,
        Query(
            pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$",
            description="Cursor: list the runs whose id sorts after this one (the `next` of "
            "the previous page).",
        ),
    ] = None,
    limit: Annotated[
        int, Query(ge=1, le=RUNS_PAGE_MAX, description="Most runs in this page.")
    ] = RUNS_PAGE,
) -> RunList:
    """A page of runs in run-id order; `next` is the cursor of the following page (null
    on the last one). Follow it with `?after=<next>`."""
    return await engine.list_runs(after=after, limit=limit)


@router.get(
    "/runs/{run_id}",
    response_model=Run,
    summary="A run: config, plan position, counters",
    responses=problems(404),
)
async def get_run(engine: EngineDep, run_id: RunIdPath) -> Run:
    return await engine.get_run(run_id)


@router.delete(
    "/runs/{run_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    summary="Delete a run and every key it has in Redis",
    responses=problems(404),
)
async def delete_run(engine: EngineDep, run_id: RunIdPath) -> Response:
    await engine.delete_run(run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
