"""Benchmark (not a test): what the Reporter costs the training thread, and how fast it delivers.

    .venv/bin/python tests/client/bench_reporter.py [--batch 256] [--outputs 10] [--reports 400]

Starts a real redis-server and a real ``docl serve`` child process, then prints,
each beside baselines measured in the same run:

* the time ``Reporter.report()`` takes on the caller's thread, against the bare
  numpy copy any background sender must make;
* samples/s delivered by the Reporter with 1, 2 and 4 sender threads, against a
  synchronous ``ScoreClient.report`` loop and against raw ``httpx`` posts of
  pre-encoded bodies (the HTTP floor the SDK sits on).
"""

from __future__ import annotations

import argparse
import time
import uuid

import httpx
import numpy as np

from docl.client import Reporter, ScoreClient, wire
from docl.services.embedded import RedisProcess, ServerProcess


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--outputs", type=int, default=10)
    ap.add_argument("--reports", type=int, default=400)
    a = ap.parse_args()
    b, c, r = a.batch, a.outputs, a.reports
    rng = np.random.default_rng(0)
    out = rng.normal(size=(b, c)).astype(np.float32)
    tgt = rng.integers(0, c, b)

    with (
        RedisProcess() as redis,
        ServerProcess(redis_url=redis.url) as server,
        ScoreClient(server.url) as client,
    ):

        def fresh() -> str:
            name = f"bench-{uuid.uuid4().hex[:8]}"
            client.create_run(
                run_id=name, num_samples=b * r, num_outputs=c, epochs=2, params={"batch_size": b}
            )
            client.draw_epoch(name, 0)
            return name

        def idx(k: int) -> np.ndarray:
            return np.arange(k * b, (k + 1) * b)

        t = time.perf_counter()
        for k in range(r):
            np.array(out, copy=True), np.array(tgt, copy=True), idx(k)
        copy_us = (time.perf_counter() - t) / r * 1e6

        run = fresh()
        bodies = [
            wire.encode_report(
                report_id=uuid.uuid4().hex,
                epoch=0,
                lr_sum=0.0,
                indices=idx(k),
                outputs=out,
                targets=tgt,
            )
            for k in range(r)
        ]
        with httpx.Client(base_url=server.url) as raw:
            t = time.perf_counter()
            for body in bodies:
                raw.post(
                    f"/v1/runs/{run}/reports",
                    content=body,
                    headers={"Content-Type": wire.REPORT_CONTENT_TYPE},
                ).raise_for_status()
            raw_s = time.perf_counter() - t

        run = fresh()
        t = time.perf_counter()
        for k in range(r):
            client.report(run, epoch=0, indices=idx(k), outputs=out, targets=tgt, lr_sum=0.0)
        sync_s = time.perf_counter() - t

        print(f"B={b} c={c} reports={r} (one uvicorn worker; shared CPUs make these noisy)")
        print(f"baseline  numpy copy of one batch       {copy_us:9.1f} us/report")
        print(
            f"baseline  raw httpx post, pre-encoded   {raw_s / r * 1e3:9.2f} ms/report  {r * b / raw_s:9.0f} samples/s"
        )
        print(
            f"baseline  ScoreClient.report (sync)     {sync_s / r * 1e3:9.2f} ms/report  {r * b / sync_s:9.0f} samples/s"
            f"  ({raw_s / sync_s:4.2f}x raw)"
        )
        for senders, batch_reports in ((1, 256), (2, 256), (4, 256), (2, 1)):
            run = fresh()
            rep = Reporter(
                client, run, senders=senders, max_queue=r, max_batch_reports=batch_reports
            )
            t = time.perf_counter()
            for k in range(r):
                rep.report(epoch=0, indices=idx(k), outputs=out, targets=tgt, lr_sum=0.0)
            enqueue = time.perf_counter() - t
            assert rep.flush(timeout=600)
            total = time.perf_counter() - t
            counters = rep.counters()
            rep.close()
            assert counters.sent == r and counters.dropped == 0
            print(
                f"Reporter  senders={senders} batch<={batch_reports:<3}  report() "
                f"{enqueue / r * 1e6:8.1f} us ({enqueue / r * 1e6 / copy_us:5.1f}x copy)"
                f"  delivered {r * b / total:9.0f} samples/s ({sync_s / total:4.2f}x sync)"
                f"  {counters.requests} requests"
            )


if __name__ == "__main__":
    main()
