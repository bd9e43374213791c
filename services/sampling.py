"""Drawing an epoch's subset: pure numpy functions with a seeded Generator. No I/O.

The selection methods (``docl.services.methods``) are built from these draws:
``uniform_draw``, ``boltzmann_draw``, ``spl_draw``, … Every draw is a pure function
of its inputs and the Generator: same seed + same inputs -> same indices, in the
same order.

Conventions shared by every function here:
* indices are int64 positions into the n samples; a draw returns them in
  training order (shuffled), distinct;
* NaN in `scores` / `losses` means "not known yet" (never scored / never
  visited) and is treated optimistically, so unknown samples get explored.

Size: a little over the house's ~500 lines: the samplers' numerics (Gumbel-top-k,
inclusion probabilities, uniform epochs) and the per-method draws that use them.
The per-method part (``MethodSpec``, ``METHODS``, ``_uniform`` … ``_alternate``) is
to move to a method registry (``services/methods/``, issue 9).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

_T = TypeVar("_T")

#: standardize treats a spread at or below this (the smallest normal float32)
#: as none: dividing by a subnormal std would overflow float32.
_STD_FLOOR = float(np.finfo(np.float32).tiny)

#: gumbel_topk keys are float32 (fast) when the finite logits span at most this.
FLOAT32_KEY_SPAN = 1e4


def uniform_epoch(
    n: int, rng: np.random.Generator, size: int | None = None, *, shuffle: bool = True
) -> np.ndarray:
    """Warmup / refresh epochs ("uniform, full data"): a uniform permutation of all n
    samples, or a uniform `size`-of-n subset in random order (an epoch the budget cut short).
    `shuffle=False`: the subset in no particular order (:func:`random_order` with the
    same Generator then gives exactly the shuffled result)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    size = n if size is None else int(size)
    if not 0 <= size <= n:
        raise ValueError(f"size must lie in [0, {n}], got {size}")
    if size == n:
        sel = np.arange(n, dtype=np.int64)
    elif 2 * size > n:
        # the complement of a uniform (n - size)-subset is a uniform size-subset, and comes
        # out sorted: Generator.choice would shuffle `size` of n elements in place
        drop = rng.choice(n, size=n - size, replace=False, shuffle=False)
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        sel = np.flatnonzero(keep)
    else:
        sel = rng.choice(n, size=size, replace=False, shuffle=False).astype(np.int64, copy=False)
    return random_order(sel, rng) if shuffle else sel


#: gumbel_topk selects by a threshold (np.partition of the keys) from this many logits up.
_THRESHOLD_MIN = 1 << 17


#: random_order sorts by random keys from this many values up (Fisher-Yates below).
_SORT_SHUFFLE_MIN = 1 << 16

#: From this many items up, the Gumbel keys and the shuffle of a draw are computed in
#: fixed pieces on a thread pool (numpy releases the GIL in these loops). The pieces, not
#: the number of threads, fix the random streams: a seed gives the same draw on any machine.
PARALLEL_MIN = 1 << 22
#: Items per piece of the parallel Gumbel keys.
_KEY_PIECE = 1 << 20
#: Blocks of the parallel shuffle (:func:`_blocked_order`).
_SHUFFLE_BLOCKS = 8
#: Most threads a draw uses (:func:`set_draw_threads`; the server's ``DOCL_DRAW_THREADS``).
_POOL_SIZE = min(8, os.cpu_count() or 1)
_POOL: ThreadPoolExecutor | None = None


def set_draw_threads(threads: int) -> None:
    """Run the pieces of large draws on up to ``threads`` threads (1 = in the caller's
    thread; 0 = the default, min(8, CPUs)). The draws themselves do not change."""
    global _POOL, _POOL_SIZE
    if threads < 0:
        raise ValueError(f"threads must be >= 0, got {threads}")
    size = threads or min(8, os.cpu_count() or 1)
    if size != _POOL_SIZE and _POOL is not None:
        _POOL.shutdown(wait=False)
        _POOL = None
    _POOL_SIZE = size


