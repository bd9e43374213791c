"""Step-level selection through ``CurriculumBatchSampler`` (client/batch_sampler.py)
against a REAL score server: a plain loop's pools and chosen batches equal the worker's
pool rule and the method's rule recomputed here (numpy cross-entropies, brute-force
top-b); ``pool-random`` picks every b-subset of its pool equally often; the steps are
random SGD's, on every rank of a real 2-process gloo DDP job; what the server holds
afterwards is what the worker loop's reports give; misuse is a clear error."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from docl.client import CurriculumBatchSampler, Reporter, ScoreClient  # noqa: E402
from docl.services.embedded import free_port  # noqa: E402
from docl.services.seeds import step_rng  # noqa: E402
from tests.client.step_loop import run_loop  # noqa: E402
from tests.worker.helpers import _pool_parts, expected_visits_and_lr_sums  # noqa: E402

M = 3  # the pool ratio of these runs
PARAMS = {"batch_size": 8, "warmup_epochs": 1, "refresh": False, "seed": 3}


def _create(client: ScoreClient, run_id: str, method: str, n: int, epochs: int,
            **method_params: Any) -> None:  # fmt: skip
    client.create_run(run_id=run_id, num_samples=n, num_outputs=2, method=method, epochs=epochs,
                      params=PARAMS, method_params=method_params)  # fmt: skip


def _np_ce(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    return np.log(np.exp(z).sum(1)) - z[np.arange(y.size), y]


def _check_record(
    client: ScoreClient, run_id: str, rec: dict[str, Any], y: np.ndarray, il: np.ndarray | None
) -> int:
    """Every step of one rank's record against the server's epochs and the rules written
    here; returns the rank's step count."""
    rank, world = rec["rank"], rec["world"]
    steps_taken = 0
    for e, got in rec["epochs"].items():
        epoch = client.get_epoch(run_id, int(e))
        parts = np.array_split(client.indices(run_id, int(e), rank=rank, world=world), epoch.steps)
        assert len(got["steps"]) == epoch.steps  # random SGD's steps, on every rank
        assert got["selecting"] == (epoch.phase == "select")
        steps_taken += len(got["steps"])
        for s, step in enumerate(got["steps"]):
            if not got["selecting"]:
                assert step["yielded"] == parts[s].tolist()
                continue
            pool = np.concatenate([parts[j] for j in _pool_parts(s, epoch.steps, M)])
            assert step["yielded"] == pool.tolist()  # the worker's pool of step s
            value = _np_ce(np.array(step["logits"]), y[pool])  # fresh losses, in numpy
            if il is not None:
                value = value - il[pool]  # rho-loss: the reducible loss
            b = parts[s].size
            want = np.argsort(-value, kind="stable")[:b]  # brute force: the b highest
            assert sorted(step["chosen"]) == sorted(want.tolist()), (e, s)
    return steps_taken


@pytest.mark.parametrize("method", ["loss-topk", "rho-loss"])
def test_a_plain_loop_selects_the_workers_batches_and_reports_every_candidate(
    score_server: str, run_id: str, method: str
) -> None:
    n, epochs = 90, 3  # warmup, then two selection epochs of 12 steps (pools of 3 parts)
    il = np.random.default_rng(7).uniform(0, 1, n) if method == "rho-loss" else None
    with ScoreClient(score_server) as client:
        _create(client, run_id, method, n, epochs, pool_ratio=M)
        _create(client, f"{run_id}-sgd", "random", n, epochs)
        rec = run_loop(score_server, run_id, il)
        from tests.client.step_loop import blobs

        y = blobs(n)[1].numpy()
        taken = _check_record(client, run_id, rec, y, il)
        # the same steps as random SGD with the same plan
        assert taken == client.plan(run_id).total_steps == client.plan(f"{run_id}-sgd").total_steps
        assert [rec["epochs"][str(e)]["selecting"] for e in range(epochs)] == [False, True, True]
        # what the server holds: each selection step's whole pool, at the lr-sum before it,
        # exactly as the worker loop reports (recomputed from the stored epochs)
        visits, lr_sums, _ = expected_visits_and_lr_sums(
            client, run_id, world=1, num_samples=n, pool_ratio=M
        )
        got = client.scores(run_id)
        np.testing.assert_array_equal(got.visits, visits)
        np.testing.assert_array_equal(got.lr_sums, lr_sums)
        assert np.array_equal(visits, np.full(n, 1 + 2 * M))
        counters = client.get_run(run_id).counters
        assert counters.samples_reported == int(visits.sum()) and counters.duplicates == 0


