"""``docl train``: one training job from the command line or from Python.

    from docl.worker.train import TrainSpec, train
    result = train(TrainSpec(task="mnist1d", method="docl", epochs=20, workers=0))
    print(result["test_accuracy"])

What it does, in order:

1. build the task (``worker/tasks``) and validate the run's config
   (``RunCreate`` / ``RunParams``: a bad ``--param`` is a clear error before
   anything starts);
2. start a score server (``docl serve`` with an embedded Redis, on a free port)
   unless ``server`` is given — or none at all for ``local=True``, the plain
   baseline without service;
3. create the run on the server;
4. train: ``workers=0`` runs :func:`~docl.worker.loop.train_loop` in this
   process; ``workers>=1`` runs it on a Ray Train ``TorchTrainer`` (a local Ray
   is started unless ``ray_address`` joins an existing cluster);
5. write ``OUT/metrics.jsonl`` (one line per epoch) and ``OUT/result.json``,
   stop what it started, and return the result.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from docl.client.errors import APIError
from docl.wire.models import RunCreate, RunParams
from docl.worker.loop import LoopConfig, train_loop
from docl.worker.probe import probe_server
from docl.worker.session import LocalSession
from docl.worker.tasks import TaskData, get_task

__all__ = [
    "INTERRUPTED",
    "OUTPUTS",
    "TrainError",
    "TrainInterrupted",
    "TrainSpec",
    "build_run",
    "no_selection_warning",
    "train",
]

#: What a job writes in its output folder (``--overwrite`` replaces exactly these).
OUTPUTS = ("metrics.jsonl", "result.json", "server.log", "interrupted.json", "checkpoint", "ray")
#: The marker of a job stopped by Ctrl-C (SIGINT): what it kept, and that it has no result.
INTERRUPTED = "interrupted.json"


class TrainError(ValueError):
    """The job cannot start as specified; the message says what to change."""


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped the job; ``str()`` says what it kept and where."""


@dataclass
class TrainSpec:
    """One training job. ``None`` means: the task's default (see ``TaskData.defaults``)."""

    task: str = "mnist1d"
    method: str = "docl"
    epochs: int | None = None
    budget_batches: int | None = None
    seed: int = 0
    workers: int = 0  # 0: in-process (no Ray); >= 1: Ray Train workers
    server: str | None = None  # None: start one for this job
    token: str | None = None
    ray_address: str | None = None  # None: start a local Ray (when workers >= 1)
    out: str | None = None  # None: out/<run_id>
    # Ray Train's storage (checkpoints): a folder every Ray node mounts, or an
    # s3://-style URI (a subfolder per run); None: OUT/ray.
    storage: str | None = None
    run_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)  # RunParams or the method's fields
    task_params: dict[str, Any] = field(default_factory=dict)
    weight_decay: float | None = None
    momentum: float = 0.9
    threads: int | None = None  # torch threads per worker (default 1)
    use_gpu: bool = False
    max_failures: int = 3
    local: bool = False  # no server, no reports: the plain local baseline
    eval_every: int = 1
    progress: bool = True
    checkpoint: bool = True
    fault: dict[str, Any] | None = None  # test hook, see LoopConfig
    # Seconds a worker waits for a score server (or its Redis) that is down before
    # failing; None: $DOCL_OUTAGE_TOLERANCE_S, else 120. Reports buffer meanwhile.
    outage_tolerance: float | None = None
    # An `out` folder that holds an earlier job's outputs is refused unless this is set;
    # then those outputs (metrics, result, checkpoints, Ray's storage) are replaced.
    overwrite: bool = False


def _pydantic_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "params") or "config"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _safe_id(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.\-]+", "-", text).strip("-.") or "run"
    return s[:40]