def _parallel_map(fn: Callable[[int], _T], count: int) -> list[_T]:
    """[fn(0), ..., fn(count - 1)], on the draw thread pool when it has more than one thread.
    The results never depend on how many threads ran them."""
    global _POOL
    if _POOL_SIZE <= 1 or count <= 1:
        return [fn(j) for j in range(count)]
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=_POOL_SIZE, thread_name_prefix="docl-draw")
    return list(_POOL.map(fn, range(count)))


def _streams(rng: np.random.Generator, count: int) -> list[np.random.Generator]:
    """``count`` independent Generators, derived from one draw of ``rng`` (deterministic)."""
    root = np.random.SeedSequence(int(rng.integers(0, 2**63)))
    return [np.random.default_rng(child) for child in root.spawn(count)]


def random_order(values: np.ndarray, rng: np.random.Generator, *, key_bits: int = 32) -> np.ndarray:
    """A uniformly random permutation of the 1-D `values`, as a new array. Exact in law.

    Fisher-Yates on millions of elements is bound by cache misses (every swap goes
    to a random place of a 72 MB array: ~0.8 s for 9M int64 here). Values in
    [0, 2^32) — sample indices — are shuffled by sorting instead: each value gets
    an i.i.d. uniform `key_bits`-bit key in the high half of a uint64 whose low
    half is the value, numpy sorts the uint64s (SIMD: ~0.15 s for 9M), and runs
    of equal keys are shuffled on their own (Fisher-Yates on a few elements; ~k²/2^33
    pairs of 9M share a 32-bit key). Sorting by i.i.d. keys with ties broken
    uniformly at random gives every order the same probability. Other values, and
    short arrays, get numpy's Fisher-Yates on a copy (in place: no index array to
    gather through). `key_bits` < 32 is for tests (many ties)."""
    v = np.asarray(values)
    if v.ndim != 1:
        raise ValueError(f"values must be a vector, got shape {v.shape}")
    k = v.shape[0]
    sortable = (
        v.dtype.kind in "iu"
        and v.dtype.itemsize <= 8
        and (k >= _SORT_SHUFFLE_MIN or key_bits < 32)
        and 0 < key_bits <= 32
        and k > 1
        and int(v.min()) >= 0
        and int(v.max()) < 1 << 32
    )
    if not sortable:
        out = v.copy()
        rng.shuffle(out)
        return out
    if k >= PARALLEL_MIN:
        return _blocked_order(v, rng, _SHUFFLE_BLOCKS, key_bits)
    return _sorted_order(v, rng, key_bits)