def test_pool_random_picks_every_b_subset_of_its_pool_equally_often(
    score_server: str, run_id: str
) -> None:
    """Pools of 2 parts of 2 (p = 4, b = 2): 6 subsets, each with probability 1/6. 600
    seeded steps; the chi-square statistic against the exact law stays under its 0.1 %
    critical value (20.5 at 5 degrees of freedom), each position near b/p = 1/2."""
    n = 600
    with ScoreClient(score_server) as client:
        client.create_run(run_id=run_id, num_samples=n, num_outputs=2, method="pool-random", epochs=2,
                          params={"batch_size": 2, "warmup_epochs": 0, "refresh": False, "seed": 1},
                          method_params={"pool_ratio": 2})  # fmt: skip
        sampler = CurriculumBatchSampler(client, run_id)
        subsets: Counter[tuple[int, ...]] = Counter()
        positions: Counter[int] = Counter()
        for e in range(2):
            sampler.set_epoch(e)
            assert sampler.selecting
            seed = sampler.current.seed
            for s, pool in enumerate(sampler):
                assert len(pool) == 4
                keep = sampler.select(torch.zeros(4))  # no reporter: select only
                assert keep.shape == (2,) and keep.dtype == torch.int64
                # the worker's Generator for (epoch seed, rank 0, step s), drawn as the rule says
                assert keep.tolist() == step_rng(seed, 0, s).choice(4, 2, replace=False).tolist()
                subsets[tuple(sorted(keep.tolist()))] += 1
                positions.update(keep.tolist())
    total = sum(subsets.values())
    assert total == 600 and set(subsets) == set(itertools.combinations(range(4), 2))
    expected = total / 6
    chi2 = sum((c - expected) ** 2 / expected for c in subsets.values())
    assert chi2 < 20.5, (chi2, subsets)
    for k in range(4):  # each position: Binomial(600, 1/2), 4.4 sd = ±54
        assert abs(positions[k] - 300) < 54, positions


