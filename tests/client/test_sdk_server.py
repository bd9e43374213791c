"""The SDK against a REAL score server (``docl serve`` child process, real redis-server).

Every route through ScoreClient and AsyncScoreClient; binary and JSON give the
same results; errors map to their classes with the server's detail; retries
ride out a server killed and restarted on the same port, and a report retried
after the restart is deduplicated; the Reporter delivers everything, buffers
while the server is down, and drops (counted, warned) when its queue overflows.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from docl.client import (
    AsyncScoreClient,
    AuthenticationError,
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    Reporter,
    ScoreClient,
    ValidationError,
)
from docl.services.embedded import RedisProcess, ServerProcess

N, C = 40, 3


def small_run(client: ScoreClient, run_id: str, **params: Any) -> Any:
    p = {"batch_size": 8, "warmup_epochs": 1, "seed": 3, **params}
    return client.create_run(run_id=run_id, num_samples=N, num_outputs=C, epochs=6, params=p)


def report_epoch(
    client: ScoreClient, run_id: str, e: int, rng: np.random.Generator, **kw: Any
) -> int:
    """Draw epoch e, report every batch of it as the plan says; return the number of reports."""
    ep = client.draw_epoch(run_id, e)
    idx = client.indices(run_id, e)
    lr_sum = ep.lr_sum_start
    for s, batch in enumerate(np.array_split(idx, ep.steps)):
        client.report(
            run_id,
            epoch=e,
            indices=batch,
            outputs=rng.normal(size=(len(batch), C)),
            targets=batch % C,
            lr_sum=lr_sum,
            **kw,
        )
        lr_sum += ep.lr[s]
    return ep.steps


@pytest.fixture
def client(score_server: str) -> Iterator[ScoreClient]:
    with ScoreClient(score_server, retries=2, backoff=0.05) as c:
        yield c


@pytest.fixture(scope="module")
def own_server(redis_server: RedisProcess) -> Iterator[ServerProcess]:
    """A server this module may kill and restart (same port, same Redis)."""
    server = ServerProcess(redis_url=redis_server.url)
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def live(own_server: ServerProcess) -> Iterator[ServerProcess]:
    own_server.start()  # a previous test may have left it down
    yield own_server
    own_server.start()


# ---------------------------------------------------------------------------
# every route
# ---------------------------------------------------------------------------


def test_every_route_through_the_sync_client(client: ScoreClient, run_id: str) -> None:
    assert client.health()["status"] == "ok"
    assert client.ready() is True
    client.wait_ready(timeout=5)
    run = small_run(client, run_id)
    assert run.run_id == run_id and run.num_samples == N and run.last_epoch is None
    assert small_run(client, run_id).created_at == run.created_at  # same config: the same run
    assert run_id in {r.run_id for r in client.list_runs()}
    plan = client.plan(run_id)
    assert plan.num_epochs == 6 and plan.epochs[0].phase == "warmup" and plan.epochs[0].size == N
    assert (
        sum(e.steps for e in plan.epochs) == plan.total_steps == client.get_run(run_id).total_steps
    )

    e0 = client.draw_epoch(run_id, 0)
    assert (e0.epoch, e0.phase, e0.size, e0.steps, len(e0.lr)) == (0, "warmup", N, 5, 5)
    assert client.draw_epoch(run_id, 0) == e0 == client.get_epoch(run_id, 0)  # idempotent
    idx = client.indices(run_id, 0)
    assert sorted(idx.tolist()) == list(range(N))  # warmup: a permutation of all samples
    np.testing.assert_array_equal(client.indices(run_id, 0, offset=10, limit=5), idx[10:15])

    rng = np.random.default_rng(0)
    batch = idx[:8]
    out0 = rng.normal(size=(8, C))
    ack = client.report(run_id, epoch=0, indices=batch, outputs=out0, targets=batch % C, lr_sum=0.0)
    assert (ack.accepted, ack.scored, ack.duplicate) == (8, 0, False)  # first visit: no score yet
    ack = client.report(
        run_id, epoch=0, indices=batch, outputs=out0 + 0.5, targets=batch % C, lr_sum=0.2
    )
    assert (ack.accepted, ack.scored) == (8, 8)
    s = client.scores(run_id)
    assert len(s) == N and s.offset == 0
    assert s.scored.sum() == 8 and set(np.flatnonzero(s.scored)) == set(batch.tolist())
    assert s.visits[batch].tolist() == [2] * 8 and np.all(s.lr_sums[batch] == 0.2)
    page = client.scores(run_id, offset=30, limit=10)
    assert page.offset == 30 and len(page) == 10
    np.testing.assert_array_equal(page.visits, s.visits[30:])

    st = client.stats(run_id)
    assert (st.scored, st.visited, st.visits_total) == (8, 8, 16)
    assert st.counters.reports == 2
    assert "docl" in client.metrics()  # the server's own metric names start with docl_

    run = client.get_run(run_id)
    assert (run.last_epoch, run.epochs_drawn, run.counters.samples_scored) == (0, 1, 8)
    assert client.delete_run(run_id) is True
    with pytest.raises(NotFoundError):
        client.get_run(run_id)
    assert client.delete_run(run_id, missing_ok=True) is False


def test_draw_epoch_without_a_number_draws_the_next_one(client: ScoreClient, run_id: str) -> None:
    small_run(client, run_id)
    assert client.draw_epoch(run_id).epoch == 0
    assert client.draw_epoch(run_id).epoch == 1
    assert client.get_run(run_id).last_epoch == 1
    with pytest.raises(ConflictError, match="in order"):
        client.draw_epoch(run_id, 5)


def test_async_client_against_the_server(score_server: str, run_id: str) -> None:
    async def main() -> None:
        async with AsyncScoreClient(score_server) as ac:
            assert (await ac.health())["status"] == "ok" and await ac.ready()
            run = await ac.create_run(run_id=run_id, num_samples=N, num_outputs=C, epochs=3)
            assert run.run_id == run_id
            ep = await ac.draw_epoch(run_id)
            idx = await ac.indices(run_id, ep.epoch, rank=1, world=2)
            assert len(idx) == N - N // 2
            ack = await ac.report(
                run_id,
                epoch=0,
                indices=idx[:4],
                outputs=np.zeros((4, C)),
                targets=idx[:4] % C,
                lr_sum=0.0,
            )
            assert ack.accepted == 4
            many = await asyncio.gather(*(ac.get_run(run_id) for _ in range(5)))
            assert {r.counters.reports for r in many} == {1}
            s = await ac.scores(run_id)
            assert int(s.visits.sum()) == 4
            assert (await ac.plan(run_id)).num_epochs == 3
            assert (await ac.stats(run_id)).visited == 4
            assert [r.run_id for r in await ac.list_runs() if r.run_id == run_id] == [run_id]
            with pytest.raises(NotFoundError):
                await ac.get_epoch(run_id, 2)
            assert await ac.delete_run(run_id)

    asyncio.run(main())


def test_async_shard_carries_the_weights_of_a_weighted_epoch(
    score_server: str, run_id: str, client: ScoreClient
) -> None:
    """AsyncScoreClient.shard agrees with ScoreClient.shard, JSON and binary alike."""
    client.create_run(run_id=run_id, num_samples=N, num_outputs=C, epochs=4, method="infobatch",
                      params={"warmup_epochs": 1, "refresh": False, "batch_size": 4})  # fmt: skip
    client.draw_epoch(run_id, 0)
    idx = client.indices(run_id, 0)
    client.report(run_id, epoch=0, indices=idx, outputs=np.outer(np.arange(N) % 7, np.ones(C)),
                  targets=idx % C, lr_sum=0.0)  # fmt: skip
    assert client.draw_epoch(run_id, 1).weighted
    want = client.shard(run_id, 1, rank=1, world=2)
    assert want.weights is not None and len(want) == want.weights.shape[0]

    async def main() -> None:
        async with AsyncScoreClient(score_server) as ac:
            for binary in (False, True):
                got = await ac.shard(run_id, 1, rank=1, world=2, binary=binary)
                np.testing.assert_array_equal(got.indices, want.indices)
                assert got.weights is not None and want.weights is not None
                np.testing.assert_array_equal(got.weights, want.weights)

    asyncio.run(main())
    client.delete_run(run_id)


def test_binary_and_json_give_the_same_results(score_server: str, run_id: str) -> None:
    """Two runs fed the same reports, one in binary and one in JSON, end with the same table."""
    with ScoreClient(score_server) as b, ScoreClient(score_server, binary=False) as j:
        rb, rj = run_id + "-b", run_id + "-j"
        small_run(b, rb)
        small_run(j, rj)
        for e in range(3):
            report_epoch(b, rb, e, np.random.default_rng(e))
            report_epoch(j, rj, e, np.random.default_rng(e))
        # the same seed and the same scores give the same draws, through either encoding
        for e in range(3):
            np.testing.assert_array_equal(b.indices(rb, e), j.indices(rj, e))
            np.testing.assert_array_equal(
                b.indices(rb, e, rank=1, world=3), b.indices(rb, e, rank=1, world=3, binary=False)
            )
        sb, sj = b.scores(rb), j.scores(rj)
        assert sb.scored.sum() > 0
        for x, y in ((sb.scores, sj.scores), (sb.visits, sj.visits), (sb.lr_sums, sj.lr_sums)):
            np.testing.assert_array_equal(x, y)  # NaN == NaN here
        sbj = b.scores(rb, binary=False)  # one table, two encodings
        np.testing.assert_array_equal(sb.scores, sbj.scores)
        np.testing.assert_array_equal(sb.lr_sums, sbj.lr_sums)
        np.testing.assert_array_equal(sb.visits, sbj.visits)
        # regression targets and features, both encodings
        for cl, rid in ((b, rb + "-reg"), (j, rj + "-reg")):
            cl.create_run(run_id=rid, num_samples=N, num_outputs=2, task="regression", epochs=2)
            cl.draw_epoch(rid, 0)
            ack = cl.report(
                rid, epoch=0, indices=[1, 2], outputs=[[0.0, 1.0], [1.0, 2.0]],
                targets=[[0.5, 0.5], [1.0, 1.0]], features=[[1.0, 0.0, 2.0], [0.0, 1.0, 2.0]], lr_sum=0.0,
            )  # fmt: skip
            assert ack.accepted == 2
        assert b.scores(rb + "-reg").visits.tolist() == j.scores(rj + "-reg").visits.tolist()


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False])
def test_bad_reports_are_422_with_the_servers_detail(
    client: ScoreClient, run_id: str, binary: bool, redis_url: str, run_snapshot: Callable[..., Any]
) -> None:
    small_run(client, run_id)
    client.draw_epoch(run_id, 0)
    before = run_snapshot(redis_url, run_id)
    cases = [
        ({"indices": [N + 5]}, "out of range"),
        ({"outputs": [[1.0, float("nan"), 0.0]]}, "NaN"),
        ({"targets": [C]}, "class id"),
        ({"lr_sum": float("inf")}, "lr_sum"),
    ]
    for bad, detail in cases:
        args: dict[str, Any] = {
            "indices": [1],
            "outputs": [[0.0, 1.0, 2.0]],
            "targets": [0],
            "lr_sum": 0.0,
        }
        args.update(bad)
        with pytest.raises(ValidationError) as ei:
            client.report(run_id, epoch=0, binary=binary, **args)
        assert ei.value.status == 422 and detail in ei.value.detail, ei.value.detail
    assert run_snapshot(redis_url, run_id) == before  # a rejected report changes nothing


def test_404_and_409_map_to_their_errors(client: ScoreClient, run_id: str) -> None:
    with pytest.raises(NotFoundError, match=run_id):
        client.get_run(run_id)
    with pytest.raises(NotFoundError):
        client.indices(run_id, 0)
    small_run(client, run_id)
    with pytest.raises(NotFoundError):
        client.get_epoch(run_id, 0)  # not drawn yet
    with pytest.raises(ConflictError, match="different config") as ei:
        small_run(client, run_id, tau=0.5)
    assert ei.value.status == 409 and ei.value.method == "POST"


def test_401_without_or_with_a_wrong_token_and_413_over_the_body_limit(
    server_factory: Callable[..., ServerProcess], redis_url: str, run_id: str
) -> None:
    server = server_factory(
        redis_url=redis_url, env={"DOCL_API_TOKEN": "s3cret", "DOCL_MAX_BODY_BYTES": "4096"}
    )
    with ScoreClient(server.url, token="") as anon, ScoreClient(server.url, token="wrong") as wrong:
        assert anon.health()["status"] == "ok"  # health stays open
        for c in (anon, wrong):
            with pytest.raises(AuthenticationError) as ei:
                c.list_runs()
            assert ei.value.status == 401 and ei.value.detail
    with ScoreClient(server.url, token="s3cret") as c:
        c.create_run(run_id=run_id, num_samples=10_000, num_outputs=C, epochs=2)
        c.draw_epoch(run_id, 0)
        big = np.arange(500)  # 500 · (8 + 12 + 8) bytes > 4096
        with pytest.raises(PayloadTooLargeError) as ei:
            c.report(
                run_id,
                epoch=0,
                indices=big,
                outputs=np.zeros((500, C)),
                targets=big % C,
                lr_sum=0.0,
            )
        assert ei.value.status == 413 and ei.value.detail
        assert c.get_run(run_id).counters.reports == 0


# ---------------------------------------------------------------------------
# a server killed and restarted mid-run
# ---------------------------------------------------------------------------


def test_retries_ride_out_a_restart_and_a_retried_report_is_deduplicated(
    live: ServerProcess, run_id: str
) -> None:
    with ScoreClient(live.url, retries=12, backoff=0.25, max_backoff=2.0) as client:
        small_run(client, run_id)
        client.draw_epoch(run_id, 0)
        a = client.report(run_id, epoch=0, indices=[1, 2], outputs=np.zeros((2, C)), targets=[0, 1],
                          lr_sum=0.0, report_id="rep-A")  # fmt: skip
        assert not a.duplicate
        live.kill()  # SIGKILL: as a crash would
        results: dict[str, Any] = {}

        def during_outage() -> None:
            try:
                # "rep-A" again (its answer "was lost"), then a new one: both wait for the server.
                results["A"] = client.report(run_id, epoch=0, indices=[1, 2], outputs=np.zeros((2, C)),
                                             targets=[0, 1], lr_sum=0.0, report_id="rep-A")  # fmt: skip
                results["B"] = client.report(run_id, epoch=0, indices=[3, 4], outputs=np.zeros((2, C)),
                                             targets=[0, 1], lr_sum=0.0, report_id="rep-B")  # fmt: skip
            except Exception as e:
                results["error"] = e

        t = threading.Thread(target=during_outage)
        t.start()
        time.sleep(1.0)
        assert t.is_alive() and client.retry_count >= 1  # retrying against a dead server
        live.start()  # same port
        t.join(60)
        assert "error" not in results, results.get("error")
        assert results["A"].duplicate is True and results["A"].scored == 0
        assert results["B"].duplicate is False and results["B"].accepted == 2
        run = client.get_run(run_id)
        assert (run.counters.reports, run.counters.duplicates) == (2, 1)
        visits = client.scores(run_id).visits
        assert visits[[1, 2, 3, 4]].tolist() == [1, 1, 1, 1] and int(visits.sum()) == 4


# ---------------------------------------------------------------------------
# the Reporter against the real server
# ---------------------------------------------------------------------------


def _reporter_epoch(
    rep: Reporter, client: ScoreClient, run_id: str, e: int
) -> tuple[int, np.ndarray]:
    ep = client.draw_epoch(run_id, e)
    idx = client.indices(run_id, e)
    rng = np.random.default_rng(e)
    lr_sum = ep.lr_sum_start
    batches = np.array_split(idx, ep.steps)
    for s, batch in enumerate(batches):
        rep.report(epoch=e, indices=batch, outputs=rng.normal(size=(len(batch), C)), targets=batch % C,
                   lr_sum=lr_sum, report_id=f"{run_id}-e{e}-s{s}")  # fmt: skip
        lr_sum += ep.lr[s]
    return len(batches), idx


def test_reporter_flush_delivers_everything(client: ScoreClient, run_id: str) -> None:
    small_run(client, run_id)
    with Reporter(client, run_id, senders=2) as rep:
        counts = np.zeros(N, dtype=np.int64)
        total = 0
        for e in range(3):
            n, idx = _reporter_epoch(rep, client, run_id, e)
            total += n
            assert rep.flush(timeout=30) is True  # before the next draw, as the flow requires
            counts[idx] += 1
        c = rep.counters()
        assert (c.queued, c.sent, c.pending, c.dropped, c.rejected, c.duplicates) == (
            total,
            total,
            0,
            0,
            0,
            0,
        )
    srv = client.scores(run_id)
    np.testing.assert_array_equal(srv.visits, counts)  # every report arrived, once
    run = client.get_run(run_id)
    assert run.counters.reports == total and c.scored == run.counters.samples_scored > 0


def test_report_many_applies_each_report_once(client: ScoreClient, run_id: str) -> None:
    small_run(client, run_id)
    client.draw_epoch(run_id, 0)
    idx = client.indices(run_id, 0)
    rng = np.random.default_rng(5)
    parts = np.array_split(idx, 5)
    reports = [
        {"epoch": 0, "indices": p, "outputs": rng.normal(size=(len(p), C)), "targets": p % C,
         "lr_sum": 0.0, "report_id": f"{run_id}-m{k}"}
        for k, p in enumerate(parts)
    ]  # fmt: skip
    ack = client.report_many(run_id, reports)
    assert [a.accepted for a in ack.reports] == [len(p) for p in parts] and ack.duplicates == 0
    again = client.report_many(
        run_id, [*reports[1:3], {**reports[0], "report_id": "new", "lr_sum": 1.0}]
    )
    assert [a.duplicate for a in again.reports] == [True, True, False]
    assert again.reports[2].scored == len(parts[0])  # seen before, lr_sum advanced
    visits = client.scores(run_id).visits
    expected = np.ones(N, np.int64)
    expected[parts[0]] += 1
    np.testing.assert_array_equal(visits, expected)
    with pytest.raises(ValidationError, match="report 1"):
        client.report_many(run_id, [{**reports[0], "report_id": "x1", "lr_sum": 2.0},
                                    {**reports[1], "report_id": "x2", "indices": parts[1] + N}])  # fmt: skip
    np.testing.assert_array_equal(client.scores(run_id).visits, expected)  # nothing written


def test_reporter_coalesces_under_load_and_delivers_each_report_once(
    client: ScoreClient, run_id: str
) -> None:
    """Reports queued faster than one sender's round trips go out many per request;
    every one is applied exactly once."""
    n, c, b = 4000, 3, 10
    client.create_run(run_id=run_id, num_samples=n, num_outputs=c, epochs=2,
                      params={"batch_size": b, "warmup_epochs": 1})  # fmt: skip
    client.draw_epoch(run_id, 0)
    out = np.zeros((b, c), np.float32)
    with Reporter(client, run_id, senders=1, max_queue=n) as rep:
        for k in range(n // b):
            idx = np.arange(k * b, (k + 1) * b)
            rep.report(epoch=0, indices=idx, outputs=out, targets=idx % c, lr_sum=0.0)
        assert rep.flush(timeout=120)
        counters = rep.counters()
    assert counters.sent == n // b and counters.dropped == counters.rejected == 0
    assert counters.requests < counters.sent / 4  # coalesced: several reports per request
    assert (client.scores(run_id).visits == 1).all()
    assert client.get_run(run_id).counters.reports == n // b


def test_reporter_buffers_while_the_server_is_down_then_delivers(
    live: ServerProcess, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with ScoreClient(live.url) as client:
        small_run(client, run_id)
        ep = client.draw_epoch(run_id, 0)
        idx = client.indices(run_id, 0)
        rep = Reporter(client, run_id, senders=2, backoff=0.05, max_backoff=0.5)
        with caplog.at_level(logging.WARNING, logger="docl.reporter"):
            live.kill()
            t0 = time.perf_counter()
            for s, batch in enumerate(np.array_split(idx, ep.steps)):
                rep.report(epoch=0, indices=batch, outputs=np.ones((len(batch), C)), targets=batch % C,
                           lr_sum=ep.lr_sum_start + sum(ep.lr[:s]))  # fmt: skip
            assert time.perf_counter() - t0 < 0.5  # never blocked on the dead server
            assert rep.flush(timeout=1.0) is False
            assert rep.pending == ep.steps and rep.retried >= 1
            assert any("cannot deliver" in r.message for r in caplog.records)
            live.start()
            assert rep.flush(timeout=60) is True
            assert any("reachable again" in r.message for r in caplog.records)
        c = rep.counters()
        assert (c.sent, c.dropped, c.pending, c.rejected) == (ep.steps, 0, 0, 0)
        rep.close()
        visits = client.scores(run_id).visits
        assert visits.tolist() == [1] * N  # each report applied exactly once
        assert client.get_run(run_id).counters.reports == ep.steps


def test_reporter_overflow_drops_the_oldest_counts_and_warns(
    live: ServerProcess, run_id: str, caplog: pytest.LogCaptureFixture
) -> None:
    with ScoreClient(live.url) as client:
        small_run(client, run_id)
        client.draw_epoch(run_id, 0)
        rep = Reporter(client, run_id, max_queue=4, senders=1, backoff=0.05, max_backoff=0.2)
        live.kill()
        with caplog.at_level(logging.WARNING, logger="docl.reporter"):
            for i in range(12):  # one report per sample 0..11
                rep.report(epoch=0, indices=[i], outputs=np.zeros((1, C)), targets=[0], lr_sum=0.0)
        assert any("queue full" in r.message for r in caplog.records)
        dropped = rep.dropped
        # 4 waiting, the rest of the 12 dropped but for those a sender took (one batch, in
        # flight: retried, not dropped) before the queue overflowed
        assert 4 <= dropped <= 8 and rep.pending == 12 - dropped
        live.start()
        assert rep.flush(timeout=60)
        rep.close()
        c = rep.counters()
        assert c.sent + c.dropped == 12 and c.dropped == dropped
        visited = set(np.flatnonzero(client.scores(run_id).visits).tolist())
        assert len(visited) == c.sent
        assert {8, 9, 10, 11} <= visited  # the newest were kept; the oldest were dropped


def test_a_reporter_left_open_flushes_at_exit(score_server: str, run_id: str) -> None:
    with ScoreClient(score_server) as client:
        small_run(client, run_id)
        client.draw_epoch(run_id, 0)
    script = textwrap.dedent(
        f"""
        import numpy as np
        from docl.client import ScoreClient, Reporter
        client = ScoreClient({score_server!r})
        rep = Reporter(client, {run_id!r})
        for i in range(10):
            rep.report(epoch=0, indices=[i], outputs=np.zeros((1, {C})), targets=[0], lr_sum=0.0)
        # no flush, no close: the interpreter exits right away
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with ScoreClient(score_server) as client:
        assert client.scores(run_id).visits[:10].tolist() == [1] * 10


