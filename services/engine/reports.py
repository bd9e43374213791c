"""Reports: apply a request's reports, group by group (:mod:`.groups`): read the
samples' records (the run's record cache, or ``gather``), score them in numpy,
scatter the result (one atomic script per group), and act on its outcome."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from docl.services.engine.cache import RecordCaches, Rows
from docl.services.engine.groups import (
    GroupAttempt,
    ScoredGroup,
    report_groups,
    samples_of,
    score_group,
)
from docl.services.engine.runs import RunRegistry, RunState
from docl.services.engine.validate import validate_reports
from docl.services.errors import Conflict, ServiceUnavailable, Unprocessable
from docl.services.layout import ScatterCounts
from docl.services.storage import Applied, GatherStatus, ScatterStatus, Store
from docl.wire.encoding import ReportArrays
from docl.wire.models import ReportAck
from docl.wire.retry import FullJitterBackoff

__all__ = ["MAX_REPORT_ATTEMPTS", "ReportApplier"]

#: A report whose samples keep being changed by other reports between its gather
#: and its scatter is retried this many times before the client is told to retry.
#: Each conflict loses to one concurrent writer of the same samples, so this bounds
#: how many such writers a report can outwait (the ranks of one epoch touch disjoint
#: samples; contention comes from retries and from several servers' write leases).
MAX_REPORT_ATTEMPTS = 32
#: After the n-th conflict, wait uniform(0, min(cap, base·2ⁿ)) seconds before
#: recomputing, so that writers which keep colliding spread out instead of
#: re-colliding in lock step (full jitter, as for any optimistic compare-and-set).
CONFLICT_BACKOFF_BASE_S = 0.0005
CONFLICT_BACKOFF_CAP_S = 0.02
CONFLICT_BACKOFF = FullJitterBackoff(CONFLICT_BACKOFF_BASE_S, CONFLICT_BACKOFF_CAP_S)


class ReportApplier:
    """The report route: every report applied exactly once, in order. Reads run state
    from the run registry and keeps the record caches told of every outcome."""

    def __init__(self, store: Store, runs: RunRegistry, caches: RecordCaches) -> None:
        self.store = store
        self.runs = runs
        self.caches = caches

    async def apply_reports(self, run_id: str, reps: Sequence[ReportArrays]) -> list[ReportAck]:
        """Score one or more reports: validate them all, then per group of reports
        (:func:`report_groups`) read the samples' records, score (numpy), scatter (one
        atomic script: dedup markers + compare-and-set of every sample, or the write
        lease + writes). Every report is applied exactly once, in order; a report
        already applied is acknowledged as a duplicate and changes nothing.

        The whole request is validated before anything is written: one invalid
        report is a 422 for all of them, and nothing changes. A report of an epoch
        not drawn yet is a 409 for its group and every group after it (groups
        before it stay applied: their acknowledgements are lost with the error, and
        a retry finds them as duplicates).

        The records come from this process's :class:`RecordCache` when it has them,
        else from Redis (``gather``). Without the write lease, the scatter compares
        each sample's stored (lr_sum, visits) with the state the update was computed
        from and writes nothing on a mismatch, returning the current records; the
        update is then recomputed from those. So a stale copy costs a retry, never a
        wrong score.
        """
        if not reps:
            raise Unprocessable("a request needs at least one report")
        st = await self.runs.state(run_id)
        validate_reports(st, reps)
        acks: list[ReportAck | None] = [None] * len(reps)
        for group in report_groups(reps):
            a = GroupAttempt(run_id, reps, acks, list(group), st, self.caches.for_run(st))
            st = await self._apply_group(a)
        assert all(a is not None for a in acks)
        return [a for a in acks if a is not None]

    async def _apply_group(self, a: GroupAttempt) -> RunState:
        """Read, score and scatter the group until every report is acknowledged: applied,
        or found applied before (duplicates). Returns the run's state (a new one if the
        run was found re-created on the way)."""
        try:
            for _attempt in range(MAX_REPORT_ATTEMPTS):
                if not a.live:
                    return a.st
                if a.rows is None:
                    await self._read(a)
                    if a.rows is None:  # duplicates acknowledged, or the run re-created
                        continue
                scored = score_group(a.st, a.frames, a.rows.rec, a.rows.inclusion)
                res = await self._scatter(a, a.rows, scored)
                if res.status.applied:
                    self._applied(a, a.rows, scored, res)
                    return a.st
                if res.status == ScatterStatus.DUPLICATE:  # some were applied before
                    # (the script counted them): by whom and when, this copy cannot tell
                    self.caches.found_applied(
                        a.cache, a.rows.gen, samples_of(a.frames, res.duplicates)
                    )
                    a.settle_duplicates(res.duplicates)
                elif res.status == ScatterStatus.GONE:
                    await self._run_recreated(a)
                else:
                    await self._conflict(a, a.rows, res)
            raise ServiceUnavailable(
                f"report {a.reps[a.live[0]].report_id!r}: its samples kept being changed by "
                "concurrent reports; retry"
            )
        finally:
            self._release(a)

    def _release(self, a: GroupAttempt) -> None:
        if a.held is not None:
            self.caches.release(*a.held)
            a.held = None

    async def _run_recreated(self, a: GroupAttempt) -> None:
        """The run was deleted (404) or re-created under us: start over on the new one."""
        a.st = await self.runs.state(a.run_id, fresh=True)
        validate_reports(a.st, a.frames)
        self._release(a)
        a.cache = self.caches.for_run(a.st)
        a.rows = None

    async def _read(self, a: GroupAttempt) -> None:
        """Set ``a.rows``: the records (and Exp3 inclusion) of ``a.idx``, from the cache
        where it has them (after holding them: :meth:`RecordCaches.acquire`). Leaves
        ``a.rows`` None when the gather found reports applied before (acknowledged) or
        the run re-created."""
        frames, idx = a.frames, a.idx
        if a.cache is not None and a.held is None:
            await self.caches.acquire(a.st, a.cache, idx)
            a.held = (a.cache, idx)
        max_epoch = max(f.epoch for f in frames)
        ids = [f.report_id for f in frames]
        sizes = [int(f.indices.shape[0]) for f in frames]
        cached: Rows | None = None
        missing = None
        if a.cache is None:
            g = await self.store.gather(a.st.layout, a.st.uid, ids, idx, sizes=sizes)
        else:
            cached, missing = self.caches.rows(a.cache, idx)
            if not missing.size and max_epoch <= a.cache.last_epoch:
                a.rows = cached
                return
            if missing.size < idx.shape[0]:  # a partitioned run: the sizes of what is read
                owner = np.repeat(np.arange(len(sizes)), sizes)[missing]
                sizes = np.bincount(owner, minlength=len(sizes)).tolist()
            g = await self.store.gather(a.st.layout, a.st.uid, ids, idx[missing], sizes=sizes)
        if g.status == GatherStatus.GONE:
            await self._run_recreated(a)
            return
        if g.status == GatherStatus.DUPLICATE:
            await self.store.count_duplicate(a.st.layout, len(g.duplicates))
            a.settle_duplicates(g.duplicates)
            return
        if max_epoch > g.last_epoch:
            bad = next(f for f in frames if f.epoch > g.last_epoch)
            raise Conflict(
                f"epoch {bad.epoch} of run {a.run_id!r} has not been drawn yet "
                f"(last drawn: {g.last_epoch if g.last_epoch >= 0 else 'none'}; "
                f"report {bad.report_id!r})"
            )
        assert g.records is not None
        if a.cache is None or cached is None or missing is None:
            a.rows = Rows(g.records, g.inclusion)
            return
        cached.rec[missing] = g.records
        self.caches.gathered(a.cache, cached.gen, idx[missing], g.records, g.last_epoch)
        a.rows = cached

    async def _scatter(self, a: GroupAttempt, rows: Rows, scored: ScoredGroup) -> Applied:
        """Send the group's writes (one atomic script). On any error after it was sent the
        script may have run (a 503 after WAIT, a timeout or a connection lost after Redis
        applied it, a cancelled request): the cache starts over."""
        upd, write = scored.update, scored.write
        idx = a.idx
        try:
            return await self.store.scatter(
                a.st.layout,
                a.st.uid,
                [f.report_id for f in a.frames],
                now=time.time(),
                indices=idx,
                expected=rows.rec,
                write=write,
                records=scored.new,
                scores=upd.scores[write],
                losses=upd.loss[write],
                counters=ScatterCounts(
                    reports=len(a.frames),
                    samples_reported=int(idx.shape[0]),
                    samples_scored=int(upd.scored.sum()),
                    samples_skipped=int(upd.stale.sum()),
                    visited=int((write & (rows.rec["visits"] == 0)).sum()),
                ),
                token=rows.token,
                sizes=[int(f.indices.shape[0]) for f in a.frames],
                scored=upd.scored,
            )
        except BaseException:
            self.caches.restart(a.cache)
            raise

    def _applied(self, a: GroupAttempt, rows: Rows, scored: ScoredGroup, res: Applied) -> None:
        from docl.services import metrics

        self.caches.wrote(
            a.cache, rows, a.idx, scored.write, scored.new, leased=res.leased, skipped=res.skipped
        )
        a.settle_applied(scored.update.scored, res.duplicates)
        metrics.REPORTS.labels(result="applied").inc(len(a.frames) - len(set(res.duplicates)))
        if res.skipped is not None:
            metrics.REPORTS_COMPLETED.inc()
        metrics.SAMPLES_REPORTED.inc(int(a.idx.shape[0]))
        metrics.SAMPLES_SCORED.inc(int(scored.update.scored.sum()))

    async def _conflict(self, a: GroupAttempt, rows: Rows, res: Applied) -> None:
        """Some samples changed since they were read; the script sent their current
        records: recompute from those (the inclusion stays: the same draw), compared
        (a new lease is claimed by later reports), after a jittered backoff."""
        from docl.services import metrics

        metrics.REPORT_CONFLICTS.inc()
        assert res.current is not None
        pos = np.asarray(res.conflicts, dtype=np.int64)
        rec = rows.rec.copy()
        rec[pos] = res.current
        self.caches.conflicted(a.cache, rows, a.idx[pos], res.current)
        a.rows = Rows(rec, rows.inclusion, "", rows.gen)
        a.conflicts += 1
        await asyncio.sleep(CONFLICT_BACKOFF.compute(a.conflicts))
