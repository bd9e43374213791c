"""The fast paths of a draw (services/sampling.py): the threshold top-k that large draws
use, the in-place shuffle, and the unshuffled draw the server counts before shuffling.
Each is checked against an independent computation of its law or against the plain path."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.optimize
import scipy.stats

from docl.services import sampling
from docl.services.methods import draw, method_names, registry
from docl.services.sampling import (
    _THRESHOLD_MIN,
    _top_k_by_threshold,
    gumbel_topk,
    random_order,
    shuffle_draw,
    uniform_epoch,
)


@pytest.mark.parametrize("key_bits", [1, 2, 31, 32])
def test_random_order_is_uniform_over_all_permutations(key_bits: int) -> None:
    """32: Fisher-Yates (short arrays); 31: sorting by random keys; 1 and 2: keys so
    short that most values tie, so the tie-breaking carries the law."""
    values = np.array([10, 20, 30, 40], dtype=np.int64)
    assert _permutation_pvalue(values, 12_000, np.random.default_rng(0), key_bits) > 1e-3


def _permutation_pvalue(
    values: np.ndarray, draws: int, rng: np.random.Generator, key_bits: int
) -> float:
    """Chi-square p-value of ``draws`` calls of random_order against every permutation
    of ``values`` (distinct) being equally likely; each result keeps the dtype and
    leaves ``values`` untouched."""
    before = values.tolist()
    perms = {p: j for j, p in enumerate(itertools.permutations(before))}
    counts = np.zeros(len(perms))
    for _ in range(draws):
        got = random_order(values, rng, key_bits=key_bits)
        assert got.dtype == values.dtype
        counts[perms[tuple(got.tolist())]] += 1
    assert values.tolist() == before  # a new array: the input is untouched
    return float(scipy.stats.chisquare(counts, np.full(len(perms), draws / len(perms))).pvalue)


def test_random_order_of_a_large_array_sorts_random_keys_and_keeps_every_value() -> None:
    """Large index arrays take the sort path: a permutation of the input (nothing lost
    or doubled), deterministic per seed, and positions carry no trace of the input
    order (the mean of the first tenth is the overall mean, within noise)."""
    v = np.sort(np.random.default_rng(5).choice(10**7, 1 << 20, replace=False)).astype(np.int64)
    a = random_order(v, np.random.default_rng(9))
    np.testing.assert_array_equal(np.sort(a), v)
    np.testing.assert_array_equal(a, random_order(v, np.random.default_rng(9)))
    assert not np.array_equal(a, random_order(v, np.random.default_rng(10)))
    head = a[: a.size // 10].astype(np.float64)
    se = v.std() / math.sqrt(head.size)
    assert abs(head.mean() - v.mean()) < 5 * se
    # ranks: a uniform order has Kendall's tau with the input near 0
    tau = scipy.stats.kendalltau(np.arange(4096), a[:4096]).statistic
    assert abs(tau) < 0.06


def test_threshold_top_k_takes_the_k_largest_and_breaks_ties_at_random() -> None:
    rng = np.random.default_rng(1)
    keys = rng.permutation(1000).astype(np.float32)  # distinct: the set is determined
    for k in (1, 250, 999):
        got = _top_k_by_threshold(keys, k, rng)
        want = np.sort(np.argpartition(keys, 1000 - k)[1000 - k :])
        np.testing.assert_array_equal(got, want)  # ascending positions
    # 5 keys above a tie of 6: k = 7 takes the 5 and 2 of the 6, uniformly
    keys = np.array([5, 0, 9, 1, 1, 8, 1, 1, 7, 1, 1, 6], dtype=np.float32)
    ties = np.flatnonzero(keys == 1)
    counts = np.zeros(keys.size)
    draws = 6000
    for seed in range(draws):
        got = _top_k_by_threshold(keys, 7, np.random.default_rng(seed))
        assert got.size == 7 and np.all(np.diff(got) > 0)
        assert {0, 2, 5, 8, 11} <= set(got.tolist())  # everything above the threshold
        counts[got] += 1
    assert scipy.stats.chisquare(counts[ties], np.full(ties.size, 2 * draws / 6)).pvalue > 1e-3


def test_large_gumbel_draws_follow_the_exponential_race_law() -> None:
    """n >= _THRESHOLD_MIN takes the threshold path. Two groups of weights 1 and 3: the
    expected share of the heavy group in a k-of-n draw ∝ w is, for large n, given by the
    race time t solving n1(1 - e^-t) + n2(1 - e^-3t) = k (solved here with scipy)."""
    n = _THRESHOLD_MIN
    heavy = np.zeros(n, dtype=bool)
    heavy[np.random.default_rng(2).choice(n, n // 4, replace=False)] = True
    logits = np.where(heavy, math.log(3.0), 0.0).astype(np.float32)
    k = n // 2
    n2 = int(heavy.sum())
    n1 = n - n2
    t = scipy.optimize.brentq(lambda t: n1 * -math.expm1(-t) + n2 * -math.expm1(-3 * t) - k, 0, 50)
    expected = n2 * -math.expm1(-3 * t)
    shares = []
    for seed in range(8):
        idx = gumbel_topk(logits, k, np.random.default_rng(seed))
        assert idx.size == k == np.unique(idx).size
        shares.append(int(heavy[idx].sum()))
    # the count of heavy picks varies by ~sqrt(k/4) ≈ 128 per draw; the mean of 8 by ~45
    assert abs(np.mean(shares) - expected) < 150, (np.mean(shares), expected)


@pytest.fixture
def tiny_parallel(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel paths of large draws, at sizes small enough to test their law:
    from 4 items up, Gumbel keys in pieces of 3, shuffles in 3 blocks, on 2 threads."""
    monkeypatch.setattr(sampling, "PARALLEL_MIN", 4)
    monkeypatch.setattr(sampling, "_KEY_PIECE", 3)
    monkeypatch.setattr(sampling, "_SHUFFLE_BLOCKS", 3)
    monkeypatch.setattr(sampling, "_POOL_SIZE", 2)


