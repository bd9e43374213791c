"""What waiting for replicas costs: report throughput with ``DOCL_REDIS_WAIT_REPLICAS=1``
against the same reports without it, in one run on one Redis Cluster.

    python -m docl.lab.bench_wait                 # 3 primaries + 1 replica each, AOF always
    python -m docl.lab.bench_wait --clients 32 --appendfsync everysec

It starts a real cluster (:class:`~docl.services.embedded.RedisClusterProcess`) and two
``docl serve`` processes on it, one with WAIT off (the baseline) and one with WAIT on;
the load generator of ``docl bench service`` (:mod:`docl.lab.loadgen`: binary reports,
``clients`` keep-alive connections, closed loop) sends the same reports to each, in
alternating passes after a warm-up pass (so every measured report scores its samples),
and the best pass of each is kept. Each server writes its own run. The printed ratio is
on / off; docs/scaling.md "Failover" quotes it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import httpx
import numpy as np

from docl.lab.bench_service import report_run
from docl.lab.loadgen import http_pass
from docl.services.embedded import AppendFsync, RedisClusterProcess, ServerProcess

__all__ = ["main", "run_wait_bench"]


def _prepare(server: str, run_id: str, n: int, width: int, batch: int) -> None:
    with httpx.Client(base_url=server, timeout=120) as http:
        http.post("/v1/runs", json=report_run(run_id, n, width, batch)).raise_for_status()
        http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0}).raise_for_status()


def run_wait_bench(
    *,
    reports: int = 400,
    batch: int = 256,
    width: int = 10,
    clients: int = 8,
    rounds: int = 2,
    wait_ms: int = 1000,
    appendfsync: AppendFsync = "always",
) -> dict[str, dict[str, float]]:
    """Run the benchmark; returns {"off"|"on": {reports_s, samples_s, p50_ms, p99_ms, errors}}."""
    n = reports * batch
    idx = np.random.default_rng(1).permutation(n).astype(np.int64)
    spec: dict[str, Any] = {"indices": idx, "batch": batch, "width": width}
    envs = {"off": {}, "on": {"DOCL_REDIS_WAIT_REPLICAS": "1", "DOCL_REDIS_WAIT_MS": str(wait_ms)}}
    best: dict[str, tuple[float, np.ndarray, int]] = {}
    print(
        f"docl bench wait: {reports} reports of B = {batch}, c = {width}, {clients} clients, "
        f"3 primaries + 1 replica each (appendonly, appendfsync {appendfsync}), "
        f"WAIT 1 {wait_ms} ms; {os.cpu_count()} CPUs shared by everything"
    )
    with RedisClusterProcess(
        primaries=3,
        replicas=1,
        appendonly=True,
        appendfsync=appendfsync,
    ) as cluster:
        servers = {k: ServerProcess(redis_url=cluster.url, env=env) for k, env in envs.items()}
        try:
            for s in servers.values():
                s.start()
            runs = {k: f"bench-wait-{k}-{os.getpid()}" for k in servers}
            for k, s in servers.items():
                _prepare(s.url, runs[k], n, width, batch)
                warm = {"run_id": runs[k], **spec, "lr_sum": 0.0, "prefix": "warm", "seed": 1}
                http_pass(s.url, runs[k], warm, clients)
            for rnd in range(rounds):
                for k, s in servers.items():
                    pas = {"run_id": runs[k], **spec, "lr_sum": float(rnd + 1),
                           "prefix": f"p{rnd}", "seed": 2 + rnd}  # fmt: skip
                    secs, lat, errors = http_pass(s.url, runs[k], pas, clients)
                    if k not in best or secs < best[k][0]:
                        best[k] = (secs, lat, errors)
        finally:
            for s in servers.values():
                s.close()
    out: dict[str, dict[str, float]] = {}
    print(
        f"{'WAIT':<5} {'reports/s':>10} {'samples/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    )
    for k, (secs, lat, errors) in best.items():
        out[k] = {
            "reports_s": reports / secs,
            "samples_s": n / secs,
            "p50_ms": 1e3 * float(np.percentile(lat, 50)),
            "p99_ms": 1e3 * float(np.percentile(lat, 99)),
            "errors": float(errors),
        }
        r = out[k]
        print(
            f"{k:<5} {r['reports_s']:>10,.0f} {r['samples_s']:>10,.0f} {r['p50_ms']:>8.2f}"
            f" {r['p99_ms']:>8.2f} {errors:>6}"
        )
    print(f"on / off throughput: {out['on']['reports_s'] / out['off']['reports_s']:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m docl.lab.bench_wait", description=__doc__)
    p.add_argument("--reports", type=int, default=400, help="reports per pass (default 400)")
    p.add_argument("--batch", type=int, default=256, help="samples per report (default 256)")
    p.add_argument("--width", type=int, default=10, help="outputs per sample (default 10)")
    p.add_argument("--clients", type=int, default=8, help="concurrent connections (default 8)")
    p.add_argument("--rounds", type=int, default=2, help="measured passes per mode (default 2)")
    p.add_argument("--wait-ms", type=int, default=1000, help="DOCL_REDIS_WAIT_MS (default 1000)")
    p.add_argument("--appendfsync", choices=["always", "everysec", "no"], default="always")
    a = p.parse_args(argv)
    res = run_wait_bench(
        reports=a.reports, batch=a.batch, width=a.width, clients=a.clients,
        rounds=a.rounds, wait_ms=a.wait_ms, appendfsync=a.appendfsync,
    )  # fmt: skip
    return 1 if any(r["errors"] for r in res.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
