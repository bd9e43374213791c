"""Reports: group a request's reports, read the samples' records (cache or gather),
score them in numpy, and scatter the result (one atomic script per group)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import numpy as np

from docl.services import scoring
from docl.services.engine.cache import CacheStage, RecordCache
from docl.services.engine.runs import RunState
from docl.services.engine.validate import duplicate_positions, validate_reports
from docl.services.errors import Conflict, ServiceUnavailable, Unprocessable
from docl.services.storage import GatherStatus, ScatterStatus
from docl.wire.encoding import ReportArrays
from docl.wire.models import ReportAck
from docl.wire.retry import FullJitterBackoff

__all__ = ["MAX_GROUP_REPORTS", "MAX_GROUP_SAMPLES", "ReportStage", "report_groups"]

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

#: Most samples one scatter script call writes: a script blocks Redis while it runs
#: (~2-5 µs per sample here), so a large multi-report request is applied in pieces.
MAX_GROUP_SAMPLES = 4096
#: Most reports one scatter script call applies (Lua's unpack() limit is ~8000 values).
MAX_GROUP_REPORTS = 1024


def report_groups(reps: Sequence[ReportArrays]) -> list[list[int]]:
    """Split a request's reports, in order, into groups applied by one script call each:
    no sample twice in a group (the script compares every sample with the state from
    before the call), at most MAX_GROUP_SAMPLES samples and MAX_GROUP_REPORTS reports."""
    if len(reps) == 1:
        return [[0]]
    sizes = [int(r.indices.shape[0]) for r in reps]
    if sum(sizes) <= MAX_GROUP_SAMPLES and len(reps) <= MAX_GROUP_REPORTS:
        every = np.concatenate([r.indices for r in reps])
        if duplicate_positions(every) is None:  # the usual case: one group
            return [list(range(len(reps)))]
    groups: list[list[int]] = []
    cur: list[int] = []
    seen: set[int] = set()
    count = 0
    for j, r in enumerate(reps):
        ids = r.indices.tolist()
        if cur and (
            count + sizes[j] > MAX_GROUP_SAMPLES
            or len(cur) >= MAX_GROUP_REPORTS
            or not seen.isdisjoint(ids)
        ):
            groups.append(cur)
            cur, seen, count = [], set(), 0
        cur.append(j)
        seen.update(ids)
        count += sizes[j]
    groups.append(cur)
    return groups


def _samples_of(frames: Sequence[ReportArrays], which: Sequence[int]) -> np.ndarray:
    """The sample indices of ``frames[k]`` for k in ``which``."""
    if not which:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([frames[k].indices for k in which])


def _reject_unscorable(
    frames: Sequence[ReportArrays], rec: np.ndarray, unscorable: np.ndarray
) -> None:
    """422 for a group with a sample whose new score is not a finite float32 (its outputs
    moved by more than float32 holds over the learning-rate sum since its last visit):
    nothing is written, so a visited sample never reads as unscored (issue 19)."""
    row = int(np.flatnonzero(unscorable)[0])
    sizes = [int(f.indices.shape[0]) for f in frames]
    k = int(np.searchsorted(np.cumsum(sizes), row, side="right"))
    f = frames[k]
    i = row - sum(sizes[:k])
    rho = f.lr_sum - float(rec["lr_sum"][row])
    raise Unprocessable(
        f"report {f.report_id!r}: the score of sample {int(f.indices[i])} (row {i}) is not "
        f"finite in float32: its outputs changed by more than float32 arithmetic holds over "
        f"the learning-rate sum since its last visit (rho = {rho:.3g}); nothing was written"
    )


class ReportStage(CacheStage):
    """The engine's report route."""

    async def apply_report(self, run_id: str, rep: ReportArrays) -> ReportAck:
        """Score one report; see :meth:`apply_reports`."""
        return (await self.apply_reports(run_id, [rep]))[0]

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
        st = await self.state(run_id)
        validate_reports(st, reps)
        acks: list[ReportAck | None] = [None] * len(reps)
        for group in report_groups(reps):
            st = await self._apply_group(run_id, st, reps, group, acks)
        assert all(a is not None for a in acks)
        return [a for a in acks if a is not None]

    async def _apply_group(
        self,
        run_id: str,
        st: RunState,
        reps: Sequence[ReportArrays],
        group: list[int],
        acks: list[ReportAck | None],
    ) -> RunState:
        from docl.services import metrics

        live = list(group)  # reports of the group not acknowledged yet
        marked: tuple[RecordCache, np.ndarray] | None = None
        try:
            cache = self._cache_for(st)
            rec: np.ndarray | None = None
            inclusion: np.ndarray | None = None
            token, gen = "", -1
            conflicts = 0
            for _attempt in range(MAX_REPORT_ATTEMPTS):
                if not live:
                    return st
                frames = [reps[j] for j in live]
                idx = (
                    frames[0].indices
                    if len(frames) == 1
                    else np.concatenate([f.indices for f in frames])
                )
                if rec is None:
                    if cache is not None and marked is None:
                        await self._acquire(st, cache, idx)
                        marked = (cache, idx)
                    rec, inclusion, token, gen, st, cache, dups = await self._read(
                        run_id, st, cache, frames, idx
                    )
                    if dups:
                        for d in dups:
                            acks[live[d]] = self._duplicate(frames[d])
                        gone = {live[d] for d in dups}
                        live = [j for j in live if j not in gone]
                        rec = None
                        continue
                    if rec is None:  # the run was re-created: read again
                        continue
                upd, write, new = self._score(st, frames, rec, inclusion)
                sizes = [int(f.indices.shape[0]) for f in frames]
                if len(frames) == 1:
                    per_frame = [(sizes[0], int(upd.scored.sum()))]
                else:
                    starts = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
                    sc_per = np.add.reduceat(upd.scored.astype(np.int64), starts)
                    per_frame = [(b, int(x)) for b, x in zip(sizes, sc_per, strict=True)]
                scored = int(upd.scored.sum())
                skipped = int(upd.stale.sum())
                first = int((write & (rec["visits"] == 0)).sum())
                try:
                    res = await self.store.scatter(
                        st.layout,
                        st.uid,
                        [f.report_id for f in frames],
                        now=time.time(),
                        indices=idx,
                        expected=rec,
                        write=write,
                        records=new,
                        scores=upd.scores[write],
                        losses=upd.loss[write],
                        counters=(len(frames), int(idx.shape[0]), scored, skipped, first),
                        token=token,
                        sizes=sizes,
                        scored=upd.scored,
                    )
                except BaseException:
                    # The script may have run (a 503 after WAIT, a timeout or a connection
                    # lost after Redis applied it, a cancelled request): our copy of these
                    # rows, and the lease it wrote under, vouch for nothing any more.
                    self._forget(cache)
                    raise
                if res.status.applied:
                    revoked = token != "" and not res.leased
                    if cache is not None and cache.gen == gen:
                        if revoked:  # someone else wrote: this copy may be stale anywhere
                            self._forget(cache)
                        elif res.skipped is not None:  # a sharded run's parts applied before
                            # by a call whose outcome this copy may never have seen (a
                            # re-send after an error, the Redis client's own retry): those
                            # rows are read again; the others are what was just written
                            keep = ~res.skipped[write]
                            cache.put(idx[write][keep], new[keep])
                            cache.forget(idx[res.skipped])
                        else:
                            cache.put(idx[write], new)
                    if cache is not None:
                        cache.note(conflict=revoked)
                    dup = set(res.duplicates)  # a sharded run: applied before on every shard
                    for k, (j, (b, sc)) in enumerate(zip(live, per_frame, strict=True)):
                        if k in dup:
                            acks[j] = self._duplicate(frames[k])
                        else:
                            acks[j] = ReportAck(accepted=b, scored=sc, duplicate=False)
                    metrics.REPORTS.labels(result="applied").inc(len(frames) - len(dup))
                    if res.skipped is not None:
                        metrics.REPORTS_COMPLETED.inc()
                    metrics.SAMPLES_REPORTED.inc(int(idx.shape[0]))
                    metrics.SAMPLES_SCORED.inc(scored)
                    return st
                if (
                    res.status == ScatterStatus.DUPLICATE
                ):  # some were applied before (the script counted them)
                    # by whom and when, this copy cannot tell (our own call whose reply was
                    # lost and re-sent by the Redis client, say): their rows are read again
                    if cache is not None and cache.gen == gen:
                        cache.forget(_samples_of(frames, res.duplicates))
                    for d in res.duplicates:
                        acks[live[d]] = self._duplicate(frames[d])
                    gone = {live[d] for d in res.duplicates}
                    live = [j for j in live if j not in gone]
                    rec = None
                    continue
                if res.status == ScatterStatus.GONE:
                    st = await self.state(run_id, fresh=True)  # 404 if gone, else a new run
                    validate_reports(st, [reps[j] for j in live])
                    cache = self._cache_for(st)
                    if marked is not None:
                        marked[0].busy[marked[1]] = False
                        marked = None
                    rec = None
                    continue
                # CONFLICT: some samples changed since we read them; the script sent their
                # current records: recompute from those (inclusion stays: same draw).
                metrics.REPORT_CONFLICTS.inc()
                assert res.current is not None
                pos = np.asarray(res.conflicts, dtype=np.int64)
                rec = rec.copy()
                rec[pos] = res.current
                if cache is not None:
                    cache.note(conflict=True)
                    if cache.gen == gen:
                        if token != "":  # compared under our token: the lease was revoked
                            cache.clear(self.store.resets)
                        else:
                            cache.put(idx[pos], res.current)
                token = ""  # the retry compares (a new lease is claimed by later reports)
                conflicts += 1
                await asyncio.sleep(CONFLICT_BACKOFF.compute(conflicts))
            raise ServiceUnavailable(
                f"report {reps[live[0]].report_id!r}: its samples kept being changed by "
                "concurrent reports; retry"
            )
        finally:
            if marked is not None:
                marked[0].busy[marked[1]] = False

    def _duplicate(self, rep: ReportArrays) -> ReportAck:
        from docl.services import metrics

        metrics.REPORTS.labels(result="duplicate").inc()
        return ReportAck(accepted=int(rep.indices.shape[0]), scored=0, duplicate=True)

    async def _read(
        self,
        run_id: str,
        st: RunState,
        cache: RecordCache | None,
        frames: list[ReportArrays],
        idx: np.ndarray,
    ) -> tuple[
        np.ndarray | None,
        np.ndarray | None,
        str,
        int,
        RunState,
        RecordCache | None,
        tuple[int, ...],
    ]:
        """The records (and Exp3 inclusion) of ``idx``, from the cache where it has them.

        Returns (rows, inclusion, lease token to send, cache generation read, state,
        cache, duplicates): ``rows`` None when the run was re-created (state and cache
        are the new ones then), ``duplicates`` the positions in ``frames`` of reports
        the gather found already applied (nothing read then)."""
        max_epoch = max(f.epoch for f in frames)
        ids = [f.report_id for f in frames]
        sizes = [int(f.indices.shape[0]) for f in frames]
        if cache is None:
            g = await self.store.gather(st.layout, st.uid, ids, idx, sizes=sizes)
            missing_pos = None
            rec = None
            token, gen = "", -1
        else:
            # Token, generation and rows taken together (no await in between): what the
            # lease vouches for is exactly this copy.
            token = cache.token if cache.leased else ""
            gen = cache.gen
            rec = cache.get(idx)
            missing_pos = np.flatnonzero(~cache.known[idx])
            if not missing_pos.size and max_epoch <= cache.last_epoch:
                return rec, None, token, gen, st, cache, ()
            if missing_pos.size < idx.shape[0]:  # a sharded run: the sizes of what is read
                owner = np.repeat(np.arange(len(sizes)), sizes)[missing_pos]
                sizes = np.bincount(owner, minlength=len(sizes)).tolist()
            g = await self.store.gather(st.layout, st.uid, ids, idx[missing_pos], sizes=sizes)
        if g.status == GatherStatus.GONE:
            st = await self.state(run_id, fresh=True)  # 404 if gone, else a new run
            validate_reports(st, frames)
            return None, None, "", -1, st, self._cache_for(st), ()
        if g.status == GatherStatus.DUPLICATE:
            await self.store.count_duplicate(st.layout, len(g.duplicates))
            return None, None, "", -1, st, cache, g.duplicates
        if max_epoch > g.last_epoch:
            bad = next(f for f in frames if f.epoch > g.last_epoch)
            raise Conflict(
                f"epoch {bad.epoch} of run {run_id!r} has not been drawn yet "
                f"(last drawn: {g.last_epoch if g.last_epoch >= 0 else 'none'}; "
                f"report {bad.report_id!r})"
            )
        assert g.records is not None
        if cache is None or rec is None or missing_pos is None:
            return g.records, g.inclusion, "", -1, st, cache, ()
        rec[missing_pos] = g.records
        if cache.gen == gen:
            cache.last_epoch = max(cache.last_epoch, g.last_epoch)
            cache.put(idx[missing_pos], g.records)
        return rec, None, token, gen, st, cache, ()

    def _score(
        self,
        st: RunState,
        frames: Sequence[ReportArrays],
        rec: np.ndarray,
        inclusion: np.ndarray | None,
    ) -> tuple[scoring.ScoreUpdate, np.ndarray, np.ndarray]:
        """Score the reports of a group (their samples one after the other in ``rec``)
        in ONE ``score_report`` call: its fixed cost (~0.2 ms) would otherwise be paid
        per report. Reports carry their own lr_sum; score_report takes one, and uses
        it only through ``lr_sum - prev``: each sample's stored lr-sum is shifted by
        its report's lr_sum and the call gets 0, which gives the same ρ and the same
        stale test bit for bit (fl(0 - (p - L)) = fl(L - p); fl(p - L) >= 0 iff p >= L).
        Returns (update, write mask, the new records of the written samples)."""
        p = st.config.params
        seen = rec["visits"] > 0
        prev_scores = np.where(seen, rec["score"], np.float32(np.nan)).astype(np.float32)
        if len(frames) == 1:
            f = frames[0]
            outputs, targets, lr_sum = f.outputs, f.targets, f.lr_sum
            prev_lrs = np.where(seen, rec["lr_sum"], np.nan)
            lrs: float | np.ndarray = f.lr_sum
        else:
            outputs = np.concatenate([f.outputs for f in frames])
            targets = np.concatenate([f.targets for f in frames])
            lrs = np.repeat(
                np.array([f.lr_sum for f in frames], dtype=np.float64),
                [f.indices.shape[0] for f in frames],
            )
            prev_lrs = np.where(seen, rec["lr_sum"] - lrs, np.nan)
            lr_sum = 0.0
        incl = None
        if p.exp3 and inclusion is not None:
            incl = np.where(inclusion > 0, inclusion, np.float32(1.0))
        upd = scoring.score_report(
            outputs,
            targets,
            lr_sum,
            rec["g"],
            prev_lrs,
            prev_scores,
            task=st.config.task,
            kind=st.score_kind,
            gamma=p.gamma,
            rho_power=p.rho_power,
            inclusion=incl,
        )
        unscorable = seen & ~upd.stale & ~upd.scored  # a result beyond float32
        if unscorable.any():
            _reject_unscorable(frames, rec, unscorable)
        write = ~upd.stale
        new = np.zeros(int(write.sum()), dtype=st.layout.rec_dtype)
        new["lr_sum"] = lrs if isinstance(lrs, float) else lrs[write]
        new["visits"] = rec["visits"][write] + 1
        new["score"] = upd.scores[write]
        new["loss"] = upd.loss[write]
        new["g"] = outputs[write]
        return upd, write, new
