"""Ray Train workers (a real local Ray, 2 CPU workers, gloo DDP) through a real score server."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from docl.client import ScoreClient
from docl.worker.train import TrainSpec, train
from tests.worker.helpers import expected_visits_and_lr_sums

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PARAMS = {"warmup_epochs": 2, "episode_epochs": 2, "batch_size": 64}
EPOCHS = 5


def _spec(server: str, run_id: str, out: Path, **kw: object) -> TrainSpec:
    base: dict[str, object] = {"method": "docl", "params": PARAMS}
    return TrainSpec(
        task="digits",
        epochs=EPOCHS,
        workers=2,
        server=server,
        run_id=run_id,
        out=str(out),
        progress=False,
        **{**base, **kw},  # type: ignore[arg-type]
    )


def _check_server(server: str, run_id: str, num_samples: int) -> tuple[np.ndarray, int, int]:
    with ScoreClient(server) as client:
        visits, lr_sums, total = expected_visits_and_lr_sums(
            client, run_id, world=2, num_samples=num_samples
        )
        got = client.scores(run_id)
        dups = client.get_run(run_id).counters.duplicates
    # Every rank's reports arrived, each sample once per epoch that drew it, with
    # the exact learning-rate sum of the step that trained it.
    np.testing.assert_array_equal(got.visits, visits)
    np.testing.assert_array_equal(got.lr_sums, lr_sums)
    return visits, total, dups


def test_two_workers_train_through_the_server(
    ray_cluster: str, worker_server: str, run_id: str, tmp_path: Path
) -> None:
    r = train(_spec(worker_server, run_id, tmp_path))
    visits, total, dups = _check_server(worker_server, run_id, r["num_samples"])
    assert dups == 0
    assert r["workers"] == 2 and r["attempts"] == 1
    assert r["batches"] == total  # optimizer steps, the same on both ranks
    assert r["reporter"]["sent"] == 2 * total  # each rank reports each of its steps
    assert r["reporter"]["dropped"] == 0
    assert visits.min() < EPOCHS == visits.max()  # selection epochs drew subsets
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(EPOCHS))
    assert 0.5 < r["test_accuracy"] <= 1.0


def test_two_workers_train_infobatch_on_its_weighted_pruned_epochs(
    ray_cluster: str, worker_server: str, run_id: str, tmp_path: Path
) -> None:
    """``docl train --method infobatch`` through Ray: every rank trains each drawn
    (pruned) epoch's steps, reports each sample once per epoch with the exact lr-sum,
    and the run takes fewer batches than the plan reserved."""
    params = {**PARAMS, "warmup_epochs": 1, "refresh": False}
    r = train(_spec(worker_server, run_id, tmp_path, method="infobatch", params=params))
    visits, reserved, dups = _check_server(worker_server, run_id, r["num_samples"])
    with ScoreClient(worker_server) as client:
        epochs = [client.get_epoch(run_id, e) for e in range(EPOCHS)]
        weighted = [client.shard(run_id, e).weights for e in range(EPOCHS)]
    assert dups == 0 and r["attempts"] == 1
    assert [e.weighted for e in epochs] == [False] + [True] * (EPOCHS - 1)
    assert any(w is not None and (w == 2.0).any() for w in weighted)  # pruned + reweighted
    assert r["batches"] == sum(e.steps for e in epochs) < reserved
    assert visits.min() < EPOCHS == visits.max()
    assert 0.5 < r["test_accuracy"] <= 1.0


def test_a_killed_worker_is_restarted_and_training_finishes_without_double_counting(
    ray_cluster: str, worker_server: str, run_id: str, tmp_path: Path
) -> None:
    # Rank 1 SIGKILLs itself before step 2 of epoch 3; Ray Train restarts the
    # worker group, which resumes from the checkpoint of epoch 2.
    fault = {"epoch": 3, "step": 2, "rank": 1, "marker": str(tmp_path / "fired"), "delay": 1.0}
    r = train(_spec(worker_server, run_id, tmp_path / "out", fault=fault, max_failures=2))
    assert (tmp_path / "fired").exists()
    visits, total, dups = _check_server(worker_server, run_id, r["num_samples"])
    assert r["attempts"] == 2
    assert r["batches"] == total
    lines = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == list(range(EPOCHS))
    assert [m["attempt"] for m in lines] == [1, 1, 1, 2, 2]
    # Steps of epoch 3 that reached the server before the kill were sent again
    # by the restarted group under the same report ids: recognised, not counted.
    assert dups >= 1
    assert int(visits.sum()) == sum(p.size for p in ScoreClient(worker_server).plan(run_id).epochs)


def test_joining_a_cluster_without_a_server_starts_one_with_a_token(
    ray_cluster: str, run_id: str, tmp_path: Path
) -> None:
    """`docl train --ray-address ...` without --server starts `docl serve` on 0.0.0.0,
    which refuses to run without a token: the job makes one and hands it to its workers."""
    spec = _spec("", run_id, tmp_path, ray_address=ray_cluster)
    spec.server, spec.workers, spec.epochs = None, 1, 2
    r = train(spec)
    assert r["workers"] == 1 and r["attempts"] == 1
    assert r["reporter"]["sent"] == r["batches"] > 0 and r["reporter"]["dropped"] == 0
    assert spec.token is None  # the caller's spec is left as it was