@pytest.mark.usefixtures("tiny_parallel")
@pytest.mark.parametrize("key_bits", [2, 31])
def test_blocked_shuffle_is_uniform_over_all_permutations(key_bits: int) -> None:
    """The parallel shuffle (labels, blocks shuffled on their own, scattered back):
    every one of the 120 orders of 5 values equally often (chi-square)."""
    values = np.array([3, 1, 4, 15, 9], dtype=np.int64)
    assert _permutation_pvalue(values, 8_000, np.random.default_rng(3), key_bits) > 1e-3


@pytest.mark.usefixtures("tiny_parallel")
def test_pieced_gumbel_keys_follow_the_sequential_law() -> None:
    """Gumbel keys drawn piece by piece (3 pieces of 3, each its own stream): the ordered
    2-of-7 draws ∝ w follow the law of two successive draws without replacement."""
    w = np.array([1.0, 2.0, 3.0, 0.5, 4.0, 1.5, 2.5])
    logits = np.log(w)
    p = w / w.sum()
    draws = 10_000
    counts: dict[tuple[int, int], int] = {}
    rng = np.random.default_rng(4)
    for _ in range(draws):
        a, b = gumbel_topk(logits, 2, rng, ordered=True).tolist()
        counts[(a, b)] = counts.get((a, b), 0) + 1
    pairs = [(a, b) for a in range(7) for b in range(7) if a != b]
    expected = np.array([p[a] * p[b] / (1 - p[a]) for a, b in pairs]) * draws
    observed = np.array([counts.get(pr, 0) for pr in pairs])
    assert scipy.stats.chisquare(observed, expected).pvalue > 1e-3


