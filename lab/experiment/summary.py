"""Summaries: mean ± std per task × variant, batches to reach random SGD's final metric,
the DoCL bar, and per method the answer to "does it pay here?" against random SGD and
random-subset (the budgeted-random control)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "CONTROLS",
    "batches_to_reach",
    "early_stop",
    "judge",
    "mean_std",
    "metric_of",
    "no_selection_warning",
    "row_line",
    "selected",
    "summarize",
    "verdict",
    "versus",
]


def row_line(row: dict[str, Any]) -> str:
    val = metric_of(row, "val")
    test = metric_of(row, "test")
    es = early_stop(row.get("history", ()), row["metric"])
    best = (
        ""
        if es is None
        else f" (best val: test {_fmt(es['test'], row['metric'])} at batch {es['batches']})"
    )
    compute = _final(row, "compute_samples")
    passes = "" if compute is None else f" compute {compute:.3g}"
    return (
        f"{row['task']:<10} {row['variant']:<40} s{row['seed']} "
        f"{row['metric']} val {_fmt(val, row['metric'])} test {_fmt(test, row['metric'])}{best} "
        f"batches {row['batches']}{passes} visited {row['visited']} {row['wall_time']:.0f}s "
        f"{row['workers']}"
    )


def selected(rows: Sequence[dict[str, Any]]) -> bool | None:
    """Did any of ``rows`` train a selection epoch? None when their histories do not say
    (no ``phase``); False when the budget ended in the warmup: such a run trained every
    sample uniformly, like random SGD, and says nothing about its method."""
    phases = [h["phase"] for r in rows for h in r.get("history", ()) if "phase" in h]
    return None if not phases else "select" in phases


def no_selection_warning(row: dict[str, Any]) -> str | None:
    """One line when ``row`` (a finished run of a selecting method) ended before its first
    selection epoch; None otherwise (uniform methods, controls and studies included)."""
    from docl.services.methods import registry

    spec = registry().get(row.get("method", ""))
    if spec is None or spec.uniform or row.get("kind", "benchmark") != "benchmark":
        return None
    if selected([row]) is not False:
        return None
    return (
        f"warning: {row['task']} {row['variant']}: its {row['batches']} batches ended before "
        "the first selection epoch (warmup on every sample only), so it trained like random "
        f"SGD and gives no verdict on {row['variant']}; give a longer --budget-batches or "
        "fewer warmup epochs (warmup_epochs=…)"
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


def _final(row: dict[str, Any], key: str) -> float | None:
    """A count of the row's run at its end (``compute_samples``, …): the row's own field,
    else its last epoch's; None when the run did not record it."""
    v = row.get(key)
    if v is None and row.get("history"):
        v = row["history"][-1].get(key)
    return None if v is None else float(v)


def early_stop(
    history: Sequence[dict[str, Any]], metric: str, *, max_compute: float | None = None
) -> dict[str, Any] | None:
    """The epoch a practitioner keeps: the best validation metric (accuracy: highest,
    MSE: lowest; ties: the earliest) among the epochs evaluated on both splits, and the
    test metric there. With ``max_compute``, only epochs whose ``compute_samples`` (all
    sample-passes so far) are at most it: the run's curve read at that compute. None
    when no epoch qualifies (no validation split, or no epoch within the compute)."""
    hib = _higher_is_better(metric)
    best: dict[str, Any] | None = None
    for h in history:
        v, t = h.get(f"val_{metric}"), h.get(f"test_{metric}")
        if v is None or t is None or math.isnan(v) or math.isnan(t):
            continue
        if max_compute is not None:
            c = h.get("compute_samples")
            if c is None or c > max_compute:
                continue
        if best is None or (v > best["val"] if hib else v < best["val"]):
            best = {"epoch": h.get("epoch"), "batches": h.get("batches"), "val": float(v),
                    "test": float(t), "compute": h.get("compute_samples")}  # fmt: skip
    return best


