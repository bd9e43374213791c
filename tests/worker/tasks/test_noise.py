"""The shared label-noise helper (``digits`` and ``mnist1d``), against counts by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from docl.worker.tasks import TaskError
from docl.worker.tasks.noise import check_noise, flip_labels, noisy_labels


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_a_flipped_label_is_uniform_over_the_other_classes(num_classes: int) -> None:
    rng = np.random.default_rng(num_classes)
    y = rng.integers(0, num_classes, size=60_000)
    noisy = flip_labels(y, 0.3, rng, num_classes)
    flipped = noisy != y
    n = int(flipped.sum())
    assert abs(n - 18_000) < 4 * math.sqrt(60_000 * 0.3 * 0.7)
    assert noisy.min() >= 0 and noisy.max() < num_classes
    counts = np.bincount((noisy[flipped] - y[flipped]) % num_classes, minlength=num_classes)
    assert counts[0] == 0  # never the same class
    expected = n / (num_classes - 1)
    assert np.all(np.abs(counts[1:] - expected) < 4 * math.sqrt(expected))


def test_noisy_labels_counts_changes_and_draws_nothing_at_zero() -> None:
    y = np.arange(1000) % 10
    rng = np.random.default_rng(5)
    out, flipped = noisy_labels(y, 0.0, rng)
    assert flipped == 0 and out is y
    # the generator was not drawn from: the next task step (digits' near duplicates)
    # sees the same stream as with no noise parameter at all
    assert rng.random() == np.random.default_rng(5).random()
    out, flipped = noisy_labels(y, 0.4, np.random.default_rng(5))
    assert flipped == int((out != y).sum()) > 0
    assert np.array_equal(y, np.arange(1000) % 10)  # the input is not changed in place


@pytest.mark.parametrize("noise", [-0.01, 0.9, 1.0, float("nan"), float("inf")])
def test_check_noise_names_the_task(noise: float) -> None:
    with pytest.raises(TaskError, match=r"^mytask: noise .* must be in \[0, 0.9\)"):
        check_noise("mytask", noise)
    check_noise("mytask", 0.0)
    check_noise("mytask", 0.89)
