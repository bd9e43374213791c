"""``digits`` with label noise and near duplicates (issue 18's benchmark tasks).

Each property is checked against the CLEAN task built with the same ``data_seed``
(the same train/test split and validation permutation), not against the flags the
factory set itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from docl.worker.tasks import TaskError, get_task
from docl.worker.tasks.digits import JITTER, flip_labels

VAL = 0.15


def _labels(d: object) -> torch.Tensor:
    return torch.cat([d.y_train, d.y_val])  # type: ignore[attr-defined]


def test_noise_flips_a_binomial_share_of_train_and_val_labels_only() -> None:
    p, seeds = 0.3, range(8)
    total_flipped, total_n = 0, 0
    for s in seeds:
        clean = get_task("digits", data_seed=s, validation=VAL)
        noisy = get_task("digits", data_seed=s, validation=VAL, noise=p)
        # The images, their order and the clean test split are untouched.
        assert torch.equal(noisy.x_train, clean.x_train)
        assert torch.equal(noisy.x_val, clean.x_val)
        assert torch.equal(noisy.x_test, clean.x_test)
        assert torch.equal(noisy.y_test, clean.y_test)
        changed = int((_labels(noisy) != _labels(clean)).sum())
        n = _labels(clean).numel()
        assert noisy.info["flipped"] == changed
        # Per seed within 4 binomial standard deviations.
        assert abs(changed - p * n) < 4 * math.sqrt(n * p * (1 - p)), (s, changed, n)
        # Validation is noisy too (applied before the split), not only training.
        assert int((noisy.y_val != clean.y_val).sum()) > 0
        total_flipped += changed
        total_n += n
    # Pooled over seeds: a flip that could land on the same class would show here
    # (it would lower the share by p/10, ~7 pooled standard deviations).
    sd = math.sqrt(total_n * p * (1 - p))
    assert abs(total_flipped - p * total_n) < 4 * sd, (total_flipped, total_n)


def test_a_flipped_label_is_uniform_over_the_other_classes() -> None:
    rng = np.random.default_rng(123)
    y = rng.integers(0, 10, size=90_000)
    noisy = flip_labels(y, 0.5, rng)
    flipped = noisy != y
    n = int(flipped.sum())
    assert abs(n - 45_000) < 4 * math.sqrt(90_000 * 0.25)
    shift = (noisy[flipped] - y[flipped]) % 10
    counts = np.bincount(shift, minlength=10)
    assert counts[0] == 0  # never the same class
    expected = n / 9
    assert np.all(np.abs(counts[1:] - expected) < 4 * math.sqrt(expected))


def test_noise_is_seeded_by_data_seed() -> None:
    a = get_task("digits", data_seed=3, validation=VAL, noise=0.2)
    b = get_task("digits", data_seed=3, validation=VAL, noise=0.2)
    c = get_task("digits", data_seed=4, validation=VAL, noise=0.2)
    assert torch.equal(a.y_train, b.y_train)
    assert a.info["flipped"] != c.info["flipped"] or not torch.equal(a.x_train, c.x_train)


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) max-abs distances."""
    return torch.cdist(a.double(), b.double(), p=float("inf"))


def test_duplicates_are_near_copies_of_training_rows_only() -> None:
    clean = get_task("digits", data_seed=1, validation=VAL)
    dup = get_task("digits", data_seed=1, validation=VAL, duplicates=0.5)
    n = clean.x_train.shape[0]
    k = round(0.5 * n)
    assert dup.info["duplicates"] == k
    assert dup.x_train.shape[0] == n + k
    # The original rows come first, unchanged; validation and test are untouched.
    assert torch.equal(dup.x_train[:n], clean.x_train)
    assert torch.equal(dup.y_train[:n], clean.y_train)
    assert torch.equal(dup.x_val, clean.x_val) and torch.equal(dup.x_test, clean.x_test)
    extra, extra_y = dup.x_train[n:], dup.y_train[n:]
    d_train = _linf(extra, clean.x_train)
    nearest = d_train.argmin(1)
    # Every extra row is within one grey level of a training row with its label ...
    assert float(d_train.min(1).values.max()) <= JITTER + 1e-6
    assert torch.equal(extra_y, clean.y_train[nearest])
    # ... and a near copy, not an exact one (most pixels moved).
    moved = (extra != clean.x_train[nearest]).double().mean()
    assert 0.3 < float(moved) < 0.9
    # Never a copy of a validation or test image: no extra row is that close to one
    # (clean digits images are this close to none of the training rows' copies).
    held_out = torch.cat([clean.x_val, clean.x_test])
    assert float(_linf(extra, held_out).min()) > JITTER
    # A random subset without replacement while k <= n: distinct sources.
    assert nearest.unique().numel() > 0.95 * k


def test_duplicates_above_one_reuse_sources_and_keep_noisy_labels() -> None:
    noisy = get_task("digits", data_seed=2, validation=VAL, noise=0.4)
    both = get_task("digits", data_seed=2, validation=VAL, noise=0.4, duplicates=1.5)
    n = noisy.x_train.shape[0]
    assert both.x_train.shape[0] == n + round(1.5 * n)
    assert torch.equal(both.y_train[:n], noisy.y_train)
    extra = both.x_train[n:]
    nearest = _linf(extra, noisy.x_train).argmin(1)
    # The copies carry their source's (possibly flipped) label.
    assert torch.equal(both.y_train[n:], noisy.y_train[nearest])


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"noise": -0.1}, r"noise .* must be in \[0, 0.9\), got -0.1"),
        ({"noise": 0.9}, r"noise .* must be in \[0, 0.9\)"),
        ({"noise": float("nan")}, "noise"),
        ({"duplicates": -1.0}, r"duplicates .* must be in \[0, 4.0\], got -1.0"),
        ({"duplicates": 4.5}, "duplicates"),
        ({"duplicates": float("inf")}, "duplicates"),
    ],
)
def test_bad_noise_or_duplicates_is_a_clear_error(params: dict[str, float], match: str) -> None:
    with pytest.raises(TaskError, match=match):
        get_task("digits", **params)


@pytest.mark.parametrize("data_seed", [0, 5])
def test_noise_is_the_documented_rule(data_seed: int) -> None:
    """Recomputed independently (the rule digits had before the flip moved into the
    shared :mod:`docl.worker.tasks.noise`): a uniform draw < noise per label of the
    stratified training pool, then a shift in 1..9, from ``default_rng(data_seed + 1)``,
    before the validation split. Pins the digits-noise* results across the move."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from docl.worker.tasks import split_validation

    p = 0.4
    noisy = get_task("digits", data_seed=data_seed, validation=VAL, noise=p)
    y = load_digits().target.astype(np.int64)
    idx = np.arange(y.shape[0])
    idx_tr, _ = train_test_split(idx, test_size=0.25, random_state=data_seed, stratify=y)
    y_tr = y[idx_tr]
    rng = np.random.default_rng(data_seed + 1)
    u, shift = rng.random(y_tr.shape[0]), rng.integers(1, 10, size=y_tr.shape[0])
    expected = np.array(
        [(c + d) % 10 if v < p else c for c, v, d in zip(y_tr, u, shift, strict=True)]
    )
    _, yt, _, yv = split_validation(
        torch.zeros(y_tr.shape[0], 1), torch.from_numpy(expected), VAL, data_seed
    )
    assert torch.equal(noisy.y_train, yt) and torch.equal(noisy.y_val, yv)
    assert noisy.info["flipped"] == int((expected != y_tr).sum())
