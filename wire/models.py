"""Wire schemas of the REST API v1.

These pydantic models are the contract between the score server, the SDK and
the workers. They live here once: the server imports them, the client returns
them (``docl.client.models`` re-exports this module for SDK users). Field names follow the flow's nouns: run -> plan -> epoch -> indices ->
report -> score. Extra fields may be added; the named ones are normative
(see docs/api.md).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "Epoch",
    "EpochDraw",
    "Histogram",
    "Indices",
    "Loss",
    "Method",
    "Phase",
    "Plan",
    "PlanEpoch",
    "Problem",
    "Report",
    "ReportAck",
    "ReportsAck",
    "Run",
    "RunCounters",
    "RunCreate",
    "RunList",
    "RunParams",
    "Scores",
    "SignalAck",
    "SignalList",
    "Stats",
    "Task",
]

Task = Literal["classification", "regression"]
Phase = Literal["warmup", "select", "refresh"]
Loss = Literal["l2", "task"]
#: A selection method's name. The server validates it against its method registry
#: (``docl.services.methods``: the built-in DoCL family, ``infobatch`` and any plugin);
#: ``GET /v1/methods`` lists them.
Method = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]

RunId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: Bodies a client sends are validated strictly: a JSON ``true`` is not the number 1,
#: ``0`` is not ``false`` and ``"5"`` is not 5 (an int is still a valid float), and
#: floats must be finite (a JSON ``1e400`` reads as infinity).
_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

#: Largest learning rate a plan accepts: far above any real schedule, and small enough
#: that a plan's sum of learning rates (at most DOCL_MAX_PLAN_STEPS of them) stays finite.
MAX_LR = 1e6


class RunParams(_Model):
    """Hyper-parameters of a run. Every field has a default; the plan is a pure
    function of (num_samples, method, epochs, params)."""

    model_config = _STRICT

    seed: int = Field(0, ge=0, le=2**63 - 1, description="Seed of every draw of this run.")
    batch_size: int = Field(
        128, ge=1, description="Global mini-batch size; steps per epoch = ceil(size / batch_size)."
    )
    # -- the plan (cyclical training) -------------------------------------------
    warmup_epochs: int = Field(
        5, ge=0, description="T0: uniform full-data epochs before selection."
    )
    episode_epochs: int = Field(
        3, ge=1, description="Selection epochs in the first episode (before its refresh epoch)."
    )
    episode_growth: float = Field(
        1.25,
        ge=1.0,
        description="Each episode has this many times the selection epochs of the last (rounded).",
    )
    refresh: bool = Field(
        True, description="One uniform full-data epoch at the end of every episode."
    )
    l2_phases: bool | None = Field(
        None,
        description="Train warmup/refresh epochs with the L2 loss on softmax (None: the method's default).",
    )
    lr_peak: float = Field(
        0.1, gt=0, le=MAX_LR, description="Peak learning rate of the first episode."
    )
    lr_min: float = Field(
        0.001, ge=0, le=MAX_LR, description="Floor learning rate of the first episode (<= lr_peak)."
    )
    lr_decay: float = Field(
        0.85, gt=0, le=1, description="Peak and floor are multiplied by this per episode."
    )
    gamma_k: float = Field(
        0.9, gt=0, le=1, description="Subset size factor per episode (DoCL shrinks, SPL/MCL grow)."
    )
    k_min: float = Field(
        0.2, gt=0, le=1, description="Smallest subset, as a fraction of num_samples."
    )
    k_decay: Literal["episode", "epoch"] = Field(
        "episode",
        description="Apply gamma_k at the end of every episode (paper) or every selection epoch.",
    )
    budget_batches: int | None = Field(
        None,
        ge=1,
        description="Stop the plan after this many optimizer steps (the last epoch is cut).",
    )
    # -- the score -----------------------------------------------------------------
    gamma: float = Field(0.9, ge=0, lt=1, description="EMA factor of the score (Eq. 8).")
    rho_power: float = Field(
        1.0, gt=0, description="Dynamics = (f - g) / rho**rho_power (the authors' code uses 0.1)."
    )
    exp3: bool = Field(
        False, description="Divide each new score by the sample's inclusion probability."
    )
    # -- the draw ------------------------------------------------------------------
    tau: float = Field(
        3.0,
        gt=0,
        description="Temperature of the Boltzmann draw, P ∝ exp(ŝ/τ). 3 on standardized scores "
        "won the learning benchmark (docs/results.md); the paper's 0.1 is nearly a top-k.",
    )
    normalize: Literal["std", "none"] = Field(
        "std",
        description="Standardize scores over scored samples before the draw ('none' = paper literal).",
    )
    # -- diversity pruning (Eq. 15) ------------------------------------------------
    diversity: bool | None = Field(
        None, description="Prune each drawn subset (None: the method's default)."
    )
    gamma_k_prime: float = Field(
        0.8, gt=0, le=1, description="Keep this fraction of the drawn subset."
    )
    lambda0: float = Field(
        1.0, ge=0, description="Weight of the facility-location term at the start."
    )
    gamma_lambda: float = Field(
        0.9, ge=0, le=1, description="lambda decays by this factor per selection epoch."
    )
    # -- storage -------------------------------------------------------------------
    output_dtype: Literal["float32", "float16"] = Field(
        "float32", description="Width of each stored output g_i."
    )

    @model_validator(mode="after")
    def _floor_below_peak(self) -> RunParams:
        if self.lr_min > self.lr_peak:
            raise ValueError(
                f"lr_min ({self.lr_min}) must not exceed lr_peak ({self.lr_peak}): "
                "the cosine schedule goes from lr_peak down to lr_min"
            )
        return self


class RunCreate(_Model):
    """Body of ``POST /v1/runs``."""

    run_id: RunId | None = Field(None, description="Client-chosen id; generated when absent.")
    num_samples: int = Field(..., ge=1, le=2**31 - 1, description="n: samples in the training set.")
    num_outputs: int = Field(
        ...,
        ge=1,
        le=65536,
        description="c: logits per sample (classification) or target width (regression).",
    )
    task: Task = "classification"
    task_name: str | None = Field(
        None,
        max_length=200,
        pattern=r"^[\x20-\x7e]*$",
        description="What is trained, e.g. 'mnist1d' or 'my_pkg.data:make_task' (shown by "
        "`docl runs list`); `task` is its kind.",
    )
    method: Method = "docl"
    method_params: dict[str, Any] = Field(
        default_factory=dict,
        description="The method's own parameters (e.g. infobatch: prune_ratio, delta), "
        "validated by the server against the method; the stored run holds every default.",
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="Number of epochs (optional when params.budget_batches is set).",
    )
    params: RunParams = Field(default_factory=RunParams)

    @model_validator(mode="after")
    def _needs_a_length(self) -> RunCreate:
        if self.epochs is None and self.params.budget_batches is None:
            raise ValueError("give 'epochs' or 'params.budget_batches' (or both)")
        return self

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "run_id": "mnist1d-docl-0",
                    "num_samples": 10000,
                    "num_outputs": 10,
                    "task": "classification",
                    "method": "docl",
                    "epochs": 40,
                    "params": {"seed": 0, "batch_size": 128, "tau": 0.1},
                }
            ]
        },
    )


class RunCounters(BaseModel):
    reports: int = 0
    duplicates: int = 0
    samples_reported: int = 0
    samples_scored: int = 0
    samples_skipped: int = 0


class Run(BaseModel):
    """``GET /v1/runs/{run}``: the config, where the run is in its plan, counters."""

    run_id: str
    num_samples: int
    num_outputs: int
    task: Task
    task_name: str | None = None
    method: Method
    method_params: dict[str, Any] = Field(default_factory=dict)
    epochs: int = Field(..., description="Number of epochs in the plan.")
    params: RunParams
    created_at: float
    epochs_drawn: int = Field(0, description="How many epochs have been drawn so far.")
    last_epoch: int | None = Field(None, description="Highest epoch number drawn, or null.")
    total_steps: int = Field(0, description="Optimizer steps in the whole plan.")
    counters: RunCounters = Field(default_factory=RunCounters)


class RunList(BaseModel):
    """One page of ``GET /v1/runs``, in run-id order."""

    runs: list[Run]
    next: str | None = Field(
        None,
        description="Cursor of the next page (pass it as `after`); null on the last page.",
    )


class PlanEpoch(BaseModel):
    """One epoch of the plan."""

    epoch: int
    episode: int = Field(..., description="0 is the warmup; selection episodes count from 1.")
    phase: Phase
    loss: Loss
    size: int = Field(..., description="Samples trained on in this epoch.")
    steps: int = Field(..., description="Optimizer steps in this epoch.")
    lr_start: float
    lr_end: float
    lr_sum_start: float = Field(
        ..., description="Sum of every learning rate applied before this epoch."
    )


class Plan(BaseModel):
    run_id: str
    num_epochs: int
    total_steps: int
    epochs: list[PlanEpoch]


class EpochDraw(_Model):
    """Body of ``POST /v1/runs/{run}/epochs``: empty draws the next epoch."""

    model_config = _STRICT

    epoch: int | None = Field(None, ge=0, description="Draw (or re-read) this epoch.")


class Epoch(PlanEpoch):
    """An epoch as drawn: the plan's row plus what the worker needs to follow it."""

    batch_size: int = Field(..., description="Global mini-batch size.")
    lr: list[float] = Field(..., description="The learning rate of each of this epoch's steps.")
    seed: int = Field(..., description="Seed this draw used.")
    weighted: bool = Field(
        False,
        description="The epoch's indices carry per-sample loss weights (GET …/indices "
        "returns them): train on mean(w_i · loss_i). False: every weight is 1.",
    )