def _sorted_order(v: np.ndarray, rng: np.random.Generator, key_bits: int) -> np.ndarray:
    """:func:`random_order` of values in [0, 2^32) by sorting i.i.d. random keys."""
    k = v.shape[0]
    # uint64, uniform, from the same stream as rng (deterministic for a seed)
    keys = np.asarray(rng.bit_generator.random_raw(k), dtype=np.uint64)
    np.bitwise_and(keys, np.uint64(((1 << key_bits) - 1) << (64 - key_bits)), out=keys)
    np.bitwise_or(keys, v.astype(np.uint64, copy=False), out=keys)
    keys.sort()
    hi = keys >> np.uint64(32)
    tie = hi[1:] == hi[:-1]
    del hi
    np.bitwise_and(keys, np.uint64(0xFFFFFFFF), out=keys)
    out = keys.view(np.int64) if v.dtype != np.uint64 else keys
    if tie.any():
        # runs of equal keys: [start, end) where tie[start..end-2] are all True
        edge = np.diff(tie.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
        starts = np.flatnonzero(edge == 1)
        ends = np.flatnonzero(edge == -1) + 1
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
            rng.shuffle(out[a:b])
    return out.astype(v.dtype, copy=False)


def _blocked_order(
    v: np.ndarray, rng: np.random.Generator, blocks: int, key_bits: int
) -> np.ndarray:
    """:func:`random_order` of values in [0, 2^32), its sorts on the thread pool.

    Each output position gets an i.i.d. uniform label in [0, blocks); the input is cut
    into consecutive blocks of the labels' counts; block j is shuffled on its own
    (:func:`_sorted_order`, its own random stream) and fills the positions labelled j,
    in order. Exact in law: given the counts c, the positions of each block are a
    uniformly random partition (probability Π c_j! / k!) and each block's order is
    uniform (1 / c_j!), so every permutation has probability 1 / k!, whatever c."""
    k = v.shape[0]
    labels = rng.integers(0, blocks, size=k, dtype=np.uint8)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=blocks))])
    gens = _streams(rng, blocks)
    out = np.empty_like(v)

    def block(j: int) -> None:  # disjoint writes: one thread per block
        part = v[int(bounds[j]) : int(bounds[j + 1])]
        if part.shape[0] > 1:
            part = _sorted_order(part, gens[j], key_bits)
        out[np.flatnonzero(labels == j)] = part

    _parallel_map(block, blocks)
    return out


def standardize(scores: np.ndarray, normalize: str) -> np.ndarray:
    """ŝ: scores standardized over scored (non-NaN) samples ('std') or as they are ('none');
    unscored samples (NaN) get the largest current value (optimism). All-NaN -> zeros.

    'std': (s - mean) / std over the scored samples, mean and std accumulated in
    float64; a constant table (std 0, or below the smallest normal float32)
    standardizes to all zeros. Any non-finite
    entry counts as unscored (the score table never holds ±inf; this only makes
    the function total). Returns float32 (n,).
    """
    if normalize not in ("std", "none"):
        raise ValueError(f"normalize must be 'std' or 'none', got {normalize!r}")
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be a vector, got shape {s.shape}")
    out = s.astype(np.float32)  # always a fresh copy
    finite = np.isfinite(out)
    n_scored = int(np.count_nonzero(finite))
    if n_scored == 0:
        return np.zeros(out.shape, np.float32)
    all_scored = n_scored == out.size
    vals = out if all_scored else out[finite]
    if normalize == "std":
        mean, std = _moments(vals)
        if not std > _STD_FLOOR or not np.isfinite(std):
            out[finite] = 0.0
            top = 0.0
        else:
            _pieces(out, lambda x: np.divide(np.subtract(x, mean, out=x), std, out=x))
            top = float(out.max()) if all_scored else float(out[finite].max())
    else:
        top = float(vals.max())
    if not all_scored:
        out[~finite] = top
    return out


