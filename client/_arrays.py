"""Arrays for the clients and the Reporter: numpy from numpy, torch or lists
(:func:`to_numpy`, without importing torch), and the caller-side shape check of
one report (:func:`check_report_arrays`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from docl.wire import encoding as wire

__all__ = ["check_report_arrays", "to_numpy"]


def to_numpy(x: Any, *, copy: bool = False) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device), a list or a scalar.

    torch is never imported: a tensor is recognised by its ``detach`` and ``cpu``
    methods. bfloat16 tensors, which numpy cannot hold, are widened to float32.
    With ``copy=True`` the result never shares memory with ``x`` (what a
    background sender needs: the caller may overwrite its tensors right after).
    """
    if type(x) is np.ndarray or isinstance(x, np.ndarray):
        return x.copy() if copy else x
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        try:
            arr = t.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            arr = t.float().numpy()
        # .cpu() of a CPU tensor is the tensor itself: numpy() shares its memory.
        return arr.copy() if copy else arr
    return np.array(x) if copy else np.asarray(x)


def check_report_arrays(
    epoch: int,
    indices: Any,
    outputs: Any,
    targets: Any,
    lr_sum: float,
    features: Any,
    *,
    copy: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Convert and shape-check one report on the caller's side.

    Shapes are checked here, with messages that name the argument, because a
    binary body cannot even be built from wrong shapes. Values (NaN, indices out
    of range, class ids >= c) are the server's to judge: it answers 422. With
    ``copy`` every array returned is a fresh copy, made once. This runs on the
    training thread for every step (``Reporter.report``): plain dtype-kind tests,
    no ``np.issubdtype``.
    """
    if type(epoch) is not int and (
        isinstance(epoch, bool) or not isinstance(epoch, int | np.integer)
    ):
        raise wire.WireError(f"epoch must be an integer in [0, 2**32), got {epoch!r}")
    if not 0 <= epoch < 2**32:
        raise wire.WireError(f"epoch must be an integer in [0, 2**32), got {epoch!r}")
    try:
        float(lr_sum)
    except (TypeError, ValueError) as e:
        raise wire.WireError(f"lr_sum must be a number, got {lr_sum!r}") from e
    idx = to_numpy(indices, copy=copy)
    if idx.ndim != 1 or idx.shape[0] < 1:
        raise wire.WireError(f"indices must be a non-empty 1-D array, got shape {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise wire.WireError(f"indices must be integers, got dtype {idx.dtype}")
    b = idx.shape[0]
    out = to_numpy(outputs)
    if out.ndim != 2 or out.shape[0] != b:
        raise wire.WireError(f"outputs must be (B, c) = ({b}, c), got shape {out.shape}")
    if out.dtype != np.float32:
        out = out.astype(np.float32)  # a new array: the one copy
    elif copy:
        out = out.copy()
    tgt = to_numpy(targets, copy=copy)
    if tgt.ndim == 1:
        if tgt.shape[0] != b:
            raise wire.WireError(
                f"targets (class ids) must have B = {b} entries, got {tgt.shape[0]}"
            )
        if tgt.dtype.kind not in "iu":
            raise wire.WireError(
                f"1-D targets are class ids and must be integers, got dtype {tgt.dtype} "
                "(regression targets are (B, c) floats)"
            )
    elif tgt.ndim == 2:
        if tgt.shape != out.shape:
            raise wire.WireError(
                f"regression targets must have the outputs' shape {out.shape}, got {tgt.shape}"
            )
    else:
        raise wire.WireError(
            f"targets must be (B,) class ids or (B, c) floats, got shape {tgt.shape}"
        )
    feat = None
    if features is not None:
        feat = to_numpy(features, copy=copy)
        if feat.ndim != 2 or feat.shape[0] != b:
            raise wire.WireError(f"features must be (B, d) = ({b}, d), got shape {feat.shape}")
    return idx, out, tgt, feat