def build_run(spec: TrainSpec, data: TaskData) -> RunCreate:
    """The run's config: the user's settings over the task's defaults, validated."""
    params = dict(spec.params)
    params.setdefault("seed", spec.seed)
    for key, value in data.defaults.items():  # the task's tuned schedule, under the user's
        if key in RunParams.model_fields and key not in params:
            params[key] = value
    if spec.budget_batches is not None:
        params["budget_batches"] = spec.budget_batches
    epochs = spec.epochs
    if epochs is None and params.get("budget_batches") is None:
        epochs = int(data.defaults.get("epochs", 30))
    own = _method_fields(spec.method)
    if own is None:  # a method only the remote server knows: it validates the rest itself
        own = set(params) - set(RunParams.model_fields)
    method_params = {
        k: params.pop(k) for k in list(params) if k in own and k not in RunParams.model_fields
    }
    _check_param_names(params, own)
    run_id = spec.run_id or (
        f"{_safe_id(spec.task)}-{spec.method}-s{spec.seed}-{uuid.uuid4().hex[:8]}"
    )
    try:
        # model_validate: RunCreate is strict, and the method's name is checked here
        return RunCreate.model_validate(
            {
                "run_id": run_id,
                "num_samples": data.num_samples,
                "num_outputs": data.num_outputs,
                "task": data.task,
                "task_name": spec.task,
                "method": spec.method,
                "method_params": method_params,
                "epochs": epochs,
                "params": RunParams(**params),
            }
        )
    except ValidationError as e:
        raise TrainError(f"invalid run config: {_pydantic_message(e)}") from e


@dataclass(frozen=True)
class Job:
    """What every job starts from (``train`` and the study's alike)."""

    data: TaskData
    run: RunCreate
    run_id: str
    out: Path  # the output folder
    metrics_path: Path  # OUT/metrics.jsonl, emptied
    weight_decay: float  # the spec's, else the task's default


def prepare_job(spec: TrainSpec) -> Job:
    """Load the task, build the run, and make the output folder with an empty
    ``metrics.jsonl`` (a fresh job starts the file empty)."""
    data = get_task(spec.task, **spec.task_params)
    run = build_run(spec, data)
    assert run.run_id is not None  # build_run names every run
    out = Path(spec.out or Path("out") / run.run_id)
    _claim_out(out, spec.overwrite)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.jsonl"
    metrics_path.write_text("")
    weight_decay = (
        spec.weight_decay
        if spec.weight_decay is not None
        else float(data.defaults.get("weight_decay", 5e-4))
    )
    return Job(data, run, run.run_id, out, metrics_path, weight_decay)


def _claim_out(out: Path, overwrite: bool) -> None:
    """Refuse an output folder holding an earlier job's outputs (its metrics would be
    overwritten without a word), or with ``overwrite`` remove exactly those outputs."""
    used = [name for name in OUTPUTS if (out / name).exists()]
    if not used:
        return
    if not overwrite:
        raise TrainError(
            f"{out} holds the outputs of an earlier job ({', '.join(used)}); give another "
            "--out, or --overwrite to replace them"
        )
    import shutil

    for name in used:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def no_selection_warning(run: RunCreate) -> str | None:
    """One sentence when ``run``'s method selects samples but its plan — cut by
    ``epochs`` or ``budget_batches`` — ends before the first selection epoch: such a
    run trains every sample uniformly, exactly like random SGD, and its accuracy says
    nothing about the method. None otherwise (and for uniform methods)."""
    from docl.services import methods
    from docl.services.plan import build_plan

    try:
        if methods.get_method(run.method).uniform:
            return None
    except ValueError:  # a method only a remote server knows
        return None
    plan = build_plan(run)
    if not plan or any(e.phase == "select" for e in plan):
        return None
    warm = run.params.warmup_epochs
    uncut = run.model_copy(
        update={
            "epochs": warm + 1,
            "params": run.params.model_copy(update={"budget_batches": None}),
        }
    )
    first = sum(e.steps for e in build_plan(uncut) if e.phase != "select")
    return (
        f"the plan ends before its first selection epoch: all {len(plan)} epochs "
        f"({sum(e.steps for e in plan)} batches) are warmup on every sample, so this run "
        f"trains like random SGD and says nothing about {run.method!r}. Selection starts "
        f"after {first} batches ({warm} warmup epochs): give more --epochs or "
        "--budget-batches, or fewer warmup epochs (-p warmup_epochs=N)"
    )


