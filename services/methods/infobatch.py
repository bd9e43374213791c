"""InfoBatch (Qin et al., ICLR 2024, arXiv 2303.04947): unbiased dynamic pruning by loss.

Written from the paper, not from its code. Per epoch t of T:

* the signal of sample i is its latest loss ℓ_i (the server keeps the last loss each
  report implies; a never-visited sample has none and is always kept);
* while t < ⌈δ·T⌉, every sample whose loss is below the mean of the known losses
  is pruned with probability r, independently; a kept below-mean sample trains
  with weight 1/(1−r), every other sample with weight 1. For a below-mean sample
  E[w·1{kept}] = (1−r)/(1−r) = 1, so the expected weighted gradient of the epoch is
  the full-data gradient (tests/services/methods/test_infobatch.py checks it);
* from epoch ⌈δ·T⌉ on (the last (1−δ) of the epochs: annealing) every sample
  trains with weight exactly 1.

How it maps onto docl's plan: the method's size schedule is ``drawn`` — the plan
reserves the whole data set for each selection epoch, the draw decides how many
samples it keeps, and the epoch's steps are ⌈kept / batch_size⌉ (its learning
rates are the plan's slot for the epoch, resampled onto the fewer steps). T is
the number of epochs in the run's plan and t the epoch's number, so ``epochs·δ``
need not be a whole number (the reference code keeps the 1/(1−r) weights through
the annealing epochs unless it is). Warmup and refresh epochs of the plan stay
uniform, full-data, weight-1 epochs; to run InfoBatch as in the paper (every epoch
prunable) give ``params.warmup_epochs=0, params.refresh=false``. The draw is stored
once per epoch, so re-reading or re-iterating an epoch never prunes again.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from docl.services.methods import DrawContext, SelectionMethod, register_method
from docl.services.sampling import Draw, uniform_epoch

__all__ = [
    "INFOBATCH",
    "INFOBATCH_RANDOM",
    "InfoBatchParams",
    "annealing_start",
    "infobatch_draw",
    "infobatch_random_draw",
    "prune_by_loss",
]


class InfoBatchParams(BaseModel):
    """``method_params`` of ``infobatch``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prune_ratio: float = Field(
        0.5, ge=0.0, lt=1.0, description="r: probability of pruning a below-mean-loss sample."
    )
    delta: float = Field(
        0.875,
        gt=0.0,
        le=1.0,
        description="δ: prune in the first ⌈δ·T⌉ of the T epochs, full data (weight 1) after.",
    )


def annealing_start(num_epochs: int, delta: float) -> int:
    """The first epoch of the annealing phase: ⌈δ·T⌉ (float noise ignored: 0.875·8 = 7)."""
    return math.ceil(round(delta * num_epochs, 9))


def prune_by_loss(
    losses: np.ndarray, rng: np.random.Generator, prune_ratio: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One epoch's pruning: (kept positions ascending, their float32 weights, below-mean mask).

    Samples with a finite loss below the mean of the finite losses are pruned with
    probability ``prune_ratio`` each (one uniform per sample from ``rng``); the kept
    ones weigh 1/(1 − r). The rest are kept with weight 1."""
    ls = np.asarray(losses, dtype=np.float64)
    n = ls.shape[0]
    known = np.isfinite(ls)
    below = np.zeros(n, dtype=bool)
    if known.any():
        mean = float(ls[known].mean())
        below[known] = ls[known] < mean
    u = rng.random(n)
    keep = ~below | (u >= prune_ratio)
    kept = np.flatnonzero(keep).astype(np.int64)
    w = np.where(below[kept], np.float32(1.0 / (1.0 - prune_ratio)), np.float32(1.0))
    return kept, w.astype(np.float32), below


def infobatch_draw(ctx: DrawContext[InfoBatchParams]) -> Draw:
    p = ctx.params
    n, k = ctx.n, ctx.k
    if ctx.epoch >= annealing_start(ctx.num_epochs, p.delta):
        kept = np.arange(n, dtype=np.int64)
        w = np.ones(n, dtype=np.float32)
        incl = np.ones(n, dtype=np.float32)
    else:
        kept, w, below = prune_by_loss(ctx.losses, ctx.rng, p.prune_ratio)
        incl = np.where(below[kept], np.float32(1.0 - p.prune_ratio), np.float32(1.0))
    if kept.shape[0] > k:  # the plan's budget cut this epoch short: a uniform k of the kept
        pick = np.sort(ctx.rng.choice(kept.shape[0], size=k, replace=False))
        kept, w, incl = kept[pick], w[pick], incl[pick]
    return Draw(kept, incl.astype(np.float32) if ctx.exp3 else None, w.astype(np.float32))


def infobatch_random_draw(ctx: DrawContext[InfoBatchParams]) -> Draw:
    """The size-matched control of ``infobatch``: as many samples as InfoBatch's pruning
    keeps this epoch (the same law, the same Generator), but drawn uniformly from all n,
    every weight 1 — the same batches, no selection."""
    p = ctx.params
    n = ctx.n
    m = n
    if ctx.epoch < annealing_start(ctx.num_epochs, p.delta):
        m = int(prune_by_loss(ctx.losses, ctx.rng, p.prune_ratio)[0].shape[0])
    m = min(m, ctx.k)
    idx = uniform_epoch(n, ctx.rng, size=m, shuffle=False)
    return Draw(idx, np.full(m, m / n, np.float32) if ctx.exp3 and n else None)


INFOBATCH = register_method(
    SelectionMethod(
        name="infobatch",
        draw=infobatch_draw,
        signal="loss",
        size="drawn",
        params=InfoBatchParams,
        weights=True,
        control="infobatch-random",
        summary="InfoBatch: prune below-mean-loss samples with prob. r, reweight by 1/(1-r)",
    )
)

INFOBATCH_RANDOM = register_method(
    SelectionMethod(
        name="infobatch-random",
        draw=infobatch_random_draw,
        signal="loss",
        size="drawn",
        params=InfoBatchParams,
        summary="control: uniform subsets of InfoBatch's per-epoch sizes, weight 1",
    )
)
