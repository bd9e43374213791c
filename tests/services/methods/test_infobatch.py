"""InfoBatch's draw against independent computations: exact enumeration of the pruning
law on a tiny linear model, binomial tests of the pruning frequencies, and the two traps
of the reference code (weights in the annealing epochs; re-pruning within an epoch)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from docl.services.methods import draw, get_method, validate_method_params
from docl.services.methods.infobatch import annealing_start, prune_by_loss


def _linear_problem(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A tiny least-squares model: θ (d,), X (n, d), y (n,); ℓ_i = ½(θ·x_i − y_i)²."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = rng.normal(size=n)
    theta = rng.normal(size=3)
    return theta, x, y


def _losses_and_grads(
    theta: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    resid = x @ theta - y
    return 0.5 * resid**2, resid[:, None] * x  # (n,), (n, d): ∇ℓ_i = (θ·x_i − y_i) x_i


@pytest.mark.parametrize("r", [0.3, 0.5, 0.8])
def test_expected_weighted_gradient_is_the_full_gradient_by_exact_enumeration(r: float) -> None:
    """E over the pruning of Σ_{i kept} w_i ∇ℓ_i = Σ_i ∇ℓ_i, enumerating every pattern of
    the below-mean samples with its probability r^pruned (1−r)^kept; the weight each kept
    sample gets is what the draw returns."""
    theta, x, y = _linear_problem(9, 1)
    losses, grads = _losses_and_grads(theta, x, y)
    full = grads.sum(axis=0)
    # the draw's weight per sample, read from draws until every sample was seen kept
    weight = np.full(9, np.nan)
    below = None
    for seed in range(200):
        kept, w, below = prune_by_loss(losses, np.random.default_rng(seed), r)
        weight[kept] = w
        if not np.isnan(weight).any():
            break
    assert below is not None and not np.isnan(weight).any()
    assert below.sum() == np.count_nonzero(losses < losses.mean()) and 0 < below.sum() < 9
    b = np.flatnonzero(below)
    expected = np.zeros(3)
    total_p = 0.0
    for pattern in itertools.product([False, True], repeat=b.size):  # True = kept
        keep = ~below.copy()
        keep[b[list(pattern)]] = True
        p = float(np.prod([(1 - r) if k else r for k in pattern]))
        expected += p * (weight[keep, None] * grads[keep]).sum(axis=0)
        total_p += p
    assert total_p == pytest.approx(1.0)
    np.testing.assert_allclose(expected, full, rtol=1e-6, atol=1e-9)
    # and the biased alternative (no reweighting) is measurably off: the test can fail
    unweighted = sum(
        float(np.prod([(1 - r) if k else r for k in pat]))
        * grads[np.r_[np.flatnonzero(~below), b[list(pat)]]].sum(axis=0)
        for pat in itertools.product([False, True], repeat=b.size)
    )
    assert np.abs(unweighted - full).max() > 1e-3


def test_monte_carlo_weighted_gradient_of_the_draw_matches_the_full_gradient() -> None:
    """The draw itself (its own randomness, through methods.draw): the mean weighted
    gradient over many epochs is within 4 standard errors of the full gradient."""
    theta, x, y = _linear_problem(40, 2)
    losses, grads = _losses_and_grads(theta, x, y)
    full = grads.sum(axis=0)
    sums = []
    for seed in range(3000):
        d = draw("infobatch", k=40, scores=np.full(40, np.nan, np.float32), losses=losses,
                 rng=np.random.default_rng(seed), epoch=0, num_epochs=10)  # fmt: skip
        assert d.weights is not None
        sums.append((d.weights[:, None] * grads[d.indices]).sum(axis=0))
    s = np.asarray(sums)
    se = s.std(axis=0, ddof=1) / np.sqrt(len(s))
    assert np.all(np.abs(s.mean(axis=0) - full) < 4 * se + 1e-12), (s.mean(axis=0), full, se)


@pytest.mark.parametrize("r", [0.25, 0.5, 0.7])
def test_pruning_frequencies_follow_r_and_touch_only_below_mean_samples(r: float) -> None:
    rng = np.random.default_rng(5)
    n = 200
    losses = rng.exponential(size=n)
    losses[:10] = np.nan  # never visited: always kept, weight 1
    known = np.isfinite(losses)
    below = known & (losses < np.nanmean(losses))
    draws = 400
    pruned = np.zeros(n)
    for seed in range(draws):
        d = draw("infobatch", k=n, scores=np.zeros(n, np.float32), losses=losses,
                 rng=np.random.default_rng([seed, 1]), epoch=1, num_epochs=8,
                 method_params={"prune_ratio": r})  # fmt: skip
        kept = np.zeros(n, dtype=bool)
        kept[d.indices] = True
        pruned += ~kept
        assert d.weights is not None
        np.testing.assert_array_equal(
            d.weights, np.where(below[d.indices], np.float32(1 / (1 - r)), np.float32(1.0))
        )
    assert pruned[~below].sum() == 0  # above-mean and never-visited samples: never pruned
    total = int(pruned[below].sum())
    trials = draws * int(below.sum())
    assert scipy.stats.binomtest(total, trials, r).pvalue > 1e-3, (total / trials, r)
    # per sample: a chi-square of the pruning counts against the same rate for all
    counts = pruned[below]
    assert scipy.stats.chisquare(counts, np.full(counts.size, counts.mean())).pvalue > 1e-4


@pytest.mark.parametrize(("num_epochs", "delta"), [(10, 0.875), (7, 0.875), (8, 0.875), (3, 0.5)])
def test_annealing_epochs_train_everything_with_weight_exactly_one(
    num_epochs: int, delta: float
) -> None:
    """The reference code's trap: its weights stay 1/(1−r) through the annealing epochs
    unless epochs·δ is a whole number. Here every epoch from ⌈δ·T⌉ on is full data, weight 1."""
    n = 60
    losses = np.random.default_rng(0).exponential(size=n)
    start = annealing_start(num_epochs, delta)
    assert start == int(np.ceil(delta * num_epochs - 1e-9))
    for e in range(num_epochs):
        d = draw("infobatch", k=n, scores=np.zeros(n, np.float32), losses=losses,
                 rng=np.random.default_rng(e), epoch=e, num_epochs=num_epochs,
                 method_params={"delta": delta})  # fmt: skip
        assert d.weights is not None
        if e >= start:
            assert np.array_equal(np.sort(d.indices), np.arange(n))
            assert d.weights.dtype == np.float32 and np.all(d.weights == 1.0)
        else:
            assert d.indices.size < n and np.any(d.weights == np.float32(2.0))


def test_same_epoch_same_indices_and_weights() -> None:
    """The draw is a pure function of (losses, epoch, rng): drawing an epoch again — as
    a re-iterated sampler or another rank does, through the server's stored draw — never
    prunes anew."""
    losses = np.random.default_rng(3).exponential(size=100)
    kw = {
        "k": 100,
        "scores": np.zeros(100, np.float32),
        "losses": losses,
        "epoch": 2,
        "num_epochs": 9,
    }
    a = draw("infobatch", rng=np.random.default_rng([7, 2]), **kw)  # type: ignore[arg-type]
    b = draw("infobatch", rng=np.random.default_rng([7, 2]), **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.indices, b.indices)
    assert a.weights is not None and b.weights is not None
    np.testing.assert_array_equal(a.weights, b.weights)


def test_a_budget_cut_epoch_keeps_at_most_k_with_their_weights() -> None:
    losses = np.random.default_rng(4).exponential(size=100)
    d = draw("infobatch", k=30, scores=np.zeros(100, np.float32), losses=losses,
             rng=np.random.default_rng(1), epoch=0, num_epochs=4)  # fmt: skip
    assert d.indices.size == 30 == np.unique(d.indices).size
    assert d.weights is not None and d.weights.shape == (30,)
    below = losses < losses.mean()
    np.testing.assert_array_equal(
        d.weights, np.where(below[d.indices], 2.0, 1.0).astype(np.float32)
    )


def test_params_are_validated_with_a_clear_message() -> None:
    assert validate_method_params("infobatch", {}) == {"prune_ratio": 0.5, "delta": 0.875}
    with pytest.raises(ValueError, match="prune_ratio"):
        validate_method_params("infobatch", {"prune_ratio": 1.0})
    with pytest.raises(ValueError, match=r"ratio.*its parameters: prune_ratio, delta"):
        validate_method_params("infobatch", {"ratio": 0.3})
    with pytest.raises(ValueError, match=r"method_params for method .docl.*none"):
        validate_method_params("docl", {"prune_ratio": 0.3})
    assert get_method("infobatch").loss_column and get_method("infobatch").weights


def test_the_control_keeps_infobatchs_count_uniformly_with_weight_one() -> None:
    """infobatch-random: the same number of samples as infobatch's draw from the same
    Generator and losses, chosen uniformly from all n (chi-square over many draws), no
    weights; full data in the annealing epochs."""
    n = 30
    losses = np.random.default_rng(6).exponential(size=n)
    counts = np.zeros(n)
    draws = 3000
    for seed in range(draws):
        kw = {
            "k": n,
            "scores": np.zeros(n, np.float32),
            "losses": losses,
            "epoch": 0,
            "num_epochs": 8,
        }
        ib = draw("infobatch", rng=np.random.default_rng(seed), **kw)  # type: ignore[arg-type]
        ctl = draw("infobatch-random", rng=np.random.default_rng(seed), **kw)  # type: ignore[arg-type]
        assert ctl.indices.size == ib.indices.size and ctl.weights is None
        counts[ctl.indices] += 1 / ctl.indices.size
    # each sample is equally likely (below-mean ones are NOT pruned preferentially)
    assert scipy.stats.chisquare(counts * n, np.full(n, draws)).pvalue > 1e-3
    last = draw("infobatch-random", k=n, scores=np.zeros(n, np.float32), losses=losses,
                rng=np.random.default_rng(0), epoch=7, num_epochs=8)  # fmt: skip
    assert np.array_equal(np.sort(last.indices), np.arange(n))
    assert get_method("infobatch").control == "infobatch-random"
