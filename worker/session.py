"""What differs between running the loop in Ray Train, under torchrun, or in-process.

:func:`docl.worker.loop.train_loop` talks only to a :class:`Session`: rank and
world size, the device, DDP wrapping, barriers and all-reduce, checkpoints and
progress output. Three implementations:

- :class:`LocalSession` — one process, world size 1, no process group;
  checkpoints (optional) to a local directory.
- :class:`DistSession` — an initialised ``torch.distributed`` process group
  (torchrun, or Ray Train which sets one up): DDP, barrier, all-reduce.
- :class:`RaySession` — a :class:`DistSession` whose checkpoints and metrics go
  through ``ray.train.report`` / ``ray.train.get_checkpoint``, so a restarted
  worker group resumes where the last checkpoint left off.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["DistSession", "LocalSession", "ProgressBar", "RaySession", "Session"]

_STATE_FILE = "state.pt"


class ProgressBar(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


class Session(Protocol):
    rank: int
    world: int
    device: torch.device

    def wrap(self, model: nn.Module) -> nn.Module: ...

    def barrier(self) -> None: ...

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor: ...

    def load_checkpoint(self) -> dict[str, Any] | None: ...

    def save(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None: ...

    def progress(self, *, total: int, initial: int, desc: str) -> ProgressBar | None: ...

    def log(self, line: str) -> None: ...


def _load_state(path: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


class LocalSession:
    """One in-process worker. ``checkpoint_dir`` keeps the latest checkpoint
    (written atomically); ``resume`` loads it at start."""

    rank = 0
    world = 1

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        checkpoint_dir: str | Path | None = None,
        resume: bool = False,
        progress: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.resume = resume
        self.show_progress = progress
        self._bar: Any = None

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def barrier(self) -> None:
        pass

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not (self.resume and self.checkpoint_dir):
            return None
        path = self.checkpoint_dir / _STATE_FILE
        return _load_state(path) if path.exists() else None

    def save(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is None or self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint_dir / (_STATE_FILE + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_dir / _STATE_FILE)

    def progress(self, *, total: int, initial: int, desc: str) -> ProgressBar | None:
        if not self.show_progress:
            return None
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False)
        return self._bar

    def log(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line)
        else:
            print(line, flush=True)


class DistSession:
    """A worker in an initialised ``torch.distributed`` process group (gloo or nccl)."""

    def __init__(self, *, device: torch.device | None = None, progress: bool = False) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistSession needs an initialised torch.distributed process group")
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device or torch.device("cpu")
        self.show_progress = progress

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return t
        # gloo reduces CPU tensors; nccl needs them on the GPU.
        nccl = dist.get_backend() == "nccl"
        work = t.to(self.device) if nccl else t.detach().cpu().clone()
        dist.all_reduce(work, op=dist.ReduceOp.SUM)
        return work.cpu()

    def load_checkpoint(self) -> dict[str, Any] | None:
        return None

    def save(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        pass

    def progress(self, *, total: int, initial: int, desc: str) -> ProgressBar | None:
        if not self.show_progress or self.rank != 0:
            return None
        from tqdm.auto import tqdm

        bar: ProgressBar = tqdm(total=total, initial=initial, desc=desc, unit="batch", leave=False)
        return bar

    def log(self, line: str) -> None:
        # Not print(): Ray Train patches print to also log it, which doubles each line.
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


class RaySession(DistSession):
    """A Ray Train worker: ``ray.train`` context, checkpoints via ``ray.train.report``."""

    def __init__(self, *, progress: bool = False) -> None:
        import ray.train
        import ray.train.torch

        # One INFO line per HTTP request from httpx, and one per ray.train.report
        # (Ray 2.60's train context logs under its file's path, outside the
        # "ray.train" logger that RunConfig's LoggingConfig controls), would bury
        # the epoch lines.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        try:
            from ray.train.v2._internal.execution import context as _ray_train_context

            logging.getLogger(_ray_train_context.__file__).setLevel(logging.WARNING)
        except ImportError:  # another Ray version: nothing to quiet
            pass
        ctx = ray.train.get_context()
        device = ray.train.torch.get_device()
        if dist.is_available() and dist.is_initialized():
            super().__init__(device=device, progress=progress)
        else:  # a single worker: Ray Train does not set up a process group
            self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
            self.device = device
            self.show_progress = progress

    def load_checkpoint(self) -> dict[str, Any] | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        with ckpt.as_directory() as d:
            return _load_state(Path(d) / _STATE_FILE)

    def save(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train

        # Only rank 0 writes a checkpoint; every rank must call report (it syncs ranks).
        if state is None:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, Path(d) / _STATE_FILE)
            # Ray names the directory (unique per report): a replayed epoch after a
            # restart must not collide with a checkpoint the controller never registered.
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def progress(self, *, total: int, initial: int, desc: str) -> ProgressBar | None:
        if not self.show_progress or self.rank != 0:
            return None
        # tqdm_ray sends updates to the driver, which renders one bar per worker
        # instead of interleaving carriage returns from several processes.
        from ray.experimental.tqdm_ray import tqdm as ray_tqdm

        bar = ray_tqdm(total=total, desc=desc, unit="batch")
        if initial:
            bar.update(initial)
        return bar
