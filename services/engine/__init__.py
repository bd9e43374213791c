"""What each route does, between the HTTP layer and the store.

The engine validates input, calls the pure math (``scoring``, ``sampling``,
``plan``, ``diversity``) and reads/writes through the store. It knows nothing
about HTTP except the :mod:`docl.services.errors` it raises, so the service
benchmark (``docl.lab``) can run the same report path in-process, without HTTP,
as the limit the server is compared with.

:class:`Engine` composes parts, each the one owner of its state:

- :mod:`.runs` — :class:`~.runs.RunRegistry`: each run's immutable :class:`RunState`
  (cached per process), create/read/list/delete, the plan, the quota;
- :mod:`.cache` — :class:`~.cache.RecordCaches`: this process's copy of each run's
  records and the run's write lease (:class:`~.cache.RecordCache`);
- :mod:`.reports` — :class:`~.reports.ReportApplier`: a request's reports applied
  group by group (read, score, scatter, and each outcome), with :mod:`.groups` (the
  grouping, the scoring of a group and the :class:`~.groups.GroupAttempt`);
- :mod:`.draws` — :class:`~.draws.EpochDraws`: draw each epoch once, re-read it,
  per-rank index shards;
- :mod:`.stats` — :class:`~.stats.ScorePages`: score pages and statistics;
- :mod:`.signals` — :class:`~.signals.SignalColumns`: per-sample signal columns
  (upload, read, list; their bounds and quota);
- :mod:`.validate` — the one report validator (one report or a request's many);
- :mod:`.jsonreport` — a JSON report parsed into the binary decoder's arrays.

The parts import each other in one direction only (``runs`` ← ``cache`` ←
``groups`` ← ``reports``; ``draws``, ``stats`` and ``signals`` on ``runs``): no cycle
(tests/test_imports.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from docl.services.config import Settings
from docl.services.engine.cache import RecordCaches
from docl.services.engine.draws import EpochDraws
from docl.services.engine.jsonreport import report_arrays_from_json
from docl.services.engine.reports import ReportApplier
from docl.services.engine.runs import RunRegistry, RunState
from docl.services.engine.signals import SignalColumns
from docl.services.engine.stats import ScorePages
from docl.services.seeds import epoch_seed
from docl.services.storage import Store
from docl.wire.encoding import ReportArrays
from docl.wire.models import (
    Epoch,
    Plan,
    ReportAck,
    Run,
    RunCreate,
    RunList,
    SignalAck,
    SignalList,
    Stats,
)

__all__ = ["Engine", "RunState", "epoch_seed", "report_arrays_from_json"]


class Engine:
    """The score server's behaviour, one method per route, over its parts."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.runs = RunRegistry(store, settings)
        self.caches = RecordCaches(store, settings)
        self.reports = ReportApplier(store, self.runs, self.caches)
        self.epochs = EpochDraws(store, settings, self.runs)
        self.pages = ScorePages(store, settings, self.runs)
        self.signals = SignalColumns(store, settings, self.runs)

    # -- runs and the plan ----------------------------------------------------------------------
    async def state(self, run_id: str, *, fresh: bool = False) -> RunState:
        """The run's cached state (``fresh``: re-read its meta from Redis). 404 if unknown."""
        return await self.runs.state(run_id, fresh=fresh)

    async def create_run(self, body: RunCreate) -> tuple[Run, bool]:
        """Create a run (True) or confirm an identical one exists (False); 409 if it differs."""
        return await self.runs.create_run(body)

    async def get_run(self, run_id: str) -> Run:
        return await self.runs.get_run(run_id)

    async def list_runs(self, *, after: str | None = None, limit: int = 100) -> RunList:
        return await self.runs.list_runs(after=after, limit=limit)

    async def delete_run(self, run_id: str) -> None:
        """Delete the run's keys (404 if unknown), then this process's copy of its records."""
        await self.runs.delete_run(run_id)
        self.caches.drop(run_id)

    async def get_plan(self, run_id: str) -> Plan:
        return await self.runs.get_plan(run_id)

    # -- epochs ---------------------------------------------------------------------------------
    async def draw_epoch(self, run_id: str, epoch: int | None) -> Epoch:
        """Draw epoch ``epoch`` (default: the next one) once; later calls return the stored draw."""
        return await self.epochs.draw_epoch(run_id, epoch)

    async def get_epoch(self, run_id: str, epoch: int) -> Epoch:
        return await self.epochs.get_epoch(run_id, epoch)

    async def indices(
        self, run_id: str, epoch: int, *, rank: int, world: int, offset: int, limit: int | None
    ) -> tuple[bytes, bytes | None, int, int]:
        """(int64 bytes of rank's shard [offset, offset+limit), the float32 bytes of their
        weights or None when the epoch has none, shard length, epoch size)."""
        return await self.epochs.indices(
            run_id, epoch, rank=rank, world=world, offset=offset, limit=limit
        )

    # -- reports --------------------------------------------------------------------------------
    async def apply_report(self, run_id: str, rep: ReportArrays) -> ReportAck:
        """Score one report; see :meth:`apply_reports`."""
        return (await self.reports.apply_reports(run_id, [rep]))[0]

    async def apply_reports(self, run_id: str, reps: Sequence[ReportArrays]) -> list[ReportAck]:
        """Score one or more reports, each applied exactly once, in order
        (:meth:`ReportApplier.apply_reports`)."""
        return await self.reports.apply_reports(run_id, reps)

    # -- scores and stats -----------------------------------------------------------------------
    def page_limit(self, st: RunState) -> int:
        return self.pages.page_limit(st)

    async def scores(
        self, run_id: str, offset: int, limit: int | None
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(offset, scores float32, visits uint32, lr_sums float64) of samples [offset, offset+limit)."""
        return await self.pages.scores(run_id, offset, limit)

    async def stats(self, run_id: str) -> Stats:
        return await self.pages.stats(run_id)

    # -- signals --------------------------------------------------------------------------------
    async def put_signal(self, run_id: str, name: str, start: int, values: np.ndarray) -> SignalAck:
        """Write samples [start, start + len(values)) of signal ``name`` (SignalColumns.put)."""
        return await self.signals.put(run_id, name, start, values)

    async def get_signal(
        self, run_id: str, name: str, start: int, stop: int | None
    ) -> tuple[np.ndarray, int, int, int]:
        """(values, start, stop, num_samples) of one page of signal ``name``."""
        return await self.signals.get(run_id, name, start, stop)

    async def list_signals(self, run_id: str) -> SignalList:
        return await self.signals.list(run_id)
