"""``docl bench store``: the report write path's atomicity options on one Redis.

The Lua compare-and-set the store uses (``lua/scatter.lua`` through
:class:`~docl.services.redis.store.RedisStore`) beside two MULTI/EXEC + WATCH
alternatives. The alternatives under comparison talk to Redis directly, through
the same minimal RESP client as the store's hot path
(:class:`docl.services.redis.resp.RespClient`), so that the figures compare the
atomicity schemes, not two clients. They are benchmark code, not a second store:
``docl.services.redis`` stays the one package of the server that talks to Redis.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from docl.lab.loadgen import run_loop

__all__ = ["StoreResult", "run_store_bench"]

Echo = Callable[[str], None]


@dataclass
class StoreResult:
    variant: str
    shared: bool
    samples_per_s: float
    redis_us_per_sample: float  # Redis CPU (INFO cpu) per written sample
    aborted: int  # attempts retried: EXEC refused (WATCH), or a compare-and-set conflict (Lua)
    lost_updates: int  # Σ expected visits − Σ stored visits (must be 0 for a safe variant)


async def _store_variant(
    variant: str,
    url: str,
    *,
    n: int,
    batch: int,
    width: int,
    clients: int,
    reports: int,
    shared: bool,
) -> StoreResult:
    """Each of `clients` tasks writes `reports` reports of `batch` samples (read, +1 visit, write).

    ``shared``: every other report of each task hits a pool of 4·B samples shared
    by every task, so concurrent writers meet on the same samples (what the
    compare-and-set is for); otherwise the tasks write disjoint samples (the
    normal case: each sample is in one rank's shard), which measures cost alone."""
    import redis.asyncio as aioredis

    from docl.services.layout import RunLayout
    from docl.services.redis.keys import keys_of
    from docl.services.redis.resp import RespClient
    from docl.services.redis.store import RedisStore

    lay = RunLayout(f"sb-{variant}-{int(shared)}", n, width, "float32", 64 << 20, False, False)
    store = RedisStore.from_url(url)
    plain = aioredis.Redis.from_url(url)
    await store.create_run(lay, "{}", "uid", 0.0)
    await plain.hset(keys_of(lay).meta, "last_epoch", 0)
    rs = lay.rec_size
    rng = np.random.default_rng(0)
    shared_pool = rng.permutation(n)[: batch * 4]
    own = np.array_split(rng.permutation(np.setdiff1d(np.arange(n), shared_pool)), clients)
    expected = np.zeros(n, np.int64)
    plans: list[list[np.ndarray]] = []
    for k in range(clients):
        mine = []
        for j in range(reports):
            pool = shared_pool if shared and j % 2 else own[k]
            idx = rng.choice(pool, size=min(batch, pool.shape[0]), replace=False)
            expected[idx] += 1
            mine.append(idx)
        plans.append(mine)
    aborted = 0

    async def lua_task(k: int) -> None:
        nonlocal aborted
        for j, idx in enumerate(plans[k]):
            g = await store.gather(lay, "uid", f"{k}-{j}", idx)
            assert g.records is not None
            rows = g.records
            # Until applied, as the server's retries plus the client's do: under this much
            # contention (8 writers on 4·B shared samples) a report can take dozens of tries.
            for _ in range(10_000):
                new = rows.copy()
                new["visits"] += 1
                new["lr_sum"] += 1.0
                res = await store.scatter(
                    lay, "uid", f"{k}-{j}", now=time.time(), indices=idx, expected=rows,
                    write=np.ones(idx.shape[0], bool), records=new,
                    scores=np.zeros(idx.shape[0], np.float32), losses=np.zeros(idx.shape[0], np.float32),
                    counters=(1, idx.shape[0], 0, 0, 0),
                )  # fmt: skip
                if res.status.applied:
                    break
                aborted += 1  # a compare-and-set that found changed samples: retried
                assert res.current is not None
                rows = rows.copy()
                rows[np.asarray(res.conflicts)] = res.current
            else:
                raise RuntimeError(f"report {k}-{j} was never applied")

    async def multi_task(k: int, watch_records: bool) -> None:
        nonlocal aborted
        client = RespClient(url, timeout_s=60)
        names = keys_of(lay)
        rec_key, score_key = names.rec[0], names.score[0]
        for j, idx in enumerate(plans[k]):
            marker = f"{names.prefix}:rid:{k}-{j}"
            while True:
                watch = ["WATCH", marker, rec_key] if watch_records else ["WATCH", marker]
                reads: list[list[Any]] = [watch, ["EXISTS", marker]] + [
                    ["GETRANGE", rec_key, int(i) * rs, int(i) * rs + rs - 1] for i in idx
                ]
                replies = await client.call_many(reads)
                if replies[1]:
                    await client.call(["UNWATCH"])
                    break
                rows = np.frombuffer(
                    b"".join(r.ljust(rs, b"\0") for r in replies[2:]), lay.rec_dtype
                ).copy()
                rows["visits"] += 1
                rows["lr_sum"] += 1.0
                raw = rows.tobytes()
                tx: list[list[Any]] = [["MULTI"]]
                for m, i in enumerate(idx):
                    tx.append(["SETRANGE", rec_key, int(i) * rs, raw[m * rs : (m + 1) * rs]])
                    tx.append(["SETRANGE", score_key, int(i) * 4, b"\0\0\0\0"])
                tx += [["SET", marker, "1", "EX", 86400], ["EXEC"]]
                out = await client.call_many(tx)
                if out[-1] is None:  # WATCH fired: another client wrote a watched key
                    aborted += 1
                    continue
                break
        await client.close()

    r = aioredis.Redis.from_url(url)

    async def cpu() -> float:
        info = await r.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    c0 = await cpu()
    t0 = time.perf_counter()
    if variant == "lua-cas":
        await asyncio.gather(*(lua_task(k) for k in range(clients)))
    else:
        await asyncio.gather(
            *(multi_task(k, variant == "multi-watch-records") for k in range(clients))
        )
    seconds = time.perf_counter() - t0
    c1 = await cpu()
    stored = await store.read_records(lay, 0, n)
    lost = int(expected.sum() - stored["visits"].astype(np.int64).sum())
    await store.delete_run(lay)
    await store.close()
    await plain.aclose()
    await r.aclose()
    total = int(expected.sum())
    return StoreResult(variant, shared, total / seconds, 1e6 * (c1 - c0) / total, aborted, lost)


def run_store_bench(
    *,
    redis_url: str | None = None,
    num_samples: int = 100_000,
    batch: int = 256,
    width: int = 10,
    clients: int = 8,
    reports: int = 40,
    echo: Echo = print,
) -> list[StoreResult]:
    """Compare the report write path's atomicity options on one Redis (``docl bench store``)."""
    from docl.services.embedded import RedisProcess

    redis = RedisProcess() if redis_url is None else None
    url = redis.start().unix_url if redis is not None else redis_url
    assert url is not None
    echo(
        f"docl bench store: n = {num_samples:,}, B = {batch}, c = {width}, {clients} concurrent "
        f"writers x {reports} reports; 'shared': every other report hits samples all writers share"
    )
    echo(
        f"{'variant':<22} {'samples':<9} {'samples/s':>10} {'redis us/sample':>16} {'aborted':>8}"
        f" {'lost updates':>13}"
    )
    results = []
    try:
        for shared in (False, True):
            for variant in ("lua-cas", "multi-watch-marker", "multi-watch-records"):
                res = run_loop(
                    _store_variant(
                        variant,
                        url,
                        n=num_samples,
                        batch=batch,
                        width=width,
                        clients=clients,
                        reports=reports,
                        shared=shared,
                    )
                )
                results.append(res)
                echo(
                    f"{res.variant:<22} {'shared' if shared else 'disjoint':<9}"
                    f" {res.samples_per_s:>10,.0f} {res.redis_us_per_sample:>16.2f}"
                    f" {res.aborted:>8} {res.lost_updates:>13}"
                )
    finally:
        if redis is not None:
            redis.stop()
    return results
