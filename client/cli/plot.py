"""`docl plot`: PNG figures of a run's scores and of training curves.

    docl plot scores RUN                               # score and visit histograms -> out/RUN/scores.png
    docl plot metrics out/*/metrics.jsonl              # test accuracy vs batches, one line per run -> out/metrics.png
    docl plot metrics out/mnist1d-* --label method     # one line per task and method (mean ± std over seeds)

matplotlib comes with the ``worker`` extra; it is imported only when a command runs.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from docl.client import NotFoundError
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
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="PNG file to write (default: out/RUN/scores.png, beside what `docl train` "
            "writes for the run).",
            show_default=False,
        ),
    ] = None,
    bins: Annotated[int, typer.Option(min=1, help="Histogram bins.")] = 50,
) -> None:
    """Histogram of a run's per-sample scores (scored samples only) and of visits per sample."""
    with connect(server, token) as client:
        try:
            run = client.get_run(run_id)
        except NotFoundError:
            typer.echo(_gone(run_id, client.base_url), err=True)
            raise typer.Exit(1) from None
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
    target = out if out is not None else Path("out") / run_id / "scores.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    typer.echo(f"wrote {target}")


def _gone(run_id: str, server: str) -> str:
    """Why ``run_id`` is not on ``server``: most often a run of ``docl train`` without
    --server, whose own score server (with its runs) stopped with the job."""
    line = f"error: run {run_id!r} does not exist on the score server at {server}"
    result = Path("out") / run_id / "result.json"
    try:
        embedded = result.is_file() and json.loads(result.read_text()).get("server") is None
    except (OSError, ValueError):
        embedded = False
    why = (
        f"; {result} says it was trained without --server: that job's own score server, "
        "and its runs, stopped with it"
        if embedded
        else "; a run of `docl train` without --server lives on that job's own server only "
        "while the job runs"
    )
    return (
        f"{line}{why}. To plot a run's scores, start `docl serve` and train with "
        "--server http://127.0.0.1:8000 (docl runs list shows what a server holds)"
    )


def load_metrics(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of a metrics.jsonl (a file, or a directory holding one) and the run's
    result.json beside it ({} when absent or unreadable). A missing file is a
    ``BadParameter``; a line that is not JSON a ``ValueError`` naming it."""
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
                raise ValueError(f"line {n} is not JSON ({e})") from None
    result_file = file.parent / "result.json"
    try:
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    except (OSError, json.JSONDecodeError):
        result = {}
    return rows, result


def _run_name(file: Path, rows: list[dict[str, Any]], result: dict[str, Any]) -> str:
    """``task · method · seed N`` from result.json (else the rows), else the run's directory."""
    src = {**(rows[0] if rows else {}), **result}
    parts = [str(src[k]) for k in ("task", "method") if src.get(k) is not None]
    if src.get("seed") is not None:
        parts.append(f"seed {src['seed']}")
    return " · ".join(parts) or file.parent.name


def _series(rows: list[dict[str, Any]], x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
    if not pts:
        keys = sorted({k for r in rows for k in r})
        raise ValueError(f"no rows with both '{x}' and '{y}' (its keys: {', '.join(keys)})")
    a = np.asarray(pts, dtype=float)
    return a[:, 0], a[:, 1]


def _default_out(files: list[Path]) -> Path:
    """Beside the runs: ``out/metrics.png`` for ``out/*/metrics.jsonl`` (the runs'
    common parent), a run's own directory for one run."""
    dirs = [f.resolve().parent for f in files]
    if len(set(dirs)) == 1:
        return dirs[0] / "metrics.png"
    return Path(os.path.commonpath(dirs)) / "metrics.png"


@plot_app.command("metrics")
def metrics(
    paths: Annotated[
        list[Path],
        typer.Argument(
            metavar="PATH",
            help="metrics.jsonl files, or the --out directories of `docl train` runs.",
            show_default=False,
        ),
    ],
    x: Annotated[str, typer.Option("--x", help="Key for the x axis.")] = "batches",
    y: Annotated[str, typer.Option("--y", help="Key for the y axis.")] = "test_accuracy",
    label: Annotated[
        str | None,
        typer.Option(
            help="Group runs by this key (in result.json or the rows, e.g. 'method'): one "
            "line per task and value, the mean ± std of runs that share x values (e.g. "
            "several seeds). Default: one line per run, named task · method · seed.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="PNG file to write (default: metrics.png in the runs' common parent "
            "directory, e.g. out/metrics.png for out/*/metrics.jsonl).",
            show_default=False,
        ),
    ] = None,
    title: Annotated[
        str | None, typer.Option(help="Figure title (default: what is plotted, and the tasks).")
    ] = None,
) -> None:
    """Training curves (default: test accuracy vs optimizer steps), one line per run.

    A file that is empty or not JSON (e.g. from a run that failed) is skipped
    with a warning. With --label, runs that share a value and the same x values
    are averaged: a line for the mean and a band for ± one standard deviation,
    like the paper's Figure 4.
    """
    groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    files: list[Path] = []
    tasks: list[str] = []
    for p in paths:
        file = p / "metrics.jsonl" if p.is_dir() else p
        if p.is_dir() and not file.exists():  # e.g. out/RUN holding only scores.png
            typer.echo(f"warning: skipped {p}: no metrics.jsonl in it", err=True)
            continue
        try:
            rows, result = load_metrics(p)
            xy = _series(rows, x, y)
        except ValueError as e:
            reason = (
                "empty (a run that failed?)" if not file.is_file() or not file.stat().st_size else e
            )
            typer.echo(f"warning: skipped {file}: {reason}", err=True)
            continue
        name = _run_name(file, rows, result)
        task = result.get("task") or (rows[0].get("task") if rows else None)
        key = name if label is None else _group_label(file, rows, result, label)
        if label is not None and label != "task" and task is not None:
            key = f"{task} · {key}"  # one method on two tasks: two lines, never one average
        if label is None and key in groups:  # two runs with one name: tell them apart
            key = f"{name} ({file.parent.name})"
        groups[key].append(xy)
        files.append(file)
        if task is not None and str(task) not in tasks:
            tasks.append(str(task))
    if not groups:
        typer.echo(f"error: nothing to plot: no file has rows with '{x}' and '{y}'", err=True)
        raise typer.Exit(1)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, series in sorted(groups.items()):
        xs0 = series[0][0]
        if len(series) > 1 and all(
            s[0].shape == xs0.shape and np.allclose(s[0], xs0) for s in series
        ):
            ys = np.stack([s[1] for s in series])
            mean, std = ys.mean(axis=0), ys.std(axis=0)
            (line,) = ax.plot(xs0, mean, label=f"{name} (mean of {len(series)})")
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
    runs = sum(len(v) for v in groups.values())
    default_title = f"{y} vs {x}: {runs} run(s)" + (f" on {', '.join(tasks)}" if tasks else "")
    ax.set_title(title or default_title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    target = out if out is not None else _default_out(files)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=120)
    plt.close(fig)
    typer.echo(f"wrote {target} ({runs} run(s), {len(groups)} line(s)):")
    for name in sorted(groups):
        typer.echo(f"  {name}")


def _group_label(file: Path, rows: list[dict[str, Any]], result: dict[str, Any], key: str) -> str:
    for source in (result, rows[0] if rows else {}):
        if key in source:
            return str(source[key])
    return file.parent.name
