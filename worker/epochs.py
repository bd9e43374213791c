"""Where the training loop's epochs come from: the score server, or a local plan.

:class:`ServerEpochs` follows the score server's draws (the normal path);
:class:`LocalEpochs` computes the same plan and uniform draws locally (the plain
local baseline, no server). Both also name the run's ``method`` and its
``method_params``, so the loop knows a step-level method. ``worker/loop.py``
re-exports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from docl.client._client import Shard
from docl.client.sampler import default_outage_tolerance, ride_out
from docl.wire.models import Epoch, RunCreate, RunParams

__all__ = ["EpochSource", "LocalEpochs", "ServerEpochs"]

log = logging.getLogger("docl.worker")


class EpochSource(Protocol):
    """Where epochs come from. A source may also name the run's ``method`` and its
    ``method_params`` (``ServerEpochs`` and ``LocalEpochs`` do): a step-level method
    (``loss-topk``, ``pool-random``) then selects each step's batch from a pool."""

    num_epochs: int
    total_steps: int

    def epoch(self, e: int) -> Epoch: ...

    def indices(self, e: int, rank: int, world: int) -> Shard: ...


class ServerEpochs:
    """Epochs as the score server draws them (``POST …/epochs {epoch: e}`` is idempotent).

    Every call waits out an outage of the server or its Redis for up to
    ``outage_tolerance`` seconds (:func:`~docl.client.sampler.ride_out`): the
    requests are idempotent, so repeating them is safe. ride_out is their one retry
    loop: they go through a copy of ``client`` that does not retry by itself.
    ``gone`` (see :func:`~docl.client.outage.ride_out`) ends a wait for a server that
    cannot come back, e.g. the job's own server process that has exited.
    """

    def __init__(
        self,
        client: Any,
        run_id: str,
        *,
        outage_tolerance: float | None = None,
        gone: Callable[[], BaseException | None] | None = None,
    ) -> None:
        self.client = client = client.with_options(retries=0)
        self.run_id = run_id
        self.gone = gone
        self.outage_tolerance = (
            default_outage_tolerance() if outage_tolerance is None else float(outage_tolerance)
        )
        plan = ride_out(
            lambda: client.plan(run_id),
            tolerance=self.outage_tolerance,
            what="reading the plan",
            logger=log,
            gone=self.gone,
        )
        self.num_epochs = int(plan.num_epochs)
        self.total_steps = int(plan.total_steps)
        run = ride_out(
            lambda: client.get_run(run_id),
            tolerance=self.outage_tolerance,
            what="reading the run",
            logger=log,
            gone=self.gone,
        )
        self.method: str = run.method
        self.method_params: dict[str, Any] = dict(run.method_params)
        self.run_params: RunParams = run.params

    def epoch(self, e: int) -> Epoch:
        epoch: Epoch = ride_out(
            lambda: self.client.draw_epoch(self.run_id, e),
            tolerance=self.outage_tolerance,
            what=f"drawing epoch {e}",
            logger=log,
            gone=self.gone,
        )
        return epoch

    def indices(self, e: int, rank: int, world: int) -> Shard:
        shard: Shard = ride_out(
            lambda: self.client.shard(self.run_id, e, rank=rank, world=world),
            tolerance=self.outage_tolerance,
            what=f"fetching rank {rank}'s indices of epoch {e}",
            logger=log,
            gone=self.gone,
        )
        return shard


class LocalEpochs:
    """The same plan computed locally (``services.plan.build_plan``), drawn uniformly.

    Only for methods whose epochs read nothing the server keeps (the registry's
    ``local_ok``: the uniform controls ``random``, ``random-subset``, ``pool-random``,
    and the step-level ``loss-topk`` and ``rho-loss``, whose epochs are random SGD's
    and whose step rule, pools and irreducible-loss model run in the worker anyway):
    this is the baseline that measures what the service costs, not a curriculum.
    Each epoch's seed and draw are the server's
    (``services.seeds.epoch_rng`` and ``sampling.uniform_epoch``), so a local run
    trains on exactly the indices the score server would have sent.
    """

    def __init__(self, run: RunCreate) -> None:
        from docl.services.methods import get_method
        from docl.services.plan import build_plan

        if not get_method(run.method).local_ok:
            raise ValueError(
                f"a local (server-less) run draws uniformly; method {run.method!r} needs the score server"
            )
        self.run = run
        self.method = run.method
        self.method_params = dict(run.method_params)
        self.run_params = run.params
        self.plan = build_plan(run)
        self.num_epochs = len(self.plan)
        self.total_steps = int(sum(p.steps for p in self.plan))

    def epoch(self, e: int) -> Epoch:
        from docl.services.plan import plan_epoch
        from docl.services.seeds import epoch_seed

        p = self.plan[e]
        return Epoch(
            **plan_epoch(p).model_dump(),  # the same row the server's plan and epochs carry
            batch_size=self.run.params.batch_size,
            lr=[float(v) for v in p.lr],
            seed=epoch_seed(self.run.params.seed, e),
        )

    def indices(self, e: int, rank: int, world: int) -> Shard:
        from docl.services.sampling import uniform_epoch
        from docl.services.seeds import epoch_rng

        size = int(self.plan[e].size)
        chosen = uniform_epoch(self.run.num_samples, epoch_rng(self.run.params.seed, e), size=size)
        return Shard(chosen[rank * size // world : (rank + 1) * size // world], None)