# -- issue 19: GET /v1/runs is paginated; list_runs follows every page -------------------------
def test_list_runs_follows_every_page_oldest_first(
    redis_factory: Callable[..., RedisProcess], server_factory: Callable[..., ServerProcess]
) -> None:
    """Five runs created z..v (ids sort the other way round from their age), pages of 2:
    three requests, every run once, oldest first. Before the fix the SDK read one answer
    and had no page_size."""
    url = server_factory(redis_url=redis_factory().url).url
    ids = ["z-run", "y-run", "x-run", "w-run", "v-run"]
    with ScoreClient(url) as c:
        for rid in ids:
            c.create_run(run_id=rid, num_samples=10, num_outputs=2, epochs=2)
        assert [r.run_id for r in c.list_runs(page_size=2)] == ids
        assert [r.run_id for r in c.list_runs()] == ids
        page = c.list_runs_page(limit=2)
        assert [r.run_id for r in page.runs] == ["v-run", "w-run"] and page.next == "w-run"
        last = c.list_runs_page(after="x-run", limit=2)
        assert [r.run_id for r in last.runs] == ["y-run", "z-run"] and last.next is None

    async def main() -> list[str]:
        async with AsyncScoreClient(url) as ac:
            return [r.run_id for r in await ac.list_runs(page_size=3)]

    assert asyncio.run(main()) == ids