def _early(rows: Sequence[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """Mean ± std over seeds of the early-stopped test and validation metrics, the best
    epochs and the batches there; None when a run has no validation metric."""
    es = [early_stop(r.get("history", ()), metric) for r in rows]
    if not es or any(e is None for e in es):
        return None
    got = [e for e in es if e is not None]
    tm, ts = mean_std([e["test"] for e in got])
    vm, vs = mean_std([e["val"] for e in got])
    return {"test_mean": tm, "test_std": ts, "val_mean": vm, "val_std": vs,
            "epochs": [e["epoch"] for e in got],
            "batches": float(np.mean([e["batches"] for e in got]))}  # fmt: skip


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
            # Wall time of the in-process runs: a Ray Train run's includes Ray's start-up.
            inproc = [r for r in vr if r.get("workers", "in-process") == "in-process"]
            vm, vs = mean_std([metric_of(r, "val") for r in vr])
            per[v] = {
                "method": vr[0].get("method", v.split("[")[0]),
                "n": len(vr),
                "seeds": [r["seed"] for r in vr],
                "test_mean": tm,
                "test_std": ts,
                "val_mean": vm,
                "val_std": vs,
                "batches": int(np.mean([r["batches"] for r in vr])),
                "wall_mean": float(np.mean([r["wall_time"] for r in inproc or vr])),
                "wall_ray_only": not inproc,
                "ray_runs": len(vr) - len(inproc),
                "selected": selected(vr),
                "curve": _mean_curve(vr, f"test_{metric}"),
                "early": _early(vr, metric),
                # sample-passes (forward + backward, pools and the IL model included)
                "compute": _mean_of(_final(r, "compute_samples") for r in vr),
                "backward": _mean_of(_final(r, "backward_samples") for r in vr),
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
        controls = {*CONTROLS, *(c for c in (_control_of(v, per) for v in per) if c)}
        for v, p in per.items():
            if v not in controls:
                p["verdict"] = verdict(v, per, metric)
        rnd_rows = [r for r in trows if r["variant"] == "random"]
        for v, p in per.items():
            if v != "random":
                p["judge"] = judge(v, per, rnd_rows, metric, control=v not in controls)
        out["tasks"][t] = task_sum
    out["study"] = [r for r in rows if r.get("kind") == "study"]
    return out


def _mean_of(values: Any) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def judge(
    variant: str,
    per: dict[str, Any],
    random_rows: Sequence[dict[str, Any]],
    metric: str,
    *,
    control: bool = True,
) -> dict[str, Any]:
    """The early-stopping judge: ``variant``'s test metric at its best validation epoch
    (mean over seeds) against random SGD's early-stopped test metric

    * at equal backward batches: random SGD's runs of the same budget, early-stopped;
    * at equal compute: each random SGD run's curve read up to the sample-passes the
      variant spent (:func:`early_stop` with ``max_compute``) — ``capped`` when random
      SGD's whole run spent less (a fair point needs a longer random run);

    and its size-matched control (``pool-random`` for a pool method), early-stopped. It
    pays when it beats each of them by more than the pooled std. ``control=False`` (the
    variant is a control itself): the comparisons without a verdict."""
    hib = _higher_is_better(metric)
    p = per[variant]
    es = p.get("early")
    vs: dict[str, Any] = {}
    if es is not None:
        rnd = per.get("random", {}).get("early")
        if rnd is not None:
            vs["batches"] = {**versus(es["test_mean"], es["test_std"], rnd["test_mean"],
                                      rnd["test_std"], hib),
                             "mean": rnd["test_mean"], "std": rnd["test_std"]}  # fmt: skip
        if p.get("compute") is not None and random_rows:
            pts = [early_stop(r.get("history", ()), metric, max_compute=p["compute"])
                   for r in random_rows]  # fmt: skip
            if all(x is not None for x in pts):
                got = [x for x in pts if x is not None]
                m, sd = mean_std([x["test"] for x in got])
                spent = [_final(r, "compute_samples") or 0.0 for r in random_rows]
                vs["compute"] = {**versus(es["test_mean"], es["test_std"], m, sd, hib),
                                 "mean": m, "std": sd, "at": p["compute"],
                                 "capped": max(spent) < p["compute"]}  # fmt: skip
        ctl = _control_of(variant, per)
        ce = per.get(ctl, {}).get("early") if ctl is not None else None
        if ce is not None:
            vs["control"] = {**versus(es["test_mean"], es["test_std"], ce["test_mean"],
                                      ce["test_std"], hib),
                             "mean": ce["test_mean"], "std": ce["test_std"], "label": ctl}  # fmt: skip
    if not control:
        status = "control"
    elif es is None:
        status = "no validation split"
    elif p.get("selected") is False:
        status = "no selection epoch"
    elif p["n"] < 2:
        status = "2+ seeds needed"
    elif not vs:
        status = "no random SGD runs"
    else:
        status = "pays" if all(c["passes"] for c in vs.values()) else "does not pay"
    return {"vs": vs, "status": status, "pays": status == "pays",
            "sentence": _judge_sentence(variant, p, vs, status, metric)}  # fmt: skip


def _judge_sentence(
    variant: str, p: dict[str, Any], vs: dict[str, Any], status: str, metric: str
) -> str:
    word = "accuracy" if metric == "accuracy" else "MSE"
    es = p.get("early")
    if es is None:
        return f"{variant}: no early-stopping figure (its runs have no validation metric)."
    head = {
        "no selection epoch": f"{variant}: no verdict — its budget ended before its first "
        "selection epoch (warmup on every sample only), so it trained like random SGD;",
        "2+ seeds needed": f"{variant}: no verdict from one seed (2+ seeds needed: one seed "
        "has no spread to judge a gap by);",
        "control": f"{variant} (a control):",
        "no random SGD runs": f"{variant}: no random SGD runs to compare with;",
    }.get(status, f"{variant} {status} here (early stopping):")
    names = {"batches": "random SGD at equal backward batches",
             "compute": "random SGD at equal compute", "control": "its control"}  # fmt: skip
    parts = []
    for k, c in vs.items():
        label = f"its control {c['label']}" if k == "control" else names[k]
        note = (
            " (random SGD's whole run spent less compute: a longer random run is the fair point)"
            if k == "compute" and c.get("capped")
            else ""
        )
        parts.append(
            f"{label} {_num(c['mean'], metric)} ± {_num(c['std'], metric)} "
            f"(gap {_num(c['gap'], metric, sign=True)}, pooled std "
            f"{_num(c['pooled_std'], metric)}){note}"
        )
    compute = "" if p.get("compute") is None else f", {p['compute']:.3g} sample-passes"
    caveat = (
        " Caution: il=val trains the irreducible-loss model on the validation split, so "
        "this run's validation metric (and the epoch early stopping keeps) is not held out."
        if p.get("method") in ("rho-loss", "rho-epoch") and "il=val" in variant.replace(" ", "")
        else ""
    )
    return (
        f"{head} test {word} at the best validation epoch {_num(es['test_mean'], metric)} ± "
        f"{_num(es['test_std'], metric)} (after {es['batches']:.0f} of {p['batches']} "
        f"batches{compute})" + (" vs " + "; ".join(parts) if parts else "") + "." + caveat
    )


def _best(values: Sequence[float], higher_is_better: bool) -> float:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan
    return max(v) if higher_is_better else min(v)


def versus(mean: float, std: float, base_mean: float, base_std: float, hib: bool) -> dict[str, Any]:
    """A variant against a baseline: the gap (> 0: the variant is better; MSE gaps are
    baseline − variant), the pooled std sqrt((s₁² + s₂²)/2), and whether the gap
    exceeds it."""
    gap = (mean - base_mean) * (1 if hib else -1)
    pooled = math.sqrt((std**2 + base_std**2) / 2)
    return {"gap": gap, "pooled_std": pooled, "passes": bool(gap > pooled and gap > 0)}


def _bar(per: dict[str, Any], hib: bool) -> dict[str, Any] | None:
    """DoCL (the variant labelled exactly 'docl') against random and random-subset:
    the gap must exceed the pooled std over the seeds."""
    if "docl" not in per:
        return None
    d = per["docl"]
    res: dict[str, Any] = {}
    for base in CONTROLS:
        if base in per:
            b = per[base]
            res[base] = versus(d["test_mean"], d["test_std"], b["test_mean"], b["test_std"], hib)
    res["reach_ratio"] = d.get("reach_ratio")
    return res


#: The controls every method is compared with: random SGD, and uniform subsets of
#: DoCL's sizes (the budgeted-random control: the same batches, no selection).
CONTROLS = ("random", "random-subset")


def _control_of(variant: str, per: dict[str, Any] | None = None) -> str | None:
    """The label of ``variant``'s size-matched control (its method's registry entry names
    one: infobatch → infobatch-random), with the variant's own parameters. When ``per``
    has no such label, the control's variant in ``per`` whose parameters are the
    variant's that the control accepts (``rho-loss[il=val,pool_ratio=3]`` →
    ``pool-random[pool_ratio=3]``: the same pools, without the IL's parameter)."""
    from docl.services.methods import registry
    from docl.wire.models import RunParams

    method = variant.split("[")[0]
    spec = registry().get(method)
    if spec is None or spec.control is None:
        return None
    label = spec.control + variant[len(method) :]
    ctl = registry().get(spec.control)
    if per is None or label in per or ctl is None:
        return label
    from docl.lab.experiment.variants import parse_variant

    accepts = set(RunParams.model_fields) | set(ctl.params.model_fields)
    try:
        own = {k: v for k, v in parse_variant(variant).params.items() if k in accepts}
        for other in per:
            if other.split("[")[0] == spec.control and parse_variant(other).params == own:
                return other
    except ValueError:
        pass
    return label


def _curve_at(curve: dict[str, list[float]], batches: float) -> tuple[float, float] | None:
    """(mean, std) of a mean curve at its last evaluation point at or before ``batches``."""
    best = None
    for b, m, sd in zip(curve["batches"], curve["mean"], curve["std"], strict=True):
        if b <= batches:
            best = (m, sd)
    return best


def _num(v: float, metric: str, sign: bool = False) -> str:
    if math.isnan(v):
        return "–"
    x = 100 * v if metric == "accuracy" else v
    return f"{x:+.2f}" if sign and metric == "accuracy" else (
        f"{x:.2f}" if metric == "accuracy" else (f"{x:+.4f}" if sign else f"{x:.4f}"))  # fmt: skip


def verdict(variant: str, per: dict[str, Any], metric: str) -> dict[str, Any]:
    """Does ``variant`` pay on this task? Its final test metric against each control:
    random SGD and random-subset at the same batch budget and — when the variant
    trained fewer batches than random SGD (e.g. infobatch prunes its epochs) — random
    SGD's own curve after the same number of batches (the budgeted-random control for
    that saving). It pays when it beats every control by more than the pooled std.
    Returns the comparisons, ``pays`` and one sentence saying so."""
    hib = _higher_is_better(metric)
    p = per[variant]
    vs: dict[str, Any] = {}
    for base in CONTROLS:
        if base in per:
            b = per[base]
            vs[base] = {**versus(p["test_mean"], p["test_std"], b["test_mean"], b["test_std"], hib),
                        "mean": b["test_mean"], "std": b["test_std"]}  # fmt: skip
    ctl = _control_of(variant, per)
    if ctl is not None and ctl in per:
        b = per[ctl]
        vs["control"] = {**versus(p["test_mean"], p["test_std"], b["test_mean"], b["test_std"], hib),
                         "mean": b["test_mean"], "std": b["test_std"], "label": ctl}  # fmt: skip
    if "random" in per and p["batches"] < per["random"]["batches"]:
        at = _curve_at(per["random"]["curve"], p["batches"])
        if at is not None:
            vs["random@same"] = {**versus(p["test_mean"], p["test_std"], at[0], at[1], hib),
                                 "mean": at[0], "std": at[1]}  # fmt: skip
    beats = bool(vs) and all(c["passes"] for c in vs.values())
    if p.get("selected") is False:
        status = "no selection epoch"
    elif p["n"] < 2:
        status = "2+ seeds needed"
    else:
        status = "pays" if beats else "does not pay"
    pays = status == "pays"
    names = {"random": "random SGD", "random-subset": "random-subset",
             "random@same": f"random SGD after the same {p['batches']} batches",
             "control": f"its size-matched control {ctl}"}  # fmt: skip
    parts = [
        f"{names[k]} {_num(c['mean'], metric)} ± {_num(c['std'], metric)} "
        f"(gap {_num(c['gap'], metric, sign=True)}, pooled std {_num(c['pooled_std'], metric)})"
        for k, c in vs.items()
    ]
    budget = per["random"]["batches"] if "random" in per else p["batches"]
    used = f" after {p['batches']} of {budget} batches" if p["batches"] < budget else ""
    word = "accuracy" if metric == "accuracy" else "MSE"
    if status == "no selection epoch":
        sentence = (
            f"{variant}: no verdict — its {p['batches']} batches ended before its first "
            "selection epoch (warmup on every sample only), so it trained like random SGD; "
            "give a longer --budget-batches or fewer warmup epochs."
        )
    elif not vs:
        sentence = f"{variant}: no random / random-subset runs to compare with."
    else:
        head = (
            f"{variant}: no verdict from one seed (2+ seeds needed: one seed has no spread "
            "to judge a gap by);"
            if status == "2+ seeds needed"
            else f"{variant} {status} here:"
        )
        sentence = (
            f"{head} test {word} "
            f"{_num(p['test_mean'], metric)} ± {_num(p['test_std'], metric)}{used} vs "
            + "; ".join(parts)
        )
        reach = p.get("reach_batches")
        if "reach_ratio" in p:
            own = int(per["random"].get("reach_batches") or 0)
            sentence += (
                f"; it never reaches random SGD's final {word} (random SGD: {own} batches)"
                if reach is None
                else f"; it reaches random SGD's final {word} after {int(reach)} batches "
                f"(random SGD: {own})"
            )
        sentence += "."
    return {"vs": vs, "pays": pays, "status": status, "sentence": sentence}
