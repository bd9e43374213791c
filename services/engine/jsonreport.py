"""A JSON report (``application/json``) parsed into the arrays the binary decoder yields."""

from __future__ import annotations

import numpy as np
from pydantic import ValidationError

from docl.services.errors import Unprocessable, format_validation_errors
from docl.wire.encoding import ReportArrays
from docl.wire.models import Report

__all__ = ["report_arrays_from_json"]


def report_arrays_from_json(body: bytes) -> ReportArrays:
    """Parse a JSON report into the arrays the binary decoder yields (422 when malformed)."""
    try:
        rep = Report.model_validate_json(body)
    except ValidationError as e:
        errs = [{**err, "loc": ("body", *err.get("loc", ()))} for err in e.errors()]
        raise Unprocessable(format_validation_errors(errs)) from None
    b = len(rep.indices)
    rows = {len(r) for r in rep.outputs}
    if len(rep.outputs) != b or len(rows) != 1:
        raise Unprocessable(
            f"outputs must be a B × c matrix with B = {b} rows of equal length, "
            f"got {len(rep.outputs)} rows of lengths {sorted(rows)[:5]}"
        )
    try:
        return _json_arrays(rep, b)
    except OverflowError:
        raise Unprocessable(
            "an index or class id does not fit in a 64-bit integer (indices must be in [0, n))"
        ) from None


def _json_arrays(rep: Report, b: int) -> ReportArrays:
    with np.errstate(over="ignore"):
        outputs = np.asarray(rep.outputs, dtype=np.float32)
        if rep.targets and isinstance(rep.targets[0], list):
            lens = {len(r) for r in rep.targets if isinstance(r, list)}
            if len(rep.targets) != b or len(lens) != 1:
                raise Unprocessable(f"regression targets must be a B × c matrix with B = {b}")
            targets = np.asarray(rep.targets, dtype=np.float32)
        else:
            targets = np.asarray(rep.targets, dtype=np.int64)
        features = None
        if rep.features is not None:
            flens = {len(r) for r in rep.features}
            if len(rep.features) != b or len(flens) != 1 or 0 in flens:
                raise Unprocessable(f"features must be a B × d matrix with B = {b} and d >= 1")
            features = np.asarray(rep.features, dtype=np.float32)
    return ReportArrays(
        report_id=rep.report_id,
        epoch=rep.epoch,
        lr_sum=rep.lr_sum,
        indices=np.asarray(rep.indices, dtype=np.int64),
        outputs=outputs,
        targets=targets,
        features=features,
    )
