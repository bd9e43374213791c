"""Partitioned vs unpartitioned runs on a Redis Cluster: bytes per sample and report throughput.

    python -m docl.lab.bench_partitions                     # a local 3-primary cluster
    python -m docl.lab.bench_partitions --partitions 1,3,6 --num-samples 200000 --width 10
    python -m docl.lab.bench_partitions --redis-url redis+cluster://:pw@host:port

For each partition count (1 = unpartitioned: the same-run baseline) a real ``docl serve``
is started on the cluster with ``DOCL_PARTITION_SAMPLES = ceil(n / partitions)``; a run of
n samples is created, its warm-up epoch drawn, every sample reported once (warm-up,
untimed), then ``rounds`` timed passes report every sample again over HTTP (the load
generator of ``docl bench service``: a separate process, ``clients`` keep-alive
connections, binary reports of ``batch`` samples) and the best pass is kept. Printed per
row: scored samples/s, p50/p99 latency, the run's Redis bytes per sample (``MEMORY
USAGE`` of every key of the run, summed over the primaries) and the largest share of
them on one primary (what partitioning is for: a run bigger than one node), and the
time of the next epoch's draw (``POST /epochs``), and with ``--draw-n N`` the draw of a
selection epoch over N scores written straight into the run's partitions (on a server
with ``DOCL_PARTITION_SAMPLES = ceil(N / partitions)``). Every row is checked: the run
must count ``rounds · n`` scored samples.

Called ``bench_shards`` with ``--shards`` before "shard" was kept for a rank's slice of
an epoch; ``--shards`` still works (deprecated: one line on stderr).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any

import numpy as np

from docl.lab.loadgen import http_pass

__all__ = ["main", "run_bench"]

#: The partition counts of a row each, when none are given.
_DEFAULT_PARTITIONS = "1,3,6"
#: Generous limits for the bench's own HTTP and Redis calls: a draw over 10⁸ scores on a
#: loaded 2-core box takes seconds to tens of seconds, and a bench must not give up first.
_HTTP_TIMEOUT_S = 600
_STORE_TIMEOUT_S = 120


def _run_bytes(cluster_url: str, run_id: str) -> list[int]:
    """Bytes of every key of the run (run and partition tags) on each primary."""
    from redis.cluster import RedisCluster

    from docl.services.redis.connection import cluster_url as node_url
    from docl.services.redis.keys import run_pattern

    url = node_url(cluster_url)
    assert url is not None, "a redis+cluster:// URL"
    pattern = run_pattern(run_id)
    rc = RedisCluster.from_url(url)
    try:
        out = []
        for node in rc.get_primaries():
            total = 0
            for key in rc.scan_iter(match=pattern, count=1000, target_nodes=node):
                total += int(rc.memory_usage(key, samples=0, target_nodes=node) or 0)
            out.append(total)
        return out
    finally:
        rc.close()


def _partition_env(n: int, partitions: int) -> dict[str, str]:
    """The server setting that cuts a run of n samples into ``partitions`` partitions (none: 1)."""
    return {"DOCL_PARTITION_SAMPLES": str(math.ceil(n / partitions))} if partitions > 1 else {}


def _row(partitions: int, num_samples: int, url: str, *, width: int, batch: int, clients: int,
         rounds: int) -> dict[str, Any]:  # fmt: skip
    import httpx

    from docl.lab.bench_service import report_run
    from docl.services.embedded import ServerProcess

    n = num_samples
    env = _partition_env(n, partitions)
    run_id = f"bench-partitions-{partitions}-{int(time.time())}"
    with (
        ServerProcess(redis_url=url, env=env) as server,
        httpx.Client(base_url=server.url, timeout=_HTTP_TIMEOUT_S) as http,
    ):
        body = report_run(run_id, n, width, batch, epochs=3)  # epoch 1: the draw timed below
        http.post("/v1/runs", json=body).raise_for_status()
        http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0}).raise_for_status()
        idx = np.random.default_rng(1).permutation(n).astype(np.int64)
        idx = idx[: n - n % batch]
        spec: dict[str, Any] = {"run_id": run_id, "indices": idx, "batch": batch, "width": width}
        http_pass(server.url, run_id, {**spec, "lr_sum": 0.0, "prefix": "warm", "seed": 1}, clients)
        best: tuple[float, np.ndarray] | None = None
        errors = 0
        for rnd in range(rounds):
            secs, lat, err = http_pass(
                server.url, run_id,
                {**spec, "lr_sum": float(rnd + 1), "prefix": f"p{rnd}", "seed": 2 + rnd}, clients,
            )  # fmt: skip
            errors += err
            if best is None or secs < best[0]:
                best = (secs, lat)
        assert best is not None
        run = http.get(f"/v1/runs/{run_id}").json()
        if run["counters"]["samples_scored"] != rounds * idx.shape[0]:
            errors += 1
        per_node = _run_bytes(url, run_id)
        t0 = time.perf_counter()
        http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 1}).raise_for_status()
        draw_s = time.perf_counter() - t0
        http.delete(f"/v1/runs/{run_id}").raise_for_status()
    return {
        "partitions": partitions,
        "rate": idx.shape[0] / best[0],
        "p50_ms": 1e3 * float(np.percentile(best[1], 50)),
        "p99_ms": 1e3 * float(np.percentile(best[1], 99)),
        "bytes_per_sample": sum(per_node) / n,
        "max_node_share": max(per_node) / max(1, sum(per_node)),
        "draw_s": draw_s,
        "errors": errors,
    }


def _draw_row(partitions: int, n: int, url: str) -> dict[str, float]:
    """A selection epoch's ``POST /epochs`` over n scores written straight into the run's
    columns (its partitions'), on a server with
    ``DOCL_PARTITION_SAMPLES = ceil(n / partitions)``."""
    import asyncio

    import httpx

    from docl.lab.bench_service import draw_run
    from docl.services.embedded import ServerProcess
    from docl.services.layout import RunLayout
    from docl.services.redis.store import RedisStore

    env = _partition_env(n, partitions)
    run_id = f"bench-partitions-draw-{partitions}-{int(time.time())}"
    scores = np.random.default_rng(5).normal(size=n).astype(np.float32)

    async def write_scores() -> None:
        store = RedisStore.from_url(url, timeout_s=_STORE_TIMEOUT_S)
        try:
            meta = await store.run_meta(run_id)
            assert meta is not None
            await store.write_column(RunLayout.from_json(run_id, meta["layout"]), "score", scores)
        finally:
            await store.close()

    with (
        ServerProcess(redis_url=url, env=env) as server,
        httpx.Client(base_url=server.url, timeout=_HTTP_TIMEOUT_S) as http,
    ):
        http.post("/v1/runs", json=draw_run(run_id, n, 0.1)).raise_for_status()
        asyncio.run(write_scores())
        t0 = time.perf_counter()
        r = http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0})
        took = time.perf_counter() - t0
        r.raise_for_status()
        http.delete(f"/v1/runs/{run_id}").raise_for_status()
    return {"draw_n_s": took}


def run_bench(
    *,
    redis_url: str | None = None,
    partitions: list[int],
    num_samples: int,
    width: int,
    batch: int,
    clients: int,
    rounds: int,
    draw_n: int = 0,
) -> list[dict[str, Any]]:
    """Every row (see the module docstring); starts a local 3-primary cluster without
    ``redis_url``."""
    from docl.services.embedded import RedisClusterProcess

    cluster = RedisClusterProcess(primaries=3) if redis_url is None else None
    if cluster is not None:
        cluster.start()
    url = redis_url if cluster is None else cluster.url
    assert url is not None
    where = url.split("@")[-1]
    print(f"docl.lab.bench_partitions: n = {num_samples:,}, c = {width}, batch = {batch}, "
          f"clients = {clients}, best of {rounds} passes; cluster {where}")  # fmt: skip
    big = f"draw {draw_n:.0e} s" if draw_n else ""
    print(f"{'partitions':>10} {'samples/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'B/sample':>9} "
          f"{'top node':>8} {'draw s':>7} {'vs 1 partition':>14} {big:>12}")  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        for s in partitions:
            r = _row(s, num_samples, url, width=width, batch=batch, clients=clients, rounds=rounds)
            if draw_n:
                r.update(_draw_row(s, draw_n, url))
            rows.append(r)
            base = rows[0]["rate"]
            print(f"{r['partitions']:>10} {r['rate']:>10,.0f} {r['p50_ms']:>7.2f} "
                  f"{r['p99_ms']:>7.2f} {r['bytes_per_sample']:>9.1f} {r['max_node_share']:>8.0%} "
                  f"{r['draw_s']:>7.3f} "
                  f"{r['rate'] / base:>13.2f}x"
                  + (f" {r['draw_n_s']:>12.3f}" if draw_n else "")
                  + (f"  ! {r['errors']} errors" if r["errors"] else ""),
                  flush=True)  # fmt: skip
    finally:
        if cluster is not None:
            cluster.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m docl.lab.bench_partitions", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--redis-url", default=None, help="a redis+cluster:// URL (default: a local one)"
    )
    p.add_argument(
        "--partitions", default=None, help="partition counts, comma-separated; 1 first (1,3,6)"
    )
    p.add_argument("--shards", default=None, help=argparse.SUPPRESS)  # its old name
    p.add_argument("--num-samples", type=int, default=200_000)
    p.add_argument("--width", type=int, default=10, help="num_outputs c")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--draw-n", type=int, default=0,
                   help="also time a selection draw over this many scores (0: no)")  # fmt: skip
    a = p.parse_args(argv)
    if a.shards is not None:
        print("--shards is deprecated: it is --partitions now", file=sys.stderr)
    counts = [int(s) for s in (a.partitions or a.shards or _DEFAULT_PARTITIONS).split(",")]
    if not counts or counts[0] != 1 or min(counts) < 1:
        p.error("--partitions must start with 1 (the unpartitioned baseline) and be >= 1")
    rows = run_bench(redis_url=a.redis_url, partitions=counts, num_samples=a.num_samples,
                     width=a.width, batch=a.batch, clients=a.clients, rounds=a.rounds,
                     draw_n=a.draw_n)  # fmt: skip
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
