"""Per-sample signal columns in the Redis store (services/redis/signals.py, lua/signal.lua),
on a real redis-server and a real 3-primary Redis Cluster, whole and partitioned.

The reference is a plain numpy column that receives the same writes: every read of the
store must equal it (NaN where nothing was written)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
import pytest

from docl.services.layout import RunLayout
from docl.services.redis.keys import keys_of
from docl.services.redis.signals import signal_keys
from docl.services.redis.store import RedisStore
from docl.services.storage import CreateStatus, SignalStatus

T = TypeVar("T")
N = 230


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _layout(run_id: str, partition_samples: int = 0) -> RunLayout:
    return RunLayout(
        run_id=run_id,
        num_samples=N,
        num_outputs=2,
        output_dtype="float32",
        chunk_bytes=64,  # 16 values per chunk: many chunks, pieces across chunk edges
        loss_column=True,
        exp3=False,
        partition_samples=partition_samples,
    )


async def _create(store: RedisStore, lay: RunLayout) -> str:
    uid = uuid.uuid4().hex
    status, got, _ = await store.create_run(lay, '{"c":1}', uid, 0.0)
    assert status == CreateStatus.CREATED and got == uid
    return uid


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == np.float32 and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("partition_samples", [0, 70], ids=["whole", "partitioned"])
def test_writes_and_reads_match_a_numpy_column(
    store_url: str, run_id: str, partition_samples: int
) -> None:
    async def main() -> None:
        store = RedisStore.from_url(store_url)
        lay = _layout(run_id, partition_samples)
        uid = await _create(store, lay)
        ref = np.full(N, np.nan, dtype=np.float32)
        rng = np.random.default_rng(1)
        # slices across chunk and partition edges, overlapping, one empty, one whole
        for start, stop in [(37, 150), (0, 5), (140, 230), (100, 100), (0, 230), (69, 71)]:
            vals = rng.normal(size=stop - start).astype(np.float32)
            vals[::7] = np.nan  # NaN is a value too ("unknown")
            st, count = await store.write_signal(lay, uid, "il", start, vals, max_signals=8)
            assert (st, count) == (SignalStatus.WRITTEN, 1)
            ref[start:stop] = vals
            assert _same(await store.read_signal(lay, uid, "il", 0, N), ref)
        for a, b in [(0, 1), (15, 17), (69, 141), (229, 230), (5, 5)]:
            assert _same(await store.read_signal(lay, uid, "il", a, b), ref[a:b])
        # a partial first write leaves NaN around it (its chunks NaN-filled, not zero-padded)
        await store.write_signal(lay, uid, "other", 50, np.ones(3, np.float32), max_signals=8)
        want = np.full(N, np.nan, np.float32)
        want[50:53] = 1
        assert _same(await store.read_signal(lay, uid, "other", 0, N), want)
        assert await store.signal_names(lay) == ["il", "other"]
        keys = await store.run_keys(lay)
        sig = [k for k in keys if ":sig:" in k]
        if lay.partitions > 1:  # each partition keeps its slice under its own hash tag
            tags = {k.split("}")[0] for k in sig}
            assert len(tags) == lay.partitions  # "il" was written everywhere
            assert all(k.startswith(f"{{run:{run_id}:") for k in sig)
            for j in range(lay.partitions):
                assert set(signal_keys(lay.partition(j), uid, "il")) <= set(keys)
        else:
            assert set(signal_keys(lay, uid, "il")) <= set(sig)
        await store.close()

    run(main())


@pytest.mark.parametrize("partition_samples", [0, 70], ids=["whole", "partitioned"])
def test_the_limit_a_stale_uid_delete_and_re_create(
    store_url: str, run_id: str, partition_samples: int
) -> None:
    async def main() -> None:
        store = RedisStore.from_url(store_url)
        lay = _layout(run_id, partition_samples)
        uid = await _create(store, lay)
        ones = np.ones(N, np.float32)
        for name in ("a", "b"):
            assert (await store.write_signal(lay, uid, name, 0, ones, max_signals=2))[0] == (
                SignalStatus.WRITTEN
            )
        before = await store.run_keys(lay)
        # a third name over the limit: refused, nothing written
        got = await store.write_signal(lay, uid, "c", 0, 2 * ones, max_signals=2)
        assert got == (SignalStatus.TOO_MANY, 2)
        assert await store.signal_names(lay) == ["a", "b"]
        assert await store.run_keys(lay) == before
        # an existing name may be rewritten at the limit
        got = await store.write_signal(lay, uid, "b", 0, 3 * ones, max_signals=2)
        assert got == (SignalStatus.WRITTEN, 2)
        assert _same(await store.read_signal(lay, uid, "b", 0, N), 3 * ones)
        # a stale uid (the run re-created meanwhile): GONE, nothing written
        got = await store.write_signal(lay, "0" * 32, "a", 0, 5 * ones, max_signals=8)
        assert got[0] == SignalStatus.GONE
        assert _same(await store.read_signal(lay, uid, "a", 0, N), ones)
        # delete: every signal key goes with the run; a new incarnation sees none
        await store.delete_run(lay)
        assert await store.run_keys(lay) == []
        uid2 = await _create(store, lay)
        assert await store.signal_names(lay) == []
        assert np.isnan(await store.read_signal(lay, uid2, "a", 0, N)).all()
        await store.close()

    run(main())


def test_an_old_incarnations_chunks_are_not_read_by_a_new_one(redis_url: str, run_id: str) -> None:
    """A delete that died after the meta but before its sweep leaves signal chunks: the
    uid in their keys keeps them from the re-created run."""

    async def main() -> None:
        store = RedisStore.from_url(redis_url)
        lay = _layout(run_id)
        uid = await _create(store, lay)
        await store.write_signal(lay, uid, "il", 0, np.ones(N, np.float32), max_signals=8)
        await store.redis.unlink(*keys_of(lay).static())  # the delete's first half only
        uid2 = await _create(store, lay)
        assert await store.signal_names(lay) == []
        assert np.isnan(await store.read_signal(lay, uid2, "il", 0, N)).all()
        await store.write_signal(lay, uid2, "il", 10, np.zeros(2, np.float32), max_signals=8)
        got = await store.read_signal(lay, uid2, "il", 0, N)
        assert np.isnan(np.delete(got, [10, 11])).all() and (got[10:12] == 0).all()
        await store.delete_run(lay)
        await store.close()

    run(main())
