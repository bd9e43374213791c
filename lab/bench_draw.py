"""The draw-math benchmark behind ``docl bench draw``: how a draw's pure math scales
with threads, each row beside the one-thread figures of the same run.

A selection draw of k = 0.9·n of n scores (τ = 0.1, normal scores) is standardize →
Gumbel-top-k → shuffle into a training order (:mod:`docl.services.sampling`). From
``sampling.PARALLEL_MIN`` items up, each step runs in fixed pieces on the draw thread
pool (``DOCL_DRAW_THREADS`` on the server); the pieces, not the threads, fix the random
streams, so every row draws the same indices. The best of ``repeats`` per step is kept
(a neighbour's burst slows one repeat or another at random). No Redis, no HTTP: the
service's own draw time is ``docl bench service``'s draw table.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["run_draw_bench"]

Echo = Callable[[str], None]

_HEAD = (
    f"{'n':>12} {'k':>12} {'threads':>7} {'std s':>7} {'gumbel s':>8} {'shuffle s':>9}"
    f" {'total s':>8} {'speed-up':>8}"
)


def run_draw_bench(
    *,
    sizes: Sequence[int] = (10_000_000,),
    threads: Sequence[int] = (),
    repeats: int = 3,
    echo: Echo = print,
) -> list[dict[str, Any]]:
    """Time the draw math per size and thread count; print and return the rows."""
    from docl.services import sampling

    cpus = os.cpu_count() or 1
    counts = [1, *[t for t in (threads or sorted({2, min(8, cpus)})) if t != 1]]
    echo(
        f"docl bench draw: standardize + Gumbel-top-k + shuffle of k = 0.9·n, best of "
        f"{repeats}; {cpus} CPUs; speed-up against 1 thread in this run"
    )
    echo(_HEAD)
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            scores = np.random.default_rng(5).normal(size=n).astype(np.float32)
            k = int(0.9 * n)
            base = float("nan")
            first: np.ndarray | None = None
            for t in counts:
                sampling.set_draw_threads(t)
                best = [float("inf")] * 3
                for rep in range(repeats):
                    rng = np.random.default_rng(rep)
                    t0 = time.perf_counter()
                    logits = sampling.standardize(scores, "std") / np.float32(0.1)
                    t1 = time.perf_counter()
                    sel = sampling.gumbel_topk(logits, k, rng)
                    t2 = time.perf_counter()
                    order = sampling.random_order(sel, rng)
                    t3 = time.perf_counter()
                    best = [
                        min(b, x) for b, x in zip(best, (t1 - t0, t2 - t1, t3 - t2), strict=True)
                    ]
                    if rep == 0:  # the same draw whatever the thread count
                        if first is None:
                            first = order
                        elif not np.array_equal(first, order):
                            raise AssertionError(f"{t} threads drew differently from 1 thread")
                total = sum(best)
                base = total if t == 1 else base
                row = {
                    "n": n, "k": k, "threads": t, "standardize_s": best[0],
                    "gumbel_s": best[1], "shuffle_s": best[2], "total_s": total,
                    "speedup": base / total,
                }  # fmt: skip
                rows.append(row)
                echo(
                    f"{n:>12,} {k:>12,} {t:>7} {best[0]:>7.3f} {best[1]:>8.3f} {best[2]:>9.3f}"
                    f" {total:>8.3f} {base / total:>7.2f}×"
                )
    finally:
        sampling.set_draw_threads(0)
    return rows
