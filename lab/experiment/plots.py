"""Plots: curves.png (test metric vs training batches) and study.png (the §3 study)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_curves", "plot_study"]


def plot_curves(summary: dict[str, Any], path: Path) -> None:
    """Test metric vs training batches per task (mean ± std over seeds), like Figure 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary["tasks"])
    n = max(1, len(tasks))
    cols = min(n, 2)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.0 * rows), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(summary["variants"]) <= 10 else "tab20")
    colors = {v: cmap(i % cmap.N) for i, v in enumerate(summary["variants"])}
    for ax, t in zip(axes.flat, tasks, strict=False):
        ts = summary["tasks"][t]
        scale = 100.0 if ts["metric"] == "accuracy" else 1.0
        for v, p in ts["variants"].items():
            c = p["curve"]
            if not c["batches"]:
                continue
            x = np.asarray(c["batches"])
            m = np.asarray(c["mean"]) * scale
            s = np.asarray(c["std"]) * scale
            ax.plot(x, m, color=colors[v], lw=1.4, label=v)
            ax.fill_between(x, m - s, m + s, color=colors[v], alpha=0.15, lw=0)
        ax.set_title(t)
        ax.set_xlabel("training batches")
        ax.set_ylabel("test accuracy (%)" if ts["metric"] == "accuracy" else "test MSE")
        # Zoom on the bulk of the final values (a collapsed run stays in the table).
        finals = [
            p["test_mean"] * scale
            for p in ts["variants"].values()
            if not math.isnan(p["test_mean"])
        ]
        if finals:
            med = float(np.median(finals))
            if ts["metric"] == "accuracy":
                ax.set_ylim(max(0.0, med - 12.0), min(100.0, max(finals) + 2.0))
            else:
                ax.set_ylim(0.9 * min(finals), 1.6 * med)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    # long variant labels: fewer columns, so the legend stays inside the figure
    ncol = max(1, min(6, len(labels), 110 // max(12, max((len(x) for x in labels), default=1))))
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=ncol,
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(labels) / ncol), 1, 1))
    fig.savefig(path, dpi=72, pil_kwargs={"optimize": True})
    plt.close(fig)


def plot_study(study_rows: Sequence[dict[str, Any]], path: Path) -> None:
    """The §3 study: score of selected samples, true-class probability of unselected
    samples (high- and low-score halves) and test accuracy, per method, vs batches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.0))
    methods = []
    for r in study_rows:
        if r["variant"] not in methods:
            methods.append(r["variant"])
    cmap = plt.get_cmap("tab10")
    task = study_rows[0]["task"] if study_rows else ""
    for i, m in enumerate(methods):
        rs = [r for r in study_rows if r["variant"] == m]
        recs = [r["study"] for r in rs]
        length = min(len(x) for x in recs)
        x = np.array([recs[0][j]["batches"] for j in range(length)], dtype=float)

        def series(
            key: str, recs: list[list[dict[str, Any]]] = recs, length: int = length
        ) -> np.ndarray:
            v = np.array(
                [
                    [np.nan if rec[j].get(key) is None else rec[j][key] for j in range(length)]
                    for rec in recs
                ],
                dtype=float,
            )
            with np.errstate(all="ignore"), warnings_off():
                return np.nanmean(v, axis=0)

        c = cmap(i)
        m_s, s_s = series("sel_score_mean"), series("sel_score_std")
        axes[0].plot(x, m_s, color=c, label=m)
        axes[0].fill_between(x, m_s - s_s, m_s + s_s, color=c, alpha=0.12, lw=0)
        axes[1].plot(x, series("unsel_hi_p_mean"), color=c, label=f"{m}: high-score half")
        axes[1].plot(x, series("unsel_lo_p_mean"), color=c, ls="--", label=f"{m}: low-score half")
        axes[2].plot(x, 100 * series("test_accuracy"), color=c, label=m)
    seeds = len({r["seed"] for r in study_rows})
    axes[0].set_title(
        f"{task}, {seeds} seed(s): score â(i) of the selected samples (mean ± std)", fontsize=9
    )
    axes[1].set_title("true-class probability of UNselected samples", fontsize=9)
    axes[2].set_title("test accuracy (%)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("training batches")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72, pil_kwargs={"optimize": True})
    plt.close(fig)


@contextlib.contextmanager
def warnings_off() -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
