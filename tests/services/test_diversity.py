"""Tests of services/diversity.py against brute force and a naive reference.

The objective is computed here independently, with the full m×m Gaussian
kernel in float64: G(S) = Σ_{i∈S} (s_i - min s) + λ·Σ_j max_{i∈S} ω_ij.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc

import numpy as np
import pytest
import scipy.spatial.distance

from docl.services.diversity import facility_location_greedy, mean_pairwise_distance


def _kernel(z: np.ndarray, sigma: float) -> np.ndarray:
    d = scipy.spatial.distance.cdist(z, z)
    return np.exp(-(d**2) / (2 * sigma**2))


def _objective(sel: list[int] | np.ndarray, s: np.ndarray, w: np.ndarray, lam: float) -> float:
    sel = list(sel)
    shifted = s - s.min()
    return float(shifted[sel].sum() + lam * w[sel].max(axis=0).sum())


def _naive_greedy(s: np.ndarray, w: np.ndarray, lam: float, k: int) -> list[int]:
    chosen: list[int] = []
    for _ in range(k):
        rest = [i for i in range(len(s)) if i not in chosen]
        chosen.append(max(rest, key=lambda i: _objective([*chosen, i], s, w, lam)))
    return chosen


def _instance(seed: int, m: int, d: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(3, d))
    z = centers[rng.integers(0, 3, size=m)] + rng.normal(size=(m, d))
    s = rng.normal(size=m)  # negative scores included
    return z, s


def test_greedy_reaches_one_minus_one_over_e_of_brute_force() -> None:
    """m <= 12, k <= 4: with ε = 0.01 the sample ⌈(m/k)·ln(100)⌉ >= m, so every
    step evaluates every remaining candidate (plain greedy), whose guarantee
    G(S) >= (1 - 1/e)·OPT holds for each instance, not only in expectation."""
    bound = 1 - 1 / math.e
    for seed in range(60):
        rng = np.random.default_rng(seed)
        m = int(rng.integers(5, 13))
        k = int(rng.integers(1, 5))
        lam = float(rng.choice([0.1, 1.0, 5.0]))
        z, s = _instance(seed, m)
        sigma = float(scipy.spatial.distance.pdist(z).mean())
        w = _kernel(z, sigma)
        got = facility_location_greedy(z, s, k, lam=lam, rng=rng, epsilon=0.01)
        assert got.size == k == np.unique(got).size
        opt = max(_objective(c, s, w, lam) for c in itertools.combinations(range(m), k))
        value = _objective(got, s, w, lam)
        assert value >= bound * opt - 1e-9


def test_plain_greedy_matches_a_naive_reference() -> None:
    for seed in range(25):
        rng = np.random.default_rng(100 + seed)
        m, k, lam = 10, 4, float(rng.choice([0.3, 2.0]))
        z, s = _instance(100 + seed, m)
        sigma = float(scipy.spatial.distance.pdist(z).mean())
        w = _kernel(z, sigma)
        got = facility_location_greedy(z, s, k, lam=lam, rng=rng)
        ref = _naive_greedy(s, w, lam, k)
        # the kernel is float32 inside: compare objective values, not tie order
        assert _objective(got, s, w, lam) == pytest.approx(_objective(ref, s, w, lam), rel=1e-5)
        assert got.tolist() == ref or _objective(got, s, w, lam) == pytest.approx(
            _objective(ref, s, w, lam), rel=1e-5
        )


def test_stochastic_greedy_in_expectation() -> None:
    """(1 - 1/e - ε)·OPT in expectation; OPT >= plain greedy's value, so the mean
    over seeds must clear (1 - 1/e - ε)·greedy (a necessary condition we can
    check without brute force at m = 150)."""
    z, s = _instance(7, 150, d=4)
    sigma = float(scipy.spatial.distance.pdist(z).mean())
    w = _kernel(z, sigma)
    lam, k, eps = 1.0, 15, 0.2
    assert math.ceil(150 / k * math.log(1 / eps)) < 150  # really stochastic

    def value(seed: int, epsilon: float) -> float:
        rng = np.random.default_rng(seed)
        sel = facility_location_greedy(z, s, k, lam=lam, rng=rng, epsilon=epsilon)
        return _objective(sel, s, w, lam)

    plain = value(0, 1e-9)
    values = [value(seed, eps) for seed in range(20)]
    assert np.mean(values) >= (1 - 1 / math.e - eps) * plain
    assert len({round(v, 9) for v in values}) > 1  # the samples differ between seeds


def test_diversity_spreads_the_selection() -> None:
    """Two clusters: the large one has the higher scores. Without the coverage
    term the top-k by score all come from it; with it the far cluster is covered."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(40, 2))
    b = rng.normal(size=(10, 2)) + 20.0
    z = np.vstack([a, b])
    s = np.r_[rng.uniform(1.0, 2.0, 40), rng.uniform(0.0, 0.5, 10)]
    only_scores = facility_location_greedy(z, s, 5, lam=0.0, rng=rng)
    assert set(only_scores.tolist()) == set(np.argsort(-s)[:5].tolist())
    assert all(i < 40 for i in only_scores)
    diverse = facility_location_greedy(z, s, 5, lam=1.0, rng=rng)
    assert any(i >= 40 for i in diverse)


