"""Tests of services/sampling.py against independent computations: brute force
over all orderings of tiny instances (the exact law of sampling without
replacement ∝ w), chi-square tests on fixed seeds (deterministic), numpy
reductions for standardize, and the extremes each method must pick."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from docl.services.methods import draw as draw_epoch
from docl.services.methods import registry
from docl.services.sampling import (
    extreme_k,
    gumbel_topk,
    inclusion_probabilities,
    standardize,
    uniform_epoch,
)
from docl.services.seeds import epoch_rng


def _ordered_law(w: np.ndarray, k: int) -> dict[tuple[int, ...], float]:
    """P(first k draws = seq) for successive sampling without replacement ∝ w."""
    total = float(w.sum())
    law = {}
    for seq in itertools.permutations(range(len(w)), k):
        p, rest = 1.0, total
        for i in seq:
            p *= w[i] / rest
            rest -= w[i]
        law[seq] = p
    return law


def _exact_inclusion(w: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros(len(w))
    for seq, p in _ordered_law(w, k).items():
        out[list(seq)] += p
    return out


# --------------------------------------------------------------------------- #
# standardize
# --------------------------------------------------------------------------- #


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(
        st.one_of(st.just(math.nan), st.floats(-1e3, 1e3, allow_nan=False)), min_size=1, max_size=40
    )
)
def test_standardize_matches_nan_reductions(values: list[float]) -> None:
    s = np.asarray(values, dtype=np.float32)
    scored = ~np.isnan(s)
    out = standardize(s, "std")
    assert out.dtype == np.float32 and out.shape == s.shape and np.isfinite(out).all()
    if not scored.any():
        np.testing.assert_array_equal(out, 0.0)
        return
    sd = np.nanstd(s.astype(np.float64))
    if sd > np.finfo(np.float32).tiny:  # a subnormal spread counts as none (documented)
        expect = (s.astype(np.float64) - np.nanmean(s.astype(np.float64))) / sd
        np.testing.assert_allclose(out[scored], expect[scored], rtol=1e-4, atol=1e-4)
    else:
        np.testing.assert_array_equal(out, 0.0)
    np.testing.assert_array_equal(out[~scored], out[scored].max())
    raw = standardize(s, "none")
    np.testing.assert_array_equal(raw[scored], s[scored])
    np.testing.assert_array_equal(raw[~scored], np.nanmax(s))


def test_standardize_edge_cases() -> None:
    np.testing.assert_array_equal(standardize(np.full(4, np.nan), "std"), 0.0)
    np.testing.assert_array_equal(standardize(np.full(4, np.nan), "none"), 0.0)
    np.testing.assert_array_equal(standardize(np.array([3.0, 3.0, np.nan]), "std"), 0.0)
    out = standardize(np.array([1.0, 3.0, np.nan]), "std")
    np.testing.assert_allclose(out, [-1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="normalize"):
        standardize(np.zeros(3), "minmax")
    with pytest.raises(ValueError, match="vector"):
        standardize(np.zeros((3, 2)), "std")


# --------------------------------------------------------------------------- #
# gumbel_topk
# --------------------------------------------------------------------------- #


def test_gumbel_first_draw_follows_softmax_chi_square() -> None:
    logits = np.array([0.0, 1.0, -0.5, 2.0, 0.3, -2.0])
    p = np.exp(logits) / np.exp(logits).sum()
    draws = 10_000
    counts = np.zeros(6)
    for seed in range(draws):
        counts[gumbel_topk(logits, 1, np.random.default_rng(seed))[0]] += 1
    assert scipy.stats.chisquare(counts, p * draws).pvalue > 1e-3
    # and the first element of an ordered k=3 draw has the same law
    counts[:] = 0
    for seed in range(draws):
        counts[gumbel_topk(logits, 3, np.random.default_rng(10**6 + seed), ordered=True)[0]] += 1
    assert scipy.stats.chisquare(counts, p * draws).pvalue > 1e-3


@pytest.mark.parametrize("k", [2, 4])
def test_gumbel_ordered_draws_follow_the_sequential_law(k: int) -> None:
    """The whole ordered draw, not just the first element: chi-square over all
    n!/(n-k)! sequences against the exact successive-sampling probabilities."""
    logits = np.array([0.5, -1.0, 1.5, 0.0])
    law = _ordered_law(np.exp(logits), k)
    cells = {seq: i for i, seq in enumerate(law)}
    draws = 12_000
    counts = np.zeros(len(law))
    for seed in range(draws):
        seq = tuple(
            int(i) for i in gumbel_topk(logits, k, np.random.default_rng(seed), ordered=True)
        )
        counts[cells[seq]] += 1
    expected = np.array(list(law.values())) * draws
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3


def test_gumbel_inclusion_frequencies_match_brute_force() -> None:
    logits = np.array([1.0, 0.0, -1.0, 2.0, 0.5])
    exact = _exact_inclusion(np.exp(logits), 2)
    draws = 20_000
    counts = np.zeros(5)
    for seed in range(draws):
        counts[gumbel_topk(logits, 2, np.random.default_rng(seed))] += 1
    se = np.sqrt(exact * (1 - exact) / draws)
    assert np.all(np.abs(counts / draws - exact) < 4.5 * se)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(0, 60), k=st.integers(0, 80), seed=st.integers(0, 2**32 - 1))
def test_gumbel_distinct_sized_and_seeded(n: int, k: int, seed: int) -> None:
    logits = np.random.default_rng(seed).normal(scale=3.0, size=n)
    idx = gumbel_topk(logits, k, np.random.default_rng(seed))
    assert idx.dtype == np.int64
    assert idx.size == min(k, n) == np.unique(idx).size
    assert idx.size == 0 or (idx.min() >= 0 and idx.max() < n)
    np.testing.assert_array_equal(idx, gumbel_topk(logits, k, np.random.default_rng(seed)))


def test_gumbel_different_seeds_differ() -> None:
    logits = np.zeros(1000)
    a = gumbel_topk(logits, 100, np.random.default_rng(1))
    b = gumbel_topk(logits, 100, np.random.default_rng(2))
    assert set(a.tolist()) != set(b.tolist())


def test_gumbel_neg_inf_never_drawn_unless_needed() -> None:
    logits = np.array([-np.inf, 0.0, -np.inf, 3.0, -1e4, -np.inf])
    for seed in range(200):
        idx = gumbel_topk(logits, 3, np.random.default_rng(seed))
        assert set(idx.tolist()) == {1, 3, 4}
    seen = set()
    for seed in range(200):
        idx = gumbel_topk(logits, 4, np.random.default_rng(seed))
        assert {1, 3, 4} <= set(idx.tolist())
        seen |= set(idx.tolist()) - {1, 3, 4}
    assert seen == {0, 2, 5}  # the extra one is drawn among the -inf ones at random
    all_neg = gumbel_topk(np.full(5, -np.inf), 2, np.random.default_rng(0))
    assert all_neg.size == 2 == np.unique(all_neg).size


def test_gumbel_huge_logits_do_not_overflow() -> None:
    logits = np.array([0.0, 1e30, -1e30, 1e29, 3e38, -3e38])
    for seed in range(50):
        top2 = gumbel_topk(logits, 2, np.random.default_rng(seed))
        assert set(top2.tolist()) == {1, 4}
    with np.errstate(all="raise"):  # no overflow warnings either
        gumbel_topk(np.array([1e300, -1e300, 0.0]), 2, np.random.default_rng(0))


def test_gumbel_is_shift_invariant() -> None:
    logits = np.array([0.0, 1.0, 2.0, -1.0, 0.5])
    a = gumbel_topk(logits, 3, np.random.default_rng(7), ordered=True)
    b = gumbel_topk(logits + 1000.0, 3, np.random.default_rng(7), ordered=True)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", [np.array([0.0, np.nan]), np.array([0.0, np.inf])])
def test_gumbel_rejects_nan_and_pos_inf(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="logits"):
        gumbel_topk(bad, 1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="logits"):
        inclusion_probabilities(bad, 1)


def test_gumbel_rejects_negative_k() -> None:
    with pytest.raises(ValueError, match="k must"):
        gumbel_topk(np.zeros(3), -1, np.random.default_rng(0))


# --------------------------------------------------------------------------- #
# inclusion_probabilities
# --------------------------------------------------------------------------- #

#: Largest |approximation - exact| measured over 800 random instances with
#: n <= 6 and logit scales 0.5..4 (0.094); the test allows a little more.
SMALL_N_TOLERANCE = 0.1


def test_inclusion_probabilities_close_to_brute_force_on_tiny_instances() -> None:
    rng = np.random.default_rng(0)
    worst = 0.0
    for _ in range(300):
        n = int(rng.integers(2, 7))
        k = int(rng.integers(1, n + 1))
        logits = rng.normal(scale=float(rng.choice([0.5, 1.0, 2.0, 4.0])), size=n)
        approx = inclusion_probabilities(logits, k)
        exact = _exact_inclusion(np.exp(logits), k)
        worst = max(worst, float(np.abs(approx - exact).max()))
        assert approx.sum() == pytest.approx(k, rel=1e-8)
        # same order as the weights (the exact law has it too)
        order = np.argsort(logits)
        assert np.all(np.diff(approx[order]) >= -1e-12)
    assert worst < SMALL_N_TOLERANCE
    assert worst > 1e-3  # it is an approximation: the comparison is not vacuous


def test_inclusion_probabilities_match_monte_carlo_for_moderate_n() -> None:
    """The approximation error shrinks with n: at n = 200 it is within Monte-Carlo
    noise of the frequencies of the real sampler."""
    rng = np.random.default_rng(3)
    n, k, draws = 200, 50, 10_000
    logits = rng.normal(scale=1.5, size=n)
    counts = np.zeros(n)
    for seed in range(draws):
        counts[gumbel_topk(logits, k, np.random.default_rng(seed))] += 1
    approx = inclusion_probabilities(logits, k)
    assert np.abs(counts / draws - approx).max() < 0.025  # 5 standard errors at p = 1/2


def test_inclusion_probabilities_exact_limits() -> None:
    np.testing.assert_allclose(inclusion_probabilities(np.zeros(10), 3), 0.3, rtol=1e-12)
    np.testing.assert_allclose(inclusion_probabilities(np.full(7, 5.0), 7), 1.0)
    np.testing.assert_allclose(inclusion_probabilities(np.full(7, 5.0), 9), 1.0)
    np.testing.assert_array_equal(inclusion_probabilities(np.arange(4.0), 0), 0.0)
    # uniform at a size where the strided start and Newton passes are used
    big = inclusion_probabilities(np.zeros(2_000_000), 123_457)
    np.testing.assert_array_equal(big, 123_457 / 2_000_000)
    # nearly uniform weights take the Newton path and land within its tolerance
    near = inclusion_probabilities(np.r_[np.zeros(999_999), 1e-9], 1234)
    np.testing.assert_allclose(near, 1234 / 1_000_000, rtol=1e-8)
    # -inf logits get 0 unless needed, then share what is left uniformly
    z = np.array([0.0, -np.inf, 1.0, -np.inf])
    p = inclusion_probabilities(z, 1)
    assert p[1] == 0.0 and p[3] == 0.0 and p.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(inclusion_probabilities(z, 3), [1.0, 0.5, 1.0, 0.5])


def test_inclusion_probabilities_large_n_sums_to_k_and_indices_subset() -> None:
    rng = np.random.default_rng(5)
    logits = rng.normal(size=1_200_000) / 0.1  # τ = 0.1: weights span e^±50
    k = 400_000
    p = inclusion_probabilities(logits, k)
    assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1
    assert p.sum() == pytest.approx(k, rel=1e-8)
    idx = rng.choice(logits.size, 100, replace=False)
    np.testing.assert_array_equal(inclusion_probabilities(logits, k, indices=idx), p[idx])
    # shift invariance (the max is subtracted first)
    np.testing.assert_allclose(inclusion_probabilities(logits[:5000] + 700.0, 50),
                               inclusion_probabilities(logits[:5000], 50), rtol=1e-9)  # fmt: skip


# --------------------------------------------------------------------------- #
# the method registry and draw()
# --------------------------------------------------------------------------- #


#: Methods that draw exactly the k samples the plan asks for (infobatch decides its size).
METHODS = {m: s for m, s in registry().items() if s.size != "drawn"}


def test_registry_holds_the_builtin_methods_with_the_documented_schedules() -> None:
    epoch_level = [m for m, s in METHODS.items() if s.step is None and m != "rho-epoch"]
    assert tuple(registry())[:15] == (
        *epoch_level,
        "infobatch",
        "infobatch-random",
        "loss-topk",
        "pool-random",
        "rho-loss",
        "rho-epoch",  # epoch-level, registered with rho-loss (services/methods/rho.py)
    )
    sizes = {m: s.size for m, s in METHODS.items()}
    assert sizes == {
        "random": "full",
        "random-subset": "shrink",
        "spl": "grow",
        "mcl": "grow",
        "docl-nr": "grow",
        "docl": "shrink",
        "top": "shrink",
        "bottom": "shrink",
        "alternate": "shrink",
        "loss-topk": "full",  # step-level: random SGD's epochs, selection per step
        "pool-random": "full",
        "rho-loss": "full",
        "rho-epoch": "shrink",
    }
    l2 = {m for m, s in METHODS.items() if s.l2_phases}
    assert l2 == {"docl-nr", "top", "bottom", "alternate"}  # docl: task loss (docs/results.md)
    assert {m for m, s in METHODS.items() if s.diversity} == {"mcl"}
    assert METHODS["docl-nr"].score_kind == "docl-nr" and METHODS["docl"].score_kind == "docl"
    assert {m for m, s in registry().items() if s.loss_column} == {
        "spl",
        "mcl",
        "infobatch",
        "infobatch-random",
        "rho-epoch",  # its last losses, read from the loss column
    }
    assert {m for m, s in registry().items() if s.uniform} == {
        "random",
        "random-subset",
        "pool-random",
    }
    assert {m for m, s in registry().items() if s.step is not None} == {
        "loss-topk",
        "pool-random",
        "rho-loss",
    }
    # the plain local loop runs these (random SGD's epochs; tests/lab/test_overhead.py
    # checks that a served loss-topk / rho-loss run trains the same model)
    assert {m for m, s in registry().items() if s.local_ok} == {
        "random",
        "random-subset",
        "pool-random",
        "loss-topk",
        "rho-loss",
    }
    assert {m for m, s in registry().items() if s.weights} == {"infobatch"}


def _state(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n).astype(np.float32)
    scores[rng.choice(n, n // 10, replace=False)] = np.nan
    losses = rng.exponential(size=n)
    return scores, losses


def _signals(method: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """The per-sample signal columns ``method`` declares (``rho-epoch``: the irreducible
    loss), random: a draw that reads them must still draw k distinct samples."""
    rng = np.random.default_rng(seed)
    spec = registry()[method]
    return {name: rng.exponential(size=n).astype(np.float32) for name in spec.signals}


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("exp3", [False, True])
def test_every_method_draws_k_distinct_int64_deterministically(method: str, exp3: bool) -> None:
    scores, losses = _state(500, 1)
    for k in (0, 1, 137, 500):
        kw = {"k": k, "scores": scores, "losses": losses, "exp3": exp3, "episode": 2}
        kw["signals"] = _signals(method, 500, 3)
        d = draw_epoch(method, rng=np.random.default_rng(9), **kw)  # type: ignore[arg-type]
        assert d.indices.dtype == np.int64 and d.indices.size == k
        assert np.unique(d.indices).size == k
        assert k == 0 or (d.indices.min() >= 0 and d.indices.max() < 500)
        again = draw_epoch(method, rng=np.random.default_rng(9), **kw)  # type: ignore[arg-type]
        np.testing.assert_array_equal(d.indices, again.indices)
        if exp3:
            assert d.inclusion is not None and d.inclusion.shape == (k,)
            assert d.inclusion.dtype == np.float32
            assert np.all((d.inclusion > 0) & (d.inclusion <= 1))
        else:
            assert d.inclusion is None


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_returns_a_shuffled_training_order(method: str) -> None:
    """Deterministic selections too come back in a seed-dependent random order."""
    scores, losses = _state(400, 2)
    sig = _signals(method, 400, 3)
    kw = {"k": 200, "scores": scores, "losses": losses, "signals": sig}
    a = draw_epoch(method, rng=np.random.default_rng(1), **kw)  # type: ignore[arg-type]
    b = draw_epoch(method, rng=np.random.default_rng(2), **kw)  # type: ignore[arg-type]
    assert not np.array_equal(a.indices, b.indices)
    assert not np.all(np.diff(a.indices) > 0)  # not sorted


def test_extreme_methods_pick_the_right_samples() -> None:
    n, k = 300, 40
    rng = np.random.default_rng(4)
    scores = rng.permutation(n).astype(np.float32)  # distinct
    losses = rng.permutation(n).astype(np.float64)
    order_s, order_l = np.argsort(scores), np.argsort(losses)

    def picked(method: str, episode: int = 1) -> set[int]:
        d = draw_epoch(method, k=k, scores=scores, losses=losses, rng=rng, episode=episode)
        return set(d.indices.tolist())

    assert picked("spl") == set(order_l[:k].tolist())  # easiest: smallest loss
    assert picked("mcl") == set(order_l[-k:].tolist())  # hardest: largest loss
    assert picked("top") == set(order_s[-k:].tolist())
    assert picked("bottom") == set(order_s[:k].tolist())
    for episode in (1, 3, 5):
        assert picked("alternate", episode) == set(order_s[-k:].tolist())
    for episode in (2, 4):
        assert picked("alternate", episode) == set(order_s[:k].tolist())


def test_unscored_samples_are_treated_optimistically() -> None:
    n, k = 200, 20
    rng = np.random.default_rng(5)
    scores = rng.normal(size=n).astype(np.float32)
    unscored = rng.choice(n, 15, replace=False)
    scores[unscored] = np.nan
    losses = rng.exponential(size=n)
    losses[unscored] = np.nan
    top = set(draw_epoch("top", k=k, scores=scores, losses=losses, rng=rng).indices.tolist())
    assert set(unscored.tolist()) <= top  # counted as the largest
    bottom = set(draw_epoch("bottom", k=k, scores=scores, losses=losses, rng=rng).indices.tolist())
    assert not set(unscored.tolist()) & bottom  # ... so bottom-k takes them last
    for m in ("spl", "mcl"):  # never-visited samples are explored first
        got = set(draw_epoch(m, k=k, scores=scores, losses=losses, rng=rng).indices.tolist())
        assert set(unscored.tolist()) <= got
    # Boltzmann: unscored samples get the largest standardized score, hence the
    # largest inclusion probability
    d = draw_epoch("docl", k=k, scores=scores, rng=rng, exp3=True, tau=0.1)
    logits = standardize(scores, "std") / 0.1
    pi = inclusion_probabilities(logits, k)
    assert np.allclose(pi[unscored], pi.max())
    assert d.inclusion is not None
    np.testing.assert_allclose(d.inclusion, pi[d.indices], rtol=1e-6)


@pytest.mark.parametrize(
    ("method", "normalize"), [("docl", "std"), ("docl", "none"), ("docl-nr", "std")]
)
def test_boltzmann_draw_inclusion_frequencies_match_exact_law(method: str, normalize: str) -> None:
    """docl / docl-nr draw k ∝ exp(ŝ/τ): inclusion frequencies over seeds against
    the brute-force law of ŝ/τ computed independently (numpy mean/std; 'none' is
    the paper's literal exp(s/τ) on raw scores)."""
    scores = np.array([0.3, -0.2, 0.1, 0.5, -0.4], np.float32)
    tau = 0.7
    s64 = scores.astype(np.float64)
    logits = (s64 - s64.mean()) / s64.std() / tau if normalize == "std" else s64 / tau
    exact = _exact_inclusion(np.exp(logits), 2)
    draws = 6_000
    counts = np.zeros(5)
    for seed in range(draws):
        d = draw_epoch(method, k=2, scores=scores, rng=np.random.default_rng(seed), tau=tau,
                       normalize=normalize)  # fmt: skip
        counts[d.indices] += 1
    se = np.sqrt(exact * (1 - exact) / draws)
    assert np.all(np.abs(counts / draws - exact) < 4.5 * se)


@pytest.mark.parametrize("method", ["random", "random-subset"])
def test_uniform_methods_are_uniform(method: str) -> None:
    n, k, draws = 10, 3, 5_000
    counts = np.zeros(n)
    scores = np.arange(n, dtype=np.float32)  # ignored
    for seed in range(draws):
        counts[draw_epoch(method, k=k, scores=scores, rng=np.random.default_rng(seed)).indices] += 1
    assert scipy.stats.chisquare(counts, np.full(n, k * draws / n)).pvalue > 1e-3
    d = draw_epoch(method, k=k, scores=scores, rng=np.random.default_rng(0), exp3=True)
    assert d.inclusion is not None
    np.testing.assert_allclose(d.inclusion, k / n)


def test_extreme_k_breaks_ties_at_random() -> None:
    values = np.array([5.0, 1.0, 1.0, 1.0, 1.0, 0.0])
    seen = set()
    for seed in range(100):
        got = extreme_k(values, 3, np.random.default_rng(seed), largest=True, nan_as=np.inf)
        assert 0 in got and 5 not in got and got.size == 3
        seen.add(frozenset(got.tolist()))
    assert len(seen) == 6  # every pair of the four tied ones


def test_draw_rejects_bad_input() -> None:
    s = np.zeros(5)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="unknown method"):
        draw_epoch("boltzmann", k=1, scores=s, rng=rng)
    with pytest.raises(ValueError, match="k must"):
        draw_epoch("docl", k=6, scores=s, rng=rng)
    with pytest.raises(ValueError, match="k must"):
        draw_epoch("docl", k=-1, scores=s, rng=rng)
    with pytest.raises(ValueError, match="losses"):
        draw_epoch("spl", k=1, scores=s, losses=np.zeros(4), rng=rng)
    with pytest.raises(ValueError, match="tau"):
        draw_epoch("docl", k=1, scores=s, rng=rng, tau=0.0)
    with pytest.raises(ValueError, match="normalize"):
        draw_epoch("docl", k=1, scores=s, rng=rng, normalize="rank")


def test_uniform_epoch_and_epoch_rng() -> None:
    p = uniform_epoch(100, epoch_rng(3, 7))
    np.testing.assert_array_equal(np.sort(p), np.arange(100))
    assert p.dtype == np.int64
    np.testing.assert_array_equal(p, uniform_epoch(100, epoch_rng(3, 7)))
    assert not np.array_equal(p, uniform_epoch(100, epoch_rng(3, 8)))
    assert not np.array_equal(p, uniform_epoch(100, epoch_rng(4, 7)))
    cut = uniform_epoch(100, epoch_rng(3, 7), size=30)
    assert cut.size == 30 == np.unique(cut).size
    with pytest.raises(ValueError, match="size"):
        uniform_epoch(10, epoch_rng(0, 0), size=11)
