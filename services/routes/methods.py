"""Selection methods: what this server's registry holds (built-ins and plugins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from docl.services.methods import registry

router = APIRouter(tags=["methods"])


class MethodInfo(BaseModel):
    name: str
    summary: str
    signal: str = Field(..., description="docl | docl-nr | loss | none: what its draws read.")
    size: str = Field(..., description="Subset-size schedule: full | shrink | grow | drawn.")
    weights: bool = Field(..., description="Its epochs carry per-sample loss weights.")
    uniform: bool = Field(..., description="A uniform control (draws read no signal).")
    signals: list[str] = Field(
        default_factory=list,
        description="The per-sample signal columns it reads (uploaded to the run with "
        "PUT /v1/runs/{run_id}/signals/{name}; an epoch-level method's selection draws "
        "wait for them with 409).",
    )
    step: bool = Field(False, description="It selects per step from a candidate pool.")
    params: dict[str, Any] = Field(..., description="JSON schema of its method_params.")


class MethodList(BaseModel):
    methods: list[MethodInfo]


@router.get("/methods", response_model=MethodList, summary="The selection methods")
async def list_methods() -> MethodList:
    """Every method ``POST /v1/runs`` accepts, with the JSON schema of its ``method_params``."""
    return MethodList(
        methods=[
            MethodInfo(
                name=m.name,
                summary=m.summary,
                signal=m.signal,
                size=m.size,
                weights=m.weights,
                uniform=m.uniform,
                signals=list(m.signals),
                step=m.step is not None,
                params=m.params.model_json_schema(),
            )
            for m in registry().values()
        ]
    )
