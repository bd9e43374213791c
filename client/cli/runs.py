"""`docl runs`: list, inspect, delete and export the runs on a score server.

    docl runs list                       # every run: id, method, progress, reports
    docl runs show RUN [--plan]          # config, counters, score quantiles (and the plan)
    docl runs export RUN -o RUN.npz      # scores, visits, lr_sums per sample (.npz and/or --csv)
    docl runs delete RUN --yes           # drop the run and its data

Every command takes ``--server`` (or ``$DOCL_SERVER``, default
http://127.0.0.1:8000) and ``--token`` (or ``$DOCL_API_TOKEN``).
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from docl.client._client import ScoreArrays, ScoreClient
from docl.client.cli import app
from docl.client.errors import APIError, DoclError, TransportError

__all__ = ["fetch_scores", "runs_app"]

runs_app = typer.Typer(
    name="runs",
    help=(
        "Inspect the runs on a score server: list them, show one (config, counters, "
        "score quantiles, plan), export its per-sample scores to .npz/CSV, delete it.\n\n"
        "The server is --server or $DOCL_SERVER (default http://127.0.0.1:8000); "
        "the token is --token or $DOCL_API_TOKEN."
    ),
    no_args_is_help=True,
)
app.add_typer(runs_app, name="runs")

ServerOpt = Annotated[
    str | None,
    typer.Option(
        "--server",
        "-s",
        envvar="DOCL_SERVER",
        help="Score server URL (default http://127.0.0.1:8000).",
        show_default=False,
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="DOCL_API_TOKEN",
        help="API token, when the server requires one.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
RunArg = Annotated[
    str,
    typer.Argument(
        metavar="RUN_ID", help="The run's id (see `docl runs list`).", show_default=False
    ),
]


@contextmanager
def connect(server: str | None, token: str | None) -> Iterator[ScoreClient]:
    """A client for a CLI command: errors become one clear line and exit code 1."""
    client = ScoreClient(server, token=token, retries=2, timeout=60.0)
    try:
        yield client
    except APIError as e:
        hint = " (give it with --token or DOCL_API_TOKEN)" if e.status in (401, 403) else ""
        line = f"error: {e.status} {e.title or ''}: {e.detail}".replace("  ", " ")
        typer.echo(line + hint, err=True)
        raise typer.Exit(1) from e
    except TransportError as e:
        typer.echo(
            f"error: cannot reach the score server at {client.base_url}: {e} (start one with "
            "`docl serve`, or name yours with --server or DOCL_SERVER)",
            err=True,
        )
        raise typer.Exit(1) from e
    except DoclError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    finally:
        client.close()


def fetch_scores(client: ScoreClient, run_id: str, *, page_size: int = 1_000_000) -> ScoreArrays:
    """The whole score table of a run, fetched ``page_size`` rows at a time."""
    n = client.get_run(run_id).num_samples
    pages: list[ScoreArrays] = []
    offset = 0
    while offset < n:
        page = client.scores(run_id, offset=offset, limit=min(page_size, n - offset))
        if len(page) == 0:
            break
        pages.append(page)
        offset += len(page)
    if not pages:
        empty = np.zeros(0)
        return ScoreArrays(0, empty.astype(np.float32), empty.astype(np.int64), empty)
    return ScoreArrays(
        offset=0,
        scores=np.concatenate([p.scores for p in pages]),
        visits=np.concatenate([p.visits for p in pages]),
        lr_sums=np.concatenate([p.lr_sums for p in pages]),
    )


def _fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}g}"


def _console() -> Any:
    from rich.console import Console

    return Console(width=140)  # wide enough for ids in pipes and tests


@runs_app.command("list")
def list_runs(
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
    page_size: Annotated[
        int | None,
        typer.Option(
            "--page-size",
            min=1,
            max=1000,
            help="Runs per request (the list follows every page; default: the server's, 100).",
        ),
    ] = None,
) -> None:
    """List every run on the server: id, method, task, size, epochs drawn, reports."""
    with connect(server, token) as client:
        runs = client.list_runs(page_size=page_size)
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
        return
    if not runs:
        typer.echo("no runs on this server")
        return
    from rich.table import Table

    table = Table(title=f"{len(runs)} run(s)")
    # The id is what people copy into the next command: never folded across lines.
    table.add_column("run_id", no_wrap=True, overflow="ignore")
    for col in (
        "method",
        "task",
        "n",
        "c",
        "epochs drawn",
        "reports",
        "scored",
        "created",
    ):
        table.add_column(col, overflow="fold")
    for r in sorted(runs, key=lambda r: r.created_at):
        table.add_row(
            r.run_id,
            r.method,
            r.task_name or "-",
            str(r.num_samples),
            str(r.num_outputs),
            f"{r.epochs_drawn}/{r.epochs}",
            str(r.counters.reports),
            str(r.counters.samples_scored),
            time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at)),
        )
    _console().print(table)


@runs_app.command("show")
def show(
    run_id: RunArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    plan: Annotated[
        bool, typer.Option("--plan", help="Also print every epoch of the plan.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Show one run: its config, where it is in its plan, counters and score statistics."""
    with connect(server, token) as client:
        run = client.get_run(run_id)
        stats = client.stats(run_id)
        the_plan = client.plan(run_id) if plan else None
    if as_json:
        doc: dict[str, Any] = {
            "run": run.model_dump(mode="json"),
            "stats": stats.model_dump(mode="json"),
        }
        if the_plan is not None:
            doc["plan"] = the_plan.model_dump(mode="json")
        typer.echo(json.dumps(doc, indent=2))
        return
    from rich.table import Table

    con = _console()
    con.print(
        f"[bold]{run.run_id}[/bold]  {run.method} · {run.task_name or '-'} ({run.task}) · n={run.num_samples} · c={run.num_outputs}"
    )
    con.print(
        f"epochs drawn {run.epochs_drawn}/{run.epochs} (last {run.last_epoch if run.last_epoch is not None else '-'}), "
        f"{run.total_steps} steps in the plan"
    )
    c = run.counters
    con.print(
        f"reports {c.reports} (duplicates {c.duplicates}) · samples reported {c.samples_reported}, "
        f"scored {c.samples_scored}, skipped {c.samples_skipped}"
    )
    con.print(
        f"scores: {stats.scored}/{stats.num_samples} scored, {stats.visited} visited, "
        f"mean {_fmt(stats.mean)}, std {_fmt(stats.std)}"
    )
    q = Table(title="score quantiles")
    for k in stats.quantiles:
        q.add_column(k)
    q.add_row(*(_fmt(v) for v in stats.quantiles.values()))
    con.print(q)
    params = run.params.model_dump()
    con.print("params: " + ", ".join(f"{k}={v}" for k, v in params.items()))
    if the_plan is not None:
        t = Table(title=f"plan: {the_plan.num_epochs} epochs, {the_plan.total_steps} steps")
        for col in (
            "epoch",
            "episode",
            "phase",
            "loss",
            "size",
            "steps",
            "lr start",
            "lr end",
            "lr sum before",
        ):
            t.add_column(col)
        for e in the_plan.epochs:
            t.add_row(
                str(e.epoch),
                str(e.episode),
                e.phase,
                e.loss,
                str(e.size),
                str(e.steps),
                _fmt(e.lr_start),
                _fmt(e.lr_end),
                _fmt(e.lr_sum_start, 6),
            )
        con.print(t)


