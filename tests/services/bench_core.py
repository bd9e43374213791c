"""Micro-benchmark of the pure math (not a test; pytest does not collect it).

    .venv/bin/python tests/services/bench_core.py [--quick]

Prints each figure beside a baseline measured in the same run:
* score_report vs the bare score formula in numpy (no validation, no masks) and
  vs the naive one-hot formulation;
* gumbel_topk vs a uniform k-of-n draw (Generator.choice) and vs the raw
  argpartition it is built on;
* inclusion_probabilities, facility_location_greedy (absolute, per size).
Times are the median of repeats (time.perf_counter).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from docl.services.diversity import facility_location_greedy
from docl.services.sampling import gumbel_topk, inclusion_probabilities, standardize
from docl.services.scoring import score_report


def _median_s(fn: Callable[[], object], repeats: int, number: int = 1) -> float:
    if repeats > 1:
        fn()  # warm up (skipped for the slow single-shot figures)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    return statistics.median(times)


def _bare_score(
    f: np.ndarray, g: np.ndarray, y: np.ndarray, lrs: np.ndarray, prev: np.ndarray
) -> object:
    """The formula alone: float32, row-major, no validation, no masks."""
    e = np.exp(f - f.max(axis=1, keepdims=True))
    s = e.sum(axis=1)
    dyn = (f - g) / (2.0 - lrs)[:, None].astype(np.float32)
    a = dyn[np.arange(f.shape[0]), y] - (e * dyn).sum(axis=1) / s
    return 0.9 * prev + 0.1 * a


def _onehot_score(f: np.ndarray, g: np.ndarray, y: np.ndarray) -> object:
    p = np.exp(f - f.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    r = np.eye(f.shape[1], dtype=np.float32)[y] - p
    return (r * (f - g)).sum(axis=1)


def bench_scoring(quick: bool) -> None:
    print("score_report (classification, docl): median ms per report")
    print(f"{'B':>6} {'c':>6} {'score_report':>13} {'bare numpy':>11} {'ratio':>6} {'one-hot':>9}")
    rng = np.random.default_rng(0)
    for b, c in [(256, 10), (1024, 10), (1024, 100), (1024, 1000)]:
        f = rng.normal(size=(b, c)).astype(np.float32)
        g = (f + 0.01 * rng.normal(size=(b, c))).astype(np.float32)
        y = rng.integers(0, c, size=b)
        lrs = np.full(b, 1.0)
        prev = rng.normal(size=b).astype(np.float32)
        full = partial(score_report, f, y, 2.0, g, lrs, prev, task="classification")
        number = 20 if c < 1000 else 2
        reps = 5 if quick else 15
        t_full = _median_s(full, reps, number) * 1e3
        t_bare = _median_s(partial(_bare_score, f, g, y, lrs, prev), reps, number) * 1e3
        t_hot = _median_s(partial(_onehot_score, f, g, y), reps, number) * 1e3
        print(
            f"{b:>6} {c:>6} {t_full:>13.3f} {t_bare:>11.3f} {t_full / t_bare:>6.2f} {t_hot:>9.3f}"
        )


def _std_gumbel(scores: np.ndarray, k: int, rng: np.random.Generator) -> object:
    return gumbel_topk(standardize(scores, "std") / np.float32(0.1), k, rng)


def bench_draw(quick: bool) -> None:
    print("\nepoch draw: median seconds")
    print(
        f"{'n':>10} {'k':>10} {'std+gumbel':>11} {'gumbel':>8} {'argpart':>8} {'choice':>8} {'incl':>7}"
    )
    rng = np.random.default_rng(1)
    sizes = [1_000_000] if quick else [1_000_000, 10_000_000]
    for n in sizes:
        scores = rng.normal(size=n).astype(np.float32)
        keys = rng.normal(size=n).astype(np.float32)
        logits = standardize(scores, "std") / np.float32(0.1)
        for frac in (0.5, 0.9):
            k = int(frac * n)
            reps = 3
            t_all = _median_s(partial(_std_gumbel, scores, k, rng), reps)
            t_g = _median_s(partial(gumbel_topk, logits, k, rng), reps)
            t_part = _median_s(partial(np.argpartition, keys, n - k), reps)
            t_choice = _median_s(partial(rng.choice, n, size=k, replace=False), reps)
            t_incl = _median_s(partial(inclusion_probabilities, logits, k), 1)
            print(
                f"{n:>10} {k:>10} {t_all:>11.3f} {t_g:>8.3f} {t_part:>8.3f} {t_choice:>8.3f} {t_incl:>7.3f}"
            )


def bench_diversity(quick: bool) -> None:
    print("\nfacility_location_greedy (k = 0.8 m, lam = 1, eps = 0.01): seconds")
    rng = np.random.default_rng(2)
    for m, d in [(2000, 32)] if quick else [(2000, 32), (8000, 64)]:
        z = rng.normal(size=(m, d)).astype(np.float32)
        s = rng.normal(size=m)
        run = partial(facility_location_greedy, z, s, int(0.8 * m), lam=1.0, rng=rng)
        t = _median_s(run, 1)
        print(f"m={m:>6} d={d:>4}: {t:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    args = ap.parse_args()
    bench_scoring(args.quick)
    bench_draw(args.quick)
    bench_diversity(args.quick)


if __name__ == "__main__":
    main()
