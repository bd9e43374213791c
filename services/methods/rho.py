"""``rho-loss``: per step, the batch of highest *reducible* loss in a candidate pool.

RHO-LOSS (Mindermann et al., ICML 2022, "Prioritized training on points that are
learnable, worth learning, and not yet learnt"): step s forwards its pool (the same
pools as ``loss-topk``, :func:`~docl.services.methods.pool.candidate_pools`) without
gradients and trains on the b candidates with the highest

    reducible loss_i = fresh training loss_i − irreducible loss_i,

where the irreducible loss (IL) of sample i is the loss of a separate *irreducible
loss model* on it. A noisy sample has a high IL (no model learns it), an already
learnt one a low fresh loss: both rank low. The IL model is trained by docl's worker
(``worker/irreducible.py``), as ``il`` says:

* ``halves`` — the paper's no-holdout variant: two models, each trained on one half of
  the training set (a seeded split), each scoring the other half, so every sample's IL
  comes from the model that did not train on it;
* ``val`` — one model trained on the task's validation split, scoring every sample.

Its epochs are random SGD's (the draw of ``random``), its control ``pool-random``
(the same pools, the same forward cost, no selection). The rule is a pure function:
ties go to the earlier pool position; a NaN reducible loss ranks last.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from docl.services.methods import SelectionMethod, StepContext, register_method
from docl.services.methods.pool import PoolParams, top_b, uniform_epochs

__all__ = ["IL_SIGNAL", "RHO_LOSS", "RhoParams", "reducible_loss", "rho_loss_rule"]

#: The name of the per-sample signal the rule reads besides the fresh ``"loss"``.
IL_SIGNAL = "irreducible_loss"


class RhoParams(PoolParams):
    """``method_params`` of ``rho-loss``: the pool ratio and how the IL model is trained."""

    il: Literal["halves", "val"] = Field(
        "halves",
        description="how the irreducible-loss model is trained: 'halves' (two models on "
        "the two halves of the training set, each scoring the other half; no holdout) or "
        "'val' (one model on the task's validation split).",
    )
    il_epochs: int = Field(
        30, ge=1, le=1000, description="epochs of the irreducible-loss model's training."
    )
    il_lr: float | None = Field(
        None,
        gt=0,
        le=10,
        description="peak learning rate of the irreducible-loss model (cosine to 0); "
        "default: the run's largest learning rate.",
    )


def reducible_loss(ctx: StepContext) -> np.ndarray:
    """The pool's reducible losses: fresh ``loss`` minus ``irreducible_loss``."""
    missing = [k for k in ("loss", IL_SIGNAL) if k not in ctx.values]
    if missing:
        raise ValueError(
            f"rho-loss ranks by 'loss' − '{IL_SIGNAL}'; the step did not give {missing} "
            f"(it gave {sorted(ctx.values)})"
        )
    loss = np.asarray(ctx.values["loss"], dtype=np.float64)
    return loss - np.asarray(ctx.values[IL_SIGNAL], dtype=np.float64)


def rho_loss_rule(ctx: StepContext) -> np.ndarray:
    """The positions of the b highest reducible losses (ties: the earlier; NaN last)."""
    return top_b(reducible_loss(ctx), ctx.b)


RHO_LOSS = register_method(
    SelectionMethod(
        name="rho-loss",
        draw=uniform_epochs,
        signal="none",
        size="full",
        params=RhoParams,
        control="pool-random",
        random_epochs=True,
        step=rho_loss_rule,
        step_signals=(IL_SIGNAL,),
        summary="per step: the batch of highest reducible loss (fresh − irreducible) in a "
        "pool of m batches (RHO-LOSS)",
    )
)
