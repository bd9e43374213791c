"""Diversity pruning (Eq. 15): facility location + summed scores by stochastic greedy. No I/O."""

from __future__ import annotations

import numpy as np


def facility_location_greedy(
    features: np.ndarray,
    scores: np.ndarray,
    k: int,
    *,
    lam: float,
    rng: np.random.Generator,
    epsilon: float = 0.01,
    sigma: float | None = None,
) -> np.ndarray:
    """Pick k of the m rows of `features` (m, d) maximizing Σ scores + lam·F(S) by stochastic greedy."""
    raise NotImplementedError
