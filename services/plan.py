"""The epoch plan: a pure function of the run config. No I/O."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from docl.client.models import RunCreate


@dataclass(frozen=True)
class EpochSpec:
    epoch: int
    episode: int
    phase: str  # warmup | select | refresh
    loss: str  # l2 | task
    size: int
    steps: int
    lr: np.ndarray  # (steps,) float64 learning rate of each step
    lr_sum_start: float  # Σ of every learning rate before this epoch (float64, exact order)


def build_plan(run: RunCreate) -> list[EpochSpec]:
    """Every epoch of the run."""
    raise NotImplementedError


def lr_sum_at(plan: list[EpochSpec], epoch: int, step: int) -> float:
    """Σ of the learning rates applied before step `step` of epoch `epoch`."""
    raise NotImplementedError
