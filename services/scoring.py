"""DoCL scoring (Eq. 7, 8, 12) as pure, vectorized numpy functions. No I/O.

Shapes: B = samples in a report, c = outputs per sample.

The score of a sample is the EMA (Eq. 8) of

    a_t(i) = <r_i, (f_i - g_i) / rho_i**rho_power>

where f_i is the output reported now, g_i the output stored at the sample's last
visit, rho_i the learning-rate sum in between and r_i the residual: y_i - f_i for
regression (Eq. 7), onehot(y_i) - softmax(f_i) for classification (Eq. 12).
DoCL-NR (paper §5) uses a_t(i) = ||(f_i - g_i) / rho_i**rho_power||_2 instead.

Precision: with c < 64 outputs the math runs in float64; from 64 on in
float32 (see score_report), where the inputs themselves carry float32 precision
at best. raw a_t(i) is returned as float64, scores and losses as float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

ScoreKind = Literal["docl", "docl-nr"]

#: Exp3 divides a_t(i) by the inclusion probability of the draw; probabilities
#: below this floor are clipped to it so one near-impossible draw cannot turn a
#: score into ~1e30 and dominate every later draw (the score would otherwise be
#: unbounded: P(i in S) of an exp(ŝ/τ) draw can underflow to 0).
MIN_INCLUSION = 1e-6

_F32_MAX = float(np.finfo(np.float32).max)

#: score_report works on column-major copies when c is below this (see there).
_COLUMN_MAJOR_BELOW = 64


def _as_outputs(outputs: np.ndarray, name: str = "outputs") -> np.ndarray:
    arr = np.asarray(outputs)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a (B, c) matrix, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    return arr


def _class_ids(targets: np.ndarray, batch: int, num_classes: int) -> np.ndarray:
    y = np.asarray(targets)
    if y.shape != (batch,):
        raise ValueError(
            f"classification targets must be ({batch},) class ids, got shape {y.shape}"
        )
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and batch and np.all(np.floor(y) == y):
            y = y.astype(np.int64)
        elif batch:
            raise ValueError(f"classification targets must be integers, got dtype {y.dtype}")
        else:
            y = y.astype(np.int64)
    if batch and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"class ids must lie in [0, {num_classes}), got min {int(y.min())}, max {int(y.max())}"
        )
    return y.astype(np.intp, copy=False)


def _reg_targets(targets: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    y = np.asarray(targets, dtype=np.float64)
    if y.shape != shape:
        raise ValueError(f"regression targets must have shape {shape}, got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("regression targets must be finite (no NaN or Inf)")
    return y


def _check_task(task: str) -> None:
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")


def _shifted_exp(f: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (m, e, s): row max m (B, 1), e = exp(f - m) (B, c), s = Σ_j e (B,).

    Subtracting the row max makes every exponent <= 0, so nothing overflows and
    s >= 1 (the max entry contributes exp(0) = 1): log(s) and 1/s are always safe.
    """
    m = f.max(axis=1, keepdims=True)
    e = np.exp(f - m)
    return m, e, e.sum(axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (B, c) logits; finite for |logits| up to 1e4 and beyond.

    Stable form: exp(f - max f) / Σ exp(f - max f). Finite for any finite input
    (also 1e30 with mixed signs); rows sum to 1.
    """
    f = _as_outputs(logits, "logits")
    _, e, s = _shifted_exp(f)
    return e / s[:, None]


def residual(outputs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """(B, c) residual: classification onehot(y) - softmax(f) (targets (B,) int);
    regression y - f (targets (B, c))."""
    _check_task(task)
    f = _as_outputs(outputs)
    if task == "regression":
        return _reg_targets(targets, f.shape) - f
    y = _class_ids(targets, f.shape[0], f.shape[1])
    r = -softmax(f)
    r[np.arange(f.shape[0]), y] += 1.0
    return r


def task_loss(outputs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """(B,) per-sample task loss: cross-entropy (classification) or 0.5·‖y - f‖² (regression).

    Cross-entropy is logsumexp(f) - f_y computed as m + log Σ exp(f - m) - f_y
    (m = row max): finite for any finite logits.
    """
    _check_task(task)
    f = _as_outputs(outputs).astype(np.float64, copy=False)
    if task == "regression":
        d = _reg_targets(targets, f.shape) - f
        return 0.5 * np.einsum("ij,ij->i", d, d)
    y = _class_ids(targets, f.shape[0], f.shape[1])
    m, _, s = _shifted_exp(f)
    return m[:, 0] + np.log(s) - f[np.arange(f.shape[0]), y]


def l2_loss(outputs: np.ndarray, targets: np.ndarray, task: str) -> np.ndarray:
    """(B,) per-sample L2 loss of the warmup/refresh epochs: ½‖onehot(y) - softmax(f)‖²
    (classification), ½‖y - f‖² (regression)."""
    r = residual(outputs, targets, task)
    return 0.5 * np.einsum("ij,ij->i", r, r)


def _rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ_j x_ij·y_ij per row, accumulated in float64."""
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        return (x * y).sum(axis=1)  # short rows, column-major: element-wise + column adds
    return np.einsum("ij,ij->i", x, y, dtype=np.float64)  # long rows: no temporary


@dataclass(frozen=True)
class ScoreUpdate:
    """Result of scoring one report against the stored state of its samples.

    The store applies it as follows: `stale` rows are left untouched entirely;
    every other row gets out = f, lr-sum = lr_sum, visits += 1, loss = `loss`;
    `scored` rows also get score = `scores`. Rows neither stale nor scored (first
    visit, or a non-finite a_t(i)) keep their score: their stored output and
    lr-sum are simply (re)initialized.
    """

    scored: np.ndarray  # (B,) bool: seen before and lr_sum advanced -> score updated
    stale: np.ndarray  # (B,) bool: lr_sum <= stored lr-sum -> sample left untouched entirely
    scores: np.ndarray  # (B,) float32: new EMA score (= previous where not scored; NaN = unset)
    raw: np.ndarray  # (B,) float64: this visit's a_t(i) (NaN where not scored)
    loss: np.ndarray  # (B,) float32: task loss of f


def score_report(
    outputs: np.ndarray,
    targets: np.ndarray,
    lr_sum: float,
    prev_outputs: np.ndarray,
    prev_lr_sums: np.ndarray,
    prev_scores: np.ndarray,
    *,
    task: str,
    kind: ScoreKind = "docl",
    gamma: float = 0.9,
    rho_power: float = 1.0,
    inclusion: np.ndarray | None = None,
) -> ScoreUpdate:
    """Score a report (DESIGN §1).

    outputs (B, c), targets (B,) int or (B, c); prev_outputs (B, c) the stored g_i;
    prev_lr_sums (B,) float64 with NaN = never seen; prev_scores (B,) float32 with
    NaN = unset; inclusion (B,) the Exp3 inclusion probabilities (None = no Exp3).

    Per row:
      * prev lr-sum NaN (never seen): not scored, not stale (the store initializes it);
      * lr_sum <= prev lr-sum: stale, nothing changes;
      * otherwise rho = lr_sum - prev, dyn = (f - g) / rho**rho_power,
        a = <resid, dyn> ("docl", Eq. 7 / 12) or ||dyn||_2 ("docl-nr"),
        a /= max(inclusion, MIN_INCLUSION) with Exp3, and the EMA of Eq. 8:
        score = a if prev score is NaN else gamma·prev + (1 - gamma)·a.

    Non-finite results never reach the table: a row whose a or new score is not
    finite (a stored float16 output that overflowed to inf, a score beyond the
    float32 range, …) is reported as not scored and not stale, so the store
    re-anchors its output and lr-sum and keeps the old score. Losses are clipped
    to the float32 range. Non-finite `outputs` (or regression targets) are bad
    input: ValueError.

    Classification never builds a one-hot matrix:
    <onehot(y) - p, dyn> = dyn[i, y_i] - Σ_j p_ij·dyn_ij.
    """
    _check_task(task)
    if kind not in ("docl", "docl-nr"):
        raise ValueError(f"kind must be 'docl' or 'docl-nr', got {kind!r}")
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma must lie in [0, 1), got {gamma}")
    if not rho_power > 0:
        raise ValueError(f"rho_power must be > 0, got {rho_power}")
    lr_sum = float(lr_sum)
    if not np.isfinite(lr_sum):
        raise ValueError("lr_sum must be finite")

    # Small c: float64, column-major copies. Row-wise reductions (max, sum, dot
    # over a sample's c outputs) on short rows are ~10x faster over a
    # Fortran-ordered matrix, where they become element-wise ops over
    # contiguous columns; the copies are cheap at this size.
    # Large c: float32, row-major, no copies of float32 inputs. The inputs carry
    # float32 precision at best (the stored g_i is float32 or float16) and f - g
    # of two float32 values is exact when they are within 2x of each other;
    # float64 temporaries there cost ~4x in memory traffic for nothing.
    f = _as_outputs(outputs)
    b, c = f.shape
    if not np.isfinite(f).all():
        raise ValueError("outputs must be finite (no NaN or Inf)")
    small = c < _COLUMN_MAJOR_BELOW
    order: Literal["C", "F"] = "F" if small else "C"
    cdt = np.float64 if small else np.float32
    f = np.asarray(f, dtype=cdt, order=order)
    g = np.asarray(_as_outputs(prev_outputs, "prev_outputs"), dtype=cdt, order=order)
    if g.shape != (b, c):
        raise ValueError(f"prev_outputs must have shape {(b, c)}, got {g.shape}")
    prev_lrs = np.asarray(prev_lr_sums, dtype=np.float64)
    prev_sc = np.asarray(prev_scores, dtype=np.float32)
    if prev_lrs.shape != (b,) or prev_sc.shape != (b,):
        raise ValueError(
            f"prev_lr_sums and prev_scores must have shape ({b},), "
            f"got {prev_lrs.shape} and {prev_sc.shape}"
        )

    seen = ~np.isnan(prev_lrs)
    stale = seen & (prev_lrs >= lr_sum)
    active = seen & ~stale

    with np.errstate(all="ignore"):
        # rho is only meaningful on active rows; elsewhere it is <= 0 or NaN and
        # the row's result is discarded by the masks below.
        rho = lr_sum - prev_lrs
        scale = 1.0 / rho if rho_power == 1.0 else rho ** (-rho_power)
        dyn = f - g
        dyn *= scale.astype(cdt)[:, None]
        rows = np.arange(b)
        if task == "classification":
            y = _class_ids(targets, b, c)
            m = f.max(axis=1, keepdims=True)
            e = f - m
            np.exp(e, out=e)  # <= 1, the row max gives exactly 1: sum >= 1
            s = e.sum(axis=1, dtype=np.float64)
            loss = m[:, 0] + np.log(s) - f[rows, y]
            if kind == "docl":
                a = dyn[rows, y] - _rowdot(e, dyn) / s
        else:
            r = np.array(_reg_targets(targets, (b, c)), dtype=cdt, order=order)  # a copy
            np.subtract(r, f, out=r)
            loss = 0.5 * _rowdot(r, r)
            if kind == "docl":
                a = _rowdot(r, dyn)
        if kind == "docl-nr":
            a = np.sqrt(_rowdot(dyn, dyn))
        a = a.astype(np.float64, copy=False)
        loss = loss.astype(np.float64, copy=False)

        if inclusion is not None:
            pi = np.asarray(inclusion, dtype=np.float64)
            if pi.shape != (b,):
                raise ValueError(f"inclusion must have shape ({b},), got {pi.shape}")
            a = a / np.maximum(pi, MIN_INCLUSION)

        ema = np.where(np.isnan(prev_sc), a, gamma * prev_sc.astype(np.float64) + (1.0 - gamma) * a)
        new32 = ema.astype(np.float32)
    scored = active & np.isfinite(a) & np.isfinite(new32)
    scores = np.where(scored, new32, prev_sc)
    raw = np.where(scored, a, np.nan)
    # beyond float32 (or NaN from outputs beyond the float32 range at c >= 64):
    # the largest float32, "very hard", never NaN
    loss32 = np.nan_to_num(np.minimum(loss, _F32_MAX), nan=_F32_MAX).astype(np.float32)
    return ScoreUpdate(scored=scored, stale=stale, scores=scores, raw=raw, loss=loss32)