def _say(line: str) -> None:
    """A progress line of the job on stderr (stdout keeps the epoch lines and the result)."""
    print(f"docl train: {line}", file=sys.stderr, flush=True)


def _interrupted(out: Path, run_id: str, metrics_path: Path) -> TrainInterrupted:
    """Write ``OUT/interrupted.json`` (the partial-result marker) and say what was kept."""
    epochs: list[dict[str, Any]] = []
    with contextlib.suppress(OSError, ValueError):
        epochs = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    last = epochs[-1] if epochs else {}
    marker = {
        "interrupted": True,
        "run_id": run_id,
        "epochs": len(epochs),
        "batches": last.get("batches", 0),
        "test_accuracy": last.get("test_accuracy"),
        "metrics": metrics_path.name,
    }
    with contextlib.suppress(OSError):
        (out / INTERRUPTED).write_text(json.dumps(marker, indent=2) + "\n")
    return TrainInterrupted(
        f"interrupted after {len(epochs)} finished epoch(s), {marker['batches']} batches: "
        f"{metrics_path} keeps them and {out / INTERRUPTED} marks the job as partial (no "
        "result.json). Run the command again with --overwrite to start over"
    )


def train(spec: TrainSpec) -> dict[str, Any]:
    """Run one training job (see the module docs); return what ``result.json`` holds."""
    t_start = time.perf_counter()
    _check_early(spec)  # the cheap checks first: a typo must not wait for a dataset
    if spec.server is not None and not spec.local:
        problem = probe_server(spec.server, spec.token)
        if problem is not None:
            raise TrainError(problem)
    job = prepare_job(spec)
    run, out, metrics_path = job.run, job.out, job.metrics_path
    if run.method_params.get("il") == "val" and job.data.x_val is None:  # rho-loss, rho-epoch
        metrics_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            out.rmdir()  # only when nothing else is in it
        raise TrainError(
            f"{run.method} with il=val trains its irreducible-loss model on the validation "
            f"split, and task {spec.task!r} has none: give the task a validation split, or "
            "use -p il=halves (the default)"
        )
    warning = no_selection_warning(run)
    if warning is not None:
        _say(f"warning: {warning}")
    try:
        result = _run_job(spec, job, t_start)
    except KeyboardInterrupt:
        raise _interrupted(out, job.run_id, metrics_path) from None
    if warning is not None:
        result["warnings"] = [warning]
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _run_job(spec: TrainSpec, job: Job, t_start: float) -> dict[str, Any]:
    """Steps 2–5 of the module docs for a prepared job; returns the result."""
    data, run, out = job.data, job.run, job.out
    weight_decay = job.weight_decay

    server_proc = None
    server = spec.server
    ray_started = False
    try:
        if not spec.local and server is None:
            if spec.ray_address and not spec.token:
                # Its server listens off loopback, which `docl serve` refuses without a
                # token: one for this job, passed to every worker with the server's URL.
                spec = replace(spec, token=secrets.token_hex(16))
            server_proc, server = _start_server(spec)
        if server is not None:
            _create_run_on(server, spec, job)

        cfg = _loop_config(spec, job, server)
        server_pid = server_proc.pid if server_proc is not None else None
        server_cpu0 = _tree_cpu_seconds(server_pid)
        t_train, cpu_train = time.perf_counter(), time.process_time()
        attempts = 1
        if spec.workers == 0:
            final = train_loop(
                cfg,
                data,
                LocalSession(
                    device="cuda" if spec.use_gpu else "cpu",
                    checkpoint_dir=out / "checkpoint" if spec.checkpoint else None,
                    progress=spec.progress,
                ),
                gone=_server_gone(server_proc) if server_proc is not None else None,
            )
            history = final.pop("history")
        else:
            ray_started = _connect_ray(spec)
            history, final, attempts = _train_on_ray(spec, job, cfg)
        train_time = time.perf_counter() - t_train
        # CPU of this process (all its threads: torch, the reporter's senders);
        # Ray workers are other processes, so only the in-process path has it.
        train_cpu = time.process_time() - cpu_train if spec.workers == 0 else None
        server_cpu1 = _tree_cpu_seconds(server_pid)
        # The server's (and its Redis's) CPU during the training only, not its start-up.
        server_cpu = (
            server_cpu1 - server_cpu0
            if server_cpu0 is not None and server_cpu1 is not None
            else None
        )
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        if server_proc is not None:
            server_proc.stop()
            (out / "server.log").write_text(server_proc.log_text())
            server_proc.close()

    result: dict[str, Any] = {
        "task": spec.task,
        "method": run.method,
        "seed": spec.seed,
        "run_id": job.run_id,
        "workers": spec.workers,
        "local": spec.local,
        "test_accuracy": final.get("test_accuracy"),
        "batches": final.get("batches", 0),
        # sample-passes: a step-level method's pools count as forward passes
        "forward_samples": final.get("forward_samples", 0),
        "backward_samples": final.get("backward_samples", 0),
        "compute_samples": final.get("compute_samples", 0),
        "epochs": len(history),
        "train_time": train_time,
        "train_cpu": train_cpu,
        "server_cpu": server_cpu,
        "wall_time": time.perf_counter() - t_start,
        "attempts": attempts,
        "reporter": final.get("reporter", {}),
        "num_samples": run.num_samples,
        "params": run.params.model_dump(mode="json"),
        "run_epochs": run.epochs,
        "weight_decay": weight_decay,
        "momentum": spec.momentum,
        "task_params": spec.task_params,
        "server": None if server_proc is not None else server,
        "out": str(out),
    }
    if "test_mse" in final:
        result["test_mse"] = final["test_mse"]
    if "val_accuracy" in final:
        result["val_accuracy"] = final["val_accuracy"]
    return result


