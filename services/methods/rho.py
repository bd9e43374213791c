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

The IL is the run's signal column ``irreducible_loss`` (``IL_SIGNAL``; the l2 loss
kind's as ``irreducible_loss_l2``): the worker uploads it once to a run on a score
server, and a resumed run or another rank reads it back instead of training again.

``rho-epoch`` is the epoch-level variant on *stale* reducible losses: its selection
epochs take the k samples of highest (last loss − IL), both read from the run (the loss
column the reports keep; the uploaded IL signal); a sample never visited (or without
an IL) counts as +inf, so it is taken first; ties at the cut are broken by the epoch's
Generator (``sampling.extreme_k``). Its sizes and phases are ``docl``'s (``shrink``),
its control ``random-subset``. It needs the IL uploaded before its first selection
draw (409 naming the signal until then): docl's worker trains and uploads it before
the first epoch, as for ``rho-loss`` (its ``method_params`` are :class:`ILParams`);
a plain loop uploads its own (``docl.worker.irreducible.compute_irreducible``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from docl.services.methods import (
    DrawContext,
    SelectionMethod,
    StepContext,
    register_method,
)
from docl.services.methods.pool import PoolParams, top_b, uniform_epochs
from docl.services.sampling import Draw, extreme_k

__all__ = [
    "IL_SIGNAL",
    "IL_SIGNALS",
    "RHO_EPOCH",
    "RHO_LOSS",
    "ILParams",
    "RhoParams",
    "reducible_loss",
    "rho_epoch_draw",
    "rho_loss_rule",
]

#: The name of the per-sample signal the rule reads besides the fresh ``"loss"``.
IL_SIGNAL = "irreducible_loss"
#: The run's signal column of the IL in each loss kind the loop trains with.
IL_SIGNALS = {"task": IL_SIGNAL, "l2": f"{IL_SIGNAL}_l2"}


class ILParams(BaseModel):
    """How the worker trains the irreducible-loss model: ``method_params`` of
    ``rho-epoch``, and part of ``rho-loss``'s (:class:`RhoParams`). The worker reads them
    from any method that declares the IL signal; a method whose params lack them gets
    these defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    @classmethod
    def of(cls, params: BaseModel | None) -> ILParams:
        """The IL fields of a method's validated ``params`` (defaults for those it lacks)."""
        if params is None:
            return cls()
        given = {k: getattr(params, k) for k in cls.model_fields if hasattr(params, k)}
        return cls.model_validate(given)


class RhoParams(PoolParams, ILParams):
    """``method_params`` of ``rho-loss``: the pool ratio and how the IL model is trained."""


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
        signals=(IL_SIGNAL,),
        summary="per step: the batch of highest reducible loss (fresh − irreducible) in a "
        "pool of m batches (RHO-LOSS)",
    )
)


def rho_epoch_draw(ctx: DrawContext[ILParams]) -> Draw:
    """The k samples of highest stale reducible loss: last loss − IL (NaN: +inf, first)."""
    red = np.asarray(ctx.losses, dtype=np.float64) - np.asarray(
        ctx.signals[IL_SIGNAL], dtype=np.float64
    )
    idx = extreme_k(red, ctx.k, ctx.rng, largest=True, nan_as=np.inf)
    return Draw(idx, np.ones(idx.shape[0], np.float32) if ctx.exp3 else None)


RHO_EPOCH = register_method(
    SelectionMethod(
        name="rho-epoch",
        draw=rho_epoch_draw,
        signal="loss",
        size="shrink",
        params=ILParams,
        signals=(IL_SIGNAL,),
        summary="per epoch: the k highest stale reducible losses (last loss − uploaded "
        "irreducible loss); unvisited samples first",
    )
)
