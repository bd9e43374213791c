"""``docl experiment``: the learning benchmark — does DoCL beat its baselines?

Every method (or named variant, ``docl[tau=1,normalize=none]``) is trained on
every task for every seed with the **same budget of training batches** (the
x-axis of the paper's Figure 4), each run through the real service and the real
worker loop:

* one score server (``docl serve`` with its embedded Redis, on a free port) is
  started for the whole experiment and shared by all runs;
* each run is :func:`docl.worker.train.train` — exactly what ``docl train``
  does — in-process (``workers=0``: :func:`~docl.worker.loop.train_loop` with a
  ``LocalSession``) or, for the first ``ray_runs`` runs, on a Ray Train
  ``TorchTrainer`` with one worker (the same loop in a ``RaySession``);
* runs execute in ``jobs`` worker processes (one torch thread each).

Outputs in ``DIR`` (see docs/results.md for how to read them):

* ``runs/<key>/`` — each run's ``metrics.jsonl``, ``result.json``, ``train.log``
  and ``row.json`` (written last: its presence marks the run as done, so an
  interrupted experiment resumes where it stopped);
* ``results.csv`` — one row per run; ``results.md`` — mean ± std per task ×
  variant, the issue's bar (DoCL against random and random-subset) and the
  batches each variant needs to reach random SGD's final accuracy;
* ``curves.png`` — test accuracy (regression: test MSE) against training
  batches, one subplot per task, mean ± std band over seeds;
* ``study.png`` — the score-dynamics study of the paper's §3 (``top``,
  ``bottom``, ``alternate``): score of the selected samples and true-class
  probability of the unselected ones, epoch by epoch (see :mod:`.study`).

Validation: every task carves a validation split off its training split
(``validation`` task parameter); defaults were chosen on it, and the test split
is only reported.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from docl.client.models import METHODS, RunParams

__all__ = [
    "DEFAULT_METHODS",
    "STUDY_METHODS",
    "STUDY_PARAMS",
    "TASKS",
    "ExperimentError",
    "ExperimentSpec",
    "Job",
    "TaskSetup",
    "Variant",
    "batches_to_reach",
    "build_jobs",
    "parse_variant",
    "parse_variants",
    "run_experiment",
    "summarize",
]

Metric = Literal["accuracy", "mse"]

#: The methods compared by default (the paper's Table 1 plus the random-subset control).
DEFAULT_METHODS = ("random", "random-subset", "spl", "mcl", "docl-nr", "docl")
#: The primitive curricula of the paper's §3 score-dynamics study.
STUDY_METHODS = ("top", "bottom", "alternate")
#: Run parameters of the study runs: k = 0.2·n from the first selection epoch on
#: (gamma_k·n <= k_min·n after one decay), like the paper's fixed k = 10,000 of 50,000.
STUDY_PARAMS: dict[str, Any] = {"gamma_k": 0.2, "k_min": 0.2}


class ExperimentError(ValueError):
    """The experiment cannot start as specified; the message says what to change."""


# ---------------------------------------------------------------------------
# Tasks: data, budget and the shared learning-rate schedule
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSetup:
    """How the benchmark runs one built-in task.

    ``task_params`` go to the task factory (sizes, the validation split, label
    noise); ``params`` are run parameters shared by EVERY method on this task
    (the cyclical learning-rate schedule, tuned on random SGD's validation
    accuracy — the paper's protocol); a variant's own parameters override them.
    ``budget`` is the shared number of training batches. ``quick_*`` shrink the
    task and budget for ``--quick`` (a smoke test of the pipeline, not a result).
    """

    name: str
    task_params: dict[str, Any]
    budget: int
    params: dict[str, Any] = field(default_factory=dict)
    quick_task_params: dict[str, Any] = field(default_factory=dict)
    quick_budget: int = 60
    #: --quick also shortens the plan so that a tiny budget still reaches selection epochs.
    quick_params: dict[str, Any] = field(
        default_factory=lambda: {"warmup_epochs": 1, "episode_epochs": 1}
    )
    note: str = ""


TASKS: dict[str, TaskSetup] = {
    t.name: t
    for t in (
        TaskSetup(
            "mnist1d",
            {"num_samples": 15000, "validation": 0.1},  # 10,800 train / 1,200 val / 3,000 test
            budget=3000,
            params={"lr_peak": 0.2},
            quick_task_params={"num_samples": 2000, "validation": 0.1},
            quick_budget=80,
            note="MNIST-1D, 1D CNN",
        ),
        TaskSetup(
            "digits",
            {"validation": 0.15},  # 1,145 train / 202 val / 450 test
            budget=900,
            params={"lr_peak": 0.4},
            quick_task_params={"validation": 0.15},
            quick_budget=40,
            note="sklearn 8x8 digits, MLP",
        ),
        TaskSetup(
            "synthetic",
            {
                "noise": 0.2,
                "validation": 0.1,
            },  # 5,400 train (20% labels flipped) / 600 val / 2,000 test
            budget=2000,
            params={"lr_peak": 0.05},
            quick_task_params={"num_samples": 1000, "noise": 0.2, "validation": 0.1},
            quick_budget=40,
            note="Gaussian clusters, 20% of training labels flipped, MLP",
        ),
        TaskSetup(
            "distill",
            {"validation": 0.1},  # 5,400 train / 600 val / 2,000 test
            budget=2000,
            # Tuned on random SGD when the loop's regression loss was the MSE over
            # the 10 outputs; the loss is now ½‖y − f‖² (c/2 = 5x the gradient),
            # so the same schedule is lr / 5. For regression the task loss IS the
            # L2 loss, so the L2 phases change nothing.
            params={"lr_peak": 0.08, "lr_min": 0.0002},
            quick_task_params={"num_samples": 1000, "validation": 0.1},
            quick_budget=40,
            note="regression on a teacher's logits (L2), MLP student",
        ),
    )
}


# ---------------------------------------------------------------------------
# Variants: "method" or "method[key=value,...]"
# ---------------------------------------------------------------------------

_VARIANT = re.compile(r"^\s*([a-z][a-z0-9\-]*)\s*(?:\[(.*)\])?\s*$")


@dataclass(frozen=True)
class Variant:
    """A named configuration in the results table: a method plus run-parameter overrides."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


def _candidates(text: str) -> list[Any]:
    """The values ``text`` may stand for, most specific first."""
    t = text.strip()
    low = t.lower()
    out: list[Any] = []
    if low in ("true", "false"):
        out.append(low == "true")
    if low in ("none", "null"):
        out.append(None)
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            out.append(conv(t))
    out.append(t)
    return out


def _param_value(key: str, text: str) -> Any:
    """The first reading of ``text`` that RunParams accepts for ``key`` (so 'none' is
    None for l2_phases but the string 'none' for normalize)."""
    from pydantic import ValidationError

    errors: list[str] = []
    for value in _candidates(text):
        try:
            RunParams.model_validate({key: value})
            return value
        except ValidationError as e:
            errors.append("; ".join(err["msg"] for err in e.errors()))
    raise ExperimentError(f"{key}={text.strip()}: {errors[-1]}")


def parse_variant(label: str) -> Variant:
    """``docl[tau=1,normalize=none]`` -> Variant("docl[tau=1,normalize=none]", "docl", {...}).

    Keys are :class:`~docl.client.models.RunParams` fields; each value is read as
    the first of bool / None / int / float / string that RunParams accepts for
    that field; a value it accepts in no form is an :class:`ExperimentError`.
    """
    m = _VARIANT.match(label)
    if not m:
        raise ExperimentError(
            f"cannot parse variant {label!r}: write method or method[key=value,...]"
        )
    method, body = m.group(1), m.group(2)
    if method not in METHODS:
        raise ExperimentError(
            f"unknown method {method!r} in {label!r}; known: {', '.join(METHODS)}"
        )
    params: dict[str, Any] = {}
    for part in (body or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ExperimentError(f"variant {label!r}: {part.strip()!r} is not key=value")
        key, value = (x.strip() for x in part.split("=", 1))
        if key not in RunParams.model_fields:
            raise ExperimentError(
                f"variant {label!r}: unknown run parameter {key!r}; known: "
                f"{', '.join(RunParams.model_fields)}"
            )
        if key in ("seed", "budget_batches"):
            raise ExperimentError(
                f"variant {label!r}: {key} is set by the experiment (--seeds, --budget-batches)"
            )
        try:
            params[key] = _param_value(key, value)
        except ExperimentError as e:
            raise ExperimentError(f"variant {label!r}: {e}") from None
    return Variant(label=label.strip(), method=method, params=params)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a,b[x=1,y=2]' -> ['a', 'b[x=1,y=2]']."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_variants(text: str | Sequence[str]) -> list[Variant]:
    """Parse a comma-separated list (or a list) of variants; duplicates are an error."""
    items = (
        _split_top_level(text)
        if isinstance(text, str)
        else [s for t in text for s in _split_top_level(t)]
    )
    out = [parse_variant(s) for s in items]
    labels = [v.label for v in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ExperimentError(f"variant(s) given twice: {', '.join(dup)}")
    return out


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


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
        label = re.sub(r"[^A-Za-z0-9_.\-]+", "_", self.variant).strip("_")[:48]
        return f"{self.task}__{label}__s{self.seed}__{self.config_hash}"

    def run_id(self) -> str:
        return f"x-{self.task[:12]}-{self.method}-s{self.seed}-{self.config_hash[:6]}-{uuid.uuid4().hex[:6]}"


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
    jobs: list[Job] = []
    for t in tasks:
        setup = TASKS[t]
        tp = dict(setup.quick_task_params if quick else setup.task_params)
        b = budget if budget is not None else (setup.quick_budget if quick else setup.budget)
        shared = {**setup.params, **(setup.quick_params if quick else {})}
        for v in variants:
            for s in seeds:
                jobs.append(Job(t, v.label, v.method, int(s), int(b), tp, {**shared, **v.params}))
    if study_task:
        setup = TASKS[study_task]
        tp = dict(setup.quick_task_params if quick else setup.task_params)
        b = budget if budget is not None else (setup.quick_budget if quick else setup.budget)
        shared = {**setup.params, **(setup.quick_params if quick else {})}
        for m in STUDY_METHODS:
            for s in study_seeds:
                prm = {**shared, **STUDY_PARAMS}
                jobs.append(Job(study_task, m, m, int(s), int(b), tp, prm, "study"))
    for i in range(min(ray_runs, len(jobs))):
        jobs[i] = replace(jobs[i], ray=True)
    return jobs


# ---------------------------------------------------------------------------
# Running one job (in a worker process)
# ---------------------------------------------------------------------------


def _worker_init() -> None:
    """Each worker process trains with one torch thread: ``jobs`` processes share the cores."""
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
            "val_mse", "train_loss", "wall_time")  # fmt: skip
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            m = json.loads(line)
            out.append({k: m[k] for k in keep if k in m})
    return out


def _write_json_atomic(path: Path, doc: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def execute_job(job: Job, server: str, out: str, ray_address: str | None = None) -> dict[str, Any]:
    """Train ``job`` against the score server ``server``; write and return its row.

    A Ray job joins the cluster at ``ray_address``, or starts (and stops) a local Ray.
    """
    from docl.client import ScoreClient
    from docl.worker.train import TrainSpec, train

    run_dir = Path(out) / "runs" / job.key
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = job.run_id()
    t0 = time.perf_counter()
    study: list[dict[str, Any]] | None = None
    with _output_to(run_dir / "train.log"):
        spec = TrainSpec(
            task=job.task,
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
            eval_every=1,
        )
        if job.kind == "study":
            from docl.worker.study import train_with_study

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
    _write_json_atomic(run_dir / "row.json", row)
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


# ---------------------------------------------------------------------------
# The experiment
# ---------------------------------------------------------------------------


@dataclass
class ExperimentSpec:
    """What ``docl experiment`` runs (see the CLI for each option's meaning)."""

    out: Path
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
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
        unknown = [t for t in self.tasks if t not in TASKS]
        if self.study_task is not None and self.study_task not in TASKS:
            unknown.append(self.study_task)
        if unknown:
            raise ExperimentError(
                f"unknown task(s) {', '.join(unknown)}; the benchmark knows {', '.join(TASKS)}"
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
    out.mkdir(parents=True, exist_ok=True)
    jobs = build_jobs(
        spec.tasks,
        spec.variants,
        spec.seeds,
        budget=spec.budget,
        quick=spec.quick,
        study_task=spec.study_task,
        study_seeds=spec.study_seeds,
        ray_runs=spec.ray_runs,
    )
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
    if todo:
        server_proc = None
        server = spec.server
        try:
            if server is None:
                from docl.services.embedded import ServerProcess

                server_proc = ServerProcess().start()  # docl serve, embedded Redis, free port
                server = server_proc.url
            _run_pool(todo, server, out, spec, rows, failures, echo)
        finally:
            if server_proc is not None:
                server_proc.stop()
                (out / "server.log").write_text(server_proc.log_text())
                server_proc.close()
    done = [rows[j.key] for j in jobs if j.key in rows]
    summary = write_outputs(done, out, variants=[v.label for v in spec.variants])
    wall = time.perf_counter() - t_start
    summary["wall_time"] = wall
    summary["failures"] = [(j.key, err) for j, err in failures]
    echo(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'curves.png'}"
         + (f", {out / 'study.png'}" if summary.get("study") else ""))  # fmt: skip
    for j, err in failures:
        echo(f"FAILED {j.key}: {err}")
    echo(f"total wall time {wall:.1f} s ({len(todo)} runs trained now, {len(done)} in the results)")
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

        def finish(fut: Future[dict[str, Any]], job: Job) -> None:
            try:
                row = fut.result()
            except Exception as e:  # a failed run is reported, the others go on
                failures.append((job, f"{type(e).__name__}: {e}"))
                progress.console.print(f"FAILED {job.key}: {e}", markup=False, soft_wrap=True)
            else:
                rows[job.key] = row
                progress.console.print(
                    _row_line(row), markup=False, highlight=False, soft_wrap=True
                )
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
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for fut in done:
                finish(fut, pending.pop(fut))


def _row_line(row: dict[str, Any]) -> str:
    val = _metric(row, "val")
    test = _metric(row, "test")
    return (
        f"{row['task']:<10} {row['variant']:<40} s{row['seed']} "
        f"{row['metric']} val {_fmt(val, row['metric'])} test {_fmt(test, row['metric'])} "
        f"batches {row['batches']} visited {row['visited']} {row['wall_time']:.0f}s {row['workers']}"
    )


def _metric(row: dict[str, Any], split: str) -> float:
    v = row.get(f"{split}_{row['metric']}")
    return math.nan if v is None else float(v)


def _fmt(v: float, metric: str) -> str:
    if math.isnan(v):
        return "-"
    return f"{100 * v:.2f}" if metric == "accuracy" else f"{v:.4f}"


# ---------------------------------------------------------------------------
# Summaries: mean ± std, the bar, batches to reach random SGD's final metric
# ---------------------------------------------------------------------------


def _higher_is_better(metric: str) -> bool:
    return metric == "accuracy"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
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
            tm, ts = _mean_std([_metric(r, "test") for r in vr])
            vm, vs = _mean_std([_metric(r, "val") for r in vr])
            per[v] = {
                "n": len(vr),
                "seeds": [r["seed"] for r in vr],
                "test_mean": tm,
                "test_std": ts,
                "val_mean": vm,
                "val_std": vs,
                "batches": int(np.mean([r["batches"] for r in vr])),
                "wall_mean": float(np.mean([r["wall_time"] for r in vr])),
                "curve": _mean_curve(vr, f"test_{metric}"),
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
        out["tasks"][t] = task_sum
    out["study"] = [r for r in rows if r.get("kind") == "study"]
    return out


def _best(values: Sequence[float], higher_is_better: bool) -> float:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return math.nan
    return max(v) if higher_is_better else min(v)


def _bar(per: dict[str, Any], hib: bool) -> dict[str, Any] | None:
    """DoCL (the variant labelled exactly 'docl') against random and random-subset:
    the gap must exceed the pooled std sqrt((s1² + s2²) / 2) over the seeds."""
    if "docl" not in per:
        return None
    d = per["docl"]
    res: dict[str, Any] = {}
    for base in ("random", "random-subset"):
        if base not in per:
            continue
        b = per[base]
        gap = (d["test_mean"] - b["test_mean"]) * (1 if hib else -1)  # > 0: DoCL better
        pooled = math.sqrt((d["test_std"] ** 2 + b["test_std"] ** 2) / 2)
        res[base] = {"gap": gap, "pooled_std": pooled, "passes": bool(gap > pooled and gap > 0)}
    res["reach_ratio"] = d.get("reach_ratio")
    return res


# ---------------------------------------------------------------------------
# Outputs: results.csv, results.md, curves.png, study.png
# ---------------------------------------------------------------------------

CSV_COLUMNS = (
    "task", "variant", "method", "seed", "kind", "metric", "budget", "batches", "epochs",
    "test", "val", "test_accuracy", "val_accuracy", "test_mse", "val_mse",
    "wall_time", "train_time", "workers", "visited", "visits_total", "samples_scored",
    "run_id", "params", "task_params",
)  # fmt: skip


def write_csv(rows: Iterable[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
        w.writeheader()
        for r in rows:
            rec = {k: r.get(k) for k in CSV_COLUMNS}
            rec["test"] = _metric(r, "test")
            rec["val"] = _metric(r, "val")
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
        for base in ("random", "random-subset"):
            b = bar.get(base)
            if b is None:
                cells += ["–", "–"]
            else:
                cells += [
                    f"{_gap(b['gap'], ts['metric'])} ({_gap(b['pooled_std'], ts['metric'], sign=False)})",
                    "yes" if b["passes"] else "**no**",
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
            vals = [_metric(r, "test") for r in srows if r["variant"] == m]
            mean, std = _mean_std(vals)
            lines.append(f"| {m} | {_cell(mean, std, 'accuracy', False)} | {len(vals)} |")
    lines += ["", "## Wall time per run (s, mean over seeds)", "", "| variant | " + " | ".join(tasks) + " |",
              "|---|" + "---|" * len(tasks)]  # fmt: skip
    for v in summary["variants"]:
        cells = []
        for t in tasks:
            p = summary["tasks"][t]["variants"].get(v)
            cells.append("" if p is None else f"{p['wall_mean']:.1f}")
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def _budget(summary: dict[str, Any], task: str) -> int:
    per = summary["tasks"][task]["variants"]
    return max((p["batches"] for p in per.values()), default=0)


def _gap(v: float, metric: str, sign: bool = True) -> str:
    if math.isnan(v):
        return "–"
    if metric == "accuracy":
        return f"{100 * v:+.2f}" if sign else f"{100 * v:.2f}"
    return f"{v:+.4f}" if sign else f"{v:.4f}"


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
    fig.legend(
        handles,
        labels,
        loc="lower center",
        ncol=min(6, max(1, len(labels))),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(labels) // 6), 1, 1))
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


def write_outputs(
    rows: Sequence[dict[str, Any]], out: Path, variants: Sequence[str] | None = None
) -> dict[str, Any]:
    """results.csv, results.md, curves.png and (with study runs) study.png."""
    summary = summarize(rows, variants)
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(render_markdown(summary))
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
    _write_json_atomic(out / "summary.json", slim)
    return summary