def _create_run_on(server: str, spec: TrainSpec, job: Job) -> None:
    """Create the job's run on ``server``, riding out an outage (a 5xx raises after the
    tolerance); a refusal (4xx: e.g. an unknown method, a bad token) is one TrainError
    line, and the job's empty folder is removed."""
    from docl.client import ScoreClient
    from docl.client.sampler import default_outage_tolerance, ride_out

    run, out, metrics_path = job.run, job.out, job.metrics_path

    tolerance = (
        spec.outage_tolerance if spec.outage_tolerance is not None else default_outage_tolerance()
    )
    # ride_out is the one retry loop: the client does not retry by itself
    with ScoreClient(server, token=spec.token, retries=0) as client:
        try:
            ride_out(
                lambda: client.create_run(run),
                tolerance=tolerance,
                what=f"creating run {job.run_id!r}",
            )
        except APIError as e:
            if e.status >= 500:
                raise
            # The server's registry (plugins included) decides, e.g. an unknown
            # method: one line, as for the checks made here, and no empty folder.
            metrics_path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out.rmdir()  # only when nothing else is in it
            hint = " (give it with --token or DOCL_API_TOKEN)" if e.status in (401, 403) else ""
            raise TrainError(
                f"the score server at {server} refused run {job.run_id!r}: {e.detail}{hint}"
            ) from None


def _loop_config(spec: TrainSpec, job: Job, server: str | None) -> LoopConfig:
    """What every worker's loop is told: the run, the server, the knobs of the spec."""
    run, metrics_path = job.run, job.metrics_path
    cfg = LoopConfig(
        run_id=job.run_id,
        server=server,
        token=spec.token,
        local_run=run.model_dump(mode="json") if spec.local else None,
        seed=spec.seed,
        momentum=spec.momentum,
        weight_decay=job.weight_decay,
        threads=spec.threads or 1,
        eval_every=spec.eval_every,
        progress=spec.progress,
        metrics_path=str(metrics_path.resolve()),
        checkpoint=spec.checkpoint,
        fault=spec.fault,
    )
    if spec.outage_tolerance is not None:
        cfg.outage_tolerance = spec.outage_tolerance
    return cfg


