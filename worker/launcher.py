"""Ray Train launcher: run :func:`~docl.worker.loop.train_loop` on a ``TorchTrainer``.

The driver puts the task's tensors in Ray's object store once; each worker
fetches them, builds a :class:`~docl.worker.session.RaySession` (rank, DDP over
the process group Ray Train sets up, checkpoints through ``ray.train.report``)
and runs the loop. ``FailureConfig(max_failures)`` restarts a worker group that
lost a worker; the restarted group resumes from the last checkpoint (the end of
the last completed epoch) — see docs/training.md, "Resume". :func:`noting_sigint`
tells the driver that Ray Train's own SIGINT handler saw a Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docl.worker.loop import LoopConfig, train_loop
from docl.worker.session import RaySession
from docl.worker.tasks import TaskData

__all__ = [
    "RayLaunch",
    "RayOutcome",
    "SigintNote",
    "StorageError",
    "check_storage",
    "launch",
    "noting_sigint",
    "ray_worker_entry",
    "resolve_storage",
]

# Ray Train v2's controller collects each ``ray.train.report`` on a poll of this
# period, and a worker's second report blocks until the first was collected: the
# default 2 s would add up to 2 s per epoch. 0.2 s costs the controller little.
_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
DEFAULT_POLL_S = "0.2"


def ray_worker_entry(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the TorchTrainer (runs in every Ray Train worker)."""
    import ray

    cfg = LoopConfig(**config["loop"])
    data = config["data"]
    if isinstance(data, ray.ObjectRef):
        data = ray.get(data)
    train_loop(cfg, data, RaySession(progress=cfg.progress))


@dataclass(frozen=True)
class RayLaunch:
    """How to run the workers: ``num_workers`` ranks with ``cpus_per_worker`` each."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    max_failures: int = 3
    # Ray Train's storage: docl's checkpoints (model, optimizer, position) that a
    # restarted worker group resumes from. Every Ray node must reach it: a local path
    # that all nodes mount (NFS, a shared volume) or a URI pyarrow opens (s3://, gs://).
    storage_path: str = "out/ray"
    name: str = "docl"
    keep_checkpoints: int = 2
    log_level: str = "WARNING"


@dataclass
class RayOutcome:
    metrics: dict[str, Any]  # rank 0's last reported metrics
    history: list[dict[str, Any]]  # every epoch's metrics (from the last checkpoint)
    checkpoint_path: str | None
    attempts: int  # worker-group starts that trained an epoch (1 = no restart)


def launch(cfg: LoopConfig, data: TaskData, how: RayLaunch) -> RayOutcome:
    """Run the training on the connected Ray cluster and wait for it."""
    import ray
    import torch
    from ray.train import (
        CheckpointConfig,
        FailureConfig,
        LoggingConfig,
        RunConfig,
        ScalingConfig,
    )
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        raise RuntimeError("connect to Ray first (ray.init)")
    os.environ.setdefault(_POLL_ENV, DEFAULT_POLL_S)
    storage = resolve_storage(how.storage_path)
    check_storage(storage)
    trainer = TorchTrainer(
        ray_worker_entry,
        train_loop_config={"loop": cfg.to_dict(), "data": ray.put(data)},
        scaling_config=ScalingConfig(
            num_workers=how.num_workers,
            use_gpu=how.use_gpu,
            resources_per_worker={
                "CPU": how.cpus_per_worker,
                **({"GPU": 1} if how.use_gpu else {}),
            },
        ),
        run_config=RunConfig(
            name=how.name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=how.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=how.keep_checkpoints),
            # Ray Train's per-report INFO lines would bury the loop's own epoch lines.
            # (mypy sees Ray Train v1's RunConfig; v2, on by default in Ray 2.60, has it.)
            logging_config=LoggingConfig(log_level=how.log_level),  # type: ignore[call-arg]
        ),
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
    history: list[dict[str, Any]] = []
    ckpt_path = None
    if result.checkpoint is not None:
        ckpt_path = result.checkpoint.path
        with result.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", map_location="cpu", weights_only=False)
            history = list(state["history"])
    return RayOutcome(
        metrics=dict(result.metrics or {}),
        history=history,
        checkpoint_path=ckpt_path,
        attempts=int(history[-1].get("attempt", 1)) if history else 1,
    )


class StorageError(RuntimeError):
    """Ray Train's storage is not reachable from every Ray node."""


#: the folder under the storage where :func:`check_storage` leaves its markers
_CHECK_DIR = ".docl-storage-check"


def resolve_storage(path: str) -> str:
    """A URI (``s3://bucket/prefix``) as given; a local path made absolute."""
    return path if "://" in path else str(Path(path).resolve())


