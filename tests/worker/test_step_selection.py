"""Step-level selection in the worker loop (``loss-topk``, ``pool-random``): the trained
batch, what the server holds after a run, the sample-pass counts, in-process, through the
real CLI and through Ray Train."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from docl.client import ScoreClient, Shard
from docl.wire.models import Epoch
from docl.worker.loop import InjectedFault, LoopConfig, train_loop
from docl.worker.session import LocalSession
from docl.worker.tasks import TaskData, get_task
from docl.worker.train import TrainError, TrainSpec, build_run, train
from tests.worker.helpers import expected_visits_and_lr_sums

# ---------------------------------------------------------------------------
# The loop trains on the rule's batch of the pool
# ---------------------------------------------------------------------------


class _OneSelectEpoch:
    """One selection epoch of ``steps`` steps over a fixed permutation; only step 0 has
    a learning rate, so the parameters after the epoch are those after step 0."""

    def __init__(self, n: int, steps: int, lr: float, method: str, ratio: int) -> None:
        self.n, self.steps, self.lr = n, steps, lr
        self.num_epochs, self.total_steps = 1, steps
        self.method, self.method_params = method, {"pool_ratio": ratio}
        self.shard = np.random.default_rng(1).permutation(n).astype(np.int64)

    def epoch(self, e: int) -> Epoch:
        lrs = [self.lr] + [0.0] * (self.steps - 1)
        return Epoch(epoch=0, episode=1, phase="select", loss="task", size=self.n,
                     steps=self.steps, lr_start=self.lr, lr_end=0.0, lr_sum_start=0.0,
                     batch_size=self.n // self.steps, lr=lrs, seed=0)  # fmt: skip

    def indices(self, e: int, rank: int, world: int) -> Shard:
        return Shard(self.shard, None)


class _KeepState(LocalSession):
    state: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None

    def save(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.metrics, self.state = metrics, state


def _sgd_step(data: TaskData, rows: np.ndarray, lr: float) -> dict[str, torch.Tensor]:
    """θ − lr·∇ mean CE over ``rows`` at the init θ of ``make_model(0)``."""
    model = data.make_model(0)
    idx = torch.from_numpy(rows)
    F = torch.nn.functional
    F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
    with torch.no_grad():
        return {k: p - lr * p.grad for k, p in model.named_parameters()}  # type: ignore[operator]


def _pool_ce(data: TaskData, pool: np.ndarray) -> np.ndarray:
    """The pool's cross-entropies at the init θ, computed with numpy from the logits."""
    with torch.no_grad():
        logits = data.make_model(0)(data.x_train[torch.from_numpy(pool)]).double().numpy()
    y = data.y_train[torch.from_numpy(pool)].numpy()
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -logp[np.arange(pool.size), y]


def test_a_selection_step_trains_on_the_highest_fresh_losses_of_its_pool() -> None:
    """n = 80 in 4 steps of 20 at pool ratio 2: step 0's pool is parts 0 and 2 (40
    candidates). One SGD step (no momentum, no weight decay) of the loop equals
    θ − lr·∇ mean CE over the 20 highest losses of those 40 at θ, computed here with
    numpy; the plain step (part 0) and a step on the pool's 20 lowest differ."""
    data = get_task("tests.worker.user_task:make_task", n=107)  # 80 training samples
    n, steps, lr = data.num_samples, 4, 0.5
    assert n == 80
    source = _OneSelectEpoch(n, steps, lr, "loss-topk", 2)
    parts = np.array_split(source.shard, steps)
    pool = np.concatenate([parts[0], parts[2]])

    ce = _pool_ce(data, pool)
    top = pool[np.argsort(-ce, kind="stable")[:20]]
    low = pool[np.argsort(ce, kind="stable")[:20]]

    session = _KeepState(checkpoint_dir=None)
    cfg = LoopConfig(run_id="topk", momentum=0.0, weight_decay=0.0, eval_every=0)
    train_loop(cfg, data, session, source=source)
    assert session.state is not None
    got = session.state["model"]
    want = _sgd_step(data, top, lr)
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    for other in (_sgd_step(data, parts[0], lr), _sgd_step(data, low, lr)):
        assert any(not torch.allclose(got[k], v, atol=1e-6) for k, v in other.items())
    # 4 steps of 20: backward 80; forward 80 + 4 pools of 40
    assert session.metrics is not None
    m = session.metrics
    assert (m["backward_samples"], m["forward_samples"], m["compute_samples"]) == (80, 240, 320)