def _train_on_ray(
    spec: TrainSpec, job: Job, cfg: LoopConfig
) -> tuple[list[dict[str, Any]], dict[str, Any], int]:
    """Train through ``spec.workers`` Ray Train workers: (history, final metrics,
    attempts); a Ctrl-C is a KeyboardInterrupt, whatever Ray made of it."""
    from docl.worker.launcher import RayLaunch, StorageError, launch, noting_sigint

    data, out, metrics_path = job.data, job.out, job.metrics_path
    storage = spec.storage or str(out / "ray")

    with noting_sigint() as sigint:
        try:
            outcome = launch(
                cfg,
                data,
                RayLaunch(
                    num_workers=spec.workers,
                    use_gpu=spec.use_gpu,
                    cpus_per_worker=float(spec.threads or 1),
                    max_failures=spec.max_failures,
                    storage_path=storage,
                    name=job.run_id,
                ),
            )
        except StorageError as e:
            raise TrainError(str(e)) from None
        except BaseException:
            if sigint.seen:  # Ray's abort on Ctrl-C ends in SystemExit or an error
                raise KeyboardInterrupt from None
            raise
        if sigint.seen:  # aborted, yet returned: the history is partial
            raise KeyboardInterrupt
    history = outcome.history
    # Authoritative copy: one line per epoch, whatever restarts replayed.
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in history))
    return history, history[-1] if history else outcome.metrics, outcome.attempts


def _check_param_names(params: dict[str, Any], own: set[str]) -> None:
    """A TrainError naming every key that is neither a run parameter nor one of the
    method's own (``own``)."""
    unknown = sorted(set(params) - set(RunParams.model_fields) - own)
    if unknown:
        raise TrainError(
            f"unknown --param {', '.join(unknown)}; run parameters are: "
            f"{', '.join([*RunParams.model_fields, *sorted(own)])}"
        )


def _method_fields(method: str) -> set[str] | None:
    """The parameters of ``method`` per this machine's registry (plugins included); None
    when the method is not known here (a remote ``--server`` validates it itself)."""
    from docl.services import methods

    methods.load_plugins()
    try:
        return set(methods.get_method(method).params.model_fields)
    except ValueError:
        return None


def _check_early(spec: TrainSpec) -> None:
    from docl.services import methods

    try:
        methods.load_plugins()
    except ValueError as e:  # e.g. a $DOCL_METHODS module that is not importable
        raise TrainError(str(e)) from None
    if spec.workers < 0:
        raise TrainError("workers must be >= 0 (0 = in-process)")
    if spec.outage_tolerance is not None and not spec.outage_tolerance >= 0:
        raise TrainError(f"outage_tolerance must be >= 0 seconds, got {spec.outage_tolerance}")
    if spec.server is None and spec.method not in methods.method_names():
        raise TrainError(
            f"unknown method {spec.method!r}; methods are: {', '.join(methods.method_names())}"
        )
    if spec.use_gpu and spec.workers == 0:
        import torch

        if not torch.cuda.is_available():
            # With Ray workers the cluster may have GPUs this process cannot see.
            raise TrainError(
                "--gpu with --workers 0 trains in this process, which sees no CUDA device"
            )
    local_ok = [m.name for m in methods.registry().values() if m.local_ok]
    if spec.local and spec.method not in local_ok:
        raise TrainError(
            f"--local trains without the score server, so it can only draw uniformly "
            f"(methods {', '.join(local_ok)}), not {spec.method!r}"
        )
    own = _method_fields(spec.method)
    if own is None:  # only a remote --server knows it (checked above): it validates them
        own = set(spec.params)
    _check_param_names(spec.params, own)
    if spec.method in methods.method_names():  # the method's own parameters, checked here too
        try:
            methods.validate_method_params(
                spec.method, {k: v for k, v in spec.params.items() if k in own}
            )
        except ValueError as e:
            raise TrainError(str(e)) from None
    try:
        RunParams(**{k: v for k, v in spec.params.items() if k in RunParams.model_fields})
    except ValidationError as e:
        raise TrainError(f"invalid run config: {_pydantic_message(e)}") from e


