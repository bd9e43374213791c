"""The examples a user copies run against a real server: plain DDP (torchrun, 2 gloo
processes) and a user's own Ray Train loop (on the session's Ray cluster)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from docl.client import ScoreClient

ROOT = Path(__file__).resolve().parents[2]


def _padded_visits(client: ScoreClient, run_id: str, world: int, n: int) -> np.ndarray:
    """Visits the server must count when every rank trains its padded share of
    every epoch (CurriculumSampler pads short shares with their first indices,
    like DistributedSampler), each sample reported once per time it is trained."""
    visits = np.zeros(n, dtype=np.int64)
    plan = client.plan(run_id)
    for e in range(plan.num_epochs):
        size = client.get_epoch(run_id, e).size
        want = math.ceil(size / world)
        for r in range(world):
            shard = client.indices(run_id, e, rank=r, world=world)
            padded = np.concatenate([shard, np.tile(shard, 2)[: want - shard.shape[0]]])
            np.add.at(visits, padded, 1)
    return visits


def test_plain_ddp_example_with_torchrun(worker_server: str, run_id: str, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run(
        [
            str(torchrun), "--standalone", "--nproc_per_node", "2",
            str(ROOT / "examples" / "plain_ddp.py"),
            "--server", worker_server, "--run-id", run_id,
            "--samples", "1000", "--epochs", "5",
        ],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    acc = float(r.stdout.split("test_accuracy")[1].split()[0])
    assert acc > 0.6  # four blobs, chance 0.25
    with ScoreClient(worker_server) as client:
        got = client.scores(run_id)
        want = _padded_visits(client, run_id, 2, 1000)
        counters = client.get_run(run_id).counters
    # Both ranks' reports arrived, every sample once per time it was trained.
    np.testing.assert_array_equal(got.visits, want)
    assert counters.duplicates == 0
    assert np.isfinite(got.scores).sum() > 0


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_example(
    ray_cluster: str, worker_server: str, run_id: str, tmp_path: Path
) -> None:
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    r = subprocess.run(
        [
            sys.executable, str(ROOT / "examples" / "ray_train.py"),
            "--server", worker_server, "--run-id", run_id, "--ray-address", ray_cluster,
            "--workers", "2", "--samples", "1000", "--epochs", "4",
            "--storage", str(tmp_path / "ray"),
        ],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert "training finished" in r.stdout
    with ScoreClient(worker_server) as client:
        got = client.scores(run_id)
        want = _padded_visits(client, run_id, 2, 1000)
    np.testing.assert_array_equal(got.visits, want)