def test_score_shift_changes_nothing() -> None:
    z, s = _instance(11, 60)
    a = facility_location_greedy(z, s, 9, lam=0.7, rng=np.random.default_rng(5), epsilon=0.3)
    b = facility_location_greedy(
        z, s - 100.0, 9, lam=0.7, rng=np.random.default_rng(5), epsilon=0.3
    )
    np.testing.assert_array_equal(a, b)


def test_unscored_candidates_count_as_the_best() -> None:
    z, s = _instance(12, 30)
    best = int(np.argmax(s))
    s[[3, 17]] = np.nan  # they tie with the best scored candidate
    got = facility_location_greedy(z, s, 3, lam=0.0, rng=np.random.default_rng(0))
    assert set(got.tolist()) == {3, 17, best}
    got = facility_location_greedy(z, np.full(30, np.nan), 5, lam=1.0, rng=np.random.default_rng(0))
    assert got.size == 5 == np.unique(got).size


def test_sizes_and_dtypes() -> None:
    z, s = _instance(13, 20)
    rng = np.random.default_rng(0)
    assert facility_location_greedy(z, s, 0, lam=1.0, rng=rng).size == 0
    np.testing.assert_array_equal(
        np.sort(facility_location_greedy(z, s, 25, lam=1.0, rng=rng)), np.arange(20)
    )
    got = facility_location_greedy(z, s, 7, lam=1.0, rng=rng, epsilon=0.5)
    assert got.dtype == np.int64 and got.size == 7 == np.unique(got).size
    assert got.min() >= 0 and got.max() < 20
    # identical candidates: σ = 0 is replaced, the result is still valid
    same = facility_location_greedy(np.ones((6, 3)), np.zeros(6), 3, lam=1.0, rng=rng)
    assert same.size == 3 == np.unique(same).size


def test_mean_pairwise_distance_exact_and_estimated() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(size=(500, 5))
    assert mean_pairwise_distance(z) == pytest.approx(
        scipy.spatial.distance.pdist(z).mean(), rel=1e-10
    )
    big = rng.normal(size=(3000, 5))
    est = mean_pairwise_distance(big, np.random.default_rng(0))
    assert est == pytest.approx(scipy.spatial.distance.pdist(big).mean(), rel=0.01)
    assert mean_pairwise_distance(z[:1]) == 0.0
    with pytest.raises(ValueError, match="rng"):
        mean_pairwise_distance(big)


def test_coverage_sample_stays_close_to_exact_coverage() -> None:
    """With F summed over a random 25% of the candidates the objective (measured
    exactly) stays within a few percent of plain greedy on the full set."""
    z, s = _instance(21, 400, d=4)
    sigma = float(scipy.spatial.distance.pdist(z).mean())
    w = _kernel(z, sigma)
    full = facility_location_greedy(z, s, 40, lam=2.0, rng=np.random.default_rng(0), coverage=None)
    sampled = facility_location_greedy(
        z, s, 40, lam=2.0, rng=np.random.default_rng(0), coverage=100
    )
    assert _objective(sampled, s, w, 2.0) >= 0.95 * _objective(full, s, w, 2.0)


def test_large_m_never_builds_the_m_by_m_kernel() -> None:
    """m = 20000: the kernel alone would be 3.2 GB in float64; the greedy stays
    within O(m·d + batch·coverage) memory."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(20_000, 8)).astype(np.float32)
    s = rng.normal(size=20_000)
    tracemalloc.start()
    try:
        got = facility_location_greedy(z, s, 5, lam=1.0, rng=rng, epsilon=0.5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert got.size == 5 == np.unique(got).size
    assert peak < 64 * 2**20


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"features": np.zeros(5)}, "features"),
        ({"scores": np.zeros(4)}, "scores"),
        ({"features": np.full((5, 2), np.nan)}, "finite"),
        ({"scores": np.array([0, 0, 0, 0, np.inf])}, "infinite"),
        ({"k": -1}, "k must"),
        ({"lam": -1.0}, "lam"),
        ({"epsilon": 1.0}, "epsilon"),
        ({"coverage": 0}, "coverage"),
    ],
)
def test_bad_input_raises(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "features": np.zeros((5, 2)),
        "scores": np.zeros(5),
        "k": 2,
        "lam": 1.0,
        "rng": np.random.default_rng(0),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        facility_location_greedy(**args)  # type: ignore[arg-type]
