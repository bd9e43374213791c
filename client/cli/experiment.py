"""`docl experiment`: does a selection method pay on this task? (the learning benchmark)

Runs every method / variant on every task for every seed at the same budget of
training batches, through one shared score server and the real worker loop,
and writes results.csv, results.md, curves.png and study.png to ``--out``. See
docs/results.md for the committed results and the command that made them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from docl.client.cli import app as _app
from docl.client.cli._common import method_names, need_extra


@_app.command()
def experiment(
    out: Annotated[Path, typer.Option("--out", help="Output directory (resumable).")] = Path(
        "out/experiment"
    ),
    tasks: Annotated[
        str,
        typer.Option(
            help="Comma-separated tasks: mnist1d, digits, synthetic, distill; the noisy "
            "and redundant digits-noise20, digits-noise40, digits-dup, mnist1d-noise40; "
            "or your own "
            "'package.module:factory' returning a TaskData (as in docl train)."
        ),
    ] = "mnist1d,digits,synthetic,distill",
    methods: Annotated[
        str,
        typer.Option(
            help=f"Comma-separated methods ({method_names()}) or variants, e.g. "
            "random,docl,'docl[tau=1]' (quote a variant in the shell)."
        ),
    ] = "random,random-subset,spl,mcl,docl-nr,docl",
    variants: Annotated[
        str,
        typer.Option(help="More variants, appended to --methods (same syntax)."),
    ] = "",
    seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 per task × variant.")] = 3,
    budget_batches: Annotated[
        int | None,
        typer.Option(min=1, help="Training batches per run (default: each task's budget)."),
    ] = None,
    quick: Annotated[
        bool,
        typer.Option(help="Small data and budgets: a smoke test of the pipeline, not a result."),
    ] = False,
    jobs: Annotated[int, typer.Option(min=1, help="Runs trained at once (processes).")] = 2,
    ray_runs: Annotated[
        int | None,
        typer.Option(
            help="The first N runs go through Ray Train (one worker; default 1 with --quick, else 0)."
        ),
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(help="Ray runs join this cluster instead of starting a local Ray."),
    ] = None,
    study: Annotated[
        str,
        typer.Option(
            help="Task of the §3 score-dynamics study (top/bottom/alternate); 'none' skips it."
        ),
    ] = "mnist1d",
    study_seeds: Annotated[int, typer.Option(min=1, help="Seeds 0..N-1 of each study method.")] = 1,
    server: Annotated[
        str | None,
        typer.Option(help="Use this running score server instead of starting one."),
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Run the learning benchmark and write its table and plots."""
    ex = need_extra("docl.lab.experiment", "worker")
    try:
        spec = ex.ExperimentSpec(
            out=out,
            tasks=[t.strip() for t in tasks.split(",") if t.strip()],
            variants=ex.parse_variants(",".join(s for s in (methods, variants) if s.strip())),
            seeds=list(range(seeds)),
            budget=budget_batches,
            quick=quick,
            jobs=jobs,
            ray_runs=(1 if quick else 0) if ray_runs is None else ray_runs,
            study_task=None if study.strip().lower() in ("", "none") else study.strip(),
            study_seeds=list(range(study_seeds)),
            server=server,
            ray_address=ray_address,
            progress=progress,
        )
        summary = ex.run_experiment(spec, echo=typer.echo)
    except ex.ExperimentError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    if summary.get("interrupted"):
        raise typer.Exit(code=130)
    if summary["failures"]:
        raise typer.Exit(code=1)
