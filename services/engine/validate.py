"""Report validation: every check a report must pass before Redis is touched.

One validator serves one report and the many reports of a request alike. The
cheap per-report checks (shapes, ``lr_sum``, epoch) run report by report; the
checks over samples run once over all the request's samples together — a dozen
numpy passes per request, not a dozen per report. The 422 names the first report
that fails and its first failing check, in the order the checks are listed in
:func:`_header_problem` and :func:`_sample_problems`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from docl.services.engine.runs import RunState
from docl.services.errors import Unprocessable
from docl.wire.encoding import ReportArrays

__all__ = [
    "FLOAT16_MAX",
    "MAX_OUTPUT_ABS",
    "duplicate_positions",
    "validate_report",
    "validate_reports",
]

#: Largest |output| (and |regression target|) a report may carry: the score divides
#: differences of outputs by learning-rate sums and multiplies them by residuals, and a
#: result beyond float32 would be no score at all (issue 19: ±3.4e38 is finite float32
#: but its arithmetic is not). Logits and regression outputs of a healthy model are
#: many orders of magnitude below it.
MAX_OUTPUT_ABS = 1e15
#: A run that stores its outputs as float16 (``params.output_dtype``): its largest value.
FLOAT16_MAX = 65504.0
_RANGE_WHY = "a score computed from them could overflow float32 (docs/api.md, Limits)"


def duplicate_positions(idx: np.ndarray) -> tuple[int, int, int] | None:
    """(value, first position, second position) of a repeated index, or None."""
    order = np.argsort(idx, kind="stable")
    s = idx[order]
    rep = np.flatnonzero(s[1:] == s[:-1])
    if rep.size == 0:
        return None
    j = int(rep[0])
    return int(s[j]), int(order[j]), int(order[j + 1])


def validate_report(st: RunState, rep: ReportArrays) -> None:
    """Every check one report must pass (422 with the reason)."""
    validate_reports(st, [rep])


def validate_reports(st: RunState, reps: Sequence[ReportArrays]) -> None:
    """Every check the reports of one request must pass, and distinct report_ids
    (422; with several reports the message names the report: ``report j (id): …``)."""
    many = len(reps) > 1
    if many:
        first: dict[str, int] = {}
        for j, rep in enumerate(reps):
            k = first.setdefault(rep.report_id, j)
            if k != j:
                raise Unprocessable(
                    f"report_id {rep.report_id!r} appears twice in one request "
                    f"(reports {k} and {j}); every report needs its own id"
                )
    found = _first_problem(st, reps)
    if found is not None:
        j, msg = found
        raise Unprocessable(f"report {j} ({reps[j].report_id!r}): {msg}" if many else msg)


def _first_problem(st: RunState, reps: Sequence[ReportArrays]) -> tuple[int, str] | None:
    """(report, message) of the first report that fails, at its first failing check."""
    header: tuple[int, str] | None = None
    checked = len(reps)
    for j, rep in enumerate(reps):
        msg = _header_problem(st, rep)
        if msg is not None:
            # The sample checks need the shapes: they run over the reports before it,
            # whose problems (if any) come first.
            header, checked = (j, msg), j
            break
    found = [p for p in _sample_problems(st, reps[:checked]) if p is not None] if checked else []
    if header is not None:
        found.append(header)
    # min() keeps the first of equal reports: check order breaks ties.
    return min(found, key=lambda p: p[0]) if found else None


def _header_problem(st: RunState, rep: ReportArrays) -> str | None:
    """The per-report checks: sizes and shapes, lr_sum, epoch."""
    cfg = st.config
    c = cfg.num_outputs
    b = int(rep.indices.shape[0])
    if b < 1:
        return "a report needs at least one sample"
    if rep.outputs.ndim != 2 or rep.outputs.shape != (b, c):
        return (
            f"outputs must be B × c = {b} × {c} (num_outputs of run {st.run_id!r}), "
            f"got {' × '.join(map(str, rep.outputs.shape))}"
        )
    if cfg.task == "regression":
        if rep.targets.ndim != 2 or rep.targets.shape != (b, c):
            return (
                f"run {st.run_id!r} is a regression run: targets must be B × c = {b} × {c} floats, "
                f"got shape {rep.targets.shape}"
            )
    elif rep.targets.ndim != 1 or rep.targets.shape[0] != b:
        return (
            f"run {st.run_id!r} is a classification run: targets must be B = {b} class ids, "
            f"got shape {rep.targets.shape}"
        )
    if not math.isfinite(rep.lr_sum) or rep.lr_sum < 0:
        return f"lr_sum must be finite and >= 0, got {rep.lr_sum}"
    if rep.epoch >= st.num_epochs:
        return (
            f"epoch {rep.epoch} is beyond the plan of run {st.run_id!r} "
            f"({st.num_epochs} epochs, 0..{st.num_epochs - 1})"
        )
    return None


def _sample_problems(st: RunState, reps: Sequence[ReportArrays]) -> list[tuple[int, str] | None]:
    """The checks over samples, in order, each over every sample of ``reps`` at once
    (their shapes are valid): per check, the first failing (report, message) or None."""
    n, c = st.config.num_samples, st.config.num_outputs
    sizes = [int(r.indices.shape[0]) for r in reps]
    one = len(reps) == 1
    idx = reps[0].indices if one else np.concatenate([r.indices for r in reps])
    tgt = reps[0].targets if one else np.concatenate([r.targets for r in reps])
    out = reps[0].outputs if one else np.concatenate([r.outputs for r in reps])

    def at(bad: np.ndarray) -> tuple[int, int]:
        """(report, row within it) of the first True of a per-sample mask."""
        return _locate(sizes, int(np.flatnonzero(bad)[0]))

    found: list[tuple[int, str] | None] = []
    # targets: finite (regression) or class ids in [0, c)
    reg = st.config.task == "regression"
    tgt_ok = not reg or _within(tgt, MAX_OUTPUT_ABS)  # the usual case: two passes, no temporary
    if reg and not tgt_ok and not np.isfinite(tgt).all():
        found.append((at(~np.isfinite(tgt).all(axis=1))[0], "targets contain NaN or Inf"))
    elif not reg and tgt.size and (int(tgt.min()) < 0 or int(tgt.max()) >= c):
        j, i = at((tgt < 0) | (tgt >= c))
        v = int(reps[j].targets[i])
        found.append((j, f"targets[{i}] = {v} is not a class id in [0, {c})"))
    # outputs: finite, and within the range the score's arithmetic holds (and so must
    # regression targets be)
    lim = FLOAT16_MAX if st.layout.output_dtype == "float16" else MAX_OUTPUT_ABS
    if not _within(out, lim):
        if not np.isfinite(out).all():
            j, i = at(~np.isfinite(out).all(axis=1))
            found.append((j, f"outputs contain NaN or Inf (first in row {i})"))
        if (bad := _beyond(out, lim)) is not None:
            j, i = at(bad)
            found.append((j, f"outputs beyond ±{lim:g} (first in row {i}): {_RANGE_WHY}"))
    if not tgt_ok and (bad := _beyond(tgt, MAX_OUTPUT_ABS)) is not None:
        j, i = at(bad)
        found.append((j, f"targets beyond ±{MAX_OUTPUT_ABS:g} (first in row {i})"))
    # features (optional, each report its own width): finite
    for j, rep in enumerate(reps):
        if rep.features is not None and not np.isfinite(rep.features).all():
            found.append((j, "features contain NaN or Inf"))
            break
    # indices: in [0, n)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
        j, i = at((idx < 0) | (idx >= n))
        found.append((j, f"indices[{i}] = {int(reps[j].indices[i])} is out of range [0, {n})"))
    # indices: no sample twice within one report
    found.append(_duplicate_problem(reps, idx, sizes, n))
    return found


def _within(values: np.ndarray, lim: float) -> bool:
    """Every value finite and within ±lim: two reductions, no temporary (min and max are
    NaN when a value is, and ±inf when one is)."""
    return not values.size or (-lim <= float(values.min()) and float(values.max()) <= lim)


def _beyond(values: np.ndarray, lim: float) -> np.ndarray | None:
    """The (rows,) mask of rows of ``values`` with a value beyond ±lim (NaN is not), or
    None when there is none."""
    with np.errstate(invalid="ignore"):
        rows = (np.abs(values) > lim).reshape(values.shape[0], -1).any(axis=1)
    return rows if rows.any() else None


def _locate(sizes: list[int], row: int) -> tuple[int, int]:
    """(report, row within it) of a row of the reports' samples one after the other."""
    for j, b in enumerate(sizes):
        if row < b:
            return j, row
        row -= b
    raise IndexError(row)


