"""CurriculumSampler / CurriculumBatchSampler against a REAL score server.

DDP semantics: with world w the ranks' shards are disjoint and their union, in
rank order, is the epoch exactly as the server stored it; ``set_epoch`` moves
to another epoch; padding evens the ranks out; a real 2-process gloo DDP job
runs through the sampler; a tiny plain torch loop following the plan learns.

The short way: ``CurriculumSampler.connect`` + ``sampler.report`` without
indices (a cursor over the sampler's order) sends exactly the samples the
DataLoader yielded, also with worker processes; bad reports are clear errors
that send nothing; draws ride out a server restart. (The DDP case of the short
way is the plain-DDP example under torchrun, tests/worker/test_examples.py.)
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------
# connect() and sampler.report(): the short way
# ---------------------------------------------------------------------------


def _blobs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 2, generator=g) + 2.0 * y[:, None], y


@pytest.mark.parametrize("num_workers", [0, 2])
def test_connect_and_cursor_reports_match_what_the_loader_yielded(
    score_server: str, run_id: str, num_workers: int
) -> None:
    """The loader yields (index, x, y) here ONLY so the test can see which samples
    each batch really held; the reports do not use those indices (the cursor
    does), and the server must have exactly what the loader yielded."""
    n, epochs = 83, 4
    x, y = _blobs(n)
    model = torch.nn.Linear(2, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sampler = CurriculumSampler.connect(
        score_server, run_id=run_id, num_samples=n, num_outputs=3, epochs=epochs,
        method="spl", params={"warmup_epochs": 1, "k_min": 0.4, "batch_size": 8}, optimizer=opt,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        WithIndices(torch.utils.data.TensorDataset(x, y)),
        batch_size=7,  # not a divisor of the epoch sizes: the last batch is shorter
        sampler=sampler,
        num_workers=num_workers,
    )
    visits = np.zeros(n, dtype=np.int64)
    last_lr_sum = np.full(n, np.nan)
    lr_sum = 0.0
    with sampler:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for idx, xb, yb in loader:
                out = model(xb)
                loss = F.cross_entropy(out, yb)
                opt.zero_grad()
                loss.backward()
                sampler.report(outputs=out, targets=yb)  # no indices: the cursor's
                np.add.at(visits, idx.numpy(), 1)
                last_lr_sum[idx.numpy()] = lr_sum
                opt.step()
                lr_sum += 0.1
            assert sampler.cursor == len(sampler)  # every yielded index was reported
        reporter = sampler.reporter
        assert reporter is not None
    # close() delivered everything and closed the client
    assert reporter.pending == 0 and reporter.dropped == 0 and reporter.rejected == 0
    with ScoreClient(score_server) as client:
        got = client.scores(run_id)
        assert [client.get_epoch(run_id, e).phase for e in range(epochs)][:2] == [
            "warmup",
            "select",
        ]
    np.testing.assert_array_equal(got.visits, visits)
    seen = visits > 0
    # the tracked optimizer's lr sum, read before each step()
    np.testing.assert_allclose(got.lr_sums[seen], last_lr_sum[seen], rtol=1e-12)
    assert visits.min() < epochs == visits.max()  # select epochs are subsets


def test_the_batch_sampler_reports_through_the_cursor_too(
    client: ScoreClient, score_server: str, run_id: str
) -> None:
    n = 50
    spl_run(client, run_id, n, epochs=2)
    with CurriculumBatchSampler.connect(score_server, run_id=run_id) as bs:  # joins the run
        yielded: list[int] = []
        for epoch in range(2):
            bs.set_epoch(epoch)
            for step, batch in enumerate(bs):
                bs.report(
                    outputs=np.zeros((len(batch), 2)),
                    targets=np.array(batch) % 2,
                    lr_sum=bs.lr_sum_at(step),
                )
                yielded += batch
            assert bs.cursor == bs.shard.shape[0]
    got = client.scores(run_id)
    want = np.bincount(yielded, minlength=n)
    np.testing.assert_array_equal(got.visits, want)


def test_report_rows_beyond_the_epoch_are_a_clear_error_and_send_nothing(
    client: ScoreClient, run_id: str
) -> None:
    spl_run(client, run_id, 20)
    with Reporter(client, run_id) as rep:
        s = CurriculumSampler(client, run_id, reporter=rep)
        order = list(s)
        s.report(outputs=np.zeros((15, 2)), targets=np.zeros(15, dtype=np.int64), lr_sum=0.0)
        assert s.cursor == 15
        with pytest.raises(ValueError, match=r"a report of 6 rows, but 5 of this rank's 20"):
            s.report(outputs=np.zeros((6, 2)), targets=np.zeros(6, dtype=np.int64), lr_sum=0.1)
        assert rep.counters().queued == 1 and s.cursor == 15  # nothing sent, nothing moved
        s.report(outputs=np.zeros((5, 2)), targets=np.zeros(5, dtype=np.int64), lr_sum=0.1)
        assert rep.flush(30)
        # a new pass over the epoch starts the cursor over
        assert list(s) == order and s.cursor == 0
        # no lr sum and no tracked optimizer
        with pytest.raises(ValueError, match="no learning-rate sum"):
            s.report(outputs=np.zeros((1, 2)), targets=np.zeros(1, dtype=np.int64))
    np.testing.assert_array_equal(client.scores(run_id).visits, np.ones(20))
    with pytest.raises(RuntimeError, match="no Reporter"):
        CurriculumSampler(client, run_id).report(
            outputs=np.zeros((1, 2)), targets=np.zeros(1, dtype=np.int64), lr_sum=0.0
        )


def test_explicit_indices_are_checked_against_the_cursor_or_used_instead(
    client: ScoreClient, run_id: str
) -> None:
    spl_run(client, run_id, 12)
    with Reporter(client, run_id) as rep:
        s = CurriculumSampler(client, run_id, reporter=rep)
        order = np.array(list(s))
        z = np.zeros((4, 2))
        rid = s.report(indices=order[:4], outputs=z, targets=order[:4] % 2, lr_sum=0.0)
        assert s.cursor == 4 and rid.endswith("-e0-r0-o0-n4")  # on the cursor: deterministic id
        # custom batching: other indices are used as given, the cursor stops
        s.report(indices=order[[10, 11, 4, 5]], outputs=z, targets=order[:4] % 2, lr_sum=0.1)
        assert s.cursor == 4
        with pytest.raises(ValueError, match="custom batching"):
            s.report(outputs=z, targets=order[:4] % 2, lr_sum=0.2)
        s.report(indices=order[6:10], outputs=z, targets=order[6:10] % 2, lr_sum=0.2)
        assert rep.flush(30)
        s.set_epoch(0)  # the same epoch again: the cursor starts over
        assert s.cursor == 0
    np.testing.assert_array_equal(client.scores(run_id).visits, np.ones(12))


def test_connect_joins_or_creates_and_says_what_is_wrong(score_server: str, run_id: str) -> None:
    from docl.client import ConflictError, NotFoundError

    with pytest.raises(NotFoundError):
        CurriculumSampler.connect(score_server, run_id=run_id)
    with pytest.raises(ValueError, match="give num_samples too"):
        CurriculumSampler.connect(score_server, run_id=run_id, num_outputs=2)
    with CurriculumSampler.connect(
        score_server, run_id=run_id, num_samples=10, num_outputs=2, epochs=2
    ) as s:
        assert s.num_epochs == 2 and s.lrs is None and s.world_size == 1
    with CurriculumSampler.connect(score_server, run_id=run_id) as joined:  # exists now
        assert joined.current.size == 10
    with pytest.raises(ConflictError):  # another config under the same id
        CurriculumSampler.connect(
            score_server, run_id=run_id, num_samples=11, num_outputs=2, epochs=2
        )


def test_httpx_request_lines_stay_quiet_unless_the_user_asks(score_server: str) -> None:
    """Under logging.basicConfig(level=INFO) httpx logs every request; importing
    docl.client quiets that logger unless the user set its level."""
    script = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "if sys.argv[2] == 'user-wants-them':\n"
        "    logging.getLogger('httpx').setLevel(logging.INFO)\n"
        "from docl.client import ScoreClient\n"
        "with ScoreClient(sys.argv[1]) as c:\n"
        "    c.health()\n"
        "logging.getLogger('docl.test').info('done')\n"
    )
    quiet, loud = (
        subprocess.run(
            [sys.executable, "-c", script, score_server, mode],
            capture_output=True,
            text=True,
            timeout=60,
        )
        for mode in ("default", "user-wants-them")
    )
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "INFO:docl.test:done" in quiet.stderr  # INFO lines do show ...
    assert "HTTP Request" not in quiet.stderr  # ... but not httpx's
    assert "HTTP Request: GET" in loud.stderr


def test_a_draw_waits_for_a_restarted_server_then_gives_up_after_the_tolerance(
    redis_url: str,
    server_factory: Any,
    restart_later: Any,
    run_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from docl.client import TransportError

    server = server_factory(redis_url=redis_url)
    with ScoreClient(server.url) as c:
        spl_run(c, run_id, 16)
    caplog.set_level(logging.WARNING, logger="docl.sampler")
    with ScoreClient(server.url, retries=1) as c:
        s = CurriculumSampler(c, run_id, outage_tolerance=60)
        server.kill()  # SIGKILL
        restart_later(server, 2.0)  # the restart thread ends at teardown
        assert sorted(s) == list(range(16))  # drawn after the restart
        text = caplog.text
        assert "drawing epoch 0 failed" in text and "Waiting up to 60 s" in text
        assert "score server back after" in text
        # a short tolerance: the error, with a note saying how long it waited
        server.kill()
        s2 = CurriculumSampler(c, run_id, outage_tolerance=1.0, epoch=1)
        t0 = time.monotonic()
        with pytest.raises(TransportError) as err:
            list(s2)
        assert 1.0 <= time.monotonic() - t0 < 10
        assert any("outage_tolerance is 1 s" in note for note in err.value.__notes__)


def test_sampler_gives_each_batch_its_weights_and_reiterating_never_reprunes(
    client: ScoreClient, run_id: str
) -> None:
    """An infobatch run: ``weights_for`` of every batch is the server's weights of those
    indices, ``weighted_loss`` is mean(w·ℓ), padding samples (borrowed from the next rank)
    get their own weights, and iterating the sampler again within an epoch yields the
    same batches and weights (the reference code's sampler re-prunes on every pass)."""
    n = 45
    client.create_run(
        run_id=run_id, num_samples=n, num_outputs=2, method="infobatch", epochs=4,
        params={"batch_size": 4, "warmup_epochs": 1, "refresh": False, "seed": 3},
    )  # fmt: skip
    report_all(client, run_id, 0)
    for rank in range(2):
        bs = CurriculumBatchSampler(client, run_id, rank=rank, world_size=2, epoch=1, barrier=False)
        flat = CurriculumSampler(client, run_id, rank=rank, world_size=2, epoch=1, barrier=False)
        assert bs.current.weighted
        whole = client.shard(run_id, 1)
        assert whole.weights is not None
        by_index = dict(zip(whole.indices.tolist(), whole.weights.tolist(), strict=True))
        assert set(by_index.values()) <= {1.0, 2.0} and 2.0 in by_index.values()
        first = [(b, bs.weights_for(b).tolist()) for b in bs]
        second = [(b, bs.weights_for(b).tolist()) for b in bs]
        assert first == second
        for b, w in first:
            assert w == [by_index[i] for i in b]
            per = torch.arange(len(b), dtype=torch.float32) + 1.0
            want = (torch.tensor(w) * per).mean()
            torch.testing.assert_close(bs.weighted_loss(per, torch.tensor(b)), want)
        order = list(flat)
        assert list(flat) == order
        assert flat.weights_for(order).tolist() == [by_index[i] for i in order]  # padding too
    # the short way: a DataLoader fed by the sampler, no indices in the loop
    with Reporter(client, run_id) as rep:
        flat = CurriculumSampler(client, run_id, epoch=1, barrier=False, reporter=rep)
        for b in torch.utils.data.DataLoader(range(n), batch_size=5, sampler=flat):
            per = torch.rand(len(b))
            want = (flat.weights_for(b) * per).mean()
            torch.testing.assert_close(flat.weighted_loss(per), want)
            flat.report(outputs=torch.zeros(len(b), 2), targets=b % 2, lr_sum=100.0)
    e0 = CurriculumSampler(client, run_id, epoch=0, barrier=False)  # warmup: unweighted
    assert not e0.current.weighted
    assert e0.weights_for([0, 1, 2]).tolist() == [1.0, 1.0, 1.0]
    per = torch.tensor([1.0, 2.0, 6.0])
    assert e0.weighted_loss(per, [0, 1, 2]).item() == pytest.approx(3.0)
