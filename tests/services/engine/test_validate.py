"""The one report validator against a plain-Python reference, report by report.

The reference below walks every report and every row in Python, in the order
the checks are documented (shapes, lr_sum, epoch, then targets, outputs,
range of outputs and regression targets (±1e15), features, index range, repeated
index); ``validate_reports`` must raise its
message for the first failing report, naming the report when there are several,
whatever mix of defects a request carries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from docl.services import methods, plan
from docl.services.engine.runs import RunState
from docl.services.engine.validate import validate_report, validate_reports
from docl.services.errors import Unprocessable
from docl.services.layout import RunLayout
from docl.wire.encoding import ReportArrays
from docl.wire.models import RunCreate

N, C = 50, 3


def _state(task: str) -> RunState:
    config = RunCreate(run_id="r", num_samples=N, num_outputs=C, task=task, epochs=4)  # type: ignore[arg-type]
    layout = RunLayout("r", N, C, "float32", 1 << 20, loss_column=False, exp3=False)
    return RunState(
        run_id="r",
        uid="u",
        config=config,
        layout=layout,
        plan=plan.build_plan(config),
        created_at=0.0,
        score_kind=methods.get_method(config.method).score_kind,
    )


def _reference(st: RunState, rep: ReportArrays) -> str | None:
    """The first failing check of one report, row by row in Python (None: valid)."""
    b = len(rep.indices)
    regression = st.config.task == "regression"
    if b < 1:
        return "a report needs at least one sample"
    if rep.outputs.shape != (b, C):
        return "outputs must be"
    if regression and rep.targets.shape != (b, C):
        return "is a regression run"
    if not regression and rep.targets.shape != (b,):
        return "is a classification run"
    if not (math.isfinite(rep.lr_sum) and rep.lr_sum >= 0):
        return "lr_sum must be finite"
    if rep.epoch >= st.num_epochs:
        return f"epoch {rep.epoch} is beyond the plan"
    for i in range(b):
        if regression and not all(math.isfinite(float(x)) for x in rep.targets[i]):
            return "targets contain NaN or Inf"
        if not regression and not 0 <= int(rep.targets[i]) < C:
            return f"targets[{i}] = {int(rep.targets[i])} is not a class id"
    for i in range(b):
        if not all(math.isfinite(float(x)) for x in rep.outputs[i]):
            return f"outputs contain NaN or Inf (first in row {i})"
    for i in range(b):
        if any(abs(float(x)) > 1e15 for x in rep.outputs[i]):
            return f"outputs beyond ±1e+15 (first in row {i})"
    for i in range(b if regression else 0):
        if any(abs(float(x)) > 1e15 for x in rep.targets[i]):
            return f"targets beyond ±1e+15 (first in row {i})"
    if rep.features is not None and not all(
        math.isfinite(float(x)) for row in rep.features for x in row
    ):
        return "features contain NaN or Inf"
    for i in range(b):
        if not 0 <= int(rep.indices[i]) < N:
            return f"indices[{i}] = {int(rep.indices[i])} is out of range"
    seen: dict[int, int] = {}
    first_dup: tuple[int, int, int] | None = None
    for i in range(b):
        v = int(rep.indices[i])
        if v in seen and (first_dup is None or v < first_dup[0]):
            first_dup = (v, seen[v], i)
        seen.setdefault(v, i)
    if first_dup is not None:
        v, a, i = first_dup
        return f"index {v} appears twice in one report (positions {a} and {i})"
    return None


DEFECTS = (
    "empty", "outputs_shape", "targets_shape", "lr_nan", "lr_neg", "epoch", "target_value",
    "output_nan", "output_big", "target_big", "feature_inf", "index_low", "index_high",
    "duplicate", "collide",
)  # fmt: skip


def _report(rng: np.random.Generator, j: int, regression: bool, defect: str | None) -> ReportArrays:
    b = int(rng.integers(1, 12))
    idx = rng.choice(N, size=b, replace=False).astype(np.int64)
    out = rng.normal(size=(b, C)).astype(np.float32)
    tgt = (
        rng.normal(size=(b, C)).astype(np.float32)
        if regression
        else rng.integers(0, C, size=b).astype(np.int64)
    )
    feats = rng.normal(size=(b, 2)).astype(np.float32) if rng.random() < 0.3 else None
    lr, epoch = float(rng.random()), int(rng.integers(0, 4))
    row = int(rng.integers(0, b))
    if defect == "empty":
        idx, out, tgt = idx[:0], out[:0], tgt[:0]
    elif defect == "outputs_shape":
        out = out[:, :-1]
    elif defect == "targets_shape":
        tgt = tgt[:-1]
    elif defect == "lr_nan":
        lr = float("nan")
    elif defect == "lr_neg":
        lr = -1.0
    elif defect == "epoch":
        epoch = 4 + int(rng.integers(0, 3))
    elif defect == "target_value":
        if regression:
            tgt[row, 0] = np.inf
        else:
            tgt[row] = C if rng.random() < 0.5 else -1
    elif defect == "output_nan":
        out[row, int(rng.integers(0, C))] = np.nan
    elif defect == "output_big":  # finite float32 whose arithmetic overflows (issue 19)
        out[row, int(rng.integers(0, C))] = np.float32(3.4e38) * rng.choice([-1, 1])
    elif defect == "target_big" and regression:
        tgt[row, int(rng.integers(0, C))] = -2e15
    elif defect == "feature_inf":
        feats = np.zeros((b, 2), np.float32)
        feats[row, 1] = -np.inf
    elif defect == "index_low":
        idx[row] = -1 - int(rng.integers(0, 3))
    elif defect == "index_high":
        idx[row] = N + int(rng.integers(0, 3))
    elif defect == "duplicate" and b > 1:
        idx[row] = idx[(row + 1) % b]
    elif defect == "collide":
        # out of range by exactly one report's key span: (j, idx) and (j-1, idx + N) share
        # a key in the validator's combined sort, and must not be mistaken for a repeat
        idx[row] = -N + int(rng.integers(0, N))
    return ReportArrays(f"rep-{j}", epoch, lr, idx, out, tgt, feats)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_the_validator_raises_the_first_failing_reports_first_problem(task: str) -> None:
    st = _state(task)
    rng = np.random.default_rng(12)
    outcomes = set()
    for _ in range(1500):
        k = int(rng.integers(1, 6))
        reps = [
            _report(rng, j, task == "regression", str(rng.choice(DEFECTS)) if rng.random() < 0.25 else None)
            for j in range(k)
        ]  # fmt: skip
        want = next(
            ((j, m) for j, r in enumerate(reps) if (m := _reference(st, r)) is not None), None
        )
        if want is None:
            validate_reports(st, reps)
            outcomes.add("valid")
            continue
        with pytest.raises(Unprocessable) as e:
            validate_reports(st, reps)
        j, msg = want
        prefix = f"report {j} ({reps[j].report_id!r}): " if k > 1 else ""
        assert e.value.detail.startswith(prefix), (e.value.detail, want)
        assert msg in e.value.detail, (e.value.detail, want)
        outcomes.add(msg.split(" ")[0])
    # the draw reached every kind of outcome
    assert len(outcomes) >= 9 and "outputs" in outcomes, outcomes
    assert task != "regression" or "targets" in outcomes, outcomes


def test_one_report_and_a_request_of_one_say_the_same() -> None:
    st = _state("classification")
    rep = ReportArrays(
        "x", 0, 0.5, np.array([3, 7, 3], np.int64), np.zeros((3, C), np.float32),
        np.array([0, 1, 2], np.int64), None,
    )  # fmt: skip
    with pytest.raises(Unprocessable) as one:
        validate_report(st, rep)
    with pytest.raises(Unprocessable) as many:
        validate_reports(st, [rep])
    want = "index 3 appears twice in one report (positions 0 and 2); "
    assert one.value.detail == many.value.detail and one.value.detail.startswith(want)


def test_the_same_sample_in_two_reports_is_fine_but_a_repeated_report_id_is_not() -> None:
    st = _state("classification")

    def rep(rid: str) -> ReportArrays:
        return ReportArrays(
            rid, 0, 0.5, np.array([1, 2], np.int64), np.zeros((2, C), np.float32),
            np.array([0, 1], np.int64), None,
        )  # fmt: skip

    validate_reports(st, [rep("a"), rep("b")])
    with pytest.raises(Unprocessable, match="report_id 'a' appears twice in one request"):
        validate_reports(st, [rep("a"), rep("b"), rep("a")])


def test_a_float16_run_refuses_outputs_its_stored_copy_would_turn_into_inf() -> None:
    st = _state("classification")
    half = RunLayout("r", N, C, "float16", 1 << 20, loss_column=False, exp3=False)
    st16 = RunState(**{**st.__dict__, "layout": half})
    out = np.zeros((2, C), np.float32)
    out[1, 2] = 7e4  # float16's largest is 65504: stored, it would read back as inf
    rep = ReportArrays("x", 0, 0.5, np.array([1, 2], np.int64), out, np.array([0, 1]), None)
    validate_report(st, rep)  # a float32 run keeps it
    with pytest.raises(Unprocessable, match=r"outputs beyond ±65504 \(first in row 1\)"):
        validate_report(st16, rep)
