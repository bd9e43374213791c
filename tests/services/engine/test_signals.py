"""Signal columns in the engine (services/engine/signals.py, the draws that read them)
on a real redis-server: the memory quota counts them, and a ``rho-epoch`` selection
draw over a loss column and an uploaded IL equals the brute-force top-k."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from docl.services.config import Settings
from docl.services.embedded import RedisProcess
from docl.services.engine import Engine
from docl.services.engine.runs import QuotaExceeded, run_footprint
from docl.services.errors import Conflict, Unprocessable
from docl.services.methods.rho import IL_SIGNAL
from docl.services.redis.store import RedisStore
from docl.wire.models import RunCreate

N = 500


def _engine(url: str, **settings: Any) -> Engine:
    return Engine(RedisStore.from_url(url), Settings(redis_url=url, **settings))


def _run(run_id: str, method: str = "docl", **params: Any) -> RunCreate:
    return RunCreate(
        run_id=run_id,
        num_samples=N,
        num_outputs=3,
        epochs=4,
        method=method,
        params={"warmup_epochs": 1, "batch_size": 16, **params},
    )


def test_signal_columns_count_in_the_memory_quota(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    redis = redis_factory()

    async def main() -> None:
        probe = _engine(redis.url)
        await probe.create_run(_run("probe"))
        st = await probe.state("probe")
        base = run_footprint(st.layout, "docl", probe.settings.keep_epochs)
        await probe.delete_run("probe")
        # room for the run and one and a half signal columns (4 bytes per sample each)
        eng = _engine(redis.url, max_total_bytes=base + 6 * N)
        await eng.create_run(_run("r"))
        ones = np.ones(N, np.float32)
        assert (await eng.put_signal("r", "a", 0, ones)).signals == 1
        with pytest.raises(QuotaExceeded, match="DOCL_MAX_TOTAL_BYTES"):
            await eng.put_signal("r", "b", 0, ones)
        assert (await eng.list_signals("r")).signals == ["a"]
        assert (await eng.put_signal("r", "a", 0, 2 * ones)).signals == 1  # a rewrite: no growth
        # another process (a fresh registry) sizes the run from its meta: the signal counts
        other = _engine(redis.url, max_total_bytes=base + 6 * N)
        with pytest.raises(QuotaExceeded):
            await other.create_run(_run("r2"))
        # one run alone over DOCL_MAX_RUN_BYTES: 422
        small = _engine(redis.url, max_run_bytes=base + 2 * N)
        with pytest.raises(Unprocessable, match="DOCL_MAX_RUN_BYTES"):
            await small.put_signal("r", "c", 0, ones)
        assert (await small.list_signals("r")).signals == ["a"]

    asyncio.run(main())


def test_a_rho_epoch_draw_is_the_brute_force_top_k(redis_url: str, run_id: str) -> None:
    async def main() -> None:
        eng = _engine(redis_url)
        await eng.create_run(_run(run_id, "rho-epoch"))
        await eng.draw_epoch(run_id, 0)  # warmup
        rng = np.random.default_rng(3)
        loss = rng.gamma(2.0, size=N).astype(np.float32)
        loss[rng.choice(N, 20, replace=False)] = np.nan  # never visited
        il = rng.gamma(1.0, size=N).astype(np.float32)
        il[rng.choice(N, 10, replace=False)] = np.nan  # unknown IL
        st = await eng.state(run_id)
        await eng.store.write_column(st.layout, "loss", loss)  # type: ignore[attr-defined]
        with pytest.raises(Conflict, match="irreducible_loss"):
            await eng.draw_epoch(run_id, 1)
        # two ranks' slices
        await eng.put_signal(run_id, IL_SIGNAL, 0, il[:200])
        await eng.put_signal(run_id, IL_SIGNAL, 200, il[200:])
        ep = await eng.draw_epoch(run_id, 1)
        data, _, _, size = await eng.indices(run_id, 1, rank=0, world=1, offset=0, limit=None)
        got = sorted(np.frombuffer(data, "<i8").tolist())
        # brute force, in plain Python floats: unknown reducible loss first, then descending
        key = []
        for i in range(N):
            r = float(loss[i]) - float(il[i])
            key.append((0 if r != r else 1, -r if r == r else 0.0, i))
        want = sorted(i for _, _, i in sorted(key)[:size])
        assert ep.phase == "select" and 30 < size < N
        assert got == want

    asyncio.run(main())