def _tree_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of ``pid`` and its live descendants (Linux /proc),
    e.g. the score server and its embedded redis-server; None where /proc is missing."""
    if pid is None:
        return None
    try:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # fields[1] is ppid; fields[11], fields[12] are utime, stime (in ticks).
            stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    except (OSError, ValueError):
        return None
    total, frontier = 0.0, [pid]
    while frontier:
        p = frontier.pop()
        if p in stats:
            total += stats[p][1]
        frontier.extend(c for c, (ppid, _) in stats.items() if ppid == p)
    return total


def _start_server(spec: TrainSpec) -> tuple[Any, str]:
    """``docl serve`` (embedded Redis) in a child process on a free port.

    Joining a cluster, it listens on every interface and workers get this
    machine's IP; on a laptop it stays on 127.0.0.1.
    """
    from docl.services.embedded import ServerProcess

    env = {"DOCL_API_TOKEN": spec.token} if spec.token else {}
    # info: OUT/server.log then says where it listened and where its Redis kept
    # the data (no line per request: uvicorn's access log is off at info).
    if not spec.ray_address:
        proc = ServerProcess(env=env, log_level="info").start()
        return proc, proc.url
    from ray.util import get_node_ip_address

    proc = ServerProcess(host="0.0.0.0", env=env, log_level="info").start()
    return proc, f"http://{get_node_ip_address()}:{proc.port}"


def _server_gone(server_proc: Any) -> Callable[[], BaseException | None]:
    """Whether the job's own score server (a ServerProcess) has exited, as an exception
    for the training loop to raise instead of waiting out an outage it cannot ride out.

    The server and its Redis are in the job's process group: a Ctrl-C there stops them
    (``docl serve`` then exits with status 0) even when this process missed it (its
    SIGINT ignored, as a job started in the background by a non-interactive shell
    inherits, or the interrupt lost), and nothing restarts them. Exit 0, or death by
    SIGINT or SIGTERM, is such a stop: a KeyboardInterrupt, which the job reports as
    interrupted (what it kept, exit 130). Any other exit is a TrainError.
    """
    import signal

    stopped = {0, -signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGINT}

    def gone() -> BaseException | None:
        proc = server_proc.proc
        code = None if proc is None else proc.poll()
        if code is None:
            return None
        if code in stopped:
            return KeyboardInterrupt()
        return TrainError(
            f"the job's score server exited with status {code} during training; its "
            "log is kept as server.log in the job's folder"
        )

    return gone


def _connect_ray(spec: TrainSpec) -> bool:
    """Join ``spec.ray_address`` or start a local Ray; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if not sys.stdout.isatty():
        # Ray colours the "(RayTrainWorker pid=…)" prefix of the workers' lines with ANSI
        # escapes, which a log file or a pipe keeps as noise.
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if spec.ray_address:
        _say(f"connecting to Ray at {spec.ray_address}…")
        ray.init(address=spec.ray_address, log_to_driver=True)
    else:
        import logging

        from docl.worker import ray_quiet

        for key, value in ray_quiet.ENV.items():
            os.environ.setdefault(key, value)
        cpus = max(os.cpu_count() or 1, spec.workers * int(spec.threads or 1))
        _say(
            f"starting a local Ray for {spec.workers} worker(s)… (10–30 s; --workers 0 trains without Ray)"
        )
        ray.init(
            num_cpus=cpus,
            include_dashboard=False,
            log_to_driver=True,  # the workers' epoch lines
            logging_level=logging.ERROR,  # the driver's start-up and token notices
            runtime_env={"worker_process_setup_hook": ray_quiet.SETUP_HOOK},
        )
    return True
