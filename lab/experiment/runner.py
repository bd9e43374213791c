"""Jobs and the process pool: every (task, variant, seed) run through one score server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from docl.lab.experiment.report import write_json_atomic, write_outputs
from docl.lab.experiment.summary import no_selection_warning, row_line
from docl.lab.experiment.tasks import (
    DEFAULT_METHODS,
    DEFAULT_TASKS,
    STUDY_METHODS,
    STUDY_PARAMS,
    TASKS,
    ExperimentError,
    is_user_task,
    task_setup,
)
from docl.lab.experiment.variants import Variant, parse_variant

#: The marker of an interrupted experiment in its output folder (removed once it completes).
INTERRUPTED = "interrupted.json"

__all__ = [
    "INTERRUPTED",
    "ExperimentSpec",
    "Job",
    "build_jobs",
    "execute_job",
    "load_row",
    "run_experiment",
]


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", text).strip("_")


@dataclass(frozen=True)
class Job:
    """One training run of the experiment (plain values: it crosses a process boundary)."""

    task: str
    variant: str
    method: str
    seed: int
    budget: int
    task_params: dict[str, Any]
    params: dict[str, Any]  # the task's shared schedule, then the variant's overrides
    kind: Literal["benchmark", "study"] = "benchmark"
    ray: bool = False

    @property
    def config_hash(self) -> str:
        doc = {k: v for k, v in asdict(self).items() if k != "ray"}
        return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def key(self) -> str:
        """Directory name: readable, and unique per configuration (a changed config
        is a new run, never confused with an old result)."""
        label = _safe(self.variant)[:48]
        return f"{_safe(self.task)[:48]}__{label}__s{self.seed}__{self.config_hash}"

    def run_id(self) -> str:
        task = _safe(self.task.rpartition(":")[2] or self.task)[:12]
        return f"x-{task}-{self.method[:16]}-s{self.seed}-{self.config_hash[:6]}-{uuid.uuid4().hex[:6]}"


def build_jobs(
    tasks: Sequence[str],
    variants: Sequence[Variant],
    seeds: Sequence[int],
    *,
    budget: int | None = None,
    quick: bool = False,
    study_task: str | None = None,
    study_seeds: Sequence[int] = (0,),
    ray_runs: int = 0,
) -> list[Job]:
    """Every (task, variant, seed) run, then the study runs; the first ``ray_runs`` go through Ray."""

    def setup_of(name: str) -> tuple[dict[str, Any], int, dict[str, Any]]:
        """(task params, budget, run params shared by every variant) of a task."""
        setup = task_setup(name)
        tp = dict(setup.quick_task_params if quick else setup.task_params)
        b = budget if budget is not None else (setup.quick_budget if quick else setup.budget)
        return tp, b, {**setup.params, **(setup.quick_params if quick else {})}

    jobs: list[Job] = []
    for t in tasks:
        tp, b, shared = setup_of(t)
        for v in variants:
            for s in seeds:
                jobs.append(Job(t, v.label, v.method, int(s), int(b), tp, {**shared, **v.params}))
    if study_task:
        tp, b, shared = setup_of(study_task)
        for m in STUDY_METHODS:
            for s in study_seeds:
                prm = {**shared, **STUDY_PARAMS}
                jobs.append(Job(study_task, m, m, int(s), int(b), tp, prm, "study"))
    for i in range(min(ray_runs, len(jobs))):
        jobs[i] = replace(jobs[i], ray=True)
    return jobs


_in_job = False  # in a pool worker: True while execute_job runs
_interrupted = False  # in a pool worker: a Ctrl-C came while it was idle


def _worker_sigint(signum: int, frame: Any) -> None:
    """Ctrl-C in a pool worker: stop the run it trains (KeyboardInterrupt, reported to
    the parent like any failure); an idle worker waits quietly to be shut down (the
    default handler printed a traceback from the pool's queue), and refuses a job it is
    handed afterwards: the parent may have submitted it in the same instant, and the
    score server got the Ctrl-C too, so the run would only wait out its outage."""
    global _interrupted
    if _in_job:
        raise KeyboardInterrupt
    _interrupted = True


def _worker_init() -> None:
    """Each worker process trains with one torch thread: ``jobs`` processes share the cores."""
    import signal

    signal.signal(signal.SIGINT, _worker_sigint)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@contextlib.contextmanager
def _output_to(path: Path) -> Any:
    """Send this process's stdout/stderr (file descriptors too: Ray and the loop print)
    to ``path`` while a job runs, so the parent's progress bar stays readable."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


def _read_history(path: Path) -> list[dict[str, Any]]:
    keep = ("epoch", "phase", "size", "batches", "test_accuracy", "val_accuracy", "test_mse",
            "val_mse", "train_loss", "wall_time", "forward_samples", "backward_samples",
            "compute_samples", "signal_compute_samples")  # fmt: skip
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            out.append({k: m[k] for k in keep if k in m})
    return out


def execute_job(job: Job, server: str, out: str, ray_address: str | None = None) -> dict[str, Any]:
    """Train ``job`` against the score server ``server``; write and return its row.

    A Ray job joins the cluster at ``ray_address``, or starts (and stops) a local Ray.
    """
    global _in_job
    _in_job = True
    try:
        if _interrupted:  # Ctrl-C while this worker was idle: no new run
            raise KeyboardInterrupt
        return _execute_job(job, server, out, ray_address)
    finally:
        _in_job = False


def _execute_job(job: Job, server: str, out: str, ray_address: str | None) -> dict[str, Any]:
    from docl.client import ScoreClient
    from docl.worker.train import TrainSpec, train

    run_dir = Path(out) / "runs" / job.key
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = job.run_id()
    t0 = time.perf_counter()
    study: list[dict[str, Any]] | None = None
    with _output_to(run_dir / "train.log"):
        spec = TrainSpec(
            # digits-noise40 trains the registered digits task with its task params
            task=TASKS[job.task].train_task if job.task in TASKS else job.task,
            method=job.method,
            budget_batches=job.budget,
            seed=job.seed,
            workers=1 if job.ray else 0,
            server=server,
            ray_address=ray_address if job.ray else None,
            out=str(run_dir),
            run_id=run_id,
            params=dict(job.params),
            task_params=dict(job.task_params),
            threads=1,
            progress=False,
            checkpoint=job.ray,  # Ray hands the history back through the last checkpoint
            overwrite=True,  # an interrupted run of this job left its partial outputs here
            eval_every=1,
        )
        if job.kind == "study":
            from docl.lab.study import train_with_study

            result, study = train_with_study(spec)
        else:
            result = train(spec)
        history = _read_history(run_dir / "metrics.jsonl")
        with ScoreClient(server) as client:
            stats = client.stats(run_id)
    final = history[-1] if history else {}
    row: dict[str, Any] = {
        "task": job.task,
        "variant": job.variant,
        "method": job.method,
        "seed": job.seed,
        "kind": job.kind,
        "metric": "mse" if "test_mse" in final else "accuracy",
        "budget": job.budget,
        "batches": int(final.get("batches", 0)),
        "epochs": len(history),
        # sample-passes, all ranks: pools' forwards and the IL model's training included
        "forward_samples": final.get("forward_samples"),
        "backward_samples": final.get("backward_samples"),
        "compute_samples": final.get("compute_samples"),
        "test_accuracy": final.get("test_accuracy"),
        "val_accuracy": final.get("val_accuracy"),
        "test_mse": final.get("test_mse"),
        "val_mse": final.get("val_mse"),
        "wall_time": round(time.perf_counter() - t0, 3),
        "train_time": round(float(result.get("train_time", math.nan)), 3),
        "workers": "ray:1" if job.ray else "in-process",
        "visited": int(stats.visited),
        "visits_total": int(stats.visits_total),
        "samples_scored": int(stats.counters.samples_scored),
        "run_id": run_id,
        "key": job.key,
        "params": dict(job.params),
        "task_params": dict(job.task_params),
        "history": history,
    }
    if study is not None:
        row["study"] = study
    write_json_atomic(run_dir / "row.json", row)
    return row


def load_row(out: Path, job: Job) -> dict[str, Any] | None:
    """The finished row of ``job`` in ``out``, or None (not run, or interrupted)."""
    path = out / "runs" / job.key / "row.json"
    if not path.exists():
        return None
    try:
        row: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return row


@dataclass
class ExperimentSpec:
    """What ``docl experiment`` runs (see the CLI for each option's meaning)."""

    out: Path
    tasks: list[str] = field(default_factory=lambda: list(DEFAULT_TASKS))
    variants: list[Variant] = field(
        default_factory=lambda: [parse_variant(m) for m in DEFAULT_METHODS]
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget: int | None = None
    quick: bool = False
    jobs: int = 1
    ray_runs: int = 0
    study_task: str | None = "digits"
    study_seeds: list[int] = field(default_factory=lambda: [0])
    server: str | None = None
    ray_address: str | None = None
    progress: bool = True

    def validate(self) -> None:
        tasks = [*self.tasks, *([self.study_task] if self.study_task is not None else [])]
        unknown = [t for t in tasks if t not in TASKS and not is_user_task(t)]
        if unknown:
            raise ExperimentError(
                f"unknown task(s) {', '.join(unknown)}; built-in tasks are {', '.join(TASKS)}; "
                "a task of your own is named 'package.module:factory'"
            )
        if not self.tasks and self.study_task is None:
            raise ExperimentError("nothing to run: give --tasks or --study")
        if self.tasks and not self.variants:
            raise ExperimentError("give at least one method in --methods")
        if not self.seeds:
            raise ExperimentError("give at least one seed")
        if self.jobs < 1:
            raise ExperimentError("--jobs must be >= 1")
        if self.budget is not None and self.budget < 1:
            raise ExperimentError("--budget-batches must be >= 1")


def run_experiment(spec: ExperimentSpec, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the experiment and write every output; return the summary."""
    spec.validate()
    t_start = time.perf_counter()
    out = Path(spec.out)
    jobs = build_jobs(
        spec.tasks,
        spec.variants,
        spec.seeds,
        budget=spec.budget,
        quick=spec.quick,
        study_task=spec.study_task,
        study_seeds=spec.study_seeds,
        ray_runs=spec.ray_runs,
    )  # first: a task that does not import fails here, before the out folder exists
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    for j in jobs:
        r = load_row(out, j)
        if r is not None:
            rows[j.key] = r
    todo = [j for j in jobs if j.key not in rows]
    echo(
        f"docl experiment: {len(jobs)} runs ({len(jobs) - len(todo)} already in {out}), "
        f"{spec.jobs} at a time, results in {out}"
    )
    failures: list[tuple[Job, str]] = []
    interrupted = False
    if todo:
        server_proc = None
        server = spec.server
        try:
            if server is None:
                from docl.services.embedded import ServerProcess

                server_proc = ServerProcess().start()  # docl serve, embedded Redis, free port
                server = server_proc.url
            _run_pool(todo, server, out, spec, rows, failures, echo)
        except KeyboardInterrupt:  # Ctrl-C: keep what is done, say how to go on
            interrupted = True
        finally:
            if server_proc is not None:
                server_proc.stop()
                (out / "server.log").write_text(server_proc.log_text())
                server_proc.close()
    done = [rows[j.key] for j in jobs if j.key in rows]
    marker = out / INTERRUPTED
    note = None
    if interrupted:
        write_json_atomic(marker, {"interrupted": True, "runs_done": len(done), "runs": len(jobs)})
        note = (
            f"**Partial: {len(done)} of {len(jobs)} runs** (the experiment was interrupted; "
            "run the same command again to finish it)."
        )
    else:
        marker.unlink(missing_ok=True)
    summary = write_outputs(done, out, variants=[v.label for v in spec.variants], note=note)
    for t, ts in summary["tasks"].items():  # the headline: early stopping, batches, compute
        judged = [p["judge"]["sentence"] for p in ts["variants"].values() if "judge" in p]
        if judged:
            echo(f"early stopping on {t} (test at the best validation epoch; results.md):")
            for line in judged:
                echo(f"  {line}")
    warnings = {(r["task"], r["variant"]): no_selection_warning(r) for r in done}
    for warning in dict.fromkeys(w for w in warnings.values() if w is not None):
        echo(warning)
    wall = time.perf_counter() - t_start
    summary["wall_time"] = wall
    summary["failures"] = [(j.key, err) for j, err in failures]
    echo(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'curves.png'}"
         + (f", {out / 'study.png'}" if summary.get("study") else ""))  # fmt: skip
    for j, err in failures:
        echo(f"FAILED {j.key}: {err}")
    echo(f"total wall time {wall:.1f} s ({len(todo)} runs trained now, {len(done)} in the results)")
    summary["interrupted"] = interrupted
    if interrupted:
        echo(
            f"interrupted: {len(done)} of {len(jobs)} runs are done and kept in {out / 'runs'} "
            f"(the results above cover them; {marker} marks them partial). Run the same "
            "`docl experiment` command again to resume: finished runs are not trained again."
        )
    return summary


def _run_pool(
    todo: list[Job],
    server: str,
    out: Path,
    spec: ExperimentSpec,
    rows: dict[str, dict[str, Any]],
    failures: list[tuple[Job, str]],
    echo: Callable[[str], None],
) -> None:
    import multiprocessing as mp

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    ray_jobs = [j for j in todo if j.ray]
    rest = [j for j in todo if not j.ray]
    progress = Progress(
        TextColumn("[bold]runs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        disable=not spec.progress,
        transient=False,
    )
    ctx = mp.get_context("spawn")  # fresh interpreters: no forked torch/Ray state
    with (
        progress,
        ProcessPoolExecutor(
            max_workers=spec.jobs, mp_context=ctx, initializer=_worker_init
        ) as pool,
    ):
        bar = progress.add_task("", total=len(todo))
        warned: set[tuple[str, str]] = set()

        def finish(fut: Future[dict[str, Any]], job: Job) -> None:
            try:
                row = fut.result()
            except Exception as e:  # a failed run is reported, the others go on
                failures.append((job, f"{type(e).__name__}: {e}"))
                progress.console.print(f"FAILED {job.key}: {e}", markup=False, soft_wrap=True)
            else:
                rows[job.key] = row
                progress.console.print(row_line(row), markup=False, highlight=False, soft_wrap=True)
                warning = no_selection_warning(row)
                if warning is not None and (job.task, job.variant) not in warned:
                    warned.add((job.task, job.variant))  # once per task × variant
                    progress.console.print(warning, markup=False, highlight=False, soft_wrap=True)
            progress.advance(bar)

        # Ray runs first, one at a time: each starts (and stops) its own local Ray.
        for job in ray_jobs:
            fut = pool.submit(execute_job, job, server, str(out), spec.ray_address)
            progress.update(bar, description=f"{job.key} (Ray)")
            finish_wait = wait([fut])
            finish(next(iter(finish_wait.done)), job)
        pending: dict[Future[dict[str, Any]], Job] = {}
        queue = list(rest)
        while queue or pending:
            while queue and len(pending) < spec.jobs:
                job = queue.pop(0)
                pending[pool.submit(execute_job, job, server, str(out))] = job
            progress.update(
                bar, description=", ".join(j.key.split("__")[1] for j in pending.values())
            )
            try:
                done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            for fut in done:
                finish(fut, pending.pop(fut))
