"""``mnist1d`` with label noise: the same semantics as ``digits`` (one shared function).

Each property is checked against the CLEAN task built with the same ``data_seed``
(the same arrays and validation permutation) and against an independent
recomputation of the flip from the documented rule, not against the flags the
factory set itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from docl.worker.tasks import TaskError, get_task, split_validation
from docl.worker.tasks.mnist1d import load_arrays

VAL = 0.1
N = 1000  # 800 pool (720 train / 80 val) / 200 test: generated in < 1 s


def _labels(d: object) -> torch.Tensor:
    return torch.cat([d.y_train, d.y_val])  # type: ignore[attr-defined]


def test_noise_flips_a_binomial_share_of_train_and_val_labels_only() -> None:
    p, seeds = 0.4, range(4)
    total_flipped, total_n = 0, 0
    for s in seeds:
        clean = get_task("mnist1d", data_seed=s, num_samples=N, validation=VAL)
        noisy = get_task("mnist1d", data_seed=s, num_samples=N, validation=VAL, noise=p)
        # The signals, their order and the clean test split are untouched.
        assert torch.equal(noisy.x_train, clean.x_train)
        assert torch.equal(noisy.x_val, clean.x_val)
        assert torch.equal(noisy.x_test, clean.x_test)
        assert torch.equal(noisy.y_test, clean.y_test)
        changed = _labels(noisy) != _labels(clean)
        n = changed.numel()
        assert noisy.info["flipped"] == int(changed.sum()) and noisy.info["noise"] == p
        assert clean.info["flipped"] == 0
        assert abs(int(changed.sum()) - p * n) < 4 * math.sqrt(n * p * (1 - p)), s
        # Validation is noisy too (applied before the split), not only training.
        assert int((noisy.y_val != clean.y_val).sum()) > 0
        # A flipped label is always another class, uniform over the other nine.
        shift = (_labels(noisy)[changed] - _labels(clean)[changed]) % 10
        assert int((shift == 0).sum()) == 0
        total_flipped += int(changed.sum())
        total_n += n
    sd = math.sqrt(total_n * p * (1 - p))
    assert abs(total_flipped - p * total_n) < 4 * sd, (total_flipped, total_n)


@pytest.mark.parametrize("data_seed", [0, 3])
def test_noise_is_the_documented_rule_seeded_by_data_seed(data_seed: int) -> None:
    """Recomputed independently: a uniform draw < noise per pool label, then a shift
    in 1..9, from ``default_rng(data_seed + 1)``, before the validation split."""
    p = 0.25
    noisy = get_task("mnist1d", data_seed=data_seed, num_samples=N, validation=VAL, noise=p)
    y = load_arrays(N, data_seed)["y"]
    rng = np.random.default_rng(data_seed + 1)
    u = rng.random(y.shape[0])
    shift = rng.integers(1, 10, size=y.shape[0])
    expected = np.array([(c + d) % 10 if v < p else c for c, v, d in zip(y, u, shift, strict=True)])
    x = torch.zeros(y.shape[0], 1)
    _, yt, _, yv = split_validation(x, torch.from_numpy(expected), VAL, data_seed)
    assert torch.equal(noisy.y_train, yt) and torch.equal(noisy.y_val, yv)
    again = get_task("mnist1d", data_seed=data_seed, num_samples=N, validation=VAL, noise=p)
    assert torch.equal(again.y_train, noisy.y_train)


def test_noise_leaves_the_cached_clean_labels_alone() -> None:
    fresh = load_arrays(N, 7, cache=False)["y"]
    get_task("mnist1d", data_seed=7, num_samples=N, noise=0.5)  # writes the cache
    get_task("mnist1d", data_seed=7, num_samples=N, noise=0.5)  # reads it
    assert np.array_equal(load_arrays(N, 7)["y"], fresh)
    clean = get_task("mnist1d", data_seed=7, num_samples=N)
    assert np.array_equal(clean.y_train.numpy(), fresh)


def test_noise_without_validation_flips_the_training_split() -> None:
    clean = get_task("mnist1d", data_seed=2, num_samples=N)
    noisy = get_task("mnist1d", data_seed=2, num_samples=N, noise=0.4)
    assert noisy.y_val is None
    assert noisy.info["flipped"] == int((noisy.y_train != clean.y_train).sum()) > 0


@pytest.mark.parametrize(
    ("noise", "match"),
    [
        (-0.1, r"mnist1d: noise .* must be in \[0, 0.9\), got -0.1"),
        (0.9, r"mnist1d: noise .* must be in \[0, 0.9\)"),
        (float("nan"), "mnist1d: noise"),
    ],
)
def test_bad_noise_is_a_clear_error(noise: float, match: str) -> None:
    with pytest.raises(TaskError, match=match):
        get_task("mnist1d", num_samples=N, noise=noise)