# ---------------------------------------------------------------------------
# Against the real server: every candidate reported, the exact lr-sums, the counts
# ---------------------------------------------------------------------------

PARAMS = {"warmup_epochs": 1, "episode_epochs": 2, "batch_size": 64, "pool_ratio": 3}
EPOCHS = 5  # warmup, select, select, refresh, select


def _check(server: str, run_id: str, r: dict[str, Any], out: Path, world: int) -> np.ndarray:
    passes: dict[str, int] = {}
    with ScoreClient(server) as client:
        visits, lr_sums, total = expected_visits_and_lr_sums(
            client, run_id, world=world, num_samples=r["num_samples"], pool_ratio=3, passes=passes
        )
        got = client.scores(run_id)
        run = client.get_run(run_id)
    # Each selection step reported its whole pool with the lr-sum before the step.
    np.testing.assert_array_equal(got.visits, visits)
    np.testing.assert_array_equal(got.lr_sums, lr_sums)
    assert run.counters.samples_reported == int(visits.sum()) and run.counters.duplicates == 0
    # 3 selection epochs of 3 pools each + 2 plain epochs: every sample 11 times
    np.testing.assert_array_equal(visits, np.full(r["num_samples"], 3 * 3 + 2))
    # The budget counts backward batches (optimizer steps), as random SGD's would.
    assert r["batches"] == total and r["reporter"]["sent"] == world * total
    assert passes["backward"] == EPOCHS * r["num_samples"]
    assert passes["forward"] == passes["backward"] + 3 * 3 * r["num_samples"]
    assert r["backward_samples"] == passes["backward"]
    assert r["forward_samples"] == passes["forward"]
    assert r["compute_samples"] == passes["forward"] + passes["backward"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["warmup", "select", "select", "refresh", "select"]
    assert lines[-1]["forward_samples"] == r["forward_samples"]
    assert [m["backward_samples"] for m in lines] == [
        r["num_samples"] * (e + 1) for e in range(EPOCHS)
    ]
    return visits


@pytest.mark.parametrize("method", ["loss-topk", "pool-random"])
def test_in_process_step_selection_reports_every_candidate(
    method: str, worker_server: str, run_id: str, tmp_path: Path
) -> None:
    r = train(
        TrainSpec(task="digits", method=method, epochs=EPOCHS, server=worker_server,
                  run_id=run_id, params=PARAMS, out=str(tmp_path), progress=False)
    )  # fmt: skip
    _check(worker_server, run_id, r, tmp_path, world=1)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["compute_samples"] == r["compute_samples"] > 0


def test_a_crash_in_a_selection_epoch_replays_the_same_pools_and_counts_once(
    worker_server: str, run_id: str, tmp_path: Path
) -> None:
    """Killed (an exception) before step 2 of selection epoch 2 and resumed from the
    checkpoint of epoch 1: the replayed steps report the same pools under the same ids
    (2 duplicates), the server holds exactly what one clean run implies, and the
    sample-passes are counted once (the lost partial epoch is not counted)."""
    data = get_task("digits")
    spec = TrainSpec(task="digits", method="loss-topk", epochs=EPOCHS, run_id=run_id,
                     params=PARAMS)  # fmt: skip
    with ScoreClient(worker_server) as client:
        client.create_run(build_run(spec, data))
    fault = {"epoch": 2, "step": 2, "rank": 0, "marker": str(tmp_path / "fired"), "action": "raise"}
    cfg = LoopConfig(run_id=run_id, server=worker_server, fault=fault)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(InjectedFault):
        train_loop(cfg, data, LocalSession(checkpoint_dir=ckpt, resume=True))
    final = train_loop(cfg, data, LocalSession(checkpoint_dir=ckpt, resume=True))
    assert [m["attempt"] for m in final["history"]] == [1, 1, 2, 2, 2]
    passes: dict[str, int] = {}
    with ScoreClient(worker_server) as client:
        visits, lr_sums, total = expected_visits_and_lr_sums(
            client, run_id, world=1, num_samples=data.num_samples, pool_ratio=3, passes=passes
        )
        got = client.scores(run_id)
        run = client.get_run(run_id)
    np.testing.assert_array_equal(got.visits, visits)
    np.testing.assert_array_equal(got.lr_sums, lr_sums)
    assert run.counters.duplicates == 2 and final["reporter"]["duplicates"] == 2
    assert final["batches"] == total
    assert final["forward_samples"] == passes["forward"]
    assert final["backward_samples"] == passes["backward"]


def test_docl_train_loss_topk_end_to_end(tmp_path: Path) -> None:
    """The real command, its own server: result.json counts the pools' forward passes."""
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()",
         "train", "--task", "digits", "--method", "loss-topk", "--workers", "0",
         "--epochs", "3", "-p", "warmup_epochs=1", "-p", "pool_ratio=2", "-p", "batch_size=64",
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    n = result["num_samples"]
    assert result["method"] == "loss-topk" and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["batches"] == 3 * -(-n // 64)  # random SGD's steps: 3 full epochs
    assert result["backward_samples"] == 3 * n
    assert result["forward_samples"] == 3 * n + 2 * 2 * n  # 2 selection epochs, pools of 2
    assert result["compute_samples"] == 3 * n + 3 * n + 4 * n


@pytest.mark.parametrize(
    ("value", "message"),
    [("1", "greater than or equal to 2"), ("17", "less than or equal to 16"),
     ("2.5", "valid integer")],
)  # fmt: skip
def test_bad_pool_ratios_are_refused_before_anything_starts(
    value: str, message: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from docl.client.cli import _register, app

    _register()
    r = CliRunner().invoke(
        app,
        ["train", "--workers", "0", "--task", "digits", "--method", "loss-topk",
         "-p", f"pool_ratio={value}", "--out", str(tmp_path)],
    )  # fmt: skip
    assert r.exit_code == 2, r.output
    assert "method_params for method 'loss-topk'" in r.output and message in r.output
    assert not (tmp_path / "result.json").exists()
    with pytest.raises(TrainError, match="pool_ratio"):
        train(TrainSpec(task="digits", method="pool-random", params={"pool_ratio": 0}))
    with pytest.raises(TrainError, match="unknown --param pool_ratio"):
        train(TrainSpec(task="digits", method="random", params={"pool_ratio": 4}))


# ---------------------------------------------------------------------------
# rho-loss: the reducible loss, the IL model's training counted in the compute
# ---------------------------------------------------------------------------


def test_a_rho_loss_step_trains_on_the_highest_reducible_losses_of_its_pool() -> None:
    """As above, with rho-loss: the IL model (two halves, 2 epochs) is trained by the
    loop; its step equals an SGD step on the 20 highest (fresh CE − IL) of the pool,
    computed here with numpy, and differs from loss-topk's step. The IL training's
    sample-passes are in the counts."""
    from docl.wire.models import RunParams
    from docl.worker.irreducible import irreducible_losses

    data = get_task("tests.worker.user_task:make_task", n=107)
    n, steps, lr = data.num_samples, 4, 0.5
    source = _OneSelectEpoch(n, steps, lr, "rho-loss", 2)
    source.method_params = {"pool_ratio": 2, "il_epochs": 2}
    source.run_params = RunParams(batch_size=16, lr_peak=0.3)  # type: ignore[attr-defined]
    parts = np.array_split(source.shard, steps)
    pool = np.concatenate([parts[0], parts[2]])
    il = irreducible_losses(data, il="halves", seed=0, epochs=2, batch_size=16, lr=0.3,
                            momentum=0.0, weight_decay=0.0).values["task"]  # fmt: skip

    ce = _pool_ce(data, pool)
    rho = pool[np.argsort(-(ce - il[pool]), kind="stable")[:20]]
    topk = pool[np.argsort(-ce, kind="stable")[:20]]
    assert set(rho) != set(topk)

    session = _KeepState(checkpoint_dir=None)
    cfg = LoopConfig(run_id="rho", momentum=0.0, weight_decay=0.0, eval_every=0)
    train_loop(cfg, data, session, source=source)
    assert session.state is not None and session.metrics is not None
    got = session.state["model"]
    for k, v in _sgd_step(data, rho, lr).items():
        torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6)
    assert any(
        not torch.allclose(got[k], v, atol=1e-6) for k, v in _sgd_step(data, topk, lr).items()
    )
    np.testing.assert_array_equal(session.state["signals"]["irreducible_loss"]["task"], il)
    # loop: backward 80, forward 80 + 4 pools of 40; IL: 2 epochs × 80 trained, 80 scored
    m = session.metrics
    assert (m["backward_samples"], m["forward_samples"]) == (80 + 160, 240 + 160 + 80)
    assert m["compute_samples"] == 720 and m["signal_compute_samples"] == 400


def _rho_counts(r: dict[str, Any], out: Path, *, epochs: int, selects: int, ratio: int,
                il_epochs: int) -> None:  # fmt: skip
    """The counts of a rho-loss run with il=halves: the loop's passes plus the IL
    models' (il_epochs × n trained, n scored), paid once whatever the ranks."""
    n = r["num_samples"]
    il_f, il_b = il_epochs * n + n, il_epochs * n
    assert r["backward_samples"] == epochs * n + il_b
    assert r["forward_samples"] == epochs * n + selects * ratio * n + il_f
    assert r["compute_samples"] == r["forward_samples"] + r["backward_samples"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == epochs and all(m["signal_compute_samples"] == il_f + il_b for m in lines)
    assert lines[0]["backward_samples"] == n + il_b  # counted from the first epoch on


def test_docl_train_rho_loss_end_to_end(tmp_path: Path) -> None:
    """The real command, its own server, il=halves (the default)."""
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()",
         "train", "--task", "digits", "--method", "rho-loss", "--workers", "0",
         "--epochs", "3", "-p", "warmup_epochs=1", "-p", "pool_ratio=2", "-p", "batch_size=64",
         "-p", "il_epochs=2", "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["method"] == "rho-loss" and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["batches"] == 3 * -(-result["num_samples"] // 64)  # random SGD's steps
    _rho_counts(result, out, epochs=3, selects=2, ratio=2, il_epochs=2)
    assert "irreducible loss (halves, 2 epochs)" in r.stdout + r.stderr


def test_rho_loss_il_val_needs_a_validation_split(tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="task 'digits' has none"):
        train(TrainSpec(task="digits", method="rho-loss", epochs=2, workers=0,
                        params={"il": "val", "warmup_epochs": 1}, out=str(tmp_path),
                        progress=False))  # fmt: skip
    assert not (tmp_path / "metrics.jsonl").exists()
    r = train(TrainSpec(task="digits", method="rho-loss", epochs=2, workers=0,
                        task_params={"validation": 0.15}, out=str(tmp_path / "v"),
                        params={"il": "val", "il_epochs": 1, "warmup_epochs": 1,
                                "batch_size": 64}, progress=False))  # fmt: skip
    n, nv = r["num_samples"], 202
    assert r["backward_samples"] == 2 * n + nv  # one model, one epoch on the val split
    assert r["forward_samples"] == 2 * n + 4 * n + nv + n


@pytest.mark.ray
@pytest.mark.slow
def test_two_ray_workers_run_rho_loss(
    ray_cluster: str, worker_server: str, run_id: str, tmp_path: Path
) -> None:
    """Ray Train's step-level path (the one Ray test of it: loss-topk and pool-random
    differ from rho-loss only in their rule, tested in-process above): each rank
    selects within its own pool and all take the same steps; each trains one half's
    IL model, the IL is paid once in the counts; the server saw every candidate of
    every pool with the lr-sum before its step, every sample 11 times."""
    params = {**PARAMS, "il_epochs": 2}
    r = train(
        TrainSpec(task="digits", method="rho-loss", epochs=EPOCHS, workers=2,
                  server=worker_server, run_id=run_id, params=params, out=str(tmp_path),
                  progress=False)
    )  # fmt: skip
    assert r["workers"] == 2 and r["attempts"] == 1
    _rho_counts(r, tmp_path, epochs=EPOCHS, selects=3, ratio=3, il_epochs=2)
    with ScoreClient(worker_server) as client:
        visits, lr_sums, total = expected_visits_and_lr_sums(
            client, run_id, world=2, num_samples=r["num_samples"], pool_ratio=3
        )
        got = client.scores(run_id)
        counters = client.get_run(run_id).counters
        np.testing.assert_array_equal(got.visits, visits)
        np.testing.assert_array_equal(got.lr_sums, lr_sums)
        assert counters.samples_reported == int(visits.sum()) and counters.duplicates == 0
        # 3 selection epochs of 3 pools each + 2 plain epochs: every sample 11 times
        np.testing.assert_array_equal(visits, np.full(r["num_samples"], 3 * 3 + 2))
        assert r["reporter"]["sent"] == 2 * total
        # rank 0 uploaded the IL both ranks trained: complete columns on the run
        assert client.signals(run_id).signals == ["irreducible_loss", "irreducible_loss_l2"]
        assert not np.isnan(client.get_signal(run_id, "irreducible_loss")).any()
    assert r["batches"] == total


def test_a_rho_loss_run_resumes_with_its_irreducible_loss_from_the_checkpoint(
    worker_server: str, run_id: str, tmp_path: Path
) -> None:
    """Killed in selection epoch 2 and resumed from epoch 1's checkpoint: the IL is read
    back (the same values, not retrained) and counted once in the sample-passes."""
    data = get_task("digits")
    params = {**PARAMS, "il_epochs": 2}
    spec = TrainSpec(task="digits", method="rho-loss", epochs=EPOCHS, run_id=run_id,
                     params=params)  # fmt: skip
    with ScoreClient(worker_server) as client:
        client.create_run(build_run(spec, data))
    fault = {"epoch": 2, "step": 2, "rank": 0, "marker": str(tmp_path / "fired"), "action": "raise"}
    cfg = LoopConfig(run_id=run_id, server=worker_server, fault=fault)
    ckpt = tmp_path / "ckpt"
    with pytest.raises(InjectedFault):
        train_loop(cfg, data, LocalSession(checkpoint_dir=ckpt, resume=True))
    saved = torch.load(ckpt / "state.pt", weights_only=False)["signals"]
    logs: list[str] = []

    class _Logged(LocalSession):
        def log(self, line: str) -> None:
            logs.append(line)

    final = train_loop(cfg, data, _Logged(checkpoint_dir=ckpt, resume=True))
    assert not any("irreducible loss" in x for x in logs)  # not trained again
    after = torch.load(ckpt / "state.pt", weights_only=False)["signals"]
    np.testing.assert_array_equal(after["irreducible_loss"]["task"],
                                  saved["irreducible_loss"]["task"])  # fmt: skip
    n = data.num_samples
    assert final["backward_samples"] == EPOCHS * n + 2 * n
    assert final["forward_samples"] == EPOCHS * n + 3 * 3 * n + 2 * n + n