def _node_check(storage: str, folder: str, token: str, node: str) -> str | None:
    """On one Ray node: read the driver's marker, write this node's. None = fine."""
    from pyarrow import fs

    try:
        filesystem, base = fs.FileSystem.from_uri(storage)
    except Exception as e:  # anything pyarrow raises is the answer
        return f"cannot open {storage}: {e}"
    marker = f"{base}/{folder}/driver"
    try:
        with filesystem.open_input_stream(marker) as f:
            seen = f.read().decode()
    except Exception as e:
        return f"cannot read {marker}, which the driver wrote ({type(e).__name__})"
    if seen != token:
        return f"reads another {marker} than the driver wrote (a different disk at that path)"
    try:
        with filesystem.open_output_stream(f"{base}/{folder}/{node}") as f:
            f.write(token.encode())
    except Exception as e:
        return f"cannot write under {base}/{folder} ({type(e).__name__}: {e})"
    return None


def check_storage(storage: str, timeout_s: float = 60.0) -> None:
    """Fail at start, not at the first checkpoint, when a Ray node cannot share ``storage``.

    The driver writes a marker under the storage; a task pinned to each alive node
    reads it back and writes one of its own, which the driver then reads. A local
    path on a single-node cluster the driver runs on is shared by construction and
    is not checked. Raises :class:`StorageError` naming the nodes that fail.
    """
    import uuid

    import ray
    from pyarrow import fs
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n.get("Alive")}
    client_mode = ray.util.client.ray.is_connected()
    here = None if client_mode else ray.get_runtime_context().get_node_id()
    if "://" not in storage and set(nodes) <= {here}:
        return
    hint = (
        "Every Ray node must reach Ray Train's storage, where docl keeps its checkpoints: "
        "give --storage (DOCL_STORAGE) a folder every node mounts at the same path (NFS, "
        "a shared volume, a ReadWriteMany claim) or a URI such as s3://bucket/prefix "
        "(docs/deploy.md, 'Storage')"
    )
    token = uuid.uuid4().hex
    folder = f"{_CHECK_DIR}/{token}"
    try:
        filesystem, base = fs.FileSystem.from_uri(storage)
        filesystem.create_dir(f"{base}/{folder}", recursive=True)
        with filesystem.open_output_stream(f"{base}/{folder}/driver") as f:
            f.write(token.encode())
    except Exception as e:
        raise StorageError(
            f"storage {storage}: the driver cannot write to it ({e}). {hint}"
        ) from None
    try:
        check = ray.remote(num_cpus=0, max_retries=0)(_node_check)
        refs = {
            node: check.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(storage, folder, token, node)
            for node in nodes
        }
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        problems: list[str] = []
        for node, ref in refs.items():
            where = f"node {nodes[node]} ({node[:8]})"
            if ref not in ready:
                problems.append(f"{where} did not answer within {timeout_s:.0f} s")
                continue
            problem = ray.get(ref)
            if problem is None:
                try:
                    filesystem.open_input_stream(f"{base}/{folder}/{node}").close()
                except Exception:
                    problem = (
                        "writes where the driver does not see it (a different disk at that path)"
                    )
            if problem is not None:
                problems.append(f"{where} {problem}")
        if problems:
            raise StorageError(
                f"storage {storage} is not shared by every Ray node: "
                + "; ".join(problems)
                + f". {hint}"
            )
    finally:
        with contextlib.suppress(Exception):
            filesystem.delete_dir(f"{base}/{folder}")


@dataclass
class SigintNote:
    seen: bool = False


@contextlib.contextmanager
def noting_sigint() -> Iterator[SigintNote]:
    """Note a Ctrl-C while Ray Train runs. Its ``fit()`` installs its own SIGINT handler
    (abort the run, then exit with status 1 and no word); the handler it installs is
    wrapped so that the job knows it was interrupted and says so like the in-process
    loop does. The caller's own SIGINT handler is back when the block ends."""
    import signal

    note = SigintNote()
    install = signal.signal

    def noting(sig: int, handler: Any) -> Any:
        if sig == signal.SIGINT and callable(handler):
            inner = handler

            def handler(signum: int, frame: Any) -> Any:
                note.seen = True
                return inner(signum, frame)

        return install(sig, handler)

    previous = signal.getsignal(signal.SIGINT)
    signal.signal = noting  # type: ignore[assignment]
    try:
        yield note
    finally:
        signal.signal = install
        # Ray Train leaves its handler (wrapped above) installed after fit(): put back
        # the caller's, so a Ctrl-C after train() returns is the caller's again.
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