@pytest.mark.usefixtures("tiny_parallel")
@pytest.mark.parametrize("unscored", [0, 3])
def test_pieced_standardize_matches_nan_reductions(unscored: int) -> None:
    """Moments summed piece by piece (pieces of 3 on 2 threads) give numpy's nanmean /
    nanstd; unscored samples get the largest standardized score."""
    rng = np.random.default_rng(8)
    x = (rng.normal(size=17) * 5 + 2).astype(np.float32)
    x[rng.choice(17, unscored, replace=False)] = np.nan
    got = sampling.standardize(x, "std")
    mean = np.nanmean(x.astype(np.float64))
    std = np.nanstd(x.astype(np.float64))
    want = ((x.astype(np.float64) - mean) / std).astype(np.float32)
    want[np.isnan(x)] = np.nanmax(want)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_parallel_draws_do_not_depend_on_the_number_of_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A seed gives the same draw on any machine: the pieces, not the threads, fix the
    streams. At the real sizes (n >= PARALLEL_MIN), 1 thread and 3 threads agree."""
    n = sampling.PARALLEL_MIN + 12_345
    logits = np.random.default_rng(6).normal(size=n).astype(np.float32)
    got = []
    monkeypatch.setattr(sampling, "_POOL", None)  # restored after the test, with the size
    monkeypatch.setattr(sampling, "_POOL_SIZE", sampling._POOL_SIZE)
    for threads in (1, 3):
        sampling.set_draw_threads(threads)
        rng = np.random.default_rng(7)
        sel = gumbel_topk(logits, n // 2, rng)
        got.append((sel, random_order(sel, rng)))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    np.testing.assert_array_equal(np.sort(got[0][1]), np.sort(got[0][0]))  # a permutation
    sampling.set_draw_threads(0)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        sampling.set_draw_threads(-1)


@pytest.mark.parametrize("method", method_names())
@pytest.mark.parametrize("exp3", [False, True])
def test_unshuffled_draw_then_shuffle_is_the_shuffled_draw(method: str, exp3: bool) -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=300).astype(np.float32)
    scores[rng.choice(300, 30, replace=False)] = np.nan
    losses = rng.exponential(size=300)
    for k in (0, 1, 120, 299, 300):
        kw = {"k": k, "scores": scores, "losses": losses, "exp3": exp3, "episode": 1}
        # a method's declared signal columns (rho-epoch: the irreducible loss)
        kw["signals"] = {s: rng.exponential(size=300) for s in registry()[method].signals}
        whole = draw(method, rng=np.random.default_rng(7), **kw)  # type: ignore[arg-type]
        g = np.random.default_rng(7)
        part = draw(method, rng=g, shuffle=False, **kw)  # type: ignore[arg-type]
        assert np.array_equal(np.sort(part.indices), np.sort(whole.indices))
        again = shuffle_draw(part, g)
        np.testing.assert_array_equal(again.indices, whole.indices)
        if exp3:
            assert again.inclusion is not None and whole.inclusion is not None
            np.testing.assert_array_equal(again.inclusion, whole.inclusion)


@pytest.mark.parametrize("size", [0, 3, 5, 7, 10])
def test_uniform_epoch_unshuffled_then_shuffled_and_uniform(size: int) -> None:
    n = 10
    a = uniform_epoch(n, np.random.default_rng(4), size=size)
    g = np.random.default_rng(4)
    b = sampling.random_order(uniform_epoch(n, g, size=size, shuffle=False), g)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and np.unique(a).size == size
    if 0 < size < n:  # both the complement path (size > n/2) and Generator.choice
        draws = 4000
        counts = np.zeros(n)
        first = np.zeros(n)
        for seed in range(draws):
            d = uniform_epoch(n, np.random.default_rng(seed), size=size)
            counts[d] += 1
            first[d[0]] += 1
        assert scipy.stats.chisquare(counts, np.full(n, size * draws / n)).pvalue > 1e-3
        assert scipy.stats.chisquare(first, np.full(n, draws / n)).pvalue > 1e-3
