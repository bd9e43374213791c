"""The DoCL family as registry entries, built on the pure draws of :mod:`docl.services.sampling`."""

from __future__ import annotations

from collections.abc import Callable

from docl.services import sampling
from docl.services.methods import (
    DrawContext,
    NoParams,
    SelectionMethod,
    Signal,
    SizeSchedule,
    register_method,
)
from docl.services.sampling import Draw

__all__ = ["BUILTIN"]


def _adapt(fn: Callable[..., Draw]) -> Callable[[DrawContext[NoParams]], Draw]:
    """A draw of sampling.py (keyword arguments) as a registry draw (one DrawContext):
    the selection unshuffled (``methods.draw`` shuffles it)."""

    def draw(ctx: DrawContext[NoParams]) -> Draw:
        return fn(
            k=ctx.k,
            scores=ctx.scores,
            losses=ctx.losses,
            rng=ctx.rng,
            tau=ctx.tau,
            normalize=ctx.normalize,
            exp3=ctx.exp3,
            episode=ctx.episode,
            shuffle=False,
        )

    draw.__name__ = fn.__name__
    return draw


def _method(
    name: str,
    size: SizeSchedule,
    signal: Signal,
    fn: Callable[..., Draw],
    summary: str,
    *,
    l2_phases: bool = False,
    diversity: bool = False,
    uniform: bool = False,
) -> SelectionMethod[NoParams]:
    return SelectionMethod(
        name=name,
        draw=_adapt(fn),
        signal=signal,
        size=size,
        uniform=uniform,
        l2_phases=l2_phases,
        diversity=diversity,
        summary=summary,
    )


# docl and its control random-subset train warmup/refresh with the task loss: the L2
# phases cost 1-2 points of accuracy on every built-in task and made no draw better
# (docs/results.md); params.l2_phases=true restores them.
BUILTIN: tuple[SelectionMethod[NoParams], ...] = (
    _method("random", "full", "none", sampling.uniform_draw,
            "uniform, all samples every epoch (random SGD)", uniform=True),
    _method("random-subset", "shrink", "none", sampling.uniform_draw,
            "uniform subsets of DoCL's sizes (the control)", uniform=True),
    _method("spl", "grow", "loss", sampling.spl_draw, "self-paced: the lowest last losses"),
    _method("mcl", "grow", "loss", sampling.mcl_draw,
            "hardest first: the highest last losses, diversity-pruned", diversity=True),
    _method("docl-nr", "grow", "docl-nr", sampling.boltzmann_draw,
            "Boltzmann draw on the score without the rho normalisation", l2_phases=True),
    _method("docl", "shrink", "docl", sampling.boltzmann_draw,
            "Boltzmann draw P ∝ exp(ŝ/τ) on the DoCL score"),
    _method("top", "shrink", "docl", sampling.top_draw, "the k highest scores", l2_phases=True),
    _method("bottom", "shrink", "docl", sampling.bottom_draw, "the k lowest scores",
            l2_phases=True),
    _method("alternate", "shrink", "docl", sampling.alternate_draw,
            "top-k in odd episodes, bottom-k in even ones", l2_phases=True),
)  # fmt: skip

for _m in BUILTIN:
    register_method(_m)
