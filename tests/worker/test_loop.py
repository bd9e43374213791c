"""The per-worker loop, in-process, against a real score server (``worker_server``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from docl.client import ScoreClient
from docl.wire.models import RunCreate, RunParams
from docl.worker.loop import (
    InjectedFault,
    LocalEpochs,
    LoopConfig,
    l2_loss,
    report_id,
    task_loss,
    train_loop,
)
from docl.worker.session import LocalSession
from docl.worker.tasks import get_task
from docl.worker.train import TrainError, TrainSpec, build_run, train
from tests.worker.helpers import expected_visits_and_lr_sums

# ---------------------------------------------------------------------------
# Losses against an independent numpy computation
# ---------------------------------------------------------------------------


def _np_softmax(f: np.ndarray) -> np.ndarray:
    z = np.exp(f - f.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


@settings(max_examples=50, deadline=None)
@given(
    b=st.integers(1, 16),
    c=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
    scale=st.floats(0.01, 30.0),
)
def test_l2_loss_matches_numpy(b: int, c: int, seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    f = rng.normal(0, scale, (b, c))
    y = rng.integers(0, c, b)
    onehot = np.eye(c)[y]
    want = 0.5 * ((onehot - _np_softmax(f)) ** 2).sum(1).mean()
    got = l2_loss(torch.tensor(f), torch.tensor(y), "classification").item()
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    t = rng.normal(0, scale, (b, c))
    want_r = 0.5 * ((t - f) ** 2).sum(1).mean()
    assert l2_loss(torch.tensor(f), torch.tensor(t), "regression").item() == pytest.approx(want_r)


@settings(max_examples=30, deadline=None)
@given(b=st.integers(1, 16), c=st.integers(2, 12), seed=st.integers(0, 2**31 - 1))
def test_task_loss_is_cross_entropy_or_mse(b: int, c: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = rng.normal(0, 3, (b, c))
    y = rng.integers(0, c, b)
    want = -np.log(_np_softmax(f)[np.arange(b), y]).mean()
    assert task_loss(torch.tensor(f), torch.tensor(y), "classification").item() == pytest.approx(
        want
    )
    t = rng.normal(0, 1, (b, c))
    assert task_loss(torch.tensor(f), torch.tensor(t), "regression").item() == pytest.approx(
        0.5 * ((f - t) ** 2).sum(axis=1).mean()
    )


def test_report_ids_are_deterministic_and_distinct() -> None:
    ids = {report_id("run", e, r, s) for e in range(3) for r in range(2) for s in range(4)}
    assert len(ids) == 24
    assert report_id("run", 1, 0, 2) == report_id("run", 1, 0, 2)
    assert len(report_id("x" * 200, 1, 0, 2)) <= 128


# ---------------------------------------------------------------------------
# Following the plan and reporting, against the real server
# ---------------------------------------------------------------------------

SMALL = {"warmup_epochs": 2, "episode_epochs": 2, "batch_size": 64}


def test_in_process_training_follows_the_plan_and_reports_every_step(
    worker_server: str, run_id: str, tmp_path: Path
) -> None:
    r = train(
        TrainSpec(
            task="digits",
            method="docl",
            epochs=6,
            server=worker_server,
            run_id=run_id,
            params=SMALL,
            out=str(tmp_path),
            progress=False,
        )
    )
    n = r["num_samples"]
    with ScoreClient(worker_server) as client:
        visits, lr_sums, total_steps = expected_visits_and_lr_sums(
            client, run_id, world=1, num_samples=n
        )
        got = client.scores(run_id)
        run = client.get_run(run_id)
    # Every step's report arrived exactly once, with the exact learning-rate sum.
    np.testing.assert_array_equal(got.visits, visits)
    np.testing.assert_array_equal(got.lr_sums, lr_sums)
    assert r["batches"] == total_steps
    assert r["reporter"]["sent"] == total_steps
    assert r["reporter"]["dropped"] == 0 and r["reporter"]["rejected"] == 0
    assert run.counters.duplicates == 0
    assert run.counters.samples_reported == int(visits.sum())
    # The plan has selection epochs: not every sample is drawn every epoch.
    assert visits.min() < 6 == visits.max()
    # Outputs: one metrics line per epoch, and result.json.
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(6))
    assert [m["phase"] for m in lines][:2] == ["warmup", "warmup"]
    assert lines[-1]["batches"] == total_steps
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["method"] == "docl" and result["task"] == "digits" and result["seed"] == 0
    assert 0.0 <= result["test_accuracy"] <= 1.0
    assert result["batches"] == total_steps


def test_budget_batches_cuts_the_training(worker_server: str, run_id: str, tmp_path: Path) -> None:
    r = train(
        TrainSpec(
            task="digits",
            method="random",
            budget_batches=50,
            server=worker_server,
            run_id=run_id,
            params={"batch_size": 64},
            out=str(tmp_path),
            progress=False,
            checkpoint=False,
        )
    )
    assert r["batches"] == 50
    with ScoreClient(worker_server) as client:
        assert int(client.scores(run_id).visits.sum()) == sum(
            p.size for p in client.plan(run_id).epochs
        )


def test_regression_task_reports_float_targets(
    worker_server: str, run_id: str, tmp_path: Path
) -> None:
    r = train(
        TrainSpec(
            task="distill",
            method="docl",
            epochs=4,
            server=worker_server,
            run_id=run_id,
            params=SMALL,
            task_params={"num_samples": 1000},
            out=str(tmp_path),
            progress=False,
            checkpoint=False,
        )
    )
    assert r["reporter"]["rejected"] == 0
    assert "test_mse" in r and r["test_mse"] > 0
    with ScoreClient(worker_server) as client:
        sc = client.scores(run_id)
    assert np.isfinite(sc.scores).sum() > 0  # regression scores were computed


def test_a_crash_mid_epoch_resumes_from_the_checkpoint_and_replays_are_deduplicated(
    worker_server: str, run_id: str, tmp_path: Path
) -> None:
    data = get_task("digits")
    spec = TrainSpec(task="digits", method="docl", epochs=6, run_id=run_id, params=SMALL)
    with ScoreClient(worker_server) as client:
        client.create_run(build_run(spec, data))
    fault = {"epoch": 3, "step": 2, "rank": 0, "marker": str(tmp_path / "fired"), "action": "raise"}
    cfg = LoopConfig(run_id=run_id, server=worker_server, fault=fault)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(InjectedFault):
        train_loop(cfg, data, LocalSession(checkpoint_dir=ckpt, resume=True))
    final = train_loop(cfg, data, LocalSession(checkpoint_dir=ckpt, resume=True))
    history = final["history"]
    assert [m["epoch"] for m in history] == list(range(6))
    assert [m["attempt"] for m in history] == [1, 1, 1, 2, 2, 2]  # resumed at epoch 3
    with ScoreClient(worker_server) as client:
        visits, lr_sums, total = expected_visits_and_lr_sums(
            client, run_id, world=1, num_samples=data.num_samples
        )
        got = client.scores(run_id)
        run = client.get_run(run_id)
    np.testing.assert_array_equal(got.visits, visits)  # each sample once per draw
    np.testing.assert_array_equal(got.lr_sums, lr_sums)
    assert final["batches"] == total
    # Steps 0 and 1 of epoch 3 were delivered before the crash and sent again
    # after the resume, under the same report ids: exactly 2 duplicates.
    assert run.counters.duplicates == 2
    assert final["reporter"]["duplicates"] == 2


def test_local_baseline_needs_no_server(tmp_path: Path) -> None:
    r = train(
        TrainSpec(
            task="digits",
            method="random",
            epochs=3,
            local=True,
            out=str(tmp_path),
            progress=False,
        )
    )
    assert r["local"] is True and r["reporter"] == {}
    assert r["batches"] == 3 * -(-r["num_samples"] // 64)
    assert (tmp_path / "checkpoint" / "state.pt").exists()


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (TrainSpec(task="digits", method="docl", local=True), "only draw uniformly"),
        (TrainSpec(task="digits", method="nope"), "method"),
        (TrainSpec(task="digits", params={"tau": -1}), "tau"),
        (TrainSpec(task="digits", params={"taux": 1}), "unknown --param taux"),
        (TrainSpec(task="digits", workers=-1), "workers"),
    ],
)
def test_bad_specs_fail_before_anything_starts(spec: TrainSpec, match: str, tmp_path: Path) -> None:
    spec.out = str(tmp_path / "out")
    with pytest.raises(TrainError, match=match):
        train(spec)


def test_the_task_defaults_fill_run_params_the_user_left_unset() -> None:
    """Every task default that is a RunParams field reaches the run (distill's
    lr_min too), and a value the user gives wins over it."""
    data = get_task("distill", num_samples=200)
    run = build_run(TrainSpec(task="distill"), data)
    for key in ("batch_size", "lr_peak", "lr_min"):
        assert getattr(run.params, key) == data.defaults[key], key
    mine = build_run(TrainSpec(task="distill", params={"lr_min": 0.003}), data)
    assert mine.params.lr_min == 0.003 and mine.params.lr_peak == data.defaults["lr_peak"]


@pytest.mark.parametrize("method", ["random", "random-subset"])
def test_a_local_run_draws_exactly_the_servers_epochs(
    score_server: str, run_id: str, method: str
) -> None:
    """One seed derivation: LocalEpochs (no server) gives every epoch the seed and, on
    every rank, the indices the score server draws for the same run."""
    params = RunParams(seed=11, batch_size=16, warmup_epochs=1, episode_epochs=2)
    run = RunCreate(
        run_id=f"{run_id[:40]}-{method}", num_samples=97, num_outputs=3, method=method,  # type: ignore[arg-type]
        epochs=7, params=params,
    )  # fmt: skip
    local = LocalEpochs(run)
    sizes = set()
    with ScoreClient(score_server) as client:
        client.create_run(run)
        for e in range(local.num_epochs):
            ep = client.draw_epoch(run.run_id, e)
            assert ep.seed == local.epoch(e).seed
            sizes.add(ep.size)
            for world in (1, 3):
                for rank in range(world):
                    served = np.asarray(client.indices(run.run_id, e, rank=rank, world=world))
                    np.testing.assert_array_equal(served, local.indices(e, rank, world))
    assert len(sizes) > 1 or method == "random"  # random-subset's selection epochs shrink
