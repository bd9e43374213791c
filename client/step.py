"""Step-level selection for plain PyTorch: the pools and the rule of docl's worker loop.

:class:`~docl.client.sampler.CurriculumBatchSampler` uses this module for a run whose
method selects per step (``loss-topk``, ``pool-random``, ``rho-loss``; ``GET
/v1/methods`` says ``step_level: true``). In a selection epoch the sampler yields step
s's candidate **pool** instead of its batch, and :meth:`select` picks the batch to
train on from the pool's fresh losses. Both come from the same functions the worker
loop calls, so a plain loop and ``docl train`` select identically:

* the pools: :func:`~docl.services.methods.pool.candidate_pools` over this rank's
  shard split into the epoch's ``steps`` parts (``numpy.array_split``, as the loop);
* the rule: :func:`~docl.services.methods.select_step` with the method's validated
  parameters and the step's Generator
  :func:`~docl.services.seeds.step_rng` (epoch seed, rank, step).

These are the services' pure functions (numpy, pydantic; no server code), the one
place the client imports from ``services`` (tests/test_imports.py allows exactly
them for this module, as it does for the worker).

The worker loop takes :class:`StepLevel`, :func:`choose` and :func:`registered` from
here too (``worker/loop.py``, ``worker/signals.py``): one definition of "the run's
step-level method" for both loops.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from docl.services import methods
from docl.services.methods.pool import candidate_pools
from docl.services.seeds import step_rng

__all__ = ["EpochPools", "StepLevel", "choose", "registered"]

log = logging.getLogger("docl.client")


def registered(method: str) -> methods.SelectionMethod[Any] | None:
    """The registered method ``method``, loading the plugins (entry points,
    ``$DOCL_METHODS``) once if it is not there yet; None when no plugin has it."""
    spec = methods.registry().get(method)
    if spec is None:
        methods.load_plugins()
        spec = methods.registry().get(method)
    return spec


@dataclass(frozen=True)
class StepLevel:
    """A run's step-level method: its name, validated parameters, pool ratio m and the
    per-sample signals its rule reads besides the fresh loss."""

    method: str
    params: dict[str, Any]
    ratio: int
    signals: tuple[str, ...] = ()

    @staticmethod
    def of(method: str, method_params: Mapping[str, Any] | None) -> StepLevel | None:
        """The run's step-level method, or None when it trains every sample of its steps.

        A method this process does not know (a plugin loaded only where the server runs)
        is taken as not step-level, with a warning: its rule would have to run here."""
        spec = registered(method)
        if spec is None:
            log.warning(
                "method %r is not registered in this process: it cannot select per step "
                "here; if it is step-level, load its plugin here (DOCL_METHODS=…)",
                method,
            )
            return None
        params = dict(method_params or {})
        ratio = spec.pool_ratio(params)
        if ratio is None:
            return None
        return StepLevel(method, params, ratio, tuple(spec.signals))


@dataclass(frozen=True)
class EpochPools:
    """One selection epoch's pools on one rank: step s's candidates and where they sit in
    :attr:`order`, the concatenation of every step's pool in step order (what the
    sampler yields, so the report cursor walks it)."""

    parts: list[np.ndarray]  # steps × (≈ m / steps,): part s is random SGD's batch s
    candidates: list[np.ndarray]  # steps × (p_s,): pool s, part s first
    starts: np.ndarray  # (steps + 1,) int64: pool s is order[starts[s] : starts[s + 1]]
    order: np.ndarray  # (Σ p_s,) int64

    @classmethod
    def build(cls, shard: np.ndarray, steps: int, ratio: int) -> EpochPools:
        parts = np.array_split(np.asarray(shard, dtype=np.int64), max(1, steps))
        cands = [
            np.concatenate([parts[j] for j in pool]) for pool in candidate_pools(len(parts), ratio)
        ]
        sizes = np.array([c.shape[0] for c in cands], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        order = np.concatenate(cands) if cands else np.zeros(0, dtype=np.int64)
        return cls(parts, cands, starts, order)

    def step_at(self, offset: int) -> int | None:
        """The step whose (non-empty) pool starts at ``offset`` of :attr:`order` (None: none
        does). Empty pools (a rank with fewer samples than steps) share their offset with
        the next pool; the cursor can only stand before a non-empty one."""
        s = int(np.searchsorted(self.starts[:-1], offset, side="right")) - 1
        if s >= 0 and int(self.starts[s]) == offset and self.candidates[s].shape[0] > 0:
            return s
        return None


def choose(
    step: StepLevel,
    *,
    epoch_seed: int,
    rank: int,
    s: int,
    b: int,
    values: Mapping[str, np.ndarray],
) -> np.ndarray:
    """The (b,) positions into step s's pool that the worker loop would train on: the
    method's rule over ``values`` (``"loss"``: the pool's fresh losses, and the signals
    the rule reads) with the step's Generator."""
    return methods.select_step(
        step.method,
        b=b,
        values=values,
        rng=step_rng(epoch_seed, rank, s),
        method_params=step.params,
    )
