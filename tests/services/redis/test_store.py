"""The Redis store (services/redis/ + its Lua scripts) against real redis-server processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest
import redis

from docl.services.config import Settings
from docl.services.embedded import RedisClusterProcess, RedisProcess
from docl.services.engine import Engine
from docl.services.layout import CAS_BYTES, RECORD_HEAD, RunLayout
from docl.services.redis.keys import keys_of
from docl.services.redis.store import RedisStore as Store
from docl.services.storage import (
    ClusterStateError,
    CommitStatus,
    CreateStatus,
    GatherStatus,
    NotReplicated,
    ScatterStatus,
    StoreUnavailable,
)
from docl.wire import encoding as wire
from docl.wire.models import RunCreate

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _layout(run_id: str, n: int = 100, c: int = 3, **kw: Any) -> RunLayout:
    args: dict[str, Any] = {
        "output_dtype": "float32",
        "chunk_bytes": 64 << 20,
        "loss_column": False,
        "exp3": False,
    }
    return RunLayout(run_id=run_id, num_samples=n, num_outputs=c, **{**args, **kw})


def test_layout_sizes_keys_and_chunks() -> None:
    lay = _layout("r", n=1000, c=3)
    assert lay.rec_size == 40 and lay.rec_size % 8 == 0  # 24 + 12 -> padded to 40
    assert _layout("r", c=3, output_dtype="float16").rec_size == 32  # 24 + 6 -> 32
    assert lay.rec_dtype.itemsize == lay.rec_size and lay.rec_dtype.fields is not None
    assert lay.rec_dtype.fields["g"][1] == RECORD_HEAD
    small = _layout("r", n=1000, c=3, chunk_bytes=400, loss_column=True, exp3=True)
    names = keys_of(small)
    assert small.rec_per_chunk == 10 and len(names.rec) == 100
    assert small.col_per_chunk == 100 and len(names.score) == 10 == len(names.loss)
    assert len(names.drawn) == 5 and len(names.incl) == 10
    assert len(names.epoch(3, 1000)) == 20
    every = [*names.static(), *names.epoch(0, 1000)]
    assert all(k.startswith("{run:r}:") for k in every)  # one hash tag: one cluster slot
    assert len(set(every)) == len(every)
    assert lay.memory_bytes(keep_epochs=4) == 1000 * (40 + 4 + 8 + 2 + 32)
    again = RunLayout.from_json("r", small.to_json())
    assert again == small


def _engine(url: str, **settings: Any) -> Engine:
    store = Store.from_url(url)
    return Engine(store, Settings(redis_url=url, **settings))


async def _train(
    engine: Engine, run_id: str, n: int, epochs: int, *, exp3: bool = False
) -> tuple[np.ndarray, ...]:
    await engine.create_run(
        RunCreate(
            run_id=run_id,
            num_samples=n,
            num_outputs=3,
            epochs=epochs,
            params={"warmup_epochs": 1, "batch_size": 16, "exp3": exp3, "episode_epochs": 2},
        )
    )
    rng = np.random.default_rng(0)
    table = rng.normal(size=(n, 3)).astype(np.float32)
    for e in range(epochs):
        ep = await engine.draw_epoch(run_id, e)
        data, _, _, size = await engine.indices(run_id, e, rank=0, world=1, offset=0, limit=None)
        idx = np.frombuffer(data, "<i8")
        assert idx.shape[0] == size == ep.size
        lr = ep.lr_sum_start
        for s, batch in enumerate(np.array_split(idx, ep.steps)):
            out = table[batch] * (1 + 0.1 * e) + 0.01 * s
            rep = wire.decode_report(
                wire.encode_report(
                    report_id=f"{e}-{s}",
                    epoch=e,
                    lr_sum=lr,
                    indices=batch,
                    outputs=out,
                    targets=batch % 3,
                )
            )
            ack = await engine.apply_report(run_id, rep)
            assert not ack.duplicate
            lr += ep.lr[s]
    _, scores, visits, lrs = await engine.scores(run_id, 0, None)
    stats = await engine.stats(run_id)
    await engine.store.close()
    return scores, visits, lrs, np.asarray(stats.selection.counts)


@pytest.mark.parametrize("exp3", [False, True])
def test_tiny_chunks_give_the_same_results_as_one_chunk(
    store_url: str, sync_redis: Callable[[str], Any], run_id: str, exp3: bool
) -> None:
    """Every chunked path (records, columns, epoch indices, selection counts) at chunk
    sizes of a few hundred bytes agrees with the single-chunk layout."""
    n = 300
    one = run(_train(_engine(store_url), run_id + "a", n, 5, exp3=exp3))
    many = run(_train(_engine(store_url, chunk_bytes=256), run_id + "b", n, 5, exp3=exp3))
    lay = RunLayout.from_json(
        run_id + "b", sync_redis(store_url).hget(f"{{run:{run_id}b}}:meta", "layout")
    )
    names = keys_of(lay)
    assert len(names.rec) > 10 and len(names.score) > 3 and len(names.epoch(0, n)) > 5
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)
    assert one[1].sum() > n  # samples were visited several times


def test_scatter_compare_and_set_writes_nothing_on_conflict(
    store_url: str, sync_redis: Callable[[str], Any], run_id: str
) -> None:
    async def scenario() -> None:
        store = Store.from_url(store_url)
        lay = _layout(run_id, n=50, c=2)
        status, uid, _ = await store.create_run(lay, '{"x":1}', "uid-1", 0.0)
        assert status == CreateStatus.CREATED
        r = sync_redis(store_url)
        r.hset(keys_of(lay).meta, "last_epoch", 0)
        idx = np.array([4, 9, 30])

        async def write(rid: str, rows: np.ndarray, lr: float) -> Any:
            new = rows.copy()
            new["lr_sum"], new["visits"] = lr, rows["visits"] + 1
            return await store.scatter(
                lay, uid, rid, now=100.0, indices=idx, expected=rows, write=np.ones(3, bool),
                records=new, scores=np.zeros(3, np.float32), losses=np.zeros(3, np.float32),
                counters=(1, 3, 0, 0, 0),
            )  # fmt: skip

        g = await store.gather(lay, uid, "a", idx)
        assert (
            g.status == GatherStatus.OK
            and g.records is not None
            and (g.records["visits"] == 0).all()
        )
        assert (await write("a", g.records, 1.0)).status == ScatterStatus.COMPARED
        # "b" computed from the state before "a" wrote: a conflict on every sample
        before = {k: r.dump(k) for k in r.scan_iter(match=f"{keys_of(lay).prefix}:*")}
        res = await write("b", g.records, 2.0)
        assert res.status == ScatterStatus.CONFLICT and res.conflicts == (0, 1, 2)
        assert res.current is not None and (res.current["visits"] == 1).all()
        assert (res.current["lr_sum"] == 1.0).all()
        assert {k: r.dump(k) for k in r.scan_iter(match=f"{keys_of(lay).prefix}:*")} == before
        # recomputed from the current rows it goes through; a replay of "a" is a duplicate
        assert (await write("b", res.current, 2.0)).status == ScatterStatus.COMPARED
        assert (await write("a", res.current, 3.0)).status == ScatterStatus.DUPLICATE
        assert (await store.gather(lay, uid, "a", idx)).status == GatherStatus.DUPLICATE
        # a caller holding another incarnation's uid is told so and writes nothing
        assert (await write("c", res.current, 4.0)).status == ScatterStatus.CONFLICT
        assert (await store.gather(lay, "other-uid", "c", idx)).status == GatherStatus.GONE
        counters = await store.counters(lay)
        assert counters["reports"] == 2 and counters["duplicates"] == 1
        await store.close()

    run(scenario())


def test_dedup_markers_expire_after_the_ttl(store_url: str, run_id: str) -> None:
    async def scenario() -> None:
        store = Store.from_url(store_url, dedup_ttl_s=10.0)
        lay = _layout(run_id, n=10, c=1)
        _, uid, _ = await store.create_run(lay, "{}", "u", 0.0)
        idx = np.array([1])
        rows = np.zeros(1, lay.rec_dtype)

        async def scatter(rid: str, now: float, rows: np.ndarray) -> int:
            new = rows.copy()
            new["visits"] += 1
            new["lr_sum"] = now
            res = await store.scatter(lay, uid, rid, now=now, indices=idx, expected=rows, write=np.ones(1, bool),
                                      records=new, scores=np.zeros(1, np.float32), losses=np.zeros(1, np.float32),
                                      counters=(1, 1, 0, 0, 0))  # fmt: skip
            return res.status

        assert await scatter("old", 100.0, rows) == ScatterStatus.COMPARED
        rows["visits"], rows["lr_sum"] = 1, 100.0
        assert (
            await scatter("old", 105.0, rows) == ScatterStatus.DUPLICATE
        )  # within the TTL: a duplicate
        assert (
            await scatter("new", 120.0, rows) == ScatterStatus.COMPARED
        )  # trims markers older than 110
        rows["visits"], rows["lr_sum"] = 2, 120.0
        members = await store.redis.zrange(keys_of(lay).reports, 0, -1)
        assert members == [b"new"]
        await store.close()

    run(scenario())


def test_wait_for_replicas_refuses_the_ack_but_keeps_the_write_and_a_resend_is_a_duplicate(
    store_url: str, run_id: str
) -> None:
    """``wait_replicas`` asks for more replicas than there are (none here): the report's
    script applies, then WAIT on the same connection counts 0 of 1 within ``wait_ms``, so
    :class:`NotReplicated` is raised after ~wait_ms. A re-send of the same report id is a
    duplicate (counted once, also WAITed for); with WAIT off nothing is waited for."""

    async def scenario() -> None:
        store = Store.from_url(store_url, wait_replicas=1, wait_ms=150)
        lay = _layout(run_id, n=10, c=1)
        _, uid, _ = await store.create_run(lay, "{}", "u", 0.0)
        idx, rows = np.array([3, 7]), np.zeros(2, lay.rec_dtype)
        new = rows.copy()
        new["visits"], new["lr_sum"] = 1, 0.5
        kw: dict[str, Any] = dict(
            now=100.0, indices=idx, expected=rows, write=np.ones(2, bool), records=new,
            scores=np.zeros(2, np.float32), losses=np.zeros(2, np.float32),
            counters=(1, 2, 0, 0, 2),
        )  # fmt: skip
        t0 = time.monotonic()
        with pytest.raises(NotReplicated, match=r"only 0 of 1 replica.*DOCL_REDIS_WAIT_REPLICAS=1"):
            await store.scatter(lay, uid, "r1", **kw)
        assert 0.14 <= time.monotonic() - t0 < 5.0  # WAIT waited its 150 ms
        assert (await store.counters(lay))["reports"] == 1  # applied on the primary
        with pytest.raises(NotReplicated):  # the duplicate's count waits too
            await store.scatter(lay, uid, "r1", **kw)
        with pytest.raises(NotReplicated):
            await store.count_duplicate(lay)
        # Without the hot path (TLS, or a call handed over to redis-py): one Redis WAITs
        # in a redis-py pipeline (one connection); a cluster applies the write and answers
        # at once (redis-py would send WAIT to every primary, on other connections).
        slow = Store(store.redis, wait_replicas=1, wait_ms=150)
        kw2 = {**kw, "indices": np.array([5]), "expected": rows[:1], "write": np.ones(1, bool),
               "records": new[:1], "scores": np.zeros(1, np.float32),
               "losses": np.zeros(1, np.float32), "counters": (1, 1, 0, 0, 1)}  # fmt: skip
        t0 = time.monotonic()
        why = "within 150 ms" if slow.cluster is None else "could not be checked"
        with pytest.raises(NotReplicated, match=why):
            await slow.scatter(lay, uid, "r2", **kw2)
        waited = time.monotonic() - t0
        assert waited >= 0.14 if slow.cluster is None else waited < 0.14
        plain = Store.from_url(store_url)  # WAIT off: acknowledged at once
        assert (await plain.scatter(lay, uid, "r1", **kw)).status == ScatterStatus.DUPLICATE
        counters = await plain.counters(lay)
        assert counters["reports"] == 2 and counters["duplicates"] == 3
        records = await plain.read_records(lay, 0, 10)
        assert records["visits"].tolist() == [0, 0, 0, 1, 0, 1, 0, 1, 0, 0]
        with pytest.raises(ValueError, match="wait_ms"):
            Store.from_url(store_url, wait_replicas=1, wait_ms=0)  # WAIT n 0 blocks forever
        with pytest.raises(ValueError, match="DOCL_REDIS_TIMEOUT_S"):
            Store.from_url(store_url, wait_replicas=1, wait_ms=5000, timeout_s=5.0)
        with pytest.raises(ValueError, match="rediss"):  # TLS cluster: no hot path to WAIT on
            Store.from_url("rediss+cluster://127.0.0.1:1", wait_replicas=1)
        await store.close()
        await plain.close()

    run(scenario())


def test_commit_epoch_first_wins_in_order_and_drops_old_indices(
    store_url: str, run_id: str
) -> None:
    async def scenario() -> None:
        store = Store.from_url(store_url)
        lay = _layout(run_id, n=20, c=1)
        _, uid, _ = await store.create_run(lay, "{}", "u", 0.0)
        drawn = np.zeros(20, np.uint16)
        perm = np.random.default_rng(0).permutation(20)
        assert (
            await store.commit_epoch(lay, uid, 1, "{}", perm, drawn, None, None)
            == CommitStatus.OUT_OF_ORDER
        )  # out of order
        assert (
            await store.commit_epoch(lay, uid, 0, '{"w":1}', perm, drawn + 1, None, None)
            == CommitStatus.COMMITTED
        )
        assert (
            await store.commit_epoch(lay, uid, 0, '{"w":2}', perm[::-1], drawn, None, None)
            == CommitStatus.EXISTS
        )
        assert await store.epoch_json(lay, 0) == '{"w":1}'
        assert await store.read_indices(lay, 0, 20, 3, 9) == perm[3:9].astype("<i8").tobytes()
        assert (await store.read_column(lay, "drawn", 0, 20) == 1).all()
        assert (
            await store.commit_epoch(lay, "stale-uid", 1, "{}", perm, drawn, None, None)
            == CommitStatus.GONE
        )
        assert (
            await store.commit_epoch(lay, uid, 1, "{}", perm, drawn, None, (0, 20))
            == CommitStatus.COMMITTED
        )
        assert await store.read_indices(lay, 0, 20, 0, 5) is None  # dropped
        assert await store.epoch_json(lay, 0) == '{"w":1}'  # the epoch itself is still known
        deleted = await store.delete_run(lay)
        assert deleted >= 4 and await store.run_keys(lay) == []
        await store.close()

    run(scenario())


def test_fast_client_survives_script_flush_and_a_redis_restart(
    redis_factory: Callable[..., RedisProcess], run_id: str
) -> None:
    # single Redis only: it restarts the Redis (a cluster node's loss: the failover test)
    proc = redis_factory(appendonly=True, appendfsync="always")

    async def scenario() -> None:
        store = Store.from_url(proc.unix_url)
        assert (
            store.connection.fast is not None and store.connection.fast.path is not None
        )  # the Unix socket path
        lay = _layout(run_id, n=10, c=1)
        _, uid, _ = await store.create_run(lay, "{}", "u", 0.0)
        await store.redis.script_flush()
        g = await store.gather(lay, uid, "a", np.array([1, 2]))  # NOSCRIPT -> loaded again
        assert g.status == GatherStatus.OK
        proc.kill()
        proc.start()
        g = await store.gather(lay, uid, "a", np.array([1, 2]))  # reconnects, reloads
        assert g.status == GatherStatus.OK and g.records is not None and g.records.shape == (2,)
        proc.kill()
        with pytest.raises(StoreUnavailable):
            await store.gather(lay, uid, "a", np.array([1]))
        proc.start()
        await store.close()

    run(scenario())


def test_heads_compared_are_lr_sum_and_visits() -> None:
    lay = _layout("r", c=2)
    rec = np.zeros(1, lay.rec_dtype)
    rec["lr_sum"], rec["visits"], rec["score"] = 1.5, 3, 7.0
    head = rec.view(np.uint8)[:CAS_BYTES].tobytes()
    assert head == np.float64(1.5).tobytes() + np.uint32(3).tobytes()


def test_score_log_is_folded_into_draws_and_compacted(
    store_url: str, sync_redis: Callable[[str], Any], run_id: str
) -> None:
    """Reports append their scores to the log; a draw folds the log into the score
    column it draws from and compacts it; stats read through the log."""

    async def scenario() -> None:
        engine = _engine(store_url)
        n = 64
        await engine.create_run(
            RunCreate(
                run_id=run_id,
                num_samples=n,
                num_outputs=3,
                epochs=4,
                method="spl",
                params={"warmup_epochs": 2, "batch_size": 16},
            )
        )
        st = await engine.state(run_id)
        lay = st.layout
        assert lay.loss_column  # spl keeps the loss column: the log carries losses too
        r = sync_redis(store_url)
        rng = np.random.default_rng(0)

        async def report_all(e: int, lr: float) -> None:
            data, _, _, _ = await engine.indices(run_id, e, rank=0, world=1, offset=0, limit=None)
            idx = np.frombuffer(data, "<i8")
            for j, batch in enumerate(np.array_split(idx, 4)):
                out = rng.normal(size=(batch.size, 3)).astype(np.float32)
                rep = wire.decode_report(
                    wire.encode_report(
                        report_id=f"{e}-{lr}-{j}",
                        epoch=e,
                        lr_sum=lr,
                        indices=batch,
                        outputs=out,
                        targets=batch % 3,
                    )
                )
                await engine.apply_report(run_id, rep)

        await engine.draw_epoch(run_id, 0)
        await report_all(0, 0.0)
        await report_all(0, 1.0)  # same epoch again, later lr: every sample scored
        assert r.llen(keys_of(lay).scorelog) == 8
        stored = await engine.store.read_column(lay, "score", 0, n)
        assert np.isnan(stored).all()  # the column itself has not been touched yet
        _, rec_scores, _, _ = await engine.scores(run_id, 0, None)
        np.testing.assert_array_equal(await engine.store.current_scores(lay), rec_scores)
        stats = await engine.stats(run_id)
        assert stats.scored == n
        await engine.draw_epoch(run_id, 1)  # folds the log in and compacts it
        assert r.llen(keys_of(lay).scorelog) == 0 and r.hget(keys_of(lay).meta, "log_base") == b"8"
        np.testing.assert_array_equal(
            await engine.store.read_column(lay, "score", 0, n), rec_scores
        )
        recs = await engine.store.read_records(lay, 0, n)
        np.testing.assert_array_equal(
            await engine.store.read_column(lay, "loss", 0, n), recs["loss"]
        )
        await engine.store.close()

    run(scenario())


def test_fold_log_later_entries_win() -> None:
    from docl.services.layout import fold_log

    lay = _layout("r", n=200_000, c=1)
    rng = np.random.default_rng(0)
    entries = []
    truth = np.full(lay.num_samples, np.nan, np.float32)
    for k in range(30):  # overlapping entries: every index appears in several
        e = np.empty(20_000, lay.log_dtype)
        e["i"] = rng.choice(50_000, size=20_000, replace=False)
        e["s"] = k + rng.random(20_000, dtype=np.float32)
        truth[e["i"]] = e["s"]  # sequential, one entry at a time: the reference
        entries.append(e.tobytes())
    got = np.full(lay.num_samples, np.nan, np.float32)
    fold_log(lay, entries, got, None)
    np.testing.assert_array_equal(got, truth)


def _rep(rid: str, lr: float, idx: np.ndarray, seed: int, c: int = 3) -> wire.ReportArrays:
    out = np.random.default_rng(seed).normal(size=(idx.size, c)).astype(np.float32)
    return wire.decode_report(
        wire.encode_report(
            report_id=rid, epoch=0, lr_sum=lr, indices=idx, outputs=out, targets=idx % c
        )
    )


def test_write_lease_skips_the_compare_until_another_writer_revokes_it(
    store_url: str, sync_redis: Callable[[str], Any], run_id: str
) -> None:
    """Two engines (two server processes) on one run. The lease holder's reports write
    with one SETRANGE per sample and no GETRANGE; the other engine's write revokes
    the lease, and the holder's next report compares, recomputes what changed, and
    ends with exactly the state of the same reports applied one by one elsewhere."""
    r = sync_redis(store_url)

    def calls(cmd: str) -> int:
        """Calls of ``cmd`` so far (summed over the primaries of a cluster)."""
        if isinstance(r, redis.RedisCluster):
            per_node = r.info("commandstats", target_nodes=redis.RedisCluster.PRIMARIES)
            stats = list(per_node.values())
        else:
            stats = [r.info("commandstats")]
        return sum(int(st.get(f"cmdstat_{cmd}", {}).get("calls", 0)) for st in stats)

    async def scenario() -> None:
        a, b, ref = _engine(store_url), _engine(store_url), _engine(store_url)
        for eng, rid in ((a, run_id), (ref, run_id + "-ref")):
            await eng.create_run(
                RunCreate(run_id=rid, num_samples=64, num_outputs=3, epochs=2,
                          params={"warmup_epochs": 1, "batch_size": 16})
            )  # fmt: skip
            await eng.draw_epoch(rid, 0)
        lo, mid, hi = np.arange(0, 32), np.arange(16, 48), np.arange(0, 64)
        steps = [(a, "r1", 0.0, lo), (a, "r2", 1.0, lo), (b, "r3", 2.0, mid), (a, "r4", 3.0, lo),
                 (a, "r5", 4.0, lo), (a, "r6", 4.5, lo), (b, "r7", 5.0, hi)]  # fmt: skip
        scored = 0
        for k, (eng, rid, lr, idx) in enumerate(steps):
            get0, set0 = calls("getrange"), calls("setrange")
            ack = await eng.apply_report(run_id, _rep(rid, lr, idx, seed=k))
            assert not ack.duplicate
            scored += ack.scored
            reads, writes = calls("getrange") - get0, calls("setrange") - set0
            if rid in ("r2", "r6"):  # a's lease holds: writes only, no read of Redis
                assert (reads, writes) == (0, idx.size)
            if rid == "r4":  # b revoked a's lease: a compared every sample
                assert reads >= idx.size
            if rid == "r5":  # a's copy started over: one read per sample, no compare
                assert (reads, writes) == (idx.size, idx.size)
            assert (await ref.apply_report(run_id + "-ref", _rep(rid, lr, idx, seed=k))) == ack
        cache = a.caches.get(run_id)
        assert cache is not None
        assert cache.conflicts >= 1 and cache.gen >= 1  # the revoked copy started over
        lay = (await a.state(run_id)).layout
        got = await a.store.read_records(lay, 0, 64)
        want = await ref.store.read_records((await ref.state(run_id + "-ref")).layout, 0, 64)
        assert got.tobytes() == want.tobytes()
        # both engines at once on the same samples: no update lost
        jobs = [
            (a if k % 2 else b).apply_report(run_id, _rep(f"c{k}", 10.0 + k, hi, seed=100 + k))
            for k in range(16)
        ]
        acks = await asyncio.gather(*jobs)
        counters = await a.store.counters(lay)
        stored = await a.store.read_records(lay, 0, 64)
        applied = counters["samples_reported"] - counters["samples_skipped"]
        assert int(stored["visits"].astype(np.int64).sum()) == applied
        assert counters["samples_scored"] == scored + sum(x.scored for x in acks)
        assert (stored["lr_sum"] == 25.0).all()  # the largest lr-sum wins in the end
        for eng in (a, b, ref):
            await eng.store.close()

    run(scenario())


# -- a Redis Cluster (issue 13, phase 1: each run on the slot of its hash tag) --------------
def test_cluster_runs_live_on_the_node_of_their_slot_and_the_hot_path_goes_there(
    redis_cluster: RedisClusterProcess, run_id: str
) -> None:
    async def scenario() -> None:
        store = Store.from_url(redis_cluster.url)
        await store.load_scripts()
        assert store.cluster is not None and store.connection.fast is None
        ids = redis_cluster.run_ids_on_every_node(run_id)
        stored: dict[str, int] = {}
        for node_index, rid in enumerate(ids):
            lay = _layout(rid, n=30, c=2)
            _, uid, _ = await store.create_run(lay, "{}", "u", 0.0)
            g = await store.gather(lay, uid, "a", np.array([1, 2, 3]))
            assert g.status == GatherStatus.OK
            where = [
                len(node.scan_keys(f"{keys_of(lay).prefix}:*")) for node in redis_cluster.nodes
            ]
            assert where[node_index] >= 2 and sum(where) == where[node_index], where
            stored[rid] = where[node_index]
        # one hot-path client per node, each reached through the slot table
        assert len(store.connection.fast_nodes) == len(redis_cluster.nodes)
        assert set(ids) <= set(await store.list_run_ids())
        for rid in ids:
            lay = _layout(rid, n=30, c=2)
            assert await store.delete_run(lay) == stored[rid]
            assert all(
                node.scan_keys(f"{keys_of(lay).prefix}:*") == [] for node in redis_cluster.nodes
            )
        await store.close()

    run(scenario())


def _move_slot(cluster: RedisClusterProcess, slot: int, src: int, dst: int) -> None:
    """Migrate one slot with its keys from node ``src`` to ``dst`` (what redis-cli --cluster
    reshard does): IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE everywhere."""
    s, d = cluster.nodes[src], cluster.nodes[dst]
    sid, did = (n.command("CLUSTER", "MYID").decode() for n in (s, d))
    d.command("CLUSTER", "SETSLOT", slot, "IMPORTING", sid)
    s.command("CLUSTER", "SETSLOT", slot, "MIGRATING", did)
    while keys := s.command("CLUSTER", "GETKEYSINSLOT", slot, 1000):
        s.command("MIGRATE", d.host, d.port, "", 0, 5000, "AUTH", cluster.password, "KEYS", *keys)
    for n in cluster.nodes:
        n.command("CLUSTER", "SETSLOT", slot, "NODE", did)


def test_cluster_store_follows_a_slot_moved_to_another_node(run_id: str) -> None:
    """A run's slot is resharded to another node under a running store: the hot path gets
    MOVED from the old node, the call goes through redis-py (which follows it and
    refreshes its slot table), and the next calls go straight to the new node."""
    with RedisClusterProcess(primaries=2) as cluster:

        async def scenario() -> None:
            store = Store.from_url(cluster.url)
            await store.load_scripts()
            lay = _layout(run_id, n=20, c=1)
            _, uid, _ = await store.create_run(lay, "{}", "u", 0.0)
            idx = np.array([3, 5])
            g = await store.gather(lay, uid, "a", idx)
            assert g.status == GatherStatus.OK and g.records is not None
            slot = int(cluster.nodes[0].command("CLUSTER", "KEYSLOT", keys_of(lay).meta))
            src = cluster.node_of_key(keys_of(lay).meta)
            _move_slot(cluster, slot, src, 1 - src)
            assert cluster.nodes[src].scan_keys(f"{keys_of(lay).prefix}:*") == []
            new = g.records.copy()
            new["visits"], new["lr_sum"] = 1, 2.0
            res = await store.scatter(
                lay, uid, "a", now=1.0, indices=idx, expected=g.records, write=np.ones(2, bool),
                records=new, scores=np.zeros(2, np.float32), losses=np.zeros(2, np.float32),
                counters=(1, 2, 0, 0, 0),
            )  # fmt: skip
            assert res.status == ScatterStatus.COMPARED
            dst = cluster.nodes[1 - src]
            g2 = await store.gather(lay, uid, "b", idx)  # straight to the new owner now
            assert store.connection.fast_nodes[
                f"{dst.host}:{dst.port}"
            ]._idle  # its connection, used
            assert g2.records is not None and (g2.records["visits"] == 1).all()
            assert (await store.counters(lay))["reports"] == 1
            assert (
                len(dst.scan_keys(f"{keys_of(lay).prefix}:*")) >= 4
            )  # meta, score, counters, reports, rec
            await store.close()

        run(scenario())


def test_cluster_that_is_not_ok_is_refused_with_the_reason(run_id: str) -> None:
    with RedisClusterProcess(primaries=2) as cluster:
        lo, _ = cluster.slot_ranges()[1]
        cluster.nodes[1].command("CLUSTER", "DELSLOTS", *range(lo, lo + 10))
        for _ in range(200):  # the node notices the uncovered slots within ~100 ms
            if cluster.info(1)["cluster_state"] == "fail":
                break
            time.sleep(0.02)

        async def scenario() -> None:
            store = Store.from_url(cluster.url)  # node 0 itself still serves all of its slots
            with pytest.raises(
                ClusterStateError, match=f":{cluster.nodes[1].port} says cluster_state=fail"
            ):
                await store.load_scripts()
            with pytest.raises(ClusterStateError):
                await store.ping()
            await store.close()

        run(scenario())
