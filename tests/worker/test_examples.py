"""The examples a user copies run against a real server: plain DDP (torchrun, 2 gloo
processes) and a user's own Ray Train loop (on the session's Ray cluster). Each
example is its plain twin in ``examples/without_docl/`` plus at most five changed
lines, and the test counts them."""

from __future__ import annotations

import ast
import difflib
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from docl.client import ScoreClient

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def _code_lines(path: Path) -> list[str]:
    """The file's lines after its module docstring (the docstrings explain, the code changes)."""
    text = path.read_text()
    tree = ast.parse(text)
    first = tree.body[0]
    assert isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
    assert first.end_lineno is not None
    return text.splitlines()[first.end_lineno :]


@pytest.mark.parametrize("name", ["plain_ddp.py", "ray_train.py"])
def test_each_example_is_its_plain_twin_plus_at_most_five_lines(name: str) -> None:
    plain = _code_lines(EXAMPLES / "without_docl" / name)
    docl = _code_lines(EXAMPLES / name)
    assert not any("docl" in line for line in plain)  # the twin really is plain PyTorch
    diff = list(difflib.unified_diff(plain, docl, lineterm="", n=0))
    added = [d[1:] for d in diff if d.startswith("+") and not d.startswith("+++")]
    removed = [d[1:] for d in diff if d.startswith("-") and not d.startswith("---")]
    # A blank line between the third-party and first-party import blocks is formatting.
    changed = [line for line in added if line.strip()]
    assert len(changed) <= 5, "\n".join(changed)
    assert all(line.rstrip().split("#", 1)[-1].strip().startswith("docl") for line in changed)
    # What goes: the DistributedSampler import and the line that built it, nothing else.
    assert [line.strip() for line in removed] == [
        "from torch.utils.data.distributed import DistributedSampler",
        "sampler = DistributedSampler(dataset, num_replicas=world, rank=rank)",
    ]
    print(f"{name}: {len(changed)} changed lines, {len(removed)} removed")


def test_the_step_level_example_is_plain_ddp_plus_its_marked_lines() -> None:
    """examples/plain_ddp_step.py is examples/plain_ddp.py plus the step-level lines,
    each marked ``# docl step``: the batch sampler in place of the per-sample one, the
    method option, and the selection block. Nothing else changes."""
    base = _code_lines(EXAMPLES / "plain_ddp.py")
    step = _code_lines(EXAMPLES / "plain_ddp_step.py")
    diff = list(difflib.unified_diff(base, step, lineterm="", n=0))
    added = [d[1:] for d in diff if d.startswith("+") and not d.startswith("+++")]
    removed = [d[1:].strip() for d in diff if d.startswith("-") and not d.startswith("---")]
    assert 0 < len(added) <= 12, "\n".join(added)  # 3 of them: rho-loss's IL upload
    assert all("# docl step" in line for line in added), "\n".join(added)
    assert [line.split("(", 1)[0] for line in removed] == [
        "from docl.client import CurriculumSampler  # docl",
        "sampler = CurriculumSampler.connect",
        "loader = DataLoader",
    ]
    print(f"plain_ddp_step.py: {len(added)} changed lines, {len(removed)} removed")


def test_the_plain_twin_trains_without_docl(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "without_docl" / "plain_ddp.py"), "--samples", "600", "--epochs", "3"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.split("test_accuracy")[1].split()[0]) > 0.6


