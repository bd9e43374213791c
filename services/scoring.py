"""DoCL scoring (Eq. 7, 8, 12) as pure, vectorized numpy functions. No I/O.

Shapes: B = samples in a report, c = outputs per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ScoreKind = Literal["docl", "docl-nr"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, c) logits; finite for |logits| up to 1e4 and beyond."""
    raise NotImplementedError


def residual(outputs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """(B, c) residual: classification onehot(y) - softmax(f) (targets (B,) int);
    regression y - f (targets (B, c))."""
    raise NotImplementedError


def task_loss(outputs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """(B,) per-sample task loss: cross-entropy (classification) or 0.5·‖y - f‖² (regression)."""
    raise NotImplementedError


@dataclass(frozen=True)
class ScoreUpdate:
    """Result of scoring one report against the stored state of its samples."""

    scored: np.ndarray  # (B,) bool: seen before and lr_sum advanced -> score updated
    stale: np.ndarray  # (B,) bool: lr_sum <= stored lr-sum -> sample left untouched entirely
    scores: np.ndarray  # (B,) float32: new EMA score (= previous where not scored; NaN = unset)
    raw: np.ndarray  # (B,) float64: this visit's a_t(i) (NaN where not scored)
    loss: np.ndarray  # (B,) float32: task loss of f


def score_report(
    outputs: np.ndarray,
    targets: np.ndarray,
    lr_sum: float,
    prev_outputs: np.ndarray,
    prev_lr_sums: np.ndarray,
    prev_scores: np.ndarray,
    *,
    task: str,
    kind: ScoreKind = "docl",
    gamma: float = 0.9,
    rho_power: float = 1.0,
    inclusion: np.ndarray | None = None,
) -> ScoreUpdate:
    """Score a report (DESIGN §1).

    outputs (B, c), targets (B,) int or (B, c); prev_outputs (B, c) the stored g_i;
    prev_lr_sums (B,) float64 with NaN = never seen; prev_scores (B,) float32 with
    NaN = unset; inclusion (B,) the Exp3 inclusion probabilities (None = no Exp3).
    """
    raise NotImplementedError
