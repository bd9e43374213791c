"""Selection methods: what this server's registry holds (built-ins and plugins)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from docl.services.methods import SelectionMethod, registry

router = APIRouter(tags=["methods"])


def _default_pool_ratio(m: SelectionMethod[Any]) -> int | None:
    """The default of a step-level method's ``pool_ratio`` field (None: not step-level,
    or a plugin whose pool ratio has no default)."""
    if m.step is None:
        return None
    default = m.params.model_fields["pool_ratio"].get_default(call_default_factory=True)
    return default if isinstance(default, int) else None


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
    params: dict[str, Any] = Field(..., description="JSON schema of its method_params.")
    step_level: bool = Field(
        False,
        description="It selects per step: in its selection epochs each step forwards a "
        "candidate pool of pool_ratio times its batch without gradients and trains on the "
        "batch its rule picks from the pool's fresh per-sample losses (docs/methods.md).",
    )
    pool_ratio: int | None = Field(
        None,
        description="A step-level method's default pool ratio m (its method_params field "
        "pool_ratio); null for a method that trains every sample of its steps.",
    )


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
                params=m.params.model_json_schema(),
                step_level=m.step is not None,
                pool_ratio=_default_pool_ratio(m),
            )
            for m in registry().values()
        ]
    )