def test_two_gloo_ranks_each_select_within_their_own_pools(
    score_server: str, run_id: str, tmp_path: Path
) -> None:
    n, epochs = 101, 3  # odd: the ranks' shards differ by one sample, their step counts do not
    with ScoreClient(score_server) as client:
        _create(client, run_id, "loss-topk", n, epochs, pool_ratio=M)
    worker = Path(__file__).with_name("step_loop.py")
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    argv = [sys.executable, str(worker), score_server, run_id]
    procs = [
        subprocess.Popen(
            [*argv, str(tmp_path / f"r{r}.json")],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    recs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert recs[0]["weight"] == recs[1]["weight"]  # DDP kept the replicas in sync
    from tests.client.step_loop import blobs

    y = blobs(n)[1].numpy()
    with ScoreClient(score_server) as client:
        taken = [_check_record(client, run_id, rec, y, None) for rec in recs]
        assert taken[0] == taken[1] == client.plan(run_id).total_steps
        visits, lr_sums, _ = expected_visits_and_lr_sums(
            client, run_id, world=2, num_samples=n, pool_ratio=M
        )
        got = client.scores(run_id)
        np.testing.assert_array_equal(got.visits, visits)
        np.testing.assert_array_equal(got.lr_sums, lr_sums)


def test_misuse_is_a_clear_error_and_sends_nothing(score_server: str, run_id: str) -> None:
    n = 48
    with ScoreClient(score_server) as client:
        _create(client, f"{run_id}-sgd", "random", n, 2)
        plain = CurriculumBatchSampler(client, f"{run_id}-sgd")
        plain.set_epoch(0)
        assert plain.step_level is None and not plain.selecting
        with pytest.raises(ValueError, match="does not select per step"):
            plain.select(torch.zeros(8))

        _create(client, run_id, "loss-topk", n, 2, pool_ratio=M)
        reporter = Reporter(client, run_id)
        sampler = CurriculumBatchSampler(client, run_id, reporter=reporter)
        sampler.set_epoch(0)  # warmup: every sample of the step, no pools
        assert not sampler.selecting
        assert sampler.select(torch.zeros(8)).tolist() == list(range(8))
        with pytest.raises(ValueError, match="not a selection epoch"):
            sampler.pools()
        sampler.set_epoch(1)
        assert sampler.selecting and sampler.step_level is not None
        pool = next(iter(sampler))
        assert len(pool) == 3 * 8
        out, yb = torch.zeros(24, 2), torch.zeros(24, dtype=torch.int64)
        with pytest.raises(ValueError, match="24 candidates"):
            sampler.select(torch.zeros(23), outputs=out[:23], targets=yb[:23])
        with pytest.raises(ValueError, match="vector"):
            sampler.select(torch.zeros(24, 1))
        with pytest.raises(ValueError, match="both outputs= and targets="):
            sampler.select(torch.zeros(24), outputs=out)
        with pytest.raises(ValueError, match="whole pool"):  # the b trained rows alone
            sampler.report(outputs=out[:8], targets=yb[:8], lr_sum=0.0)
        with pytest.raises(ValueError, match="reads no per-sample signal"):
            sampler.set_signal("irreducible_loss", np.zeros(n))
        assert sampler.cursor == 0 and reporter.counters().queued == 0  # nothing sent
        keep = sampler.select(torch.arange(24.0), outputs=out, targets=yb, lr_sum=0.0)
        assert sorted(keep.tolist()) == list(range(16, 24))  # the 8 highest losses
        with pytest.raises(ValueError, match="its 8 trained rows"):
            sampler.report(outputs=out, targets=yb)
        assert reporter.counters().queued == 1 and sampler.cursor == 24  # the pool, once
        with pytest.raises(ValueError, match="whole pool"):  # outputs of another pool size
            sampler.select(torch.zeros(24), outputs=out[:20], targets=yb[:20], lr_sum=0.0)
        # the next step without a report of step 0's trained rows in between: step 1's pool
        keep = sampler.select(torch.zeros(24), outputs=out, targets=yb, lr_sum=0.0)
        assert keep.tolist() == list(range(8))  # all ties: the earlier positions
        assert reporter.counters().queued == 2 and sampler.cursor == 48
        reporter.close(timeout=30)

        _create(client, f"{run_id}-rho", "rho-loss", n, 2, pool_ratio=M)
        rho = CurriculumBatchSampler(client, f"{run_id}-rho")
        rho.set_epoch(0)
        assert not rho.selecting  # epochs are drawn in order: the warmup first
        rho.set_epoch(1)
        next(iter(rho))
        with pytest.raises(ValueError, match=r"set_signal\('irreducible_loss'"):
            rho.select(torch.zeros(24))
        with pytest.raises(ValueError, match=r"shape \(48,\)"):
            rho.set_signal("irreducible_loss", np.zeros(n - 1))
        rho.set_signal("irreducible_loss", -np.arange(n, dtype=np.float64))
        pool = rho.pools().candidates[0]
        keep = rho.select(torch.zeros(24))  # reducible loss = 0 − (−i) = i: the 8 largest ids
        assert sorted(pool[keep.numpy()].tolist()) == sorted(pool)[-8:]


def test_the_sampler_reads_the_runs_signal_column_from_the_server(
    score_server: str, run_id: str
) -> None:
    """Without set_signal, rho-loss's sampler reads ``irreducible_loss`` from the run:
    none or an incomplete one is an error saying how to give it (and nothing is sent);
    a complete one is read once, as float32 was stored, and ranks the pool."""
    n = 48
    with ScoreClient(score_server) as client:
        _create(client, run_id, "rho-loss", n, 2, pool_ratio=M)
        reporter = Reporter(client, run_id)
        rho = CurriculumBatchSampler(client, run_id, reporter=reporter)
        rho.set_epoch(0)
        assert not rho.selecting  # epochs are drawn in order: the warmup first
        rho.set_epoch(1)
        pool = np.asarray(next(iter(rho)))
        with pytest.raises(ValueError, match="keeps no column 'irreducible_loss'") as err:
            rho.select(torch.zeros(24))
        for hint in ("compute_irreducible", "put_signal(run_id, 'irreducible_loss'", "set_signal"):
            assert hint in str(err.value)
        il = -np.arange(n, dtype=np.float64) - 0.1  # not a float32: read back rounded
        client.put_signal(run_id, "irreducible_loss", il[:30])
        with pytest.raises(ValueError, match=r"incomplete column \(18 of 48 samples NaN\)"):
            rho.select(torch.zeros(24), outputs=torch.zeros(24, 2), targets=torch.zeros(24))
        assert rho.cursor == 0 and reporter.counters().queued == 0  # nothing sent
        client.put_signal(run_id, "irreducible_loss", il[30:], start=30)
        keep = rho.select(torch.zeros(24))  # reducible loss = 0 − IL = i + 0.1: the 8 largest
        assert sorted(pool[keep.numpy()].tolist()) == sorted(pool.tolist())[-8:]
        np.testing.assert_array_equal(rho._signal("irreducible_loss"), il.astype(np.float32))
        client.put_signal(run_id, "irreducible_loss", np.zeros(n))  # read once: kept
        np.testing.assert_array_equal(rho._signal("irreducible_loss"), il.astype(np.float32))
        reporter.close(timeout=30)


# ---------------------------------------------------------------------------
# The sampler loop and docl's worker loop, side by side: the same model at the end
# ---------------------------------------------------------------------------


def _sampler_loop(server: str, run_id: str, data: Any, il: np.ndarray | None) -> dict[str, Any]:
    """The worker loop's training written as a plain loop over ``CurriculumBatchSampler``:
    the same model and init, SGD (momentum 0.9, weight decay 5e-4), the plan's learning
    rate and loss kind at every step."""
    from torch.utils.data import DataLoader, TensorDataset

    from docl.worker.losses import l2_loss, per_sample_loss, task_loss

    model = data.make_model(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=5e-4)
    sampler = CurriculumBatchSampler.connect(server, run_id=run_id, optimizer=opt)
    if il is not None:
        sampler.set_signal("irreducible_loss", il)
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_sampler=sampler)
    for e in range(sampler.num_epochs):
        sampler.set_epoch(e)
        kind = sampler.current.loss
        for s, (xb, yb) in enumerate(loader):
            if sampler.selecting:
                with torch.no_grad():
                    pool_out = model(xb)
                fresh = per_sample_loss(pool_out, yb, data.task, kind)
                keep = sampler.select(fresh, outputs=pool_out, targets=yb)
                xb, yb = xb[keep], yb[keep]
            out = model(xb)
            loss = (l2_loss if kind == "l2" else task_loss)(out, yb, data.task)
            for group in opt.param_groups:
                group["lr"] = sampler.lr_at(s)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sampler.report(outputs=out, targets=yb)
            opt.step()
    assert sampler.close(timeout=60)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("method", ["loss-topk", "pool-random", "rho-loss"])
def test_the_sampler_loop_trains_the_model_docl_s_worker_loop_trains(
    score_server: str, run_id: str, method: str
) -> None:
    """Two runs of the same config (the same seed: the same epochs), one trained by
    ``train_loop`` in-process, one by the plain loop above: every step selects the same
    rows (else the weights part), so the final weights agree, and the server holds the
    same visits and lr-sums for both (every pool reported alike)."""
    from docl.worker.irreducible import compute_irreducible
    from docl.worker.loop import LoopConfig, train_loop
    from docl.worker.session import LocalSession
    from docl.worker.tasks import get_task

    class KeepState(LocalSession):
        state: dict[str, Any] | None = None

        def save(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
            self.state = state

    data = get_task("tests.worker.user_task:make_task", n=400)  # 300 training samples
    extra = {"il_epochs": 2} if method == "rho-loss" else {}
    ids = {"worker": f"{run_id}-w", "sampler": f"{run_id}-s"}
    with ScoreClient(score_server) as client:
        for rid in ids.values():
            client.create_run(run_id=rid, num_samples=data.num_samples, num_outputs=2, method=method,
                              epochs=3, params={**PARAMS, "batch_size": 16},
                              method_params={"pool_ratio": M, **extra})  # fmt: skip
        lr_peak = client.get_run(ids["sampler"]).params.lr_peak
    session = KeepState()
    train_loop(LoopConfig(run_id=ids["worker"], server=score_server, eval_every=0), data, session)
    if method == "rho-loss":  # the plain user's IL: the documented helper, uploaded once
        il = compute_irreducible(data.make_model, data.x_train, data.y_train, seed=0, epochs=2,
                                 batch_size=16, lr=lr_peak).values["task"]  # fmt: skip
        with ScoreClient(score_server) as client:  # ... equal to what the worker uploaded
            np.testing.assert_array_equal(
                client.get_signal(ids["worker"], "irreducible_loss"), il.astype(np.float32)
            )
            client.put_signal(ids["sampler"], "irreducible_loss", il)
    # the sampler reads the run's IL column itself (no set_signal)
    got = _sampler_loop(score_server, ids["sampler"], data, None)
    assert session.state is not None
    want = session.state["model"]
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-6, atol=1e-7)
    # (a sampler that trained the pool's first b rows instead fails the check above)
    with ScoreClient(score_server) as client:
        a, b = (client.scores(rid) for rid in ids.values())
    np.testing.assert_array_equal(a.visits, b.visits)
    np.testing.assert_array_equal(a.lr_sums, b.lr_sums)
    assert np.array_equal(a.visits, np.full(data.num_samples, 1 + 2 * M))
