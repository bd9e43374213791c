"""`docl plot`: PNG figures of a run's scores and of training curves.

    docl plot scores RUN -o scores.png                 # score and visit histograms (from the server)
    docl plot metrics out/docl out/random -o acc.png   # test accuracy vs batches, one line per method

matplotlib comes with the ``worker`` extra; it is imported only when a command runs.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from docl.client.cli import app, need_extra
from docl.client.cli.runs import RunArg, ServerOpt, TokenOpt, connect, fetch_scores

__all__ = ["load_metrics", "plot_app"]

plot_app = typer.Typer(
    name="plot",
    help=(
        "Draw PNG figures: a run's score histogram (from the score server) or training "
        "curves from metrics.jsonl files written by `docl train`. Needs matplotlib, "
        "which the 'worker' extra of docl installs."
    ),
    no_args_is_help=True,
)
app.add_typer(plot_app, name="plot")


def _pyplot() -> Any:
    matplotlib = need_extra("matplotlib", "worker")
    matplotlib.use("Agg")  # files only: no display needed
    return need_extra("matplotlib.pyplot", "worker")


@plot_app.command("scores")
def scores(
    run_id: RunArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
        "scores.png"
    ),
    bins: Annotated[int, typer.Option(min=1, help="Histogram bins.")] = 50,
) -> None:
    """Histogram of a run's per-sample scores (scored samples only) and of visits per sample."""
    with connect(server, token) as client:
        run = client.get_run(run_id)
        table = fetch_scores(client, run_id)
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    s = table.scores[table.scored]
    if s.size:
        ax1.hist(s, bins=bins, color="tab:blue")
    else:
        ax1.text(
            0.5, 0.5, "no sample scored yet", ha="center", va="center", transform=ax1.transAxes
        )
    ax1.set_xlabel("score (EMA of the learning-dynamics score)")
    ax1.set_ylabel("samples")
    ax1.set_title(f"{s.size} of {len(table)} samples scored")
    v = table.visits
    top = int(v.max()) if v.size else 0
    ax2.bar(np.arange(top + 1), np.bincount(v, minlength=top + 1), color="tab:orange")
    ax2.set_xlabel("visits (times reported)")
    ax2.set_ylabel("samples")
    ax2.set_title(f"{int(v.sum())} visits in total")
    fig.suptitle(f"{run.run_id}: {run.method}, {run.task}, n={run.num_samples}")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    typer.echo(f"wrote {out}")


def load_metrics(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of a metrics.jsonl (a file, or a directory holding one) and the run's
    result.json beside it ({} when absent)."""
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise typer.BadParameter(
            f"{file} does not exist (give a metrics.jsonl or the --out dir of docl train)"
        )
    rows = []
    for n, line in enumerate(file.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise typer.BadParameter(f"{file}:{n} is not JSON: {e}") from e
    result_file = file.parent / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    return rows, result


def _label(path: Path, rows: list[dict[str, Any]], result: dict[str, Any], key: str) -> str:
    for source in (result, rows[0] if rows else {}):
        if key in source:
            return str(source[key])
    return path.name if path.is_dir() else path.parent.name


def _series(
    rows: list[dict[str, Any]], x: str, y: str, file: Path
) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
    if not pts:
        keys = sorted({k for r in rows for k in r})
        raise typer.BadParameter(
            f"{file} has no rows with both '{x}' and '{y}'; its keys: {', '.join(keys)}"
        )
    a = np.asarray(pts, dtype=float)
    return a[:, 0], a[:, 1]


@plot_app.command("metrics")
def metrics(
    paths: Annotated[
        list[Path],
        typer.Argument(
            help="metrics.jsonl files, or the --out directories of `docl train` runs.",
            show_default=False,
        ),
    ],
    x: Annotated[str, typer.Option("--x", help="Key for the x axis.")] = "batches",
    y: Annotated[str, typer.Option("--y", help="Key for the y axis.")] = "test_accuracy",
    label: Annotated[
        str,
        typer.Option(
            help="Key (in result.json or the rows) naming each line; runs with the same label "
            "are drawn as their mean ± std (e.g. several seeds)."
        ),
    ] = "method",
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.")] = Path(
        "metrics.png"
    ),
    title: Annotated[str | None, typer.Option(help="Figure title.")] = None,
) -> None:
    """Training curves (default: test accuracy vs optimizer steps), one line per label.

    Runs that share a label and the same x values are averaged: a line for the
    mean and a band for ± one standard deviation, like the paper's Figure 4.
    """
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for p in paths:
        rows, result = load_metrics(p)
        groups[_label(p, rows, result, label)].append(_series(rows, x, y, p))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, series in sorted(groups.items()):
        xs0 = series[0][0]
        if len(series) > 1 and all(
            s[0].shape == xs0.shape and np.allclose(s[0], xs0) for s in series
        ):
            ys = np.stack([s[1] for s in series])
            mean, std = ys.mean(axis=0), ys.std(axis=0)
            (line,) = ax.plot(xs0, mean, label=f"{name} (n={len(series)})")
            ax.fill_between(xs0, mean - std, mean + std, alpha=0.2, color=line.get_color())
        else:
            color = None
            for i, (xs, ys1) in enumerate(series):
                (line,) = ax.plot(
                    xs,
                    ys1,
                    color=color,
                    alpha=1.0 if len(series) == 1 else 0.6,
                    label=name if i == 0 else None,
                )
                color = line.get_color()
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    n = sum(len(s) for s in groups.values())
    typer.echo(f"wrote {out} ({n} run(s), {len(groups)} line(s))")