class Indices(BaseModel):
    """JSON form of ``GET …/epochs/{e}/indices`` (binary: the int64 array, then with
    ``weights=true`` and a weighted epoch the float32 weights)."""

    epoch: int
    rank: int
    world: int
    offset: int = Field(
        ..., description="Position of the first returned index within the rank's shard."
    )
    shard_size: int = Field(..., description="Length of the rank's whole shard.")
    epoch_size: int = Field(..., description="Samples in the whole epoch (all ranks).")
    indices: list[int]
    weights: list[float] | None = Field(
        None,
        description="Per-index loss weights (float32), present only when the epoch has them "
        "(its `weighted` is true, e.g. method infobatch): train on mean(w_i · loss_i).",
    )


class Report(_Model):
    """Body of ``POST /v1/runs/{run}/reports`` in JSON (the binary encoding is in docs/api.md)."""

    report_id: str = Field(..., min_length=1, max_length=128)
    epoch: int = Field(..., ge=0)
    indices: list[int] = Field(..., min_length=1)
    outputs: list[list[float]] = Field(..., description="B × c model outputs (logits) f(x_i).")
    targets: list[int] | list[list[float]] = Field(
        ..., description="B class ids (classification) or B × c floats (regression)."
    )
    lr_sum: float = Field(..., description="Sum of learning rates applied before these outputs.")
    features: list[list[float]] | None = Field(
        None, description="Optional B × d features for diversity."
    )

    @field_validator("lr_sum")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("lr_sum must be finite")
        return v

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # no bool-as-int; NaN/Inf are refused with their position by the engine
        json_schema_extra={
            "examples": [
                {
                    "report_id": "3f1c7a2e-rank0-step17",
                    "epoch": 2,
                    "indices": [4, 17],
                    "outputs": [[2.1, -0.3, 0.5], [0.2, 1.7, -1.0]],
                    "targets": [0, 1],
                    "lr_sum": 1.37,
                }
            ]
        },
    )


