"""Drawing an epoch's subset: pure numpy functions with a seeded Generator. No I/O.

The method registry maps each method name (docl.client.models.METHODS) to how
it sizes and draws its subsets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

SizeSchedule = Literal["full", "shrink", "grow"]


def standardize(scores: np.ndarray, normalize: str) -> np.ndarray:
    """ŝ: scores standardized over scored (non-NaN) samples ('std') or as they are ('none');
    unscored samples (NaN) get the largest current value (optimism). All-NaN -> zeros."""
    raise NotImplementedError


def gumbel_topk(logits: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k distinct indices drawn without replacement with P ∝ exp(logits) (Gumbel-top-k), O(n)."""
    raise NotImplementedError


def inclusion_probabilities(logits: np.ndarray, k: int) -> np.ndarray:
    """Approximate P(i in S) for a k-of-n draw without replacement ∝ exp(logits)."""
    raise NotImplementedError


@dataclass(frozen=True)
class Draw:
    indices: np.ndarray  # (k,) int64, in training order (shuffled)
    inclusion: np.ndarray | None  # (k,) float32 inclusion probabilities when Exp3 is on


@dataclass(frozen=True)
class MethodSpec:
    name: str
    size: SizeSchedule  # how the subset size evolves over episodes
    l2_phases: bool  # warmup/refresh epochs use the L2 loss by default
    diversity: bool  # prune drawn subsets by facility location by default
    score: Literal["docl", "docl-nr"]  # which score the reports maintain
    select: Callable[..., Draw]


METHODS: dict[str, MethodSpec] = {}


def draw(
    method: str,
    *,
    k: int,
    scores: np.ndarray,
    losses: np.ndarray,
    rng: np.random.Generator,
    tau: float = 0.1,
    normalize: str = "std",
    exp3: bool = False,
    episode: int = 1,
) -> Draw:
    """Draw k of n samples for a selection epoch with the named method."""
    raise NotImplementedError
