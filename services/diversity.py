"""Diversity pruning (Eq. 15): facility location + summed scores by stochastic greedy. No I/O.

Objective over subsets S of the m candidates, |S| = k:

    G(S) = Σ_{i∈S} s'_i + λ·F(S),   F(S) = Σ_{j∈V} max_{i∈S} ω_ij,
    ω_ij = exp(-‖z_i - z_j‖² / (2σ²)),

with s' = s - min(s) (see below). G is monotone submodular and non-negative,
so greedy gets G(S) >= (1 - 1/e)·OPT and stochastic greedy ("lazier than lazy",
Mirzasoleiman et al., AAAI 2015: each step evaluates a random sample of
⌈(m/k)·ln(1/ε)⌉ remaining candidates) gets (1 - 1/e - ε)·OPT in expectation.

Negative scores: a sum of scores is modular but not monotone/non-negative when
scores are negative, which voids the guarantee. Shifting every score by the same
constant (-min s) changes Σ_{i∈S} s_i by exactly k·(-min s) for every |S| = k,
so the argmax over size-k sets and every greedy choice (each gain moves by the
same constant) are unchanged, while the shifted objective is non-negative and
monotone. NaN scores (unscored samples) count as the largest score (optimism,
as in the draw).

Memory is O(m·d + batch·|J|): the m×m kernel is never built; each step computes
kernel rows for its sampled candidates only, against the coverage set J (all
m candidates, or a uniform sample of `coverage` of them when m is larger, with
F estimated as (m/|J|)·Σ_{j∈J} max_i ω_ij, an unbiased estimate of each
candidate's marginal coverage gain). Time O(m·ln(1/ε)·|J|·d).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import numpy as np

try:  # optional: present wherever scikit-learn is; the server does not require it
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - depends on the environment
    threadpool_limits = None

#: σ is the exact mean pairwise distance up to this many candidates, else an
#: estimate from SIGMA_PAIRS random pairs (standard error ~ std(dist)/√pairs).
SIGMA_EXACT_MAX = 2048
SIGMA_PAIRS = 100_000


def mean_pairwise_distance(
    features: np.ndarray, rng: np.random.Generator | None = None, *, pairs: int = SIGMA_PAIRS
) -> float:
    """σ of the paper: the mean of the m(m-1)/2 pairwise Euclidean distances.

    Exact for m <= SIGMA_EXACT_MAX (computed in row blocks, O(m·block) memory);
    for larger m the mean over `pairs` uniformly drawn pairs i != j (rng needed).
    """
    z = np.asarray(features, dtype=np.float64)
    m = z.shape[0]
    if m < 2:
        return 0.0
    sq = np.einsum("ij,ij->i", z, z)
    if m <= SIGMA_EXACT_MAX:
        total = 0.0
        block = 256
        for a in range(0, m, block):
            zb = z[a : a + block]
            d2 = sq[a : a + block, None] + sq[None, :] - 2.0 * (zb @ z.T)
            d = np.sqrt(np.maximum(d2, 0.0))
            # keep j > i only: each unordered pair once, no diagonal
            mask = np.arange(m)[None, :] > np.arange(a, a + zb.shape[0])[:, None]
            total += float(d[mask].sum())
        return total / (m * (m - 1) / 2)
    if rng is None:
        raise ValueError("an rng is needed to estimate sigma for more than SIGMA_EXACT_MAX rows")
    i = rng.integers(0, m, size=pairs)
    j = (i + rng.integers(1, m, size=pairs)) % m  # uniform over j != i
    return float(np.linalg.norm(z[i] - z[j], axis=1).mean())


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Each greedy step multiplies a handful of rows: multi-threaded BLAS only adds
    hand-off cost there (measured 3-4x slower on a busy 2-core box), so the greedy
    loop runs with one BLAS thread when threadpoolctl is available."""
    if threadpool_limits is None:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def facility_location_greedy(
    features: np.ndarray,
    scores: np.ndarray,
    k: int,
    *,
    lam: float,
    rng: np.random.Generator,
    epsilon: float = 0.01,
    sigma: float | None = None,
    coverage: int | None = 4096,
    batch: int = 256,
) -> np.ndarray:
    """Pick k of the m rows of `features` (m, d) maximizing Σ scores + lam·F(S) by stochastic greedy.

    Returns int64 positions into the candidate array, distinct, in the order
    greedy picked them (len min(k, m)). sigma None = the mean pairwise distance
    of the candidates (estimated from random pairs when m is large); a zero σ
    (all candidates identical) is replaced by 1 (every ω is then 1 anyway).
    Each step evaluates ⌈(m/k)·ln(1/ε)⌉ random remaining candidates, or all of
    them when that is at least as many (then it is plain greedy). lam = 0 is the
    exact top-k by score (ties broken by rng). `coverage` caps the set J the
    coverage term is summed over (None: all m).
    """
    z = np.asarray(features, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"features must be an (m, d) matrix, got shape {z.shape}")
    m = z.shape[0]
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != (m,):
        raise ValueError(f"scores must have shape ({m},), got {s.shape}")
    if not np.isfinite(z).all():
        raise ValueError("features must be finite")
    if np.isinf(s).any():
        raise ValueError("scores must not be infinite (NaN = unscored)")
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if not (lam >= 0 and math.isfinite(lam)):
        raise ValueError(f"lam must be finite and >= 0, got {lam}")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    if coverage is not None and coverage < 1:
        raise ValueError(f"coverage must be >= 1 or None, got {coverage}")
    k = min(k, m)
    if k == 0:
        return np.empty(0, np.int64)

    nan = np.isnan(s)
    if nan.all():
        s = np.zeros(m)
    elif nan.any():
        s = np.where(nan, s[~nan].max(), s)
    s = s - s.min()  # non-negative, same greedy choices (module docstring)

    if lam == 0.0:
        # modular objective: greedy is the exact top-k; ties broken at random
        order = rng.permutation(m)
        top = order[np.argsort(-s[order], kind="stable")[:k]]
        return top.astype(np.int64)
    if k == m:
        return np.arange(m, dtype=np.int64)

    if sigma is None:
        sigma = mean_pairwise_distance(z, rng)
    if not (sigma > 0 and math.isfinite(sigma)):
        sigma = 1.0
    inv2s2 = 1.0 / (2.0 * sigma * sigma)

    if coverage is not None and m > coverage:
        cov_idx = np.sort(rng.choice(m, size=coverage, replace=False))
        weight = lam * m / coverage
    else:
        cov_idx = np.arange(m)
        weight = lam
    # The kernel is evaluated in float32: it only ranks marginal gains, and
    # float32 halves the cost of the exp that dominates the run time.
    z32 = z.astype(np.float32)
    zjt = np.ascontiguousarray(z32[cov_idx].T)  # (d, |J|)
    sqj = np.einsum("ij,ij->i", z32[cov_idx], z32[cov_idx])
    sq = np.einsum("ij,ij->i", z32, z32)
    best_cover = np.zeros(cov_idx.size, np.float32)  # max_{i∈S} ω_ij, 0 for S = ∅
    neg_inv2s2 = np.float32(-inv2s2)

    def kernel_rows(cand: np.ndarray) -> np.ndarray:
        d2 = z32[cand] @ zjt
        d2 *= -2.0
        d2 += sq[cand, None]
        d2 += sqj[None, :]
        np.maximum(d2, 0.0, out=d2)
        d2 *= neg_inv2s2
        return np.exp(d2, out=d2)

    sample = math.ceil((m / k) * math.log(1.0 / epsilon))
    with _single_threaded_blas():
        return _greedy(kernel_rows, s, weight, best_cover, k, sample, batch, rng)


def _greedy(
    kernel_rows: Callable[[np.ndarray], np.ndarray],
    s: np.ndarray,
    weight: float,
    best_cover: np.ndarray,
    k: int,
    sample: int,
    batch: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The (stochastic) greedy loop; best_cover is updated in place."""
    m = s.size
    available = np.ones(m, dtype=bool)
    chosen = np.empty(k, np.int64)
    for step in range(k):
        rest = np.flatnonzero(available)
        cand = rest if sample >= rest.size else rng.choice(rest, size=sample, replace=False)
        best_gain, best_row, pick = -np.inf, best_cover, -1
        for a in range(0, cand.size, batch):
            part = cand[a : a + batch]
            rows = kernel_rows(part)
            gain_f = np.maximum(rows - best_cover, 0.0).sum(axis=1, dtype=np.float64)
            gains = s[part] + weight * gain_f
            arg = int(np.argmax(gains))
            if gains[arg] > best_gain:
                best_gain, best_row, pick = float(gains[arg]), rows[arg].copy(), int(part[arg])
        chosen[step] = pick
        available[pick] = False
        np.maximum(best_cover, best_row, out=best_cover)
    return chosen
