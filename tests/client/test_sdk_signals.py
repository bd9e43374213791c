"""The SDK's signal calls (``put_signal``, ``get_signal``, ``signals``; sync and async)
against a real ``docl serve`` over HTTP: on one redis-server, and a partitioned run on a
real 3-primary Redis Cluster. Errors arrive as the client's exception hierarchy."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from docl.client import AsyncScoreClient, ScoreClient
from docl.client.errors import ConflictError, NotFoundError, ValidationError
from docl.services.embedded import RedisClusterProcess, ServerProcess


def _values(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=n).astype(np.float32)
    v[::11] = np.nan
    return v


def test_sync_round_trip_slices_and_errors(score_server: str, run_id: str) -> None:
    with ScoreClient(score_server) as client:
        client.create_run(run_id=run_id, num_samples=300, num_outputs=3, epochs=2)
        il = _values(300, 0)
        ack = client.put_signal(run_id, "il", il)
        assert (ack.start, ack.stop, ack.signals) == (0, 300, 1)
        got = client.get_signal(run_id, "il")
        assert got.dtype == np.float32 and np.array_equal(got, il, equal_nan=True)
        got[0] = 5  # a writable copy
        assert np.array_equal(
            client.get_signal(run_id, "il", start=10, stop=40), il[10:40], equal_nan=True
        )
        # a DDP rank's slice (any array-like, cast to float32)
        client.put_signal(run_id, "part", [1.0, 2.0, 3.0], start=297)
        part = client.get_signal(run_id, "part")
        assert np.isnan(part[:297]).all() and part[297:].tolist() == [1.0, 2.0, 3.0]
        listed = client.signals(run_id)
        assert listed.signals == ["il", "part"] and listed.length == 300
        with pytest.raises(ValidationError, match="finite or NaN"):
            client.put_signal(run_id, "il", np.full(300, np.inf))
        with pytest.raises(ValidationError):
            client.put_signal(run_id, "Bad", il)
        with pytest.raises(ValidationError, match="not within"):
            client.put_signal(run_id, "il", il, start=1)
        with pytest.raises(NotFoundError):
            client.get_signal(run_id, "nope")
        with pytest.raises(NotFoundError):
            client.put_signal("no-such-run-sdk", "il", il)
        with pytest.raises(ValueError):
            client.put_signal(run_id, "il", np.zeros((2, 2)))
        assert np.array_equal(client.get_signal(run_id, "il"), il, equal_nan=True)


def test_async_client_and_the_limit(
    server_factory: Callable[..., ServerProcess], redis_url: str, run_id: str
) -> None:
    server = server_factory(redis_url=redis_url, env={"DOCL_MAX_SIGNALS": "1"})

    async def main() -> None:
        async with AsyncScoreClient(server.url) as client:
            await client.create_run(run_id=run_id, num_samples=50, num_outputs=2, epochs=2)
            v = _values(50, 1)
            assert (await client.put_signal(run_id, "a", v)).signals == 1
            got = await client.get_signal(run_id, "a", start=5)
            assert np.array_equal(got, v[5:], equal_nan=True)
            with pytest.raises(ConflictError, match="DOCL_MAX_SIGNALS = 1"):
                await client.put_signal(run_id, "b", v)
            assert (await client.signals(run_id)).signals == ["a"]

    asyncio.run(main())


def test_a_partitioned_run_on_a_cluster(
    server_factory: Callable[..., ServerProcess],
    redis_cluster: RedisClusterProcess,
    sync_redis: Callable[[str], object],
    run_id: str,
) -> None:
    server = server_factory(
        redis_url=redis_cluster.url,
        env={"DOCL_PARTITION_SAMPLES": "100", "DOCL_CHUNK_BYTES": "128"},
    )
    with ScoreClient(server.url) as client:
        client.create_run(run_id=run_id, num_samples=450, num_outputs=2, epochs=2)
        il = _values(450, 2)
        # two "ranks" upload halves that straddle partition edges
        client.put_signal(run_id, "il", il[:230])
        client.put_signal(run_id, "il", il[230:], start=230)
        assert np.array_equal(client.get_signal(run_id, "il"), il, equal_nan=True)
        assert np.array_equal(
            client.get_signal(run_id, "il", start=95, stop=305), il[95:305], equal_nan=True
        )
        r = sync_redis(redis_cluster.url)
        keys = [k.decode() for k in r.scan_iter(match=f"{{run:{run_id}:*", count=1000)]  # type: ignore[attr-defined]
        tags = {k.split("}")[0] for k in keys if ":sig:" in k}
        assert len(tags) == 5  # each of the 5 partitions keeps its slice under its own tag
        client.delete_run(run_id)
        left = [k for k in r.scan_iter(match=f"{{run:{run_id}*", count=1000)]  # type: ignore[attr-defined]
        assert left == []
