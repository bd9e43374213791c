"""`docl train`: train a built-in (or your own) task with a curriculum from the score server."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from docl.client.cli import app as _app
from docl.client.cli._common import method_names, need_extra


def parse_assignments(items: list[str] | None, option: str) -> dict[str, Any]:
    """``["tau=0.5", "refresh=false"]`` -> ``{"tau": 0.5, "refresh": False}``.

    Values are read as JSON when they parse (numbers, true/false, null, lists),
    else kept as strings; validation is the model's job.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint=option)
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@_app.command()
def train(
    task: Annotated[
        str,
        typer.Option(
            help="Built-in task (digits, mnist1d, synthetic, distill) or your own "
            "'package.module:factory' returning a TaskData."
        ),
    ] = "mnist1d",
    method: Annotated[
        str,
        typer.Option(
            help=f"Selection method: {method_names()}. Its own parameters go in --param "
            "(e.g. --param prune_ratio=0.3 for infobatch)."
        ),
    ] = "docl",
    epochs: Annotated[
        int | None, typer.Option(min=1, help="Epochs of the plan (default: the task's, 30).")
    ] = None,
    budget_batches: Annotated[
        int | None,
        typer.Option(min=1, help="Stop after this many optimizer steps (cuts the plan)."),
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the model init and of every draw.")] = 0,
    workers: Annotated[
        int,
        typer.Option(
            min=0,
            help="Ray Train workers (DDP ranks). 0 = train in this process, without Ray.",
        ),
    ] = 1,
    server: Annotated[
        str | None,
        typer.Option(
            envvar="DOCL_SERVER",
            help="Score server URL. Without it, one is started for this job (embedded Redis) "
            "and stopped at the end.",
        ),
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="DOCL_API_TOKEN", help="Bearer token of the server.")
    ] = None,
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Join this Ray cluster ('auto', 'ray://…', host:port). Without it a local "
            "Ray is started."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Output directory: metrics.jsonl, result.json, checkpoints (default: out/RUN_ID)."
        ),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            envvar="DOCL_STORAGE",
            help="Ray Train's storage, where the checkpoints live: a folder every Ray node "
            "mounts at the same path, or a URI such as s3://bucket/prefix (default: OUT/ray). "
            "Checked on every node at start.",
        ),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Run parameter KEY=VALUE (RunParams: tau, gamma, batch_size, lr_peak, "
            "warmup_epochs, …); repeat it.",
        ),
    ] = None,
    task_param: Annotated[
        list[str] | None,
        typer.Option(
            "--task-param",
            help="Task parameter KEY=VALUE (e.g. num_samples=20000, noise=0.3, data_seed=1).",
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(min=0.0, help="SGD weight decay (default: the task's).")
    ] = None,
    momentum: Annotated[float, typer.Option(min=0.0, help="SGD momentum.")] = 0.9,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch threads (and Ray CPUs) per worker (default 1).")
    ] = None,
    gpu: Annotated[
        bool,
        typer.Option(
            "--gpu", help="One GPU per Ray worker (with --workers 0: this process's GPU)."
        ),
    ] = False,
    max_failures: Annotated[
        int, typer.Option(min=0, help="Worker-group restarts Ray Train may do.")
    ] = 3,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help=f"No server, no reports: the same loop with uniform draws ({method_names(local_only=True)}) "
            "— the baseline that measures what the service costs.",
        ),
    ] = False,
    run_id: Annotated[
        str | None, typer.Option(help="Run id on the server (default: generated).")
    ] = None,
    eval_every: Annotated[
        int, typer.Option(min=0, help="Evaluate every N epochs (0 = only at the end).")
    ] = 1,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress",
            help="Show a progress bar (default: only when stdout is a terminal).",
            show_default=False,
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the outputs of an earlier job in --out (refused without it).",
        ),
    ] = False,
    outage_tolerance: Annotated[
        float | None,
        typer.Option(
            min=0,
            help="Seconds the loop waits out a score-server or Redis outage before failing "
            "(default: $DOCL_OUTAGE_TOLERANCE_S or 120).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train a model following the score server's curriculum.

    \b
    Examples:
      docl train --task mnist1d --method docl --out out/demo
      docl train --task digits --method random --workers 0 --epochs 20
      docl train --task synthetic --task-param noise=0.4 -p tau=0.5 -p gamma=0.8
      docl train --task my_pkg.data:make_task --workers 4 --ray-address auto \\
          --server http://scores.internal:8000
    """
    _preflight(server, token, local=local, workers=workers)
    from docl.worker.tasks import TaskError
    from docl.worker.train import TrainError, TrainInterrupted, TrainSpec
    from docl.worker.train import train as run_training

    # typed as a dict of Any: TrainSpec keeps its own default when the option is absent
    tolerance: dict[str, Any] = (
        {} if outage_tolerance is None else {"outage_tolerance": outage_tolerance}
    )
    spec = TrainSpec(
        task=task,
        method=method,
        epochs=epochs,
        budget_batches=budget_batches,
        seed=seed,
        workers=workers,
        server=server,
        token=token,
        ray_address=ray_address,
        out=str(out) if out else None,
        storage=storage,
        run_id=run_id,
        params=parse_assignments(param, "--param"),
        task_params=parse_assignments(task_param, "--task-param"),
        weight_decay=weight_decay,
        momentum=momentum,
        threads=threads,
        use_gpu=gpu,
        max_failures=max_failures,
        local=local,
        eval_every=eval_every,
        progress=sys.stdout.isatty() if progress is None else progress,
        overwrite=overwrite,
        **tolerance,
    )
    try:
        result = run_training(spec)
    except (TrainError, TaskError) as e:
        typer.echo(f"docl train: {e}", err=True)
        raise typer.Exit(code=2) from e
    except TrainInterrupted as e:
        typer.echo(f"docl train: {e}", err=True)
        raise typer.Exit(code=130) from None
    for warning in result.get("warnings", ()):
        typer.echo(f"docl train: warning: {warning}", err=True)  # again, beside the result
    typer.echo(_summary(result))


def _preflight(server: str | None, token: str | None, *, local: bool, workers: int) -> None:
    """Fail in seconds, before torch and Ray are imported: a --server that does not
    answer as a docl server (a typo), or an extra the job needs and lacks."""
    if server is not None and not local:
        from docl.worker.probe import probe_server

        problem = probe_server(server, token)  # before torch and Ray: a typo fails in seconds
        if problem is not None:
            typer.echo(f"docl train: {problem}", err=True)
            raise typer.Exit(code=2)
    need_extra("torch", "worker")
    if workers > 0:
        need_extra("ray.train", "worker")
    if server is None and not local:
        need_extra("fastapi", "server")


def _summary(result: dict[str, Any]) -> str:
    """The job's one closing line: accuracy (and MSE), batches, wall time, where it went."""
    acc = result.get("test_accuracy")
    line = f"test_accuracy {acc:.4f}" if acc is not None else "test_accuracy -"
    if "test_mse" in result:
        line += f"  test_mse {result['test_mse']:.4f}"
    return (
        f"{line}  batches {result['batches']}  wall {result['wall_time']:.1f}s  "
        f"({result['method']} on {result['task']}, seed {result['seed']}) -> {result['out']}"
    )


# -- docl bench overhead ---------------------------------------------------------------
# Registered here (the training side's CLI module) on the shared `docl bench` sub-app.
from docl.client.cli.bench import bench_app  # noqa: E402


@bench_app.command("overhead")
def overhead(
    task: Annotated[str, typer.Option(help="Task to train.")] = "mnist1d",
    method: Annotated[
        str,
        typer.Option(
            help=f"A method whose epochs are uniform: {method_names(local_only=True)} (a "
            "step-level one: the plain loop forwards the same pools)."
        ),
    ] = "random",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs per training.")] = 10,
    repeats: Annotated[int, typer.Option(min=1, help="Trainings per side (median).")] = 3,
    workers: Annotated[
        int, typer.Option(min=0, help="0 = in-process; >= 1 Ray Train workers.")
    ] = 0,
    task_param: Annotated[
        list[str] | None, typer.Option("--task-param", help="Task parameter KEY=VALUE.")
    ] = None,
    param: Annotated[
        list[str] | None, typer.Option("--param", "-p", help="Run parameter KEY=VALUE.")
    ] = None,
    gpu: Annotated[
        bool,
        typer.Option("--gpu", help="Train on the GPU (in-process: cuda:0; Ray: one per worker)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
) -> None:
    """Wall time of training with the score server in the loop / the plain local loop.

    Both sides run the same loop code, plan and steps; the plain side draws
    uniformly in-process and sends no reports. Measured in one run, alternating.
    """
    need_extra("torch", "worker")
    need_extra("fastapi", "server")
    from docl.lab.overhead import format_overhead, measure_overhead
    from docl.worker.tasks import TaskError
    from docl.worker.train import TrainError, TrainSpec

    base = TrainSpec(
        task=task,
        method=method,
        epochs=epochs,
        workers=workers,
        params=parse_assignments(param, "--param"),
        task_params=parse_assignments(task_param, "--task-param"),
        checkpoint=False,
        use_gpu=gpu,
    )
    try:
        res = measure_overhead(base, repeats=repeats)
    except (TrainError, TaskError) as e:
        typer.echo(f"docl bench overhead: {e}", err=True)
        raise typer.Exit(code=2) from e
    typer.echo(json.dumps(res.as_dict(), indent=2) if as_json else format_overhead(res))
