"""A group of reports: how a request's reports are grouped (:func:`report_groups`),
how a group is scored in one call (:func:`score_group`), and one group's attempt at
being applied (:class:`GroupAttempt`: what the report path's steps share). Pure:
no store, no cache (:mod:`.reports` runs the steps)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from docl.services import scoring
from docl.services.engine.cache import RecordCache, Rows
from docl.services.engine.runs import RunState
from docl.services.engine.validate import duplicate_positions
from docl.services.errors import Unprocessable
from docl.wire.encoding import ReportArrays
from docl.wire.models import ReportAck

__all__ = [
    "MAX_GROUP_REPORTS",
    "MAX_GROUP_SAMPLES",
    "GroupAttempt",
    "ScoredGroup",
    "duplicate_ack",
    "report_groups",
    "samples_of",
    "score_group",
]

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


def samples_of(frames: Sequence[ReportArrays], which: Sequence[int]) -> np.ndarray:
    """The sample indices of ``frames[k]`` for k in ``which``."""
    if not which:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([frames[k].indices for k in which])


def duplicate_ack(rep: ReportArrays) -> ReportAck:
    """The acknowledgement of a report found applied before (counted in the metrics)."""
    from docl.services import metrics

    metrics.REPORTS.labels(result="duplicate").inc()
    return ReportAck(accepted=int(rep.indices.shape[0]), scored=0, duplicate=True)


@dataclass
class GroupAttempt:
    """One group of a request's reports on its way to being applied: what the steps of
    the report path (read, score + scatter, and each outcome) share.

    ``live`` are the positions in ``reps`` of the group's reports not acknowledged yet
    (``frames`` those reports, ``idx`` their samples one after the other); ``rows`` what
    was read for them (None: read next); ``held`` the cache and samples this attempt
    marked busy (released when it ends or the run is found re-created)."""

    run_id: str
    reps: Sequence[ReportArrays]
    acks: list[ReportAck | None]
    live: list[int]
    st: RunState
    cache: RecordCache | None
    rows: Rows | None = None
    held: tuple[RecordCache, np.ndarray] | None = None
    conflicts: int = 0
    frames: list[ReportArrays] = field(init=False)
    idx: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self._frames_of_live()

    def _frames_of_live(self) -> None:
        self.frames = [self.reps[j] for j in self.live]
        if len(self.frames) == 1:
            self.idx = self.frames[0].indices
        else:
            self.idx = samples_of(self.frames, range(len(self.frames)))

    def settle_duplicates(self, positions: Sequence[int]) -> None:
        """Acknowledge the reports at ``positions`` of ``frames`` as duplicates; the others
        are read again."""
        for d in positions:
            self.acks[self.live[d]] = duplicate_ack(self.frames[d])
        gone = {self.live[d] for d in positions}
        self.live = [j for j in self.live if j not in gone]
        self.rows = None
        self._frames_of_live()

    def settle_applied(self, scored: np.ndarray, duplicates: Sequence[int]) -> None:
        """Acknowledge every report as applied (``scored``: the scored mask of ``idx``),
        but those at ``duplicates`` (a partitioned run's, applied before on every partition)."""
        sizes = [int(f.indices.shape[0]) for f in self.frames]
        if len(self.frames) == 1:
            per_frame = [int(scored.sum())]
        else:
            starts = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
            per_frame = [int(x) for x in np.add.reduceat(scored.astype(np.int64), starts)]
        dup = set(duplicates)
        for k, (j, b, sc) in enumerate(zip(self.live, sizes, per_frame, strict=True)):
            if k in dup:
                self.acks[j] = duplicate_ack(self.frames[k])
            else:
                self.acks[j] = ReportAck(accepted=b, scored=sc, duplicate=False)


def reject_unscorable(
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


class ScoredGroup(NamedTuple):
    """A group's scores: the update, the write mask over its samples (not stale) and
    the new records of the written samples."""

    update: scoring.ScoreUpdate
    write: np.ndarray
    new: np.ndarray


def score_group(
    st: RunState,
    frames: Sequence[ReportArrays],
    rec: np.ndarray,
    inclusion: np.ndarray | None,
) -> ScoredGroup:
    """Score the reports of a group (their samples one after the other in ``rec``)
    in ONE ``score_report`` call: its fixed cost (~0.2 ms) would otherwise be paid
    per report. Reports carry their own lr_sum; score_report takes one, and uses
    it only through ``lr_sum - prev``: each sample's stored lr-sum is shifted by
    its report's lr_sum and the call gets 0, which gives the same ρ and the same
    stale test bit for bit (fl(0 - (p - L)) = fl(L - p); fl(p - L) >= 0 iff p >= L).
    """
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
        reject_unscorable(frames, rec, unscorable)
    write = ~upd.stale
    new = np.zeros(int(write.sum()), dtype=st.layout.rec_dtype)
    new["lr_sum"] = lrs if isinstance(lrs, float) else lrs[write]
    new["visits"] = rec["visits"][write] + 1
    new["score"] = upd.scores[write]
    new["loss"] = upd.loss[write]
    new["g"] = outputs[write]
    return ScoredGroup(upd, write, new)
