"""Summaries: mean ± std per task × variant, batches to reach random SGD's final metric,
the DoCL bar, and per method the answer to "does it pay here?" against random SGD and
random-subset (the budgeted-random control)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["batches_to_reach", "mean_std", "metric_of", "row_line", "summarize"]


def row_line(row: dict[str, Any]) -> str:
    val = metric_of(row, "val")
    test = metric_of(row, "test")
    return (
        f"{row['task']:<10} {row['variant']:<40} s{row['seed']} "
        f"{row['metric']} val {_fmt(val, row['metric'])} test {_fmt(test, row['metric'])} "
        f"batches {row['batches']} visited {row['visited']} {row['wall_time']:.0f}s {row['workers']}"
    )


def metric_of(row: dict[str, Any], split: str) -> float:
    """The row's final test or val metric (accuracy or MSE), NaN when missing."""
    v = row.get(f"{split}_{row['metric']}")
    return math.nan if v is None else float(v)


def _fmt(v: float, metric: str) -> str:
    if math.isnan(v):
        return "-"
    return f"{100 * v:.2f}" if metric == "accuracy" else f"{v:.4f}"


def _higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def batches_to_reach(
    batches: Sequence[float], values: Sequence[float], target: float, *, higher_is_better: bool
) -> float | None:
    """The first point of a curve at which it reaches ``target`` (None: never).

    ``batches``/``values`` are the curve's evaluation points (one per epoch); a
    curve "reaches" the target when its value is >= target (accuracy) or
    <= target (MSE).
    """
    for b, v in zip(batches, values, strict=True):
        if v is None or math.isnan(v):
            continue
        if (v >= target) if higher_is_better else (v <= target):
            return float(b)
    return None


def _mean_curve(rows: Sequence[dict[str, Any]], key: str) -> dict[str, list[float]]:
    """Mean and std over seeds of a per-epoch metric; the seeds of a variant share
    one plan, so epoch j is at the same batch count in each (cut to the shortest)."""
    hists = [[h for h in r["history"] if h.get(key) is not None] for r in rows]
    length = min((len(h) for h in hists), default=0)
    if length == 0:
        return {"batches": [], "mean": [], "std": []}
    vals = np.array([[h[j][key] for j in range(length)] for h in hists], dtype=np.float64)
    b = [float(hists[0][j]["batches"]) for j in range(length)]
    std = vals.std(axis=0, ddof=1) if vals.shape[0] > 1 else np.zeros(length)
    return {"batches": b, "mean": vals.mean(axis=0).tolist(), "std": std.tolist()}


def summarize(
    rows: Sequence[dict[str, Any]], variants: Sequence[str] | None = None
) -> dict[str, Any]:
    """Per task and variant: test/val mean ± std, curves, and the issue's bar."""
    bench = [r for r in rows if r.get("kind", "benchmark") == "benchmark"]
    tasks: list[str] = []
    for r in bench:
        if r["task"] not in tasks:
            tasks.append(r["task"])
    order = list(variants or [])
    for r in bench:
        if r["variant"] not in order:
            order.append(r["variant"])
    out: dict[str, Any] = {"tasks": {}, "variants": order}
    for t in tasks:
        trows = [r for r in bench if r["task"] == t]
        metric = trows[0]["metric"]
        hib = _higher_is_better(metric)
        per: dict[str, Any] = {}
        for v in order:
            vr = sorted((r for r in trows if r["variant"] == v), key=lambda r: r["seed"])
            if not vr:
                continue
            tm, ts = mean_std([metric_of(r, "test") for r in vr])
            vm, vs = mean_std([metric_of(r, "val") for r in vr])
            per[v] = {
                "n": len(vr),
                "seeds": [r["seed"] for r in vr],
                "test_mean": tm,
                "test_std": ts,
                "val_mean": vm,
                "val_std": vs,
                "batches": int(np.mean([r["batches"] for r in vr])),
                "wall_mean": float(np.mean([r["wall_time"] for r in vr])),
                "curve": _mean_curve(vr, f"test_{metric}"),
            }
        best_test = _best([p["test_mean"] for p in per.values()], hib)
        best_val = _best([p["val_mean"] for p in per.values()], hib)
        task_sum: dict[str, Any] = {
            "metric": metric,
            "variants": per,
            "best_test": best_test,
            "best_val": best_val,
        }
        if "random" in per:
            # Batches to random SGD's final mean, relative to the batches random itself
            # needs to first reach it (its curve is noisy: it may get there early).
            target = per["random"]["test_mean"]
            rc = per["random"]["curve"]
            base = batches_to_reach(rc["batches"], rc["mean"], target, higher_is_better=hib)
            for p in per.values():
                reach = batches_to_reach(
                    p["curve"]["batches"], p["curve"]["mean"], target, higher_is_better=hib
                )
                p["reach_batches"] = reach
                p["reach_ratio"] = reach / base if reach is not None and base else None
        task_sum["bar"] = _bar(per, hib)
        out["tasks"][t] = task_sum
    out["study"] = [r for r in rows if r.get("kind") == "study"]
    return out


def _best(values: Sequence[float], higher_is_better: bool) -> float:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan
    return max(v) if higher_is_better else min(v)


def _bar(per: dict[str, Any], hib: bool) -> dict[str, Any] | None:
    """DoCL (the variant labelled exactly 'docl') against random and random-subset:
    the gap must exceed the pooled std sqrt((s1² + s2²) / 2) over the seeds."""
    if "docl" not in per:
        return None
    d = per["docl"]
    res: dict[str, Any] = {}
    for base in ("random", "random-subset"):
        if base not in per:
            continue
        b = per[base]
        gap = (d["test_mean"] - b["test_mean"]) * (1 if hib else -1)  # > 0: DoCL better
        pooled = math.sqrt((d["test_std"] ** 2 + b["test_std"] ** 2) / 2)
        res[base] = {"gap": gap, "pooled_std": pooled, "passes": bool(gap > pooled and gap > 0)}
    res["reach_ratio"] = d.get("reach_ratio")
    return res