def _pieces(x: np.ndarray, fn: Callable[[np.ndarray], _T]) -> list[_T]:
    """[fn(piece) for each piece of x]: one piece below PARALLEL_MIN, else pieces of
    _KEY_PIECE items on the draw thread pool (fn must only touch its piece)."""
    n = x.shape[0]
    if n < PARALLEL_MIN:
        return [fn(x)]
    return _parallel_map(
        lambda j: fn(x[j * _KEY_PIECE : (j + 1) * _KEY_PIECE]), -(-n // _KEY_PIECE)
    )


def _moments(vals: np.ndarray) -> tuple[float, float]:
    """(mean, population std) of a float32 vector, accumulated in float64 (in pieces on
    the thread pool from PARALLEL_MIN items up: sums, then squared deviations)."""
    n = vals.shape[0]
    if n < PARALLEL_MIN:
        return float(vals.mean(dtype=np.float64)), float(vals.std(dtype=np.float64))
    mean = math.fsum(_pieces(vals, lambda x: float(x.sum(dtype=np.float64)))) / n

    def squares(x: np.ndarray) -> float:
        d = x.astype(np.float64)
        d -= mean
        return float(np.dot(d, d))

    return mean, math.sqrt(math.fsum(_pieces(vals, squares)) / n)


def _as_logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits)
    if z.ndim != 1:
        raise ValueError(f"logits must be a vector, got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    if np.isnan(z).any():
        raise ValueError("logits must not be NaN")
    if np.isposinf(z).any():
        raise ValueError("logits must be < +inf (use a large finite value)")
    return z


def _check_k(k: int, n: int) -> int:
    k = int(k)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    return min(k, n)


def gumbel_topk(
    logits: np.ndarray, k: int, rng: np.random.Generator, *, ordered: bool = False
) -> np.ndarray:
    """k distinct indices drawn without replacement with P ∝ exp(logits) (Gumbel-top-k), O(n).

    Exact: the k largest keys z_i - log(E_i), E_i ~ Exp(1) i.i.d. (the exponential
    race: sample i "arrives" at E_i / w_i with w_i = exp(z_i)) are distributed as
    k successive draws without replacement ∝ w. Work stays in log space (the max
    logit is subtracted first, keys never exponentiate), so any finite logits are
    safe. Keys are float32 for speed (n = 10M in ~0.2 s) when the finite logits
    span at most FLOAT32_KEY_SPAN (rounding of a key <= ~1e-3, negligible next to
    the unit-scale Gumbel noise), else float64. An E_i that underflows to 0 is
    clipped to the smallest normal float (a ~2^-24-probability event at most).

    -inf logits (weight 0) are never drawn unless k exceeds the number of finite
    logits; then all finite ones are taken and the rest are drawn uniformly from
    the -inf ones. k >= n returns every index. `ordered=True` returns the indices
    in draw order (first draw first) at an O(k log k) sort; otherwise the order
    is unspecified (callers shuffle).
    """
    z = np.asarray(logits)
    if z.ndim != 1:
        raise ValueError(f"logits must be a vector, got shape {z.shape}")
    if not np.issubdtype(z.dtype, np.floating):
        z = z.astype(np.float64)
    n = z.size
    k = _check_k(k, n)
    if k == 0:
        return np.empty(0, np.int64)
    # two passes validate everything: max is NaN iff some logit is NaN
    top, low = float(z.max()), float(z.min())
    if np.isnan(top):
        raise ValueError("logits must not be NaN")
    if top == np.inf:
        raise ValueError("logits must be < +inf (use a large finite value)")
    if low == -np.inf:
        finite = z > -np.inf
        n_finite = int(np.count_nonzero(finite))
        if k >= n_finite:
            # every sample with positive weight, then uniformly among the weight-0 ones
            fin_idx = np.flatnonzero(finite)
            head = gumbel_topk(z[fin_idx], n_finite, rng, ordered=ordered)
            zero_idx = np.flatnonzero(~finite)
            tail = rng.choice(zero_idx, size=k - n_finite, replace=False, shuffle=True)
            return np.concatenate([fin_idx[head], tail]).astype(np.int64, copy=False)
        low = float(z[finite].min())
    if k == n and not ordered:
        return np.arange(n, dtype=np.int64)

    # float32 keys when the finite logits span <= FLOAT32_KEY_SPAN (key rounding
    # <= ~1e-3, far below the Gumbel noise's unit scale), float64 otherwise
    dtype = np.float32 if top - low <= FLOAT32_KEY_SPAN else np.float64
    keys: np.ndarray = np.empty(n, dtype)
    if n >= PARALLEL_MIN:  # the same keys piece by piece, each piece its own stream
        gens = _streams(rng, -(-n // _KEY_PIECE))
        _parallel_map(
            lambda j: _gumbel_keys(z, top, keys, gens[j], j * _KEY_PIECE, _KEY_PIECE),
            len(gens),
        )
    else:
        _gumbel_keys(z, top, keys, rng, 0, n)
    if k == n:
        idx = np.arange(n)
    elif n >= _THRESHOLD_MIN:
        idx = _top_k_by_threshold(keys, k, rng)
    else:
        idx = np.argpartition(keys, n - k)[n - k :]
    if ordered:
        idx = idx[np.argsort(keys[idx], kind="stable")[::-1]]  # largest key = first draw
    return idx.astype(np.int64, copy=False)


def _gumbel_keys(
    z: np.ndarray, top: float, keys: np.ndarray, rng: np.random.Generator, lo: int, size: int
) -> None:
    """keys[lo:lo+size] = (z - top) - log(E), E ~ Exp(1) i.i.d. from ``rng`` (keys' dtype)."""
    out = keys[lo : lo + size]
    with np.errstate(over="ignore"):  # hugely negative -> -inf: weight 0 anyway
        np.subtract(z[lo : lo + size], top, out=out, casting="unsafe")  # <= 0
    e = rng.standard_exponential(out.shape[0], dtype=keys.dtype)
    np.maximum(e, np.finfo(keys.dtype).tiny, out=e)
    np.log(e, out=e)
    np.subtract(out, e, out=out)


def _top_k_by_threshold(keys: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Positions of the k largest keys, ascending (0 < k < n): the k-th largest value by
    np.partition of the values alone (argpartition also moves an int64 index array: ~2x
    slower at n = 10M), then one pass of comparisons. Keys equal to the threshold (float32
    rounding makes ties possible) are taken uniformly at random until there are k."""
    n = keys.shape[0]
    thr = np.partition(keys, n - k)[n - k]
    above = keys > thr
    n_above = int(np.count_nonzero(above))
    if n_above == k:
        return np.flatnonzero(above)
    ties = np.flatnonzero(keys == thr)
    pick = rng.choice(ties, size=k - n_above, replace=False) if ties.size > k - n_above else ties
    above[pick] = True
    return np.flatnonzero(above)


_COARSE = 1 << 18
_COARSE_MIN = 1 << 14


def _race_time(w: np.ndarray, k: float, t: float, tol: float, max_iter: int) -> float:
    """Solve Σ_i (1 - exp(-w_i·t)) = k for t by Newton's method.

    The left side is increasing and concave in t, so from a start left of the
    root Newton climbs monotonically, and from the right its first step lands on
    the left: it converges from any t > 0 without bracketing.
    """
    buf = np.empty_like(w)
    n = w.size
    for _ in range(max_iter):
        np.multiply(w, -t, out=buf)
        np.exp(buf, out=buf)
        h = float(n - buf.sum()) - k  # Σ (1 - e^{-wt}) - k
        if abs(h) <= tol * k:
            break
        slope = float(np.dot(w, buf))
        if not slope > 0:  # every term saturated: far right of the root
            t *= 0.5
            continue
        step = -h / slope
        t = max(t + step, 0.5 * t)  # the clamp only guards round-off far right of the root
        if abs(step) <= 1e-15 * t:
            break
    return t


def inclusion_probabilities(
    logits: np.ndarray,
    k: int,
    *,
    indices: np.ndarray | None = None,
    tol: float = 1e-9,
    max_iter: int = 200,
) -> np.ndarray:
    """Approximate P(i in S) for a k-of-n draw without replacement ∝ exp(logits).

    The draw is an exponential race: sample i arrives at T_i = E_i / w_i
    (E_i ~ Exp(1), w_i = exp(logit_i)) and S holds the first k arrivals, so
    P(i in S) = P(T_i < T_(k)). Replacing the random k-th arrival time T_(k) by
    the deterministic t at which k arrivals are expected gives

        π_i ≈ 1 - exp(-w_i·t),   t solving  Σ_i (1 - exp(-w_i·t)) = k

    (Rosén's approximation for order/successive sampling). It is exact for
    uniform weights (π = k/n), for k = n (π = 1) and k = 0, sums to k by
    construction, keeps the order of the weights, and its error vanishes as n
    grows with k/n fixed; on tiny instances it is off by up to a few 0.01
    (tests/services/test_sampling.py measures it against the exact value).

    t is found by Newton's method (`_race_time`; the left side is increasing and
    concave in t, so Newton converges from any start), started from the solution
    on an evenly strided ~262k subsample when n is large: 2-4 passes over n. Weights are exp(logit - max),
    so large logits cannot overflow. -inf logits (weight 0) get 0 unless k
    exceeds the number of positive weights; then positive weights get 1 and the
    rest share the remaining k - m uniformly. Returns float64 (n,), or only the
    entries at `indices` when given (saves the last pass over n). `tol` bounds
    |Σπ - k| / k.
    """
    z = _as_logits(logits).astype(np.float64, copy=False)
    n = z.size
    k = _check_k(k, n)
    at = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    if k == n:
        return np.ones(at.size)
    if k == 0:
        return np.zeros(at.size)
    w = np.exp(z - z.max())
    pos = w > 0
    m = int(np.count_nonzero(pos))
    if k >= m:
        return np.where(pos[at], 1.0, (k - m) / (n - m))
    if m == n and float(z.min()) == float(z.max()):
        return np.full(at.size, k / n)  # uniform weights: the exact k/n
    t0 = k / float(w.sum(dtype=np.float64))
    if n >= 4 * _COARSE_MIN:
        # a good start from an evenly strided subsample (at most ~262k weights,
        # a quarter of n or less, same fraction k/n): the full-size Newton then
        # needs 2-4 passes instead of ~15
        sub = w[:: max(4, n // _COARSE)]
        t0 = _race_time(sub, k * sub.size / n, t0, 1e-6, max_iter)
    t = _race_time(w, k, t0, tol, max_iter)
    return -np.expm1(-w[at] * t)


@dataclass(frozen=True)
class Draw:
    """One epoch's draw. ``inclusion`` and ``weights`` follow their samples. A selection
    method's draw returns it in any order; ``methods.draw`` shuffles it into training order."""

    indices: np.ndarray  # (k,) int64, in training order once shuffled
    inclusion: np.ndarray | None  # (k,) float32 inclusion probabilities when Exp3 is on
    weights: np.ndarray | None = None  # (k,) float32 per-sample loss weights (None: all 1)


def _shuffled(
    idx: np.ndarray, rng: np.random.Generator, incl: np.ndarray | None = None, shuffle_: bool = True
) -> Draw:
    d = Draw(
        indices=np.asarray(idx).astype(np.int64, copy=False),
        inclusion=None if incl is None else np.asarray(incl).astype(np.float32, copy=False),
    )
    return shuffle_draw(d, rng) if shuffle_ else d


def shuffle_draw(d: Draw, rng: np.random.Generator) -> Draw:
    """The draw in a uniformly random training order (:func:`random_order`; inclusion
    probabilities and weights follow their samples)."""
    if d.inclusion is None and d.weights is None:
        return Draw(random_order(d.indices, rng), None)
    order = random_order(np.arange(d.indices.size, dtype=np.int64), rng)
    return Draw(
        d.indices[order],
        None if d.inclusion is None else d.inclusion[order].astype(np.float32, copy=False),
        None if d.weights is None else d.weights[order].astype(np.float32, copy=False),
    )


def extreme_k(
    values: np.ndarray, k: int, rng: np.random.Generator, *, largest: bool, nan_as: float
) -> np.ndarray:
    """The k largest (or smallest) values' indices, ties at the boundary broken
    uniformly at random by `rng`; NaN counts as `nan_as` (±inf). O(n). Unordered."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    k = _check_k(k, n)
    if k == 0:
        return np.empty(0, np.int64)
    if k == n:
        return np.arange(n, dtype=np.int64)
    v = np.where(np.isnan(v), nan_as, v)
    if largest:
        v = -v
    thr = np.partition(v, k - 1)[k - 1]  # the k-th smallest
    below = np.flatnonzero(v < thr)
    ties = np.flatnonzero(v == thr)
    pick = rng.choice(ties, size=k - below.size, replace=False)
    return np.concatenate([below, pick]).astype(np.int64, copy=False)


def uniform_draw(
    *, k: int, scores: np.ndarray, rng: np.random.Generator, exp3: bool = False,
    shuffle: bool = True, **_: object,
) -> Draw:  # fmt: skip
    n = scores.size
    idx = uniform_epoch(n, rng, size=k, shuffle=shuffle)
    return Draw(idx, np.full(k, k / n, np.float32) if exp3 and n else None)


def boltzmann_draw(
    *,
    k: int,
    scores: np.ndarray,
    rng: np.random.Generator,
    tau: float,
    normalize: str,
    exp3: bool = False,
    shuffle: bool = True,
    **_: object,
) -> Draw:
    logits = standardize(scores, normalize)
    logits /= np.float32(tau)
    if not np.isfinite(logits).all():  # ŝ/τ beyond float32: redo in float64
        logits = standardize(scores, normalize).astype(np.float64) / tau
    idx = gumbel_topk(logits, k, rng)
    incl = inclusion_probabilities(logits, k, indices=idx) if exp3 else None
    return _shuffled(idx, rng, incl, shuffle)


def _deterministic(
    idx: np.ndarray, rng: np.random.Generator, exp3: bool, shuffle: bool = True
) -> Draw:  # inclusion 1: a deterministic pick
    return _shuffled(idx, rng, np.ones(idx.size) if exp3 else None, shuffle)


def spl_draw(
    *, k: int, losses: np.ndarray, rng: np.random.Generator, exp3: bool = False,
    shuffle: bool = True, **_: object,
) -> Draw:  # fmt: skip
    # easiest first; a never-visited sample (NaN loss) is taken first (exploration)
    sel = extreme_k(losses, k, rng, largest=False, nan_as=-np.inf)
    return _deterministic(sel, rng, exp3, shuffle)


def mcl_draw(
    *, k: int, losses: np.ndarray, rng: np.random.Generator, exp3: bool = False,
    shuffle: bool = True, **_: object,
) -> Draw:  # fmt: skip
    # hardest first; a never-visited sample (NaN loss) is taken first (exploration)
    sel = extreme_k(losses, k, rng, largest=True, nan_as=np.inf)
    return _deterministic(sel, rng, exp3, shuffle)


def top_draw(
    *, k: int, scores: np.ndarray, rng: np.random.Generator, exp3: bool = False,
    shuffle: bool = True, **_: object,
) -> Draw:  # fmt: skip
    sel = extreme_k(scores, k, rng, largest=True, nan_as=np.inf)
    return _deterministic(sel, rng, exp3, shuffle)


def bottom_draw(
    *, k: int, scores: np.ndarray, rng: np.random.Generator, exp3: bool = False,
    shuffle: bool = True, **_: object,
) -> Draw:  # fmt: skip
    # unscored count as the largest, so bottom-k takes them last
    sel = extreme_k(scores, k, rng, largest=False, nan_as=np.inf)
    return _deterministic(sel, rng, exp3, shuffle)


def alternate_draw(
    *, k: int, scores: np.ndarray, rng: np.random.Generator, episode: int = 1, exp3: bool = False,
    shuffle: bool = True, **_: object,
) -> Draw:  # fmt: skip
    # paper §3 Baseline1: top-k in odd episodes, bottom-k in even ones
    if episode % 2 == 1:
        return top_draw(k=k, scores=scores, rng=rng, exp3=exp3, shuffle=shuffle)
    return bottom_draw(k=k, scores=scores, rng=rng, exp3=exp3, shuffle=shuffle)
