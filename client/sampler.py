"""Curriculum samplers for plain PyTorch (single process, or DDP without Ray).

The short way, three changed lines in an ordinary (DDP) loop::

    from docl.client import CurriculumSampler
    sampler = CurriculumSampler.connect(SERVER, run_id=RUN, num_samples=len(dataset),
                                        num_outputs=10, epochs=EPOCHS, optimizer=opt)
    ...
        sampler.report(outputs=out, targets=yb)      # after backward(), before opt.step()

:meth:`CurriculumSampler.connect` creates (or joins) the run, builds the
client, a background :class:`Reporter` and a learning-rate tracker
(:func:`track_lr`) on ``optimizer``. :meth:`report` knows the batch's sample
indices without being told: a ``DataLoader(batch_size=B, sampler=sampler)``
yields batches in the sampler's order (also with ``num_workers > 0``), so a
report of B' rows is the next B' indices of this rank's epoch. The sampler
keeps a cursor, checks that the rows fit, and starts it over on every
``set_epoch`` and every new pass over the loader.

:class:`CurriculumSampler` replaces ``DistributedSampler``: ``set_epoch(e)``,
then iterating yields this rank's share of epoch ``e`` as the score server drew
it. :class:`CurriculumBatchSampler` yields the same share as exactly
``epoch.steps`` mini-batches (``numpy.array_split``), so every rank takes the
plan's number of optimizer steps: pass it as ``DataLoader(batch_sampler=…)``.

Both expose the drawn :class:`~docl.client.models.Epoch` as ``sampler.current``
(``phase``, ``loss``, ``size``, ``steps``, the learning rate of every step
``lr`` and ``lr_sum_start``), so the loop can follow the plan.

Per-sample weights. Some methods (``infobatch``) give each index of an epoch a
loss weight (``current.weighted``); the loss to train on is mean(w_i · ℓ_i).
One changed line: compute the per-sample loss (``reduction="none"``) and take
``loss = sampler.weighted_loss(per_sample_loss)`` — the batch is the next rows at
the report cursor, as for ``report`` — or pass the batch's indices
(``WithIndices`` yields them; a ``CurriculumBatchSampler`` loop has them).
``sampler.weights_for(idx)`` gives the weights alone (all 1 for unweighted epochs).

Ordering across ranks. An epoch should be drawn only after every report of the
previous one reached the server. Give the sampler your :class:`Reporter` (or let
``connect`` make one): before drawing epoch ``e`` it flushes the reporter and,
under ``torch.distributed``, waits at a barrier for the other ranks to do the
same. Every rank then asks for epoch ``e`` by number; the draw is idempotent, so
they all get the same one.

Outages. When the score server (or its Redis) is down, the reporter buffers
and retries on its own; the draw and the index fetch wait for the server to
come back for up to ``outage_tolerance`` seconds (default 120, or
``$DOCL_OUTAGE_TOLERANCE_S``), logging that they wait, then raise
(:func:`~docl.client.outage.ride_out`, re-exported here). A server that has never
answered is not waited for: the first request of
:meth:`~CurriculumSampler.connect` fails in seconds with one line
(:func:`first_contact`): a wrong address is far likelier than an outage at that
moment.

This module needs torch (``pip install 'docl[worker]'`` or any torch);
``import docl.client`` does not import it.

Size: a little over the house's ~500 lines: the samplers are thin subclasses of
one ``_Curriculum`` base (the cursor, the epoch fetch), which is the bulk of the
module and is read together with them. ``CurriculumBatchSampler`` and its
step-level selection live in :mod:`docl.client.batch_sampler` (re-exported here);
the outage ride-out is :mod:`docl.client.outage`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from docl.client._arrays import to_numpy
from docl.client._client import ScoreClient
from docl.client.outage import (
    DEFAULT_OUTAGE_TOLERANCE,
    default_outage_tolerance,
    first_contact,
    outage_policy,
    ride_out,
)
from docl.client.reporter import LrSum, Reporter, track_lr
from docl.wire.models import Epoch, RunParams

__all__ = [
    "DEFAULT_OUTAGE_TOLERANCE",
    "CurriculumSampler",
    "WithIndices",
    "default_outage_tolerance",
    "first_contact",
    "outage_policy",
    "ride_out",
]

T = TypeVar("T")
S = TypeVar("S", bound="_Curriculum")


def _dist_rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rows(x: Any) -> int:
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) > 0:
        return int(shape[0])
    return len(x)


class _Curriculum:
    """What both samplers share: which epoch, this rank's shard, the drawn Epoch,
    and the cursor that maps reports to indices."""

    def __init__(
        self,
        client: ScoreClient,
        run_id: str,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        epoch: int = 0,
        reporter: Reporter | None = None,
        lrs: LrSum | None = None,
        flush_timeout: float | None = None,
        barrier: bool = True,
        outage_tolerance: float | None = None,
    ) -> None:
        d_rank, d_world = _dist_rank_world()
        self.rank = d_rank if rank is None else rank
        self.world_size = d_world if world_size is None else world_size
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got {self.rank} and {self.world_size}")
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        tolerance = default_outage_tolerance() if outage_tolerance is None else outage_tolerance
        if not tolerance >= 0:
            raise ValueError(f"outage_tolerance must be >= 0 seconds, got {outage_tolerance!r}")
        self.client = client
        self.run_id = run_id
        self.epoch = epoch
        self.reporter = reporter
        #: The learning-rate sum that :meth:`report` sends when not given one.
        self.lrs = lrs
        self.flush_timeout = flush_timeout
        self.barrier = barrier
        self.outage_tolerance = float(tolerance)
        self._current: Epoch | None = None
        self._shard: np.ndarray | None = None
        self._weights: np.ndarray | None = None  # (m,) float32 of a weighted epoch's shard
        self._lookup: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, keys, w)
        self._num_epochs: int | None = None
        self._cursor = 0  # rows of this epoch's order reported so far
        self._custom = False  # a report with indices off the cursor: custom batching
        self._owned: list[Any] = []  # what connect() made, closed by close()
        self._once: tuple[ScoreClient, ScoreClient] | None = None  # (client, its no-retry copy)

    # -- building one from a server URL ------------------------------------------------

    @classmethod
    def connect(
        cls: type[S],
        server: str | None = None,
        *,
        run_id: str,
        num_samples: int | None = None,
        num_outputs: int | None = None,
        epochs: int | None = None,
        method: str = "docl",
        task: str = "classification",
        params: RunParams | dict[str, Any] | None = None,
        optimizer: Any = None,
        token: str | None = None,
        max_queue: int = 1024,
        senders: int = 2,
        **options: Any,
    ) -> S:
        """A sampler with its own client, :class:`Reporter` and learning-rate tracker.

        ``server`` defaults to ``$DOCL_SERVER`` (else ``http://127.0.0.1:8000``).
        With ``num_samples`` the run is created with this config (``num_outputs``,
        ``epochs`` or ``params.budget_batches``, ``method``, ``task``, ``params``);
        every rank of a DDP job may do so (the same config again is a no-op, a
        different one raises :class:`~docl.client.errors.ConflictError`).
        Without it the run must exist (created by another process or ``docl
        train``). ``optimizer`` is tracked with :func:`track_lr`, so
        :meth:`report` can send its learning-rate sum. Other keyword options go
        to the constructor (``rank``, ``world_size``, ``pad``, ``barrier``,
        ``flush_timeout``, ``outage_tolerance``). Call it after
        ``init_process_group``: rank and world size are read then.

        :meth:`close` (or ``with``) closes the reporter (delivering what is
        queued) and the client; a reporter still open at exit is closed then.
        """
        tolerance = options.get("outage_tolerance")
        tolerance = default_outage_tolerance() if tolerance is None else float(tolerance)
        client = ScoreClient(server, token=token)
        try:
            if num_samples is not None:
                fields: dict[str, Any] = {
                    "run_id": run_id,
                    "num_samples": num_samples,
                    "num_outputs": num_outputs,
                    "epochs": epochs,
                    "method": method,
                    "task": task,
                }
                if params is not None:
                    fields["params"] = params
                fields = {k: v for k, v in fields.items() if v is not None}
                first_contact(
                    client,
                    lambda: client.create_run(**fields),
                    tolerance=tolerance,
                    what=f"creating run {run_id!r}",
                )
            else:
                if (num_outputs, epochs, params) != (None, None, None):
                    raise ValueError(
                        "num_outputs, epochs and params create a run: give num_samples too "
                        "(or none of them, to join a run that exists)"
                    )
                first_contact(
                    client,
                    lambda: client.get_run(run_id),
                    tolerance=tolerance,
                    what=f"looking up run {run_id!r}",
                )
            lrs = track_lr(optimizer) if optimizer is not None else None
            reporter = Reporter(client, run_id, max_queue=max_queue, senders=senders)
        except BaseException:
            client.close()
            raise
        sampler = cls(client, run_id, reporter=reporter, lrs=lrs, **options)
        sampler._owned = [reporter, client]
        return sampler

    def close(self, timeout: float | None = 30.0) -> bool:
        """Close what :meth:`connect` made: the reporter (flushing for up to
        ``timeout`` s; True when every report was delivered), then the client."""
        delivered = True
        for thing in self._owned:
            if isinstance(thing, Reporter):
                delivered = thing.close(timeout) and delivered
            else:
                thing.close()
        self._owned = []
        return delivered

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the epoch ---------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Use epoch ``epoch`` on the next iteration (call it before every epoch)."""
        if epoch < 0:
            raise ValueError("epoch must be >= 0")
        if epoch != self.epoch:
            self.epoch = epoch
            self._current = None
            self._shard = None
        self._restart()

    def _restart(self) -> None:
        self._cursor = 0
        self._custom = False

    def _ride_out(self, call: Callable[[ScoreClient], T], what: str) -> T:
        """``call(client)`` under :func:`ride_out`, with a copy of :attr:`client` that
        does not retry by itself (ride_out is the one retry loop)."""
        if self._once is None or self._once[0] is not self.client:
            self._once = (self.client, self.client.with_options(retries=0))
        once = self._once[1]
        return ride_out(lambda: call(once), tolerance=self.outage_tolerance, what=what)

    def _load(self) -> None:
        if self._current is not None and self._current.epoch == self.epoch:
            return
        # Every report of the previous epoch first, on every rank, then the draw.
        if self.reporter is not None:
            timeout = self.flush_timeout
            self.reporter.flush(self.outage_tolerance if timeout is None else timeout)
        if self.barrier and dist.is_available() and dist.is_initialized():
            dist.barrier()
        e = self.epoch
        current = self._ride_out(lambda c: c.draw_epoch(self.run_id, e), f"drawing epoch {e}")
        shard = self._ride_out(
            lambda c: c.shard(self.run_id, e, rank=self.rank, world=self.world_size),
            f"fetching the indices of epoch {e}",
        )
        self._shard, self._weights = shard.indices, shard.weights
        self._current = current

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
            plan = self._ride_out(lambda c: c.plan(self.run_id), "reading the plan")
            self._num_epochs = plan.num_epochs
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

    # -- per-sample weights ----------------------------------------------------------------

    def _weight_sources(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(indices, weights) pairs the current epoch's weights are looked up in."""
        self._load()
        assert self._shard is not None and self._weights is not None
        return [(self._shard, self._weights)]

    def weights_for(self, indices: Any) -> torch.Tensor:
        """The loss weight of each of ``indices`` (samples of this rank's current epoch),
        float32 on the indices' device; all 1 when the epoch is not ``weighted``."""
        idx = to_numpy(indices).reshape(-1).astype(np.int64, copy=False)
        device = indices.device if isinstance(indices, torch.Tensor) else None
        if not self.current.weighted:
            return torch.ones(idx.shape[0], dtype=torch.float32, device=device)
        if self._lookup is None or self._lookup[0] != self.epoch:
            sources = self._weight_sources()
            keys = np.concatenate([k for k, _ in sources])
            vals = np.concatenate([w for _, w in sources])
            order = np.argsort(keys, kind="stable")
            self._lookup = (self.epoch, keys[order], vals[order])
        _, keys, vals = self._lookup
        pos = np.searchsorted(keys, idx)
        pos = np.minimum(pos, max(0, keys.shape[0] - 1))
        if keys.shape[0] == 0 or not np.array_equal(keys[pos], idx):
            raise ValueError(
                f"some indices are not in rank {self.rank}'s share of epoch {self.epoch}"
            )
        return torch.as_tensor(vals[pos].copy(), dtype=torch.float32, device=device)

    def weighted_loss(self, per_sample_loss: torch.Tensor, indices: Any = None) -> torch.Tensor:
        """mean(w_i · ℓ_i) over the batch: the loss to train on (``reduction="none"``
        losses in, one scalar out; the plain mean when the epoch is not weighted).

        ``indices`` None: the batch is the next B rows of this rank's epoch order, where
        the next :meth:`report` starts (true for a ``DataLoader`` fed by this sampler,
        as for ``report``) — call it before that batch's ``report``."""
        if not self.current.weighted:
            return per_sample_loss.mean()
        if indices is None:
            b = int(per_sample_loss.shape[0])
            order = self._order()
            if self._custom or self._cursor + b > order.shape[0]:
                raise ValueError(
                    f"epoch {self.epoch}, rank {self.rank}: {b} rows at cursor {self._cursor} "
                    f"do not fit this rank's {order.shape[0]} indices; pass indices="
                )
            indices = order[self._cursor : self._cursor + b]
        w = self.weights_for(indices).to(per_sample_loss.device, per_sample_loss.dtype)
        return (w * per_sample_loss).mean()

    # -- reports -----------------------------------------------------------------------

    def _order(self) -> np.ndarray:
        """The indices this rank yields in the current epoch, in order."""
        return self.shard

    @property
    def cursor(self) -> int:
        """Rows of this rank's current epoch reported so far (where the next report starts)."""
        return self._cursor

    def report(
        self,
        *,
        outputs: Any,
        targets: Any,
        indices: Any = None,
        lr_sum: float | None = None,
        features: Any = None,
        report_id: str | None = None,
    ) -> str:
        """Report the batch just trained; returns its ``report_id`` (never blocks).

        Call it after ``loss.backward()`` and before ``optimizer.step()`` (the
        outputs must be those of the parameters the tracked learning-rate sum
        describes). ``outputs`` (B', c) and ``targets`` are the batch's, as for
        :meth:`Reporter.report`.

        ``indices`` None: the batch is the next B' indices of this rank's
        epoch order — true for any ``DataLoader`` fed by this sampler (batches
        come in sampler order, with any ``num_workers``). ``indices`` given:
        used as they are; when they are the next B' indices the cursor moves on,
        otherwise the sampler takes it for custom batching and, for the rest of
        the epoch, every report must give its indices.

        ``lr_sum`` None: the tracked optimizer's sum (``connect(optimizer=…)``
        or ``lrs=``). ``report_id`` None: deterministic for a cursor batch
        (run, epoch, rank, offset, rows — a replayed epoch is recognised as
        duplicate), random otherwise.
        """
        if self.reporter is None:
            raise RuntimeError(
                "this sampler has no Reporter: build it with CurriculumSampler.connect(...) "
                "or pass reporter=Reporter(client, run_id)"
            )
        if lr_sum is None:
            if self.lrs is None:
                raise ValueError(
                    "no learning-rate sum: pass lr_sum=, or build the sampler with "
                    "connect(..., optimizer=opt) so it tracks the optimizer's rates"
                )
            lr_sum = self.lrs.value
        b = _rows(outputs)
        order = self._order()
        e = self.epoch
        start = self._cursor
        expected = order[start : start + b]
        if indices is None:
            if self._custom:
                raise ValueError(
                    f"epoch {e}: an earlier report gave indices that were not the sampler's "
                    "next ones (custom batching); give indices= with every report of this epoch"
                )
            if b < 1 or start + b > order.shape[0]:
                raise ValueError(
                    f"epoch {e}, rank {self.rank}: a report of {b} rows, but {order.shape[0] - start} "
                    f"of this rank's {order.shape[0]} indices are left (cursor {start}). Call "
                    "set_epoch(e) before each epoch, report each batch of a DataLoader fed by "
                    "this sampler once, in order; or pass indices= for custom batching"
                )
            idx: np.ndarray | Any = expected
            on_cursor = True
        else:
            idx = indices
            got = to_numpy(indices).reshape(-1)
            on_cursor = (
                not self._custom
                and got.shape[0] == b
                and expected.shape[0] == b
                and np.array_equal(got, expected)
            )
            if not on_cursor:
                self._custom = True
        if on_cursor:
            self._cursor = start + b
            if report_id is None:
                report_id = f"{self.run_id}-e{e}-r{self.rank}-o{start}-n{b}"[-128:]
        return self.reporter.report(
            epoch=e,
            indices=idx,
            outputs=outputs,
            targets=targets,
            lr_sum=lr_sum,
            features=features,
            report_id=report_id,
        )


class CurriculumSampler(_Curriculum, Sampler[int]):
    """A ``torch.utils.data.Sampler`` over the score server's epochs, like ``DistributedSampler``.

    ``CurriculumSampler(client, run_id)`` takes ``rank``/``world_size`` from
    ``torch.distributed`` when it is initialized (else 0 and 1);
    :meth:`connect` builds one from a server URL (client, reporter, lr tracker).
    Call ``set_epoch(e)`` before each epoch; iterating yields this rank's
    contiguous share of epoch ``e`` in the drawn (shuffled) order.

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
        lrs: LrSum | None = None,
        flush_timeout: float | None = None,
        barrier: bool = True,
        outage_tolerance: float | None = None,
    ) -> None:
        super().__init__(
            client,
            run_id,
            rank=rank,
            world_size=world_size,
            epoch=epoch,
            reporter=reporter,
            lrs=lrs,
            flush_timeout=flush_timeout,
            barrier=barrier,
            outage_tolerance=outage_tolerance,
        )
        self.pad = pad
        self._padding: tuple[int, np.ndarray, np.ndarray | None] | None = None

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
            e = self.epoch
            filler = self._ride_out(
                lambda c: c.shard(self.run_id, e, rank=nxt, world=self.world_size, limit=need),
                f"fetching the padding of epoch {e}",
            )
            if len(filler) < need:  # fewer samples than ranks: take the epoch's first
                filler = self._ride_out(
                    lambda c: c.shard(self.run_id, e, rank=0, world=1, limit=need),
                    f"fetching the padding of epoch {e}",
                )
            self._padding = (self.epoch, filler.indices, filler.weights)
        return np.concatenate([shard, self._padding[1]])

    def _weight_sources(self) -> list[tuple[np.ndarray, np.ndarray]]:
        out = super()._weight_sources()
        self._indices()  # the padding, if any
        if self._padding is not None and self._padding[0] == self.epoch:
            _, idx, w = self._padding
            if w is not None:
                out.append((idx, w))
        return out

    def _order(self) -> np.ndarray:
        return self._indices()

    def __iter__(self) -> Iterator[int]:
        order = self._indices()
        self._restart()  # a new pass over the loader: reports start at its first batch
        return iter(order.tolist())

    def __len__(self) -> int:
        return int(self._indices().shape[0])


class WithIndices(Dataset[tuple[Any, ...]]):
    """Wrap a map-style dataset so each item is ``(index, *item)``.

    Only needed for custom batching (``sampler.report(indices=…)``): with
    ``DataLoader(WithIndices(ds), sampler=…)`` every batch starts with its
    sample indices.
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


def __getattr__(name: str) -> Any:
    # CurriculumBatchSampler lives in client/batch_sampler.py (it imports this module).
    if name == "CurriculumBatchSampler":
        from docl.client.batch_sampler import CurriculumBatchSampler

        return CurriculumBatchSampler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