def _duplicate_problem(
    reps: Sequence[ReportArrays], idx: np.ndarray, sizes: list[int], n: int
) -> tuple[int, str] | None:
    # one sort of (report, index) pairs as one key (report · n + index)
    if len(reps) == 1:
        key = np.sort(idx)
    else:
        key = np.repeat(np.arange(len(reps), dtype=np.int64) * n, sizes)
        key += idx
        key.sort()
    if not (key[1:] == key[:-1]).any():  # the usual case: one sort, no argsort
        return None
    # Something repeats: find the first report with a repeat, and where. An index out
    # of range (already reported above) may collide with another report's key: a pair
    # counts only when both halves are of the same report.
    seg = None if len(reps) == 1 else np.repeat(np.arange(len(reps), dtype=np.int64), sizes)
    key = idx if seg is None else seg * n + idx
    order = np.argsort(key, kind="stable")
    ks = key[order]
    same = ks[1:] == ks[:-1]
    if seg is not None:
        same &= seg[order][1:] == seg[order][:-1]
    hits = np.flatnonzero(same)
    if hits.size == 0:
        return None
    if seg is None:
        h, j = int(hits[0]), 0
    else:
        js = seg[order][hits]
        h = int(hits[int(np.argmin(js))])
        j = int(js.min())
    start = sum(sizes[:j])
    a, b = int(order[h]) - start, int(order[h + 1]) - start
    v = int(reps[j].indices[a])
    return j, (
        f"index {v} appears twice in one report (positions {a} and {b}); "
        "a report must name each sample at most once"
    )
