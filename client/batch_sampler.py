"""``CurriculumBatchSampler``: the plan's steps as mini-batches, and step-level selection.

:class:`CurriculumBatchSampler` yields this rank's share of each epoch as exactly
``current.steps`` mini-batches (``DataLoader(dataset, batch_sampler=sampler)``), so
every DDP rank takes the plan's number of optimizer steps; everything else (the
epoch fetch, the report cursor, weights, outages) is the samplers' common base in
:mod:`docl.client.sampler`, which re-exports it.

Step-level selection, for a run whose method selects per step (``loss-topk``,
``pool-random``, ``rho-loss``; ``GET /v1/methods`` says ``step_level``): in a
selection epoch step s yields its candidate pool (≈ m batches) and
:meth:`~CurriculumBatchSampler.select` returns the positions of the batch to train
on — the pools, rule and seeded Generator of docl's worker loop
(:mod:`docl.client.step`). The change to a DDP loop (docs/training.md, "Step-level
selection in your own loop")::

    for xb, yb in loader:                    # a selection step: step s's pool (p ≈ m·b rows)
        if sampler.selecting:
            with torch.no_grad():
                pool_out = model(xb)         # (p, c): every candidate's fresh output
            keep = sampler.select(F.cross_entropy(pool_out, yb, reduction="none"),
                                  outputs=pool_out, targets=yb)   # reports the pool
            xb, yb = xb[keep], yb[keep]      # (b, ...): the batch the method picked
        out = net(xb)
        ...                                  # the usual step; report() as before

Under DDP each rank selects within its own pool and every rank takes the epoch's
``steps`` steps (random SGD's). ``rho-loss`` also reads each sample's irreducible
loss: the sampler reads the run's signal column ``irreducible_loss`` from the server
(upload it once: ``docl.worker.irreducible.compute_irreducible`` and
``ScoreClient.put_signal``), or :meth:`~CurriculumBatchSampler.set_signal` gives it to
this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from docl.client._arrays import to_numpy
from docl.client.sampler import _Curriculum, _rows
from docl.client.step import EpochPools, StepLevel, choose

__all__ = ["CurriculumBatchSampler"]


class CurriculumBatchSampler(_Curriculum, Sampler[list[int]]):
    """This rank's share of each epoch as exactly ``current.steps`` mini-batches.

    The share is split with ``numpy.array_split`` into ``steps`` batches of
    near-equal size, so every rank takes the same number of optimizer steps
    (what DDP needs) and step ``s`` is the plan's step ``s`` — use
    ``lr_at(s)`` and ``lr_sum_at(s)`` for its learning rate and lr-sum. Pass
    it as ``DataLoader(dataset, batch_sampler=sampler)``. :meth:`report`
    works as with :class:`CurriculumSampler` (the cursor walks the shard).

    Step-level selection (a run of ``loss-topk``, ``pool-random`` or ``rho-loss``):
    in a selection epoch (:attr:`selecting`) step s yields its candidate **pool** of
    ≈ m batches — the pools of docl's worker loop — and :meth:`select` picks the
    batch to train on from the pool's fresh losses (docs/training.md).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._pools: tuple[int, EpochPools] | None = None  # (epoch, its pools on this rank)
        self._selected = 0  # select() calls in this pass: the next one is step _selected
        self._absorb: tuple[int, str] | None = None  # (b chosen, the pool's report id)
        self._run: tuple[StepLevel | None, int] | None = None  # (step-level method, n), read once
        self._signals: dict[str, np.ndarray] = {}  # name -> (n,) per-sample values (set_signal)

    def _restart(self) -> None:
        super()._restart()
        self._selected, self._absorb = 0, None

    @property
    def step_level(self) -> StepLevel | None:
        """The run's step-level method (``loss-topk``, ``pool-random``, ``rho-loss``: its
        pool ratio, the signals its rule reads), or None; read from the run once."""
        if self._run is None:
            run = self._ride_out(lambda c: c.get_run(self.run_id), "reading the run")
            self._run = (StepLevel.of(run.method, run.method_params), int(run.num_samples))
        return self._run[0]

    def set_signal(self, name: str, values: Any) -> None:
        """Give the step rule a per-sample signal it reads besides the fresh loss:
        ``values`` (n,) over every sample of the run, e.g. ``rho-loss``'s
        ``"irreducible_loss"`` (from ``docl.worker.irreducible.compute_irreducible`` or
        your own holdout model, in the loss kind you select by). Kept in this process,
        in place of the run's signal column (which the sampler reads otherwise)."""
        step = self.step_level
        if step is None or name not in step.signals:
            reads = list(step.signals) if step is not None else []
            raise ValueError(
                f"run {self.run_id!r}'s method reads no per-sample signal {name!r} "
                f"(its step rule reads {reads or 'none'})"
            )
        assert self._run is not None
        n = self._run[1]
        arr = to_numpy(values).astype(np.float64, copy=True)
        if arr.shape != (n,):
            raise ValueError(
                f"signal {name!r} must have shape ({n},), one value per sample, got {arr.shape}"
            )
        self._signals[name] = arr

    def _signal(self, name: str) -> np.ndarray:
        """The (n,) per-sample signal ``name`` the step rule reads: what :meth:`set_signal`
        gave, else the run's signal column on the server (``get_signal``), read once and
        kept. A column the server does not keep, or keeps incomplete (NaN: samples no
        upload reached), is a clear error saying how to give it."""
        got = self._signals.get(name)
        if got is not None:
            return got
        from docl.client.errors import NotFoundError

        try:
            col: np.ndarray | None = self._ride_out(
                lambda c: c.get_signal(self.run_id, name), f"reading the signal {name!r}"
            )
        except NotFoundError:
            col = None
        assert self._run is not None  # step_level read it
        n = self._run[1]
        if col is None or col.shape != (n,) or np.isnan(col).any():
            step = self.step_level
            state = (
                "keeps no column"
                if col is None
                else f"keeps an incomplete column ({int(np.isnan(col).sum())} of {n} samples NaN)"
            )
            how = (
                "compute it once (e.g. docl.worker.irreducible.compute_irreducible(make_model, "
                "x, y).values['task']) and upload it before the first selection epoch with "
                f"sampler.client.put_signal(run_id, {name!r}, values) (rank 0 of a DDP job)"
                if name == "irreducible_loss"
                else "upload it, one value per sample, before the first selection epoch with "
                f"sampler.client.put_signal(run_id, {name!r}, values)"
            )
            raise ValueError(
                f"method {step.method if step else '?'!r} ranks by the per-sample signal "
                f"{name!r}, and run {self.run_id!r} {state} {name!r}: {how}, or give it to "
                f"this process with sampler.set_signal({name!r}, values)"
            )
        arr = np.asarray(col, dtype=np.float64)  # as the worker: the stored float32 values
        self._signals[name] = arr
        return arr

    @property
    def selecting(self) -> bool:
        """The current epoch selects per step: the run's method is step-level and the
        epoch's phase is ``select`` (warmup and refresh epochs train every sample)."""
        return self.step_level is not None and self.current.phase == "select"

    def pools(self) -> EpochPools:
        """The current selection epoch's pools on this rank (``candidates[s]``: step s's)."""
        step = self.step_level
        if not self.selecting or step is None:
            raise ValueError(
                f"epoch {self.epoch} of run {self.run_id!r} is not a selection epoch of a step-level method"
            )
        if self._pools is None or self._pools[0] != self.epoch:
            self._pools = (self.epoch, EpochPools.build(self.shard, self.current.steps, step.ratio))
        return self._pools[1]

    def _order(self) -> np.ndarray:
        return self.pools().order if self.selecting else self.shard

    def __iter__(self) -> Iterator[list[int]]:
        steps = max(1, self.current.steps)
        parts = self.pools().candidates if self.selecting else np.array_split(self.shard, steps)
        self._restart()
        for part in parts:
            yield part.tolist()

    def __len__(self) -> int:
        return max(1, self.current.steps)

    def select(
        self,
        per_sample_loss: Any,
        *,
        outputs: Any = None,
        targets: Any = None,
        lr_sum: float | None = None,
    ) -> torch.Tensor:
        """The (b,) positions, into the pool the loader just yielded, of the batch to train on.

        ``per_sample_loss`` (p,) holds the pool's fresh losses, computed without
        gradients at the step's parameters (``reduction="none"``). The method's rule
        picks b of them — b = the size of random SGD's batch s — exactly as docl's
        worker loop does (the same pool, rule, parameters and seeded Generator).
        Call it once per step, in step order. Outside a selection epoch it returns
        every position (the batch trains whole).

        ``outputs`` (p, c) and ``targets`` (p,) given: the pool is reported as the
        worker reports it — every candidate's no-gradient output with the lr-sum
        before the step (``lr_sum``, else the tracked optimizer's) — and the step's
        later ``report`` of the b trained rows sends nothing (those rows were in the
        pool's report). Without them, report the pool yourself: ``report(outputs=,
        targets=)`` of the whole pool (p rows), before or after this call.
        """
        self._absorb = None  # a new step: the last step's trained rows are not reported now
        step = self.step_level
        if step is None:
            raise ValueError(
                f"run {self.run_id!r} does not select per step (its method trains every sample "
                "of its steps; step-level methods: GET /v1/methods, step_level): train on the "
                "whole batch, without select()"
            )
        loss = to_numpy(per_sample_loss)  # (p,) on the host (a GPU tensor: one copy)
        device = per_sample_loss.device if isinstance(per_sample_loss, torch.Tensor) else None
        if loss.ndim != 1:
            raise ValueError(
                f"per_sample_loss must be a vector (p,), one loss per candidate, got shape {loss.shape}"
            )
        if not self.selecting:
            return torch.arange(loss.shape[0], dtype=torch.int64, device=device)
        pools, s = self.pools(), self._selected
        if self._custom or s >= len(pools.candidates):
            raise ValueError(
                f"epoch {self.epoch}: select() follows the sampler's pools in step order, once "
                f"per step; this is call {s + 1} of {len(pools.candidates)} steps"
                + (" after a custom report (indices off the cursor)" if self._custom else "")
            )
        cand = pools.candidates[s]  # (p,)
        if loss.shape[0] != cand.shape[0]:
            raise ValueError(
                f"epoch {self.epoch}, step {s}: {loss.shape[0]} losses for a pool of "
                f"{cand.shape[0]} candidates (the batch the loader yielded)"
            )
        report = outputs is not None or targets is not None
        if report and (outputs is None or targets is None):
            raise ValueError(
                "give select() both outputs= and targets= (to report the pool), or neither"
            )
        if report and self._cursor != int(pools.starts[s]):
            raise ValueError(
                f"epoch {self.epoch}, step {s}: select() reports the pool at cursor "
                f"{int(pools.starts[s])}, but the cursor is at {self._cursor}"
            )
        values = {"loss": loss.astype(np.float32)}  # as the loop: float32 losses
        for name in step.signals:  # e.g. rho-loss's irreducible loss
            values[name] = self._signal(name)[cand]
        b = int(pools.parts[s].shape[0])
        chosen = choose(step, epoch_seed=self.current.seed, rank=self.rank, s=s, b=b, values=values)
        if report:  # the pool, p rows at the cursor (a bad report raises: nothing counted)
            self._absorb = (b, self.report(outputs=outputs, targets=targets, lr_sum=lr_sum))
        self._selected += 1
        return torch.as_tensor(chosen, dtype=torch.int64, device=device)

    def report(self, *, outputs: Any, targets: Any, indices: Any = None, **kwargs: Any) -> str:
        """As :meth:`_Curriculum.report`; in a selection epoch the cursor walks the pools
        (report each step's whole pool), and after ``select(outputs=, targets=)`` the
        step's report of its b trained rows sends nothing (the pool's report had them)
        and returns the pool report's id."""
        if self._absorb is not None:
            b, rid = self._absorb
            self._absorb = None
            if indices is None and _rows(outputs) == b:
                return rid
            raise ValueError(
                f"epoch {self.epoch}: select() reported this step's pool; the step's report "
                f"must be its {b} trained rows (sent with the pool), got {_rows(outputs)} rows"
                + (" with indices=" if indices is not None else "")
            )
        if self.selecting and indices is None and not self._custom:
            pools = self.pools()
            s = pools.step_at(self._cursor)
            want = -1 if s is None else int(pools.candidates[s].shape[0])
            if _rows(outputs) != want:
                raise ValueError(
                    f"epoch {self.epoch}, rank {self.rank}: a selection step reports its whole "
                    f"pool ({want} rows at cursor {self._cursor}), as docl's worker does, got "
                    f"{_rows(outputs)} rows; pass outputs=/targets= to select() to report it there"
                )
        return super().report(outputs=outputs, targets=targets, indices=indices, **kwargs)
