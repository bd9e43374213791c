"""Curriculum samplers for plain PyTorch (single process, or DDP without Ray).

:class:`CurriculumSampler` replaces ``DistributedSampler``: ``set_epoch(e)``,
then iterating yields this rank's share of epoch ``e`` as the score server drew
it. :class:`CurriculumBatchSampler` yields the same share as exactly
``epoch.steps`` mini-batches (``numpy.array_split``), so every rank takes the
plan's number of optimizer steps: pass it as ``DataLoader(batch_sampler=…)``.

Both expose the drawn :class:`~docl.client.models.Epoch` as ``sampler.current``
(``phase``, ``loss``, ``size``, ``steps``, the learning rate of every step
``lr`` and ``lr_sum_start``), so the loop can follow the plan.

Ordering across ranks. An epoch should be drawn only after every report of the
previous one reached the server. Give the sampler your :class:`Reporter`: before
drawing epoch ``e`` it flushes the reporter and, under ``torch.distributed``,
waits at a barrier for the other ranks to do the same. Every rank then asks for
epoch ``e`` by number; the draw is idempotent, so they all get the same one.

This module needs torch (``pip install 'docl[worker]'`` or any torch);
``import docl.client`` does not import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from docl.client._client import ScoreClient
from docl.client.models import Epoch
from docl.client.reporter import Reporter

__all__ = ["CurriculumBatchSampler", "CurriculumSampler", "WithIndices"]


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _Curriculum:
    """What both samplers share: which epoch, this rank's shard, the drawn Epoch."""

    def __init__(
        self,
        client: ScoreClient,
        run_id: str,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        epoch: int = 0,
        reporter: Reporter | None = None,
        flush_timeout: float | None = None,
        barrier: bool = True,
    ) -> None:
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {self.rank} and {self.world_size}")
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        self.client = client
        self.run_id = run_id
        self.epoch = epoch
        self.reporter = reporter
        self.flush_timeout = flush_timeout
        self.barrier = barrier
        self._current: Epoch | None = None
        self._shard: np.ndarray | None = None
        self._num_epochs: int | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch`` on the next iteration (call it before every epoch)."""
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        if epoch != self.epoch:
            self.epoch = epoch
            self._current = None
            self._shard = None

    def _load(self) -> None:
        if self._current is not None and self._current.epoch == self.epoch:
            return
        # Every report of the previous epoch first, on every rank, then the draw.
        if self.reporter is not None:
            self.reporter.flush(self.flush_timeout)
        if self.barrier and dist.is_available() and dist.is_initialized():
            dist.barrier()
        self._current = self.client.draw_epoch(self.run_id, self.epoch)
        self._shard = self.client.indices(
            self.run_id, self.epoch, rank=self.rank, world=self.world_size
        )

    @property
    def current(self) -> Epoch:
        """The drawn epoch this sampler iterates (drawn on first use)."""
        self._load()
        assert self._current is not None
        return self._current

    @property
    def shard(self) -> np.ndarray:
        """This rank's indices of the current epoch, as the server sent them (int64)."""
        self._load()
        assert self._shard is not None
        return self._shard

    @property
    def num_epochs(self) -> int:
        """Epochs in the run's plan (``for e in range(sampler.num_epochs)``)."""
        if self._num_epochs is None:
            self._num_epochs = self.client.plan(self.run_id).num_epochs
        return self._num_epochs

    def lr_at(self, step: int) -> float:
        """The plan's learning rate of step ``step`` (0-based) of the current epoch."""
        return float(self.current.lr[step])

    def lr_sum_at(self, step: int) -> float:
        """The plan's learning-rate sum before step ``step`` of the current epoch:
        ``lr_sum_start + lr[0] + … + lr[step-1]``, summed in float64 in step order
        (the ``lr_sum`` to report for outputs computed at that step when you
        follow the plan's learning rates)."""
        e = self.current
        total = float(e.lr_sum_start)
        for lr in e.lr[:step]:
            total += lr
        return total


class CurriculumSampler(_Curriculum, Sampler[int]):
    """A ``torch.utils.data.Sampler`` over the score server's epochs, like ``DistributedSampler``.

    ``CurriculumSampler(client, run_id)`` takes ``rank``/``world_size`` from
    ``torch.distributed`` when it is initialized (else 0 and 1). Call
    ``set_epoch(e)`` before each epoch; iterating yields this rank's contiguous
    share of epoch ``e`` in the drawn (shuffled) order.

    ``pad=True`` (default) makes every rank's share the same length,
    ``ceil(size / world_size)``, so every DDP rank runs the same number of
    batches: a share one shorter borrows the first index of the next rank's
    share (``DistributedSampler`` pads alike, from the epoch's start). That
    sample is trained twice in the epoch; its second report is either a
    regular visit (a later step, a larger lr-sum) or skipped by the server as
    stale. ``pad=False`` yields the shards exactly (disjoint, their
    union is the epoch). Pass ``reporter`` so each draw happens after the
    previous epoch's reports were delivered (see the module docs).
    """

    def __init__(
        self,
        client: ScoreClient,
        run_id: str,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        epoch: int = 0,
        pad: bool = True,
        reporter: Reporter | None = None,
        flush_timeout: float | None = None,
        barrier: bool = True,
    ) -> None:
        super().__init__(
            client,
            run_id,
            rank=rank,
            world_size=world_size,
            epoch=epoch,
            reporter=reporter,
            flush_timeout=flush_timeout,
            barrier=barrier,
        )
        self.pad = pad
        self._padding: tuple[int, np.ndarray] | None = None

    def _indices(self) -> np.ndarray:
        shard = self.shard
        if not self.pad:
            return shard
        need = math.ceil(self.current.size / self.world_size) - shard.shape[0]
        if need <= 0:
            return shard
        if self._padding is None or self._padding[0] != self.epoch:
            # Borrow from the NEXT rank's share, never our own: a sample repeated
            # inside one batch would make the server reject that batch's report.
            nxt = (self.rank + 1) % self.world_size
            filler = self.client.indices(
                self.run_id, self.epoch, rank=nxt, world=self.world_size, limit=need
            )
            if filler.shape[0] < need:  # fewer samples than ranks: take the epoch's first
                filler = self.client.indices(self.run_id, self.epoch, rank=0, world=1, limit=need)
            self._padding = (self.epoch, filler)
        return np.concatenate([shard, self._padding[1]])

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices().tolist())

    def __len__(self) -> int:
        return int(self._indices().shape[0])


class CurriculumBatchSampler(_Curriculum, Sampler[list[int]]):
    """This rank's share of each epoch as exactly ``current.steps`` mini-batches.

    The share is split with ``numpy.array_split`` into ``steps`` batches of
    near-equal size, so every rank takes the same number of optimizer steps
    (what DDP needs) and step ``s`` is the plan's step ``s`` — use
    ``lr_at(s)`` and ``lr_sum_at(s)`` for its learning rate and lr-sum. Pass
    it as ``DataLoader(dataset, batch_sampler=sampler)``.
    """

    def __iter__(self) -> Iterator[list[int]]:
        steps = max(1, self.current.steps)
        for part in np.array_split(self.shard, steps):
            yield part.tolist()

    def __len__(self) -> int:
        return max(1, self.current.steps)


class WithIndices(Dataset[tuple[Any, ...]]):
    """Wrap a map-style dataset so each item is ``(index, *item)``.

    A report needs the sample indices of each batch; with
    ``DataLoader(WithIndices(ds), sampler=…)`` every batch starts with them.
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        if isinstance(item, tuple):
            return (index, *item)
        return (index, item)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]
