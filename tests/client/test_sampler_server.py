"""CurriculumSampler / CurriculumBatchSampler against a REAL score server.

DDP semantics: with world w the ranks' shards are disjoint and their union, in
rank order, is the epoch exactly as the server stored it; ``set_epoch`` moves
to another epoch; padding evens the ranks out; a real 2-process gloo DDP job
runs through the sampler; a tiny plain torch loop following the plan learns.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from docl.client import (  # noqa: E402
    CurriculumBatchSampler,
    CurriculumSampler,
    Reporter,
    ScoreClient,
    WithIndices,
)
from docl.services.embedded import free_port  # noqa: E402


@pytest.fixture
def client(score_server: str) -> Iterator[ScoreClient]:
    with ScoreClient(score_server) as c:
        yield c


def spl_run(client: ScoreClient, run_id: str, n: int, epochs: int = 4) -> None:
    """SPL grows from k_min·n: select epochs are real subsets (size < n)."""
    client.create_run(
        run_id=run_id, num_samples=n, num_outputs=2, method="spl", epochs=epochs,
        params={"batch_size": 4, "warmup_epochs": 1, "k_min": 0.3, "seed": 5},
    )  # fmt: skip


def report_all(client: ScoreClient, run_id: str, e: int, n_out: int = 2) -> None:
    ep = client.draw_epoch(run_id, e)
    idx = client.indices(run_id, e)
    rng = np.random.default_rng(e)
    for s, b in enumerate(np.array_split(idx, ep.steps)):
        client.report(run_id, epoch=e, indices=b, outputs=rng.normal(size=(len(b), n_out)), targets=b % n_out,
                      lr_sum=ep.lr_sum_start + sum(ep.lr[:s]))  # fmt: skip


@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_shards_are_disjoint_and_their_union_is_the_stored_epoch(
    client: ScoreClient, run_id: str, world: int
) -> None:
    n = 47
    spl_run(client, run_id, n)
    report_all(client, run_id, 0)
    for e in (0, 1):  # the warmup epoch (all n) and a select epoch (a subset)
        client.draw_epoch(run_id, e)
        stored = client.indices(run_id, e)  # world 1: the whole epoch in training order
        shards = []
        for r in range(world):
            s = CurriculumSampler(client, run_id, rank=r, world_size=world, pad=False)
            s.set_epoch(e)
            shards.append(list(s))
            assert len(s) == len(shards[-1])
            assert s.current.epoch == e and s.current.size == len(stored)
        assert np.concatenate(shards).tolist() == stored.tolist()
        assert len(set(np.concatenate(shards).tolist())) == len(stored)  # disjoint
        if e == 1:
            assert client.get_epoch(run_id, 1).phase == "select" and len(stored) < n
        # padded: every rank the same length, own shard first, then the next rank's first index
        want = math.ceil(len(stored) / world)
        for r in range(world):
            p = list(CurriculumSampler(client, run_id, rank=r, world_size=world, epoch=e))
            assert len(p) == want and p[: len(shards[r])] == shards[r]
            extra = p[len(shards[r]) :]
            assert extra == shards[(r + 1) % world][: len(extra)]
            assert len(set(p)) == len(p)  # never a sample twice on one rank
        # batches: exactly the plan's steps on every rank, covering the shard in order
        steps = client.get_epoch(run_id, e).steps
        for r in range(world):
            bs = CurriculumBatchSampler(client, run_id, rank=r, world_size=world, epoch=e)
            batches = list(bs)
            assert len(batches) == len(bs) == steps
            assert [i for b in batches for i in b] == shards[r]


def test_set_epoch_moves_to_the_next_draw_and_flushes_the_reporter_first(
    client: ScoreClient, run_id: str
) -> None:
    spl_run(client, run_id, 30)
    with Reporter(client, run_id) as rep:
        s = CurriculumSampler(client, run_id, reporter=rep)
        first = list(s)
        assert s.current.epoch == 0 and sorted(first) == list(range(30))
        lr_sum = s.current.lr_sum_start
        for k, b in enumerate(np.array_split(np.array(first), s.current.steps)):
            rep.report(
                epoch=0, indices=b, outputs=np.zeros((len(b), 2)), targets=b % 2, lr_sum=lr_sum
            )
            lr_sum += s.current.lr[k]
        s.set_epoch(1)
        second = list(s)  # draws epoch 1: after the reporter was flushed
        assert rep.pending == 0 and rep.sent == s.client.get_epoch(run_id, 0).steps
        assert (
            s.current.epoch == 1
            and s.current.phase == "select"
            and len(second) == s.current.size < 30
        )
        assert second != first[: len(second)]
        assert client.get_run(run_id).counters.samples_reported == 30  # the draw saw every report
        s.set_epoch(1)
        assert list(s) == second  # same epoch, same indices (no second draw)


def test_ddp_two_ranks_with_gloo(score_server: str, run_id: str, tmp_path: Path) -> None:
    n, epochs = 31, 3  # 31 is odd: rank shards differ by one and get padded
    with ScoreClient(score_server) as client:
        spl_run(client, run_id, n, epochs=epochs)
    worker = Path(__file__).with_name("ddp_sampler_worker.py")
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(worker),
                score_server,
                run_id,
                str(epochs),
                str(tmp_path / f"r{r}.json"),
            ],
            env={**env, "RANK": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=180)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    recs = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in recs] == [2, 2] and [r["rank"] for r in recs] == [0, 1]
    assert recs[0]["weight"] == recs[1]["weight"]  # DDP kept the replicas in sync
    with ScoreClient(score_server) as client:
        multiplicity: Counter[int] = Counter()
        unique: Counter[int] = Counter()
        for e in range(epochs):
            r0, r1 = (r["epochs"][str(e)] for r in recs)
            stored = client.indices(run_id, e).tolist()
            assert r0["shard"] + r1["shard"] == stored  # disjoint, and together the stored epoch
            assert len(r0["yielded"]) == len(r1["yielded"]) == math.ceil(len(stored) / 2)
            assert r0["steps"] == r1["steps"]  # equal step counts: DDP did not hang
            multiplicity.update(r0["yielded"] + r1["yielded"])
            unique.update(set(stored))
        visits = client.scores(run_id).visits
    # every reported sample arrived; a padded repeat counts again unless the server found it stale
    for i in range(n):
        assert unique[i] <= visits[i] <= multiplicity[i], (i, unique[i], visits[i], multiplicity[i])
    assert all(r["counters"]["dropped"] == 0 and r["counters"]["rejected"] == 0 for r in recs)


def test_a_tiny_torch_loop_following_the_plan_learns(client: ScoreClient, run_id: str) -> None:
    torch.manual_seed(0)
    n = 240
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.7 + torch.where(y[:, None] == 1, 1.5, -1.5)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)

    def accuracy() -> float:
        with torch.no_grad():
            return float((model(x).argmax(1) == y).float().mean())

    client.create_run(
        run_id=run_id, num_samples=n, num_outputs=2, method="docl", epochs=8,
        params={"batch_size": 24, "warmup_epochs": 2, "episode_epochs": 2, "lr_peak": 0.5},
    )  # fmt: skip
    before = accuracy()
    last_lr_sum: dict[int, float] = {}
    with Reporter(client, run_id) as rep:
        sampler = CurriculumBatchSampler(client, run_id, reporter=rep)
        loader = torch.utils.data.DataLoader(
            WithIndices(torch.utils.data.TensorDataset(x, y)), batch_sampler=sampler
        )
        lr_sum_end = 0.0
        for epoch in range(sampler.num_epochs):
            sampler.set_epoch(epoch)
            plan = sampler.current
            assert plan.lr_sum_start == pytest.approx(lr_sum_end, rel=1e-12, abs=1e-15)
            for step, (idx, xb, yb) in enumerate(loader):
                for group in opt.param_groups:
                    group["lr"] = sampler.lr_at(step)
                out = model(xb)
                if plan.loss == "l2":
                    loss = 0.5 * (F.one_hot(yb, 2).float() - out.softmax(1)).pow(2).sum(1).mean()
                else:
                    loss = F.cross_entropy(out, yb)
                opt.zero_grad()
                loss.backward()
                lr_sum = sampler.lr_sum_at(step)
                rep.report(epoch=epoch, indices=idx, outputs=out, targets=yb, lr_sum=lr_sum)
                last_lr_sum.update(dict.fromkeys(idx.tolist(), lr_sum))
                opt.step()
            assert step + 1 == plan.steps
            lr_sum_end = sampler.lr_sum_at(plan.steps)
    after = accuracy()
    assert before < 0.75 and after > 0.95, (before, after)
    s = client.scores(run_id)
    seen = np.array(sorted(last_lr_sum))
    # the server stored exactly the lr-sum of each sample's last report
    np.testing.assert_array_equal(s.lr_sums[seen], [last_lr_sum[i] for i in seen.tolist()])
    assert s.scored.sum() > 0.9 * n  # every sample was drawn at least twice (two warmup epochs)