def _trained(client: ScoreClient, run_id: str, world: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """How often each sample was trained when every rank trains its padded share of
    every epoch, and how often at least (a padded repeat may be skipped as stale).

    Padding as ``CurriculumSampler`` does it, recomputed from the stored epochs: a
    short share borrows the first indices of the next rank's share."""
    trained = np.zeros(n, dtype=np.int64)
    least = np.zeros(n, dtype=np.int64)
    for e in range(client.plan(run_id).num_epochs):
        size = client.get_epoch(run_id, e).size
        want = math.ceil(size / world)
        for r in range(world):
            shard = client.indices(run_id, e, rank=r, world=world)
            need = want - shard.shape[0]
            nxt = client.indices(run_id, e, rank=(r + 1) % world, world=world)[:need]
            np.add.at(trained, np.concatenate([shard, nxt]), 1)
            np.add.at(least, shard, 1)
    return trained, least


def _check_visits(client: ScoreClient, run_id: str, world: int, n: int) -> None:
    got = client.scores(run_id)
    counters = client.get_run(run_id).counters
    trained, least = _trained(client, run_id, world, n)
    padded = trained != least
    # Every report arrived once: the server saw exactly the rows the ranks trained ...
    assert counters.samples_reported == int(trained.sum())
    assert counters.duplicates == 0
    # ... and counted every visit, except that a padded repeat (the same sample on
    # two ranks in one epoch) is skipped when the later step's report arrives first.
    np.testing.assert_array_equal(got.visits[~padded], trained[~padded])
    assert np.all((least[padded] <= got.visits[padded]) & (got.visits[padded] <= trained[padded]))
    assert counters.samples_skipped == int((trained - got.visits).sum())
    assert np.isfinite(got.scores).sum() > 0


def _new_runs(url: str, before: set[str], prefix: str) -> list[str]:
    with ScoreClient(url) as client:
        runs = client.list_runs()
    return sorted(r.run_id for r in runs if r.run_id not in before and r.run_id.startswith(prefix))


def _run_ids(url: str) -> set[str]:
    with ScoreClient(url) as client:
        return {r.run_id for r in client.list_runs()}


def test_plain_ddp_example_against_a_wrong_server_fails_in_seconds_with_one_line(
    tmp_path: Path,
) -> None:
    """A --server that never answered is a typo, not an outage: the example failed after
    125 s and 87 lines (two minutes of outage waiting); now in seconds, its last line
    naming the address and what to do."""
    import time

    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "plain_ddp.py"), "--server", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert took < 40, f"took {took:.0f} s"  # ~5 s on a quiet box, mostly importing torch
    last = r.stderr.strip().splitlines()[-1]
    assert "no score server answers at http://127.0.0.1:9" in last, r.stderr
    assert "docl serve" in last
    assert "Waiting up to" not in r.stderr  # no outage ride-out
    assert len(r.stderr.strip().splitlines()) <= 15, r.stderr  # a short traceback, no chain


def test_plain_ddp_example_runs_twice_in_a_row_and_shows_progress(
    score_server: str, tmp_path: Path
) -> None:
    """The README's one-process command, twice against one server (whose default
    keeps 4 epochs' indices): each start is a new run, so the second does not
    reattach to the finished first and die with 410 Gone."""
    before = _run_ids(score_server)
    for attempt in range(2):
        r = subprocess.run(
            [sys.executable, str(EXAMPLES / "plain_ddp.py"), "--server", score_server,
             "--samples", "400", "--epochs", "6"],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 0, (attempt, r.stderr[-3000:])
        epochs = [line for line in r.stdout.splitlines() if line.startswith("epoch ")]
        assert [line.split()[1] for line in epochs] == [str(e) for e in range(6)]  # progress
        assert "test_accuracy" in r.stdout
    assert len(_new_runs(score_server, before, "plain-ddp-")) == 2


@pytest.mark.parametrize("method", ["loss-topk", "rho-loss"])
def test_the_step_level_example_selects_from_pools_and_reports_every_candidate(
    worker_server: str, run_id: str, tmp_path: Path, method: str
) -> None:
    """One process: 5 warmup epochs, then 2 selection epochs whose steps report their
    pools of 4 parts (every sample a candidate 4 times an epoch). ``rho-loss``: the
    example uploaded an irreducible loss that ranks the mislabelled samples (label ≠
    nearest blob centre) far above the rest, and its sampler read it from the run."""
    from tests.worker.helpers import expected_visits_and_lr_sums

    n = 400
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "plain_ddp_step.py"), "--server", worker_server,
         "--run-id", run_id, "--method", method, "--samples", str(n), "--epochs", "7"],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert float(r.stdout.split("test_accuracy")[1].split()[0]) > 0.6
    with ScoreClient(worker_server) as client:
        assert [e.phase for e in client.plan(run_id).epochs] == ["warmup"] * 5 + ["select"] * 2
        visits, _, steps = expected_visits_and_lr_sums(
            client, run_id, world=1, num_samples=n, pool_ratio=4
        )
        np.testing.assert_array_equal(client.scores(run_id).visits, visits)
        np.testing.assert_array_equal(visits, np.full(n, 5 + 2 * 4))
        counters = client.get_run(run_id).counters
        assert counters.samples_reported == int(visits.sum()) and counters.duplicates == 0
        assert steps == 7 * 7  # ⌈400 / 64⌉ steps an epoch, as random SGD's
        listed = client.signals(run_id).signals
        if method != "rho-loss":
            assert listed == []
            return
        assert listed == ["irreducible_loss"]
        il = client.get_signal(run_id, "irreducible_loss")
    assert not np.isnan(il).any()
    import runpy

    x, y, _, _ = runpy.run_path(str(EXAMPLES / "plain_ddp_step.py"))["make_data"](n)
    centers = np.array([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])
    bayes = np.argmin(((x.numpy()[:, None, :] - centers) ** 2).sum(-1), axis=1)
    wrong = y.numpy() != bayes
    assert 0.05 < wrong.mean() < 0.2  # the 10 % flipped labels (some flips land on bayes)
    assert np.median(il[wrong]) > 4 * np.median(il[~wrong])


