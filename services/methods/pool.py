"""Step-level selection from fresh losses: ``loss-topk`` and its control ``pool-random``.

A step-level method draws its epochs like random SGD (a uniform permutation of all n
samples, the plan of ``random``: the same epochs, steps and learning rate at every
step) and selects **per step**: in a selection epoch, step s forwards a candidate
pool of m times its batch without gradients, and trains on the batch its step rule
picks from the pool's fresh per-sample losses (docs/methods.md, "Step-level
selection"). Warmup and refresh epochs train every sample of their steps, as for
every other method.

The pool of step s (:func:`candidate_pools`): each rank splits its shard of the
epoch into the epoch's ``steps`` parts as always (part s is the batch random SGD
trains at step s); step s's pool is the parts s, s + d, …, s + (m − 1)·d (mod steps),
d = ⌊steps / m⌋. So every pool holds m distinct parts (≈ m·b candidates), every
sample is a candidate in exactly m steps of the epoch, spread over it, and the step
trains on as many samples as its own part holds (b): the same backward batches as
random SGD, at m + 1 times its forward sample-passes per step (the pool, then the
chosen batch again with gradients). With fewer steps than m, a pool is the whole shard.

Rules (pure functions of a :class:`~docl.services.methods.StepContext`):

* ``loss-topk``: the b highest fresh losses of the pool (online batch selection,
  Loshchilov & Hutter 2015, here by rank cut-off rather than their rank-based
  probabilities); ties go to the earlier pool position, a NaN loss ranks last;
* ``pool-random``: b of the pool uniformly without replacement, from the step's
  Generator (``services.seeds.step_rng``): the same forward cost, no selection.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from docl.services.methods import DrawContext, SelectionMethod, StepContext, register_method
from docl.services.sampling import Draw, uniform_draw

__all__ = [
    "LOSS_TOPK",
    "MAX_POOL_RATIO",
    "POOL_RANDOM",
    "PoolParams",
    "candidate_pools",
    "loss_topk_rule",
    "pool_random_rule",
    "top_b",
    "uniform_epochs",
]

#: The largest pool ratio: a pool of 16 batches already costs 17 forward passes a step.
MAX_POOL_RATIO = 16


class PoolParams(BaseModel):
    """``method_params`` of ``loss-topk`` and ``pool-random``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pool_ratio: int = Field(
        4,
        ge=2,
        le=MAX_POOL_RATIO,
        description="m: each selection step forwards m times its batch (a whole number "
        f"from 2 to {MAX_POOL_RATIO}) and trains on the batch its rule picks.",
    )


def candidate_pools(steps: int, ratio: int) -> list[np.ndarray]:
    """Which of an epoch's ``steps`` parts make up each step's candidate pool.

    Step s's pool is the parts s, s + d, …, s + (m − 1)·d modulo ``steps``, with
    d = ⌊steps / m⌋ (m = ``ratio``): m distinct parts, part s first, and every part in
    exactly m pools. With steps < m every pool is all the parts (part s first)."""
    steps, ratio = int(steps), int(ratio)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if not 1 <= ratio <= MAX_POOL_RATIO:
        raise ValueError(f"the pool ratio must lie in [1, {MAX_POOL_RATIO}], got {ratio}")
    if steps < ratio:
        return [np.roll(np.arange(steps, dtype=np.int64), -s) for s in range(steps)]
    d = steps // ratio
    offsets = np.arange(ratio, dtype=np.int64) * d
    return [(s + offsets) % steps for s in range(steps)]


def _loss(ctx: StepContext) -> np.ndarray:
    loss = ctx.values.get("loss")
    if loss is None:
        raise ValueError(f"this rule ranks by 'loss'; the step gave only {sorted(ctx.values)}")
    return np.asarray(loss, dtype=np.float64)


def top_b(values: np.ndarray, b: int) -> np.ndarray:
    """The positions of the b highest ``values`` (ties: the earlier position; NaN last)."""
    key = np.where(np.isnan(values), -np.inf, values)
    return np.argsort(-key, kind="stable")[:b].astype(np.int64)


def loss_topk_rule(ctx: StepContext) -> np.ndarray:
    """The positions of the b highest losses (ties: the earlier position; NaN last)."""
    return top_b(_loss(ctx), ctx.b)


def pool_random_rule(ctx: StepContext) -> np.ndarray:
    """b positions uniformly without replacement (every b-subset equally likely)."""
    return ctx.rng.choice(ctx.p, size=ctx.b, replace=False).astype(np.int64)


def uniform_epochs(ctx: DrawContext) -> Draw:
    """The epoch's draw: random SGD's (uniform; with the same seed, the same indices)."""
    return uniform_draw(k=ctx.k, scores=ctx.scores, rng=ctx.rng, exp3=ctx.exp3, shuffle=False)


LOSS_TOPK = register_method(
    SelectionMethod(
        name="loss-topk",
        draw=uniform_epochs,
        signal="none",
        size="full",
        params=PoolParams,
        control="pool-random",
        random_epochs=True,
        step=loss_topk_rule,
        summary="per step: the batch of highest fresh losses in a pool of m batches",
    )
)

POOL_RANDOM = register_method(
    SelectionMethod(
        name="pool-random",
        draw=uniform_epochs,
        signal="none",
        size="full",
        params=PoolParams,
        uniform=True,
        step=pool_random_rule,
        summary="control: per step a uniform batch of a pool of m batches (same forward cost)",
    )
)