@runs_app.command("delete")
def delete(
    run_id: RunArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    missing_ok: Annotated[
        bool, typer.Option("--missing-ok", help="Succeed when the run does not exist.")
    ] = False,
) -> None:
    """Delete a run and every key it has on the server (cannot be undone)."""
    if not yes:
        typer.confirm(f"Delete run '{run_id}' and all its scores?", abort=True)
    with connect(server, token) as client:
        existed = client.delete_run(run_id, missing_ok=missing_ok)
    typer.echo(f"deleted {run_id}" if existed else f"{run_id} did not exist")


@runs_app.command("export")
def export(
    run_id: RunArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Write a .npz (arrays sample, scores, visits, lr_sums, and run as JSON).",
        ),
    ] = None,
    csv_path: Annotated[
        Path | None,
        typer.Option("--csv", help="Write a CSV: sample,score,visits,lr_sum (empty = unset)."),
    ] = None,
    page_size: Annotated[int, typer.Option(min=1, help="Rows fetched per request.")] = 1_000_000,
) -> None:
    """Export a run's per-sample score table: score (EMA), visits and lr-sum of every sample.

    Without --out or --csv, writes RUN.npz in the current directory. Load it
    with numpy.load(path) — no pickle needed; unset scores and lr-sums are NaN.
    """
    if out is None and csv_path is None:
        out = Path(f"{run_id}.npz")
    with connect(server, token) as client:
        run = client.get_run(run_id)
        table = fetch_scores(client, run_id, page_size=page_size)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            out,
            sample=table.sample_ids,
            scores=table.scores,
            visits=table.visits,
            lr_sums=table.lr_sums,
            run=np.array(run.model_dump_json()),
        )
        typer.echo(f"wrote {out} ({len(table)} samples)")
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["sample", "score", "visits", "lr_sum"])
            for i, s, v, lr in zip(
                table.sample_ids.tolist(),
                table.scores.tolist(),
                table.visits.tolist(),
                table.lr_sums.tolist(),
                strict=True,
            ):
                w.writerow(
                    [i, "" if math.isnan(s) else repr(s), v, "" if math.isnan(lr) else repr(lr)]
                )
        typer.echo(f"wrote {csv_path} ({len(table)} samples)")