def test_plain_ddp_example_with_torchrun_twice(worker_server: str, tmp_path: Path) -> None:
    """The torchrun form without --run-id, twice: the two ranks of a launch share
    one new run (torchrun's rendezvous id), and every trained visit is counted."""
    torchrun = Path(sys.executable).with_name("torchrun")
    n = 1001  # odd: the ranks' shares differ by one and the shorter one is padded
    before = _run_ids(worker_server)
    for attempt in range(2):
        r = subprocess.run(
            [
                str(torchrun), "--standalone", "--nproc_per_node", "2",
                str(EXAMPLES / "plain_ddp.py"),
                "--server", worker_server, "--samples", str(n), "--epochs", "7",
            ],
            capture_output=True, text=True, timeout=300, cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 0, (attempt, r.stderr[-3000:])
        acc = float(r.stdout.split("test_accuracy")[1].split()[0])
        assert acc > 0.6  # four blobs, chance 0.25
    runs = _new_runs(worker_server, before, "plain-ddp-")
    assert len(runs) == 2, runs  # one per launch: the two ranks of a launch agreed
    with ScoreClient(worker_server) as client:
        for run_id in runs:
            plan = client.plan(run_id)
            # 5 warmup epochs (full data), then selection epochs on a subset.
            assert [e.phase for e in plan.epochs][4:] == ["warmup", "select", "select"]
            assert plan.epochs[-1].size < n
            _check_visits(client, run_id, 2, n)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_train_example(ray_cluster: str, worker_server: str, tmp_path: Path) -> None:
    """The README's command against a server, without --name: a new run named after a
    fresh Ray Train run (``ray-train-example-<8 hex>``, drawn per start: the torchrun
    and one-process tests run their examples twice for "each start is a new run");
    each epoch line is printed once."""
    env = {**os.environ, "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}
    n = 1001
    before = _run_ids(worker_server)
    r = subprocess.run(
        [
            sys.executable, str(EXAMPLES / "ray_train.py"),
            "--server", worker_server, "--ray-address", ray_cluster,
            "--workers", "2", "--samples", str(n), "--epochs", "6",
            "--storage", str(tmp_path / "ray"),
        ],
        capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    acc = float(r.stdout.strip().splitlines()[-1].removeprefix("test_accuracy "))
    assert acc > 0.6, r.stdout  # it ends with the held-out accuracy (it had none)
    # Ray Train logs a line per report and rank: one report at the end (there were 12)
    assert (r.stdout + r.stderr).count("Reporting training result") <= 2
    assert "\x1b[" not in r.stdout + r.stderr  # no colour codes in a pipe
    # Ray's workers log at INFO: httpx's per-request lines would show (docl.client quiets them).
    assert "HTTP Request" not in r.stdout + r.stderr
    out = r.stdout + r.stderr
    for e in range(6):  # once each, not also through Ray Train's patched print
        assert out.count(f"epoch {e} loss ") == 1, out[-3000:]
    (run_id,) = _new_runs(worker_server, before, "ray-train-example-")
    assert re.fullmatch(r"ray-train-example-[0-9a-f]{8}", run_id), run_id
    with ScoreClient(worker_server) as client:
        assert client.plan(run_id).epochs[-1].phase == "select"
        _check_visits(client, run_id, 2, n)
