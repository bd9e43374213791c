"""A group of reports (services/engine/groups.py): how a request's reports are grouped,
a group scored in one call, and a group's attempt acknowledging its reports."""

from __future__ import annotations

import numpy as np
import pytest

from docl.services.config import Settings
from docl.services.engine import groups
from docl.services.engine.groups import GroupAttempt, report_groups, score_group
from docl.services.engine.runs import RunRegistry
from docl.services.layout import RunLayout
from docl.services.redis.store import RedisStore
from docl.wire import encoding as wire
from docl.wire.models import ReportAck, RunCreate


def _rep(rid: str, idx: list[int] | np.ndarray, c: int = 3) -> wire.ReportArrays:
    ix = np.asarray(idx, dtype=np.int64)
    out = np.zeros((ix.size, c), np.float32)
    return wire.decode_report(
        wire.encode_report(
            report_id=rid, epoch=0, lr_sum=1.0, indices=ix, outputs=out, targets=ix % c
        )
    )


def test_reports_are_grouped_in_order_without_a_sample_twice_and_within_the_caps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert report_groups([_rep("a", [1, 2])]) == [[0]]
    assert report_groups([_rep("a", [1, 2]), _rep("b", [3]), _rep("c", [4])]) == [[0, 1, 2]]
    reps = [_rep("a", [1, 2]), _rep("b", [3]), _rep("c", [2, 5]), _rep("d", [1])]
    assert report_groups(reps) == [[0, 1], [2, 3]]
    monkeypatch.setattr(groups, "MAX_GROUP_SAMPLES", 3)
    assert report_groups([_rep("a", [1, 2]), _rep("b", [3]), _rep("c", [4])]) == [[0, 1], [2]]
    monkeypatch.setattr(groups, "MAX_GROUP_REPORTS", 1)
    assert report_groups([_rep("a", [1]), _rep("b", [3])]) == [[0], [1]]


def test_an_attempt_acknowledges_duplicates_then_the_applied_reports() -> None:
    """The attempt's live reports shrink as duplicates are found; the applied ones are
    acknowledged with their own scored counts, a partitioned run's whole duplicates as such."""
    reps = [_rep("x", [9]), _rep("a", [1, 2]), _rep("b", [3]), _rep("c", [4, 5, 6])]
    acks: list[ReportAck | None] = [None] * 4
    st = RunRegistry(RedisStore.from_url("redis://127.0.0.1:1"), Settings()).build_state(
        "g", "u", RunCreate(run_id="g", num_samples=10, num_outputs=3, epochs=2),
        RunLayout(run_id="g", num_samples=10, num_outputs=3, output_dtype="float32",
                  chunk_bytes=64 << 20, loss_column=False, exp3=False), 0.0,
    )  # fmt: skip
    a = GroupAttempt("g", reps, acks, [1, 2, 3], st, None)
    assert a.idx.tolist() == [1, 2, 3, 4, 5, 6] and [f.report_id for f in a.frames] == list("abc")
    a.settle_duplicates([1])  # b was applied before
    assert a.live == [1, 3] and a.idx.tolist() == [1, 2, 4, 5, 6] and a.rows is None
    assert acks[2] == ReportAck(accepted=1, scored=0, duplicate=True)
    a.settle_applied(np.array([True, False, True, True, False]), duplicates=[])
    assert acks[1] == ReportAck(accepted=2, scored=1, duplicate=False)
    assert acks[3] == ReportAck(accepted=3, scored=2, duplicate=False)
    assert acks[0] is None  # not in the group
    one = GroupAttempt("g", reps, acks, [0], st, None)
    one.settle_applied(np.array([True]), duplicates=[0])
    assert acks[0] == ReportAck(accepted=1, scored=0, duplicate=True)


@pytest.mark.parametrize(
    ("task", "method", "exp3"),
    [
        ("classification", "docl", False),
        ("regression", "docl", True),
        ("classification", "docl-nr", False),
    ],
)
def test_a_group_is_scored_in_one_call_exactly_as_report_by_report(
    task: str, method: str, exp3: bool
) -> None:
    """The engine scores a group's reports in one score_report call, shifting stored
    lr-sums by each report's lr_sum: bit for bit what scoring them one by one gives,
    stale, unseen and scored samples alike."""
    n, c = 400, 5
    runs = RunRegistry(RedisStore.from_url("redis://127.0.0.1:1"), Settings())
    cfg = RunCreate(run_id="g", num_samples=n, num_outputs=c, task=task, method=method,
                    epochs=2, params={"exp3": exp3, "rho_power": 0.7})  # fmt: skip
    lay = RunLayout(run_id="g", num_samples=n, num_outputs=c, output_dtype="float32",
                    chunk_bytes=64 << 20, loss_column=False, exp3=exp3)  # fmt: skip
    st = runs.build_state("g", "u", cfg, lay, 0.0)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        idx = rng.permutation(n)[:300]
        rec = np.zeros(300, lay.rec_dtype)
        rec["visits"] = rng.integers(0, 3, 300)  # 0 = never seen
        rec["lr_sum"] = rng.uniform(0, 4, 300)
        rec["score"] = np.where(rng.random(300) < 0.3, np.nan, rng.normal(size=300))
        rec["g"] = rng.normal(size=(300, c))
        incl = rng.uniform(0.05, 1, 300).astype(np.float32) if exp3 else None
        frames, pos = [], 0
        for b in (1, 37, 100, 62, 100):
            lr = float(rng.uniform(0, 4))  # some samples stale (stored lr-sum >= lr)
            sl = idx[pos : pos + b]
            tgt = rng.normal(size=(b, c)).astype(np.float32) if task == "regression" else sl % c
            frames.append(wire.decode_report(wire.encode_report(
                report_id=f"f{pos}", epoch=0, lr_sum=lr, indices=sl,
                outputs=rng.normal(size=(b, c)).astype(np.float32) * 3, targets=tgt,
            )))  # fmt: skip
            pos += b
        upd, write, new = score_group(st, frames, rec, incl)
        pos = 0
        parts = []
        for f in frames:
            b = f.indices.shape[0]
            one = score_group(
                st, [f], rec[pos : pos + b], None if incl is None else incl[pos : pos + b]
            )
            parts.append(one)
            pos += b
        assert upd.stale.any() and upd.scored.any() and (~upd.stale & ~upd.scored).any()
        np.testing.assert_array_equal(upd.scored, np.concatenate([u.scored for u, _, _ in parts]))
        np.testing.assert_array_equal(upd.stale, np.concatenate([u.stale for u, _, _ in parts]))
        np.testing.assert_array_equal(upd.scores, np.concatenate([u.scores for u, _, _ in parts]))
        np.testing.assert_array_equal(upd.loss, np.concatenate([u.loss for u, _, _ in parts]))
        np.testing.assert_array_equal(write, np.concatenate([w for _, w, _ in parts]))
        assert new.tobytes() == b"".join(x.tobytes() for _, _, x in parts)
