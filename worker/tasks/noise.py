"""Symmetric label noise shared by the built-in tasks (``digits``, ``mnist1d``).

A task's ``noise`` parameter flips, with probability ``noise``, each label of its
training pool (training + validation, before the validation split) to one of the
OTHER ``num_classes - 1`` classes uniformly; the test split stays clean. The draw is
seeded by the caller's generator, so a task is deterministic in its ``data_seed``.
"""

from __future__ import annotations

import numpy as np

from docl.worker.tasks import TaskError

__all__ = ["MAX_NOISE", "check_noise", "flip_labels", "noisy_labels"]

#: Largest label-noise fraction: at 0.9 (10 classes) a flipped label is as likely as the true one.
MAX_NOISE = 0.9


def check_noise(task: str, noise: float) -> None:
    """A :class:`TaskError` naming ``task`` unless ``0 <= noise < MAX_NOISE`` (NaN fails)."""
    if not 0.0 <= noise < MAX_NOISE:
        raise TaskError(
            f"{task}: noise (the share of training labels flipped) must be in "
            f"[0, {MAX_NOISE}), got {noise}"
        )


def flip_labels(
    y: np.ndarray, noise: float, rng: np.random.Generator, num_classes: int = 10
) -> np.ndarray:
    """``y`` with each label flipped with probability ``noise`` to a different class,
    uniform over the other ``num_classes - 1`` (never the same class)."""
    flip = rng.random(y.shape[0]) < noise
    shift = rng.integers(1, num_classes, size=y.shape[0])
    return np.where(flip, (y + shift) % num_classes, y).astype(np.int64)


def noisy_labels(
    y: np.ndarray, noise: float, rng: np.random.Generator, num_classes: int = 10
) -> tuple[np.ndarray, int]:
    """``(labels, flipped)``: ``y`` itself and 0 when ``noise`` is 0 (the generator is
    then not drawn from), else :func:`flip_labels` and the count of changed labels."""
    if noise <= 0.0:
        return y, 0
    y_noisy = flip_labels(y, noise, rng, num_classes)
    return y_noisy, int((y_noisy != y).sum())