class ReportAck(BaseModel):
    accepted: int = Field(..., description="Samples in the report.")
    scored: int = Field(
        ..., description="Samples whose score was updated (seen before, lr_sum advanced)."
    )
    duplicate: bool = Field(
        ..., description="True when this report_id was already applied: nothing changed."
    )


class ReportsAck(BaseModel):
    """The answer to a multi-report body (``application/vnd.docl.reports.v1``)."""

    reports: list[ReportAck] = Field(
        ..., description="One acknowledgement per report, in the order of the body."
    )
    accepted: int = Field(..., description="Samples in all the reports.")
    scored: int = Field(..., description="Samples whose score was updated, over all the reports.")
    duplicates: int = Field(..., description="Reports that had already been applied.")


class Scores(BaseModel):
    """``GET /v1/runs/{run}/scores``. Unset values are null."""

    offset: int = 0
    scores: list[float | None]
    visits: list[int]
    lr_sums: list[float | None]


#: A per-sample signal column's name (``PUT /v1/runs/{run}/signals/{name}``).
SIGNAL_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


class SignalAck(BaseModel):
    """``PUT /v1/runs/{run}/signals/{name}``: the slice written."""

    run_id: str
    name: str
    start: int = Field(..., description="First sample written.")
    stop: int = Field(..., description="One past the last sample written.")
    signals: int = Field(..., description="Signal columns the run keeps now.")


class SignalList(BaseModel):
    """``GET /v1/runs/{run}/signals``: the run's signal columns (each of ``length`` =
    num_samples float32 values; NaN where no upload wrote)."""

    run_id: str
    length: int = Field(..., description="Values per signal: the run's num_samples.")
    signals: list[str] = Field(..., description="The names, sorted.")
    max_signals: int = Field(..., description="Most signals a run may keep (DOCL_MAX_SIGNALS).")


class Histogram(BaseModel):
    edges: list[float]
    counts: list[int]


class Stats(BaseModel):
    """``GET /v1/runs/{run}/stats``: what a dashboard plots."""

    run_id: str
    num_samples: int
    scored: int = Field(..., description="Samples with a score.")
    visited: int = Field(..., description="Samples reported at least once.")
    visits_total: int
    quantiles: dict[str, float | None] = Field(
        ..., description="Score quantiles: min, p10, p25, p50, p75, p90, max."
    )
    mean: float | None
    std: float | None
    histogram: Histogram
    selection: Histogram = Field(..., description="How many samples were drawn 0, 1, 2, … times.")
    epochs_drawn: int
    counters: RunCounters


class Problem(BaseModel):
    """RFC 9457 problem details, as every error is returned."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str | None = None
