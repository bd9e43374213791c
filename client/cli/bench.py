"""`docl bench`: benchmark commands.

A typer sub-app: other modules add their own commands to it with

    from docl.client.cli.bench import bench_app

    @bench_app.command("overhead")
    def overhead(...): ...
"""

from __future__ import annotations

from typing import Annotated

import typer

from docl.client.cli import app as _app
from docl.client.cli._common import need_extra

bench_app = typer.Typer(
    name="bench",
    help="Benchmarks that print each figure beside the limit measured in the same run.",
    no_args_is_help=True,
)
_app.add_typer(bench_app, name="bench")


@bench_app.command("service")
def service(
    redis_url: Annotated[
        str | None,
        typer.Option(
            "--redis-url",
            help="Also benchmark against this Redis (the embedded one is always measured).",
        ),
    ] = None,
    n: Annotated[
        int, typer.Option("--n", min=1000, help="Samples per run of the report benchmark.")
    ] = 1_000_000,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Small and short (n = 20k, B = 256, c = 10, draw at 100k): a smoke test.",
        ),
    ] = False,
    clients: Annotated[
        int, typer.Option(min=1, help="Concurrent connections of the load generator.")
    ] = 8,
    batch: Annotated[
        list[int] | None,
        typer.Option("--batch", "-b", help="Report sizes B (repeatable) (default 256, 1024)."),
    ] = None,
    width: Annotated[
        list[int] | None,
        typer.Option("--width", "-c", help="Output widths c (repeatable) (default 10, 100, 1000)."),
    ] = None,
    frames: Annotated[
        list[int] | None,
        typer.Option(
            "--frames",
            "-k",
            help="Reports per HTTP request (repeatable) (default 1: one binary report per "
            "request; K > 1: multi-report bodies of K reports of B samples).",
        ),
    ] = None,
    draw_n: Annotated[
        list[int] | None,
        typer.Option("--draw-n", help="Draw benchmark sizes (repeatable) (default 1M, 10M)."),
    ] = None,
    reports: Annotated[
        bool, typer.Option("--reports/--no-reports", help="Run the report benchmark.")
    ] = True,
    draws: Annotated[
        bool, typer.Option("--draws/--no-draws", help="Run the draw benchmark.")
    ] = True,
    json_out: Annotated[
        str | None, typer.Option("--json", help="Also write the figures to this JSON file.")
    ] = None,
) -> None:
    """Measure the score server: scored samples/s and p50/p99 report latency over HTTP
    (binary reports, one uvicorn worker) beside the same read-modify-write in-process,
    and epoch-draw time beside numpy's Gumbel-top-k alone; ratios printed."""
    need_extra("fastapi", "server")
    from docl.lab.bench_service import run_service_bench

    run_service_bench(
        redis_url=redis_url,
        num_samples=n,
        quick=quick,
        batches=tuple(batch) if batch else (256, 1024),
        widths=tuple(width) if width else (10, 100, 1000),
        frames=tuple(frames) if frames else (1,),
        clients=clients,
        draw_sizes=(tuple(draw_n) if draw_n else (1_000_000, 10_000_000)) if draws else (),
        reports=reports,
        json_path=json_out,
        echo=typer.echo,
    )


@bench_app.command("draw")
def draw(
    n: Annotated[
        list[int] | None,
        typer.Option("--n", min=1, help="Scores per draw (repeatable) (default 10M)."),
    ] = None,
    threads: Annotated[
        list[int] | None,
        typer.Option(
            "--threads",
            "-t",
            min=1,
            help="Thread counts (repeatable) (default 2 and min(8, CPUs)).",
        ),
    ] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Repeats per row (best kept).")] = 3,
) -> None:
    """Time a draw's pure math (standardize, Gumbel-top-k, shuffle) against its own
    one-thread figures: how draws of 4M+ samples scale with the draw thread pool."""
    from docl.lab.bench_draw import run_draw_bench

    run_draw_bench(
        sizes=tuple(n) if n else (10_000_000,),
        threads=tuple(threads or ()),
        repeats=repeats,
        echo=typer.echo,
    )


@bench_app.command("store")
def store(
    redis_url: Annotated[
        str | None, typer.Option("--redis-url", help="Redis to use (default: an embedded one).")
    ] = None,
    n: Annotated[int, typer.Option("--n", min=1000, help="Samples of the test run.")] = 100_000,
    batch: Annotated[int, typer.Option("--batch", "-b", min=1, help="Samples per report.")] = 256,
    width: Annotated[int, typer.Option("--width", "-c", min=1, help="Outputs per sample.")] = 10,
    clients: Annotated[int, typer.Option(min=1, help="Concurrent writers.")] = 8,
    reports: Annotated[int, typer.Option(min=1, help="Reports per writer.")] = 40,
) -> None:
    """Compare the report write path's atomicity options on a real Redis: the Lua
    compare-and-set scatter the store uses, against MULTI/EXEC with WATCH of the
    dedup marker only (fast, but concurrent writers lose updates) and with WATCH of
    the record chunk too (safe, but every concurrent write aborts the others)."""
    need_extra("redis", "server")
    from docl.lab.bench_store import run_store_bench

    run_store_bench(
        redis_url=redis_url, num_samples=n, batch=batch, width=width, clients=clients,
        reports=reports, echo=typer.echo,
    )  # fmt: skip
