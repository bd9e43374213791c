"""Outputs: results.csv, results.md (tables, the bar, "pays here?"), summary.json."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from docl.lab.experiment.plots import plot_curves, plot_study
from docl.lab.experiment.summary import CONTROLS, early_stop, mean_std, metric_of, summarize

__all__ = ["CSV_COLUMNS", "render_markdown", "write_csv", "write_json_atomic", "write_outputs"]


CSV_COLUMNS = (
    "task", "variant", "method", "seed", "kind", "metric", "budget", "batches", "epochs",
    "test", "val", "test_accuracy", "val_accuracy", "test_mse", "val_mse",
    "es_test", "es_val", "es_epoch", "es_batches",
    "forward_samples", "backward_samples", "compute_samples",
    "wall_time", "train_time", "workers", "visited", "visits_total", "samples_scored",
    "run_id", "params", "task_params",
)  # fmt: skip


def write_csv(rows: Iterable[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in rows:
            rec = {k: r.get(k) for k in CSV_COLUMNS}
            rec["test"] = metric_of(r, "test")
            rec["val"] = metric_of(r, "val")
            es = early_stop(r.get("history", ()), r["metric"])  # the best validation epoch
            if es is not None:
                rec.update(es_test=es["test"], es_val=es["val"], es_epoch=es["epoch"],
                           es_batches=es["batches"])  # fmt: skip
            rec["params"] = json.dumps(r.get("params", {}), sort_keys=True)
            rec["task_params"] = json.dumps(r.get("task_params", {}), sort_keys=True)
            w.writerow({k: ("" if v is None else v) for k, v in rec.items()})


def _cell(mean: float, std: float, metric: str, bold: bool) -> str:
    if math.isnan(mean):
        return "NaN (diverged)"
    s = f"{100 * mean:.2f} ± {100 * std:.2f}" if metric == "accuracy" else f"{mean:.4f} ± {std:.4f}"
    return f"**{s}**" if bold else s


def _is_best(value: float, best: float, metric: str) -> bool:
    return not math.isnan(value) and abs(value - best) <= 1e-12


def render_markdown(summary: dict[str, Any]) -> str:
    tasks = list(summary["tasks"])
    lines = ["# docl experiment: results", ""]
    if not tasks:
        lines.append("(no benchmark runs)")
    seeds = sorted(
        {s for t in summary["tasks"].values() for p in t["variants"].values() for s in p["seeds"]}
    )
    for split, title in (("test", "Test"), ("val", "Validation")):
        lines += [
            f"## {title} metric at the shared batch budget",
            "",
            f"Mean ± std over seeds {seeds}. Classification: accuracy in %, higher is better; "
            "regression (distill): MSE per output, lower is better. Bold: best in the column.",
            "",
            "| variant | "
            + " | ".join(
                f"{t} ({summary['tasks'][t]['metric']}, {_budget(summary, t)} batches)"
                for t in tasks
            )
            + " |",
            "|---|" + "---|" * len(tasks),
        ]
        for v in summary["variants"]:
            cells = []
            for t in tasks:
                ts = summary["tasks"][t]
                p = ts["variants"].get(v)
                if p is None:
                    cells.append("")
                    continue
                m, s = p[f"{split}_mean"], p[f"{split}_std"]
                cells.append(
                    _cell(m, s, ts["metric"], _is_best(m, ts[f"best_{split}"], ts["metric"]))
                )
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _early_section(summary, tasks)
    lines += _pays_section(summary, tasks)
    lines += [
        "## The bar: DoCL against random SGD and random-subset",
        "",
        "Gap = DoCL − baseline on the test metric (positive = DoCL better; MSE gaps are "
        "baseline − DoCL). DoCL passes when the gap exceeds the pooled std "
        "sqrt((s₁² + s₂²)/2). Reach ratio = the batches DoCL's mean test curve needs to "
        "first reach random SGD's final mean test metric, divided by the batches random "
        "SGD's own mean curve needs to first reach it (< 1: DoCL gets there sooner).",
        "",
        "| task | vs random: gap (pooled std) | passes | vs random-subset: gap (pooled std) | passes | reach ratio |",
        "|---|---|---|---|---|---|",
    ]
    for t in tasks:
        ts = summary["tasks"][t]
        bar = ts.get("bar")
        if not bar:
            lines.append(f"| {t} | (no 'docl' run) | | | | |")
            continue
        cells = [t]
        docl = ts["variants"]["docl"]
        for base in CONTROLS:
            b = bar.get(base)
            if b is None:
                cells += ["–", "–"]
            else:
                if docl.get("selected") is False:
                    passes = "no selection epoch"
                elif docl["n"] < 2 or ts["variants"][base]["n"] < 2:
                    passes = "2+ seeds needed"
                else:
                    passes = "yes" if b["passes"] else "**no**"
                cells += [
                    f"{_gap(b['gap'], ts['metric'])} ({_gap(b['pooled_std'], ts['metric'], sign=False)})",
                    passes,
                ]
        rr = bar.get("reach_ratio")
        cells.append("not reached" if rr is None else f"{rr:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Batches to reach random SGD's final test metric",
        "",
        "First evaluation point (epoch end) at which the variant's mean test curve reaches "
        "random SGD's final mean, in batches, and (in brackets) divided by random SGD's own "
        "first-reach batches.",
        "",
        "| variant | " + " | ".join(tasks) + " |",
        "|---|" + "---|" * len(tasks),
    ]
    for v in summary["variants"]:
        cells = []
        for t in tasks:
            p = summary["tasks"][t]["variants"].get(v)
            if p is None or "reach_ratio" not in p:
                cells.append("")
            elif p["reach_batches"] is None:
                cells.append("not reached")
            else:
                cells.append(f"{int(p['reach_batches'])} ({p['reach_ratio']:.2f})")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    if summary["study"]:
        srows = summary["study"]
        task = srows[0]["task"]
        lines += [
            "",
            f"## The §3 study ({task}, k = 0.2·n per selection epoch; see study.png)",
            "",
            "| method | test accuracy (%) | seeds |",
            "|---|---|---|",
        ]
        for m in dict.fromkeys(r["variant"] for r in srows):
            vals = [metric_of(r, "test") for r in srows if r["variant"] == m]
            mean, std = mean_std(vals)
            lines.append(f"| {m} | {_cell(mean, std, 'accuracy', False)} | {len(vals)} |")
    lines += ["", "## Wall time per run (s, mean over seeds)", "",
              "In-process runs only: a run through Ray Train (`--ray-runs`) also pays Ray's "
              "start-up, so it is left out of the mean; a cell of Ray runs only is marked "
              "(Ray) and is not comparable with the others.", "",
              "| variant | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]  # fmt: skip
    for v in summary["variants"]:
        cells = []
        for t in tasks:
            p = summary["tasks"][t]["variants"].get(v)
            ray = " (Ray)" if p is not None and p.get("wall_ray_only") else ""
            cells.append("" if p is None else f"{p['wall_mean']:.1f}{ray}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _passes(v: float | None) -> str:
    if v is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:.2f}{unit}"
    return f"{v:.0f}"


def _early_section(summary: dict[str, Any], tasks: list[str]) -> list[str]:
    """The headline: per task, each variant's test metric at its best validation epoch
    beside its final test metric, its batches and compute, and the early-stopping judge
    against random SGD at equal batches and at equal compute and against its control."""
    lines = [
        "## Early stopping: test at the best validation epoch (the headline)",
        "",
        "What a practitioner keeps: each run's checkpoint at its best validation epoch "
        "(ties: the earliest), and the test metric there; mean ± std over seeds. Beside it "
        "the final test metric at the end of the budget, the batches at the best epoch, "
        "the backward batches of the run and its compute in sample-passes (forward + "
        "backward, summed over ranks: a pool method's candidate forwards and the "
        "irreducible-loss model's training included), also as a multiple of random SGD's. "
        "Each method against random SGD early-stopped at **equal backward batches** (the "
        "same budget) and at **equal compute** (each random SGD run's curve read up to the "
        "compute the method spent, early-stopped there; ≤ marks random SGD runs whose "
        "whole budget spent less, where only a longer random run is a fair point), and "
        "its size-matched control early-stopped. Gap (pooled std): > 0 = the method is "
        "better. Pays = beats each by more than the pooled std, from 2+ seeds.",
        "",
    ]
    for t in tasks:
        ts = summary["tasks"][t]
        per, m = ts["variants"], ts["metric"]
        rc = per.get("random", {}).get("compute")
        lines += [
            f"### {t} ({m}, early stopping)",
            "",
            "| variant | test @ best val | best epoch at batch | final test | batches | compute "
            "| × random | vs random SGD, equal batches | vs random SGD, equal compute "
            "| vs control | pays? |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for v, p in per.items():
            es, j = p.get("early"), p.get("judge", {})
            vs = j.get("vs", {})
            cells = [
                v,
                "–" if es is None else _cell(es["test_mean"], es["test_std"], m, False),
                "–" if es is None else f"{es['batches']:.0f}",
                _cell(p["test_mean"], p["test_std"], m, False),
                str(p["batches"]),
                _passes(p.get("compute")),
                "–" if not rc or p.get("compute") is None else f"{p['compute'] / rc:.2f}",
            ]
            for k in ("batches", "compute", "control"):
                c = vs.get(k)
                mark = "≤ " if c is not None and c.get("capped") else ""
                cells.append(
                    "–" if c is None
                    else f"{mark}{_gap(c['gap'], m)} ({_gap(c['pooled_std'], m, sign=False)})"
                )  # fmt: skip
            status = j.get("status", "")
            cells.append(
                {"pays": "**yes**", "does not pay": "no", "control": ""}.get(status, status)
            )
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"- {p['judge']['sentence']}" for p in per.values() if "judge" in p]
        lines.append("")
    return lines


def _pays_section(summary: dict[str, Any], tasks: list[str]) -> list[str]:
    """Per task, each method beside the controls at the equal batch budget, and one
    sentence per method: does it pay here?"""
    lines = [
        "## Does it pay here? (final test at the budget)",
        "",
        "Each method's final test metric at the equal batch budget beside random SGD and "
        "random-subset (uniform subsets of DoCL's sizes, no selection); for a method that "
        "trained fewer batches (infobatch), random SGD's own curve after that many batches "
        "(mid-schedule: its learning rate has not annealed yet) and the method's size-matched "
        "control when it was run (infobatch-random: uniform subsets of InfoBatch's sizes, "
        "weight 1, the same batches). A method pays when it beats every control by more than "
        "the pooled std "
        "sqrt((s₁² + s₂²)/2) over the seeds. Reach = batches its mean test curve needs to "
        "first reach random SGD's final mean (random SGD's own in the header).",
        "",
    ]
    for t in tasks:
        ts = summary["tasks"][t]
        per = ts["variants"]
        rows = [(v, p) for v, p in per.items() if "verdict" in p]
        if not rows:
            continue
        m = ts["metric"]
        rnd = per.get("random", {})
        head = f"random SGD reach {int(rnd['reach_batches'])}" if rnd.get("reach_batches") else ""
        lines += [
            f"### {t} ({m}{', ' + head if head else ''})",
            "",
            "| method | test | batches | vs random SGD | vs random-subset | vs random SGD, same batches | vs size-matched control | reach | pays? |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for v, p in rows:
            vs = p["verdict"]["vs"]
            cells = [v, _cell(p["test_mean"], p["test_std"], m, False), str(p["batches"])]
            for k in ("random", "random-subset", "random@same", "control"):
                c = vs.get(k)
                cells.append(
                    "–" if c is None
                    else f"{_gap(c['gap'], m)} ({_gap(c['pooled_std'], m, sign=False)})"
                )  # fmt: skip
            reach = p.get("reach_batches")
            cells.append(
                "–"
                if "reach_ratio" not in p
                else ("not reached" if reach is None else str(int(reach)))
            )
            status = p["verdict"].get("status", "")
            cells.append({"pays": "**yes**", "does not pay": "no"}.get(status, status))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"- {p['verdict']['sentence']}" for _, p in rows]
        lines.append("")
    return lines


def _budget(summary: dict[str, Any], task: str) -> int:
    per = summary["tasks"][task]["variants"]
    return max((p["batches"] for p in per.values()), default=0)


def _gap(v: float, metric: str, sign: bool = True) -> str:
    if math.isnan(v):
        return "–"
    if metric == "accuracy":
        return f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}"
    return f"{v:+.4f}" if sign else f"{v:.4f}"


def write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def write_outputs(
    rows: Sequence[dict[str, Any]],
    out: Path,
    variants: Sequence[str] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """results.csv, results.md (``note`` under its title), curves.png and (with study
    runs) study.png."""
    summary = summarize(rows, variants)
    write_csv(rows, out / "results.csv")
    md = render_markdown(summary)
    if note:
        title, _, rest = md.partition("\n")
        md = f"{title}\n\n{note}\n{rest}"
    (out / "results.md").write_text(md)
    plot_curves(summary, out / "curves.png")
    if summary["study"]:
        plot_study(summary["study"], out / "study.png")
    slim = {
        "tasks": {
            t: {
                **ts,
                "variants": {
                    v: {k: x for k, x in p.items() if k != "curve"}
                    for v, p in ts["variants"].items()
                },
            }
            for t, ts in summary["tasks"].items()
        },
        "variants": summary["variants"],
    }
    write_json_atomic(out / "summary.json", slim)
    return summary
