"""The service benchmark behind ``docl bench service``.

What it measures, each figure beside its limit measured in the same run:

* **reports** — scored samples per second and p50/p99 latency of binary
  reports (B = 256 and 1024; c = 10, 100, 1000) sent over HTTP by a separate
  load-generator process to one uvicorn worker, against **the limit**: the same
  read-modify-write (gather → ``score_report`` → atomic scatter) run in-process
  through the same engine and Redis, without HTTP. Ratio = service / limit.
* **draws** — the time of ``POST /v1/runs/{run}/epochs`` for a selection epoch
  over n = 1M and 10M scored samples, against **the limit**: numpy's
  standardize + Gumbel-top-k alone on the same scores. Ratio = limit / service.

Every measured report scores every one of its samples: a warm-up pass visits
the samples first (a first visit has no dynamics yet), then in-process and HTTP
passes alternate (two rounds; one in ``--quick``), each visiting the same
samples again with a larger lr_sum, and the best pass of each kind is kept: on
a machine shared with other work, a neighbour's burst slows one pass or the
other at random, and the best pass is the closest to what the code can do.

The load generator (:mod:`docl.lab.loadgen`) is a separate process speaking HTTP/1.1 over raw asyncio
streams with pre-encoded requests (encoding a report is the client's cost, not
the server's), ``clients`` keep-alive connections, each sending its next report
when the previous one is answered (closed loop). On a 2-core machine the load
generator, uvicorn and redis-server share the cores: the figures are a floor.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from docl.lab.loadgen import http_pass, report_bodies, run_loop
from docl.wire import encoding as wire
from docl.wire.encoding import ReportArrays

__all__ = ["DrawResult", "ReportResult", "draw_run", "report_run", "run_service_bench"]

Echo = Callable[[str], None]


@dataclass
class ReportResult:
    target: str
    batch: int
    width: int
    num_samples: int
    clients: int
    reports: int
    frames: int  # reports per HTTP request (1: one binary report; more: a multi-report body)
    service_rate: float  # scored samples / s over HTTP
    p50_ms: float
    p99_ms: float
    limit_rate: float  # scored samples / s in-process, no HTTP
    limit_p50_ms: float
    limit_p99_ms: float
    errors: int
    server_us: float = float("nan")  # server process CPU per scored sample, best HTTP pass
    redis_us: float = float("nan")  # Redis CPU per scored sample, best HTTP pass
    limit_redis_us: float = float("nan")  # Redis CPU per scored sample, best in-process pass

    @property
    def ratio(self) -> float:
        return self.service_rate / self.limit_rate if self.limit_rate else float("nan")


@dataclass
class DrawResult:
    target: str
    num_samples: int
    k: int
    service_s: float  # POST /epochs end to end (median of repeats)
    limit_s: float  # numpy standardize + gumbel_topk alone, one thread (median)
    # read_s / compute_s: the server's own timing of its snapshot read and its draw math
    # (the epoch's JSON); math_s: the same math in-process on the same scores (medians)
    breakdown: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.limit_s / self.service_s if self.service_s else float("nan")

    @property
    def math_s(self) -> float:
        """The draw's whole math (standardize, Gumbel-top-k, shuffle, counts) in-process."""
        return self.breakdown.get("math_s", float("nan"))

    @property
    def math_ratio(self) -> float:
        return self.math_s / self.service_s if self.service_s else float("nan")


# -- the in-process limit ------------------------------------------------------------------------
def report_run(run_id: str, n: int, width: int, batch: int, epochs: int = 1) -> dict[str, Any]:
    """The body of ``POST /v1/runs`` for a report benchmark's run: its first epoch is
    uniform (warm-up) over ``n`` samples, so every sample can be reported."""
    return {
        "run_id": run_id,
        "num_samples": n,
        "num_outputs": width,
        "epochs": epochs,
        "params": {"warmup_epochs": 1, "batch_size": batch},
    }


def draw_run(run_id: str, n: int, tau: float) -> dict[str, Any]:
    """The body of ``POST /v1/runs`` for a draw benchmark's run: its first epoch is a
    selection epoch (no warm-up) over ``n`` scores, one output each."""
    return {
        "run_id": run_id,
        "num_samples": n,
        "num_outputs": 1,
        "epochs": 1,
        "params": {"warmup_epochs": 0, "batch_size": 1024, "tau": tau},
    }


async def _inprocess_pass(
    engine: Any, run_id: str, requests: list[list[ReportArrays]], clients: int
) -> tuple[float, np.ndarray, int]:
    it = iter(requests)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        for reps in it:
            t0 = time.perf_counter()
            acks = await engine.apply_reports(run_id, reps)
            latencies.append(time.perf_counter() - t0)
            errors += sum(a.duplicate for a in acks)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0, np.asarray(latencies), errors


def _arrays(bodies: list[bytes], frames: int) -> list[list[ReportArrays]]:
    if frames == 1:
        return [[wire.decode_report(b)] for b in bodies]
    return [wire.decode_reports(b) for b in bodies]


def _proc_cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of a process so far; NaN when unknown."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    import os

    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- orchestration -------------------------------------------------------------------------------
async def _bench_target(
    target: str,
    redis_url: str,
    server_url: str,
    *,
    num_samples: int,
    batches: Sequence[int],
    widths: Sequence[int],
    frames_list: Sequence[int] = (1,),
    samples_per_pass: dict[int, int],
    clients: int,
    draw_sizes: Sequence[int],
    draw_repeats: int,
    rounds: int,
    echo: Echo,
    server_pid: int | None = None,
) -> tuple[list[ReportResult], list[DrawResult]]:
    import httpx
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import RedisCluster

    from docl.services import sampling
    from docl.services.config import Settings
    from docl.services.engine import Engine
    from docl.services.redis.connection import cluster_url
    from docl.services.redis.store import RedisStore

    store = RedisStore.from_url(redis_url, timeout_s=120)
    await store.load_scripts()
    settings = Settings(redis_url=redis_url)
    engine = Engine(store, settings)
    # the in-process draw math runs on as many threads as the server's (DOCL_DRAW_THREADS)
    sampling.set_draw_threads(settings.draw_threads)
    node_url = cluster_url(redis_url)
    info: Any = (
        RedisCluster.from_url(node_url)
        if node_url is not None
        else aioredis.Redis.from_url(redis_url)
    )

    async def redis_cpu() -> float:
        """CPU seconds of Redis so far: of every primary on a cluster."""
        if node_url is None:
            cpus = [await info.info("cpu")]
        else:
            raw = await info.info("cpu", target_nodes=RedisCluster.PRIMARIES)
            cpus = [raw] if "used_cpu_user" in raw else list(raw.values())
        return sum(float(c["used_cpu_user"]) + float(c["used_cpu_sys"]) for c in cpus)

    reports: list[ReportResult] = []
    draws: list[DrawResult] = []
    stamp = f"{int(time.time())}-{np.random.default_rng().integers(1 << 30):x}"
    async with httpx.AsyncClient(base_url=server_url, timeout=600) as http:
        for width in widths:
            for batch in batches:
                for frames in frames_list:
                    res = await _bench_reports(
                        engine, http, target, server_url, stamp, redis_cpu,
                        num_samples=num_samples, batch=batch, width=width, frames=frames,
                        samples_per_pass=samples_per_pass, clients=clients, rounds=rounds,
                        echo=echo, server_pid=server_pid,
                    )  # fmt: skip
                    reports.append(res)
                    echo(_report_row(res))
        for n in draw_sizes:
            draws.append(
                await _bench_draw(
                    target, engine, http, f"bench-{stamp}-draw{n}", n, draw_repeats, server_pid
                )
            )
            echo(_draw_row(draws[-1]))
    await info.aclose()
    await store.close()
    return reports, draws


async def _bench_reports(
    engine: Any,
    http: Any,
    target: str,
    server_url: str,
    stamp: str,
    redis_cpu: Callable[[], Coroutine[Any, Any, float]],
    *,
    num_samples: int,
    batch: int,
    width: int,
    frames: int,
    samples_per_pass: dict[int, int],
    clients: int,
    rounds: int,
    echo: Echo,
    server_pid: int | None,
) -> ReportResult:
    """One row: the in-process limit and the service over HTTP, each on its own run.

    Each run has one writer — the benchmark's engine or the server — as a run has in
    production (one server process): each keeps its run's write lease (see
    engine.cache.RecordCache) after its warm-up pass. Sharing one run would make the two
    revoke each other's lease at every pass and measure the recovery instead."""
    n = num_samples if width <= 100 else min(num_samples, 200_000)
    per = batch * frames
    m = min(n, samples_per_pass[width])
    m = max(per, m - m % per)
    m = min(m, n - n % batch)
    runs = {k: f"bench-{stamp}-b{batch}-k{frames}-c{width}-{k}" for k in ("limit", "http")}
    for run_id in runs.values():
        r = await http.post("/v1/runs", json=report_run(run_id, n, width, batch))
        r.raise_for_status()
        (await http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0})).raise_for_status()
    idx = np.random.default_rng(1).permutation(n)[:m].astype(np.int64)
    spec: dict[str, Any] = {"indices": idx, "batch": batch, "width": width, "frames": frames}
    # Warm-up passes (not timed): every sample visited once by its run's writer, so the
    # measured passes score every sample they touch.
    warm = _arrays(report_bodies(runs["limit"], **spec, lr_sum=0.0, prefix="warm", seed=1), frames)
    await _inprocess_pass(engine, runs["limit"], warm, clients)
    del warm
    await asyncio.to_thread(
        http_pass, server_url, runs["http"],
        {"run_id": runs["http"], **spec, "lr_sum": 0.0, "prefix": "warm", "seed": 1}, clients,
    )  # fmt: skip
    # Alternate in-process and HTTP passes and keep the best of each: other
    # processes on a shared machine slow one pass or the other at random.
    best_lim: tuple[float, np.ndarray, float] | None = None
    best_http: tuple[float, np.ndarray, float, float] | None = None
    err = lim_err = 0
    for rnd in range(rounds):
        lr = float(rnd + 1)
        lim = _arrays(
            report_bodies(runs["limit"], **spec, lr_sum=lr, prefix=f"p{rnd}", seed=2 + rnd), frames
        )
        r0 = await redis_cpu()
        lim_s, lim_lat, e1 = await _inprocess_pass(engine, runs["limit"], lim, clients)
        lim_redis = await redis_cpu() - r0
        del lim
        r0, s0 = await redis_cpu(), _proc_cpu(server_pid)
        http_s, lat, e2 = await asyncio.to_thread(
            http_pass, server_url, runs["http"],
            {"run_id": runs["http"], **spec, "lr_sum": lr, "prefix": f"p{rnd}", "seed": 100 + rnd},
            clients,
        )  # fmt: skip
        http_redis, http_server = await redis_cpu() - r0, _proc_cpu(server_pid) - s0
        lim_err += e1
        err += e2
        if best_lim is None or lim_s < best_lim[0]:
            best_lim = (lim_s, lim_lat, lim_redis)
        if best_http is None or http_s < best_http[0]:
            best_http = (http_s, lat, http_redis, http_server)
    assert best_lim is not None and best_http is not None
    lim_s, lim_lat, lim_redis = best_lim
    http_s, lat, http_redis, http_server = best_http
    for kind, run_id in runs.items():
        run = (await http.get(f"/v1/runs/{run_id}")).json()
        scored = run["counters"]["samples_scored"]
        if scored != rounds * m:
            err += 1
            echo(f"  ! {kind}: expected {rounds * m} scored samples, the server counted {scored}")
        (await http.delete(f"/v1/runs/{run_id}")).raise_for_status()
    return ReportResult(
        target=target,
        batch=batch,
        width=width,
        num_samples=n,
        clients=clients,
        reports=m // batch,
        frames=frames,
        service_rate=m / http_s,
        p50_ms=1e3 * float(np.percentile(lat, 50)),
        p99_ms=1e3 * float(np.percentile(lat, 99)),
        limit_rate=m / lim_s,
        limit_p50_ms=1e3 * float(np.percentile(lim_lat, 50)),
        limit_p99_ms=1e3 * float(np.percentile(lim_lat, 99)),
        errors=err + lim_err,
        server_us=1e6 * http_server / m,
        redis_us=1e6 * http_redis / m,
        limit_redis_us=1e6 * lim_redis / m,
    )


def _peak_rss_mb(pid: int | None, *, reset: bool = False) -> float:
    """A process's peak resident memory (VmHWM) in MiB, NaN when unknown; ``reset``
    restarts the peak from the current size first (``/proc/<pid>/clear_refs``)."""
    if pid is None:
        return float("nan")
    try:
        if reset:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def _bench_draw(
    target: str,
    engine: Any,
    http: Any,
    run_id: str,
    n: int,
    repeats: int,
    server_pid: int | None = None,
) -> DrawResult:
    from docl.services import sampling
    from docl.services.engine.draws import StoredEpoch
    from docl.services.seeds import epoch_seed
    from docl.services.storage import DrawInputs

    # One selection epoch first (warmup_epochs = 0); each repeat is a fresh run so
    # every POST really draws (a second POST of the same epoch only re-reads it).
    scores = np.random.default_rng(5).normal(size=n).astype(np.float32)
    service: list[float] = []
    read: list[float] = []  # the server's own timing of the draw (stored in the epoch's JSON)
    compute: list[float] = []
    math: list[float] = []
    peak: list[float] = []  # the server process's peak RSS during the POST, MiB
    k = 0
    tau = 0.1
    for rep in range(repeats):
        rid = f"{run_id}-{rep}"
        r = await http.post("/v1/runs", json=draw_run(rid, n, tau))
        r.raise_for_status()
        st = await engine.state(rid)
        await engine.store.write_column(st.layout, "score", scores)
        _peak_rss_mb(server_pid, reset=True)
        t0 = time.perf_counter()
        r = await http.post(f"/v1/runs/{rid}/epochs", json={"epoch": 0})
        service.append(time.perf_counter() - t0)
        peak.append(_peak_rss_mb(server_pid))
        r.raise_for_status()
        k = int(r.json()["size"])
        raw = await engine.store.epoch_json(st.layout, 0)
        timing = None if raw is None else StoredEpoch.model_validate_json(raw).timing
        read.append(float("nan") if timing is None else timing.read_s)
        compute.append(float("nan") if timing is None else timing.draw_s)
        (await http.delete(f"/v1/runs/{rid}")).raise_for_status()
        # The same draw's math in this process, without Redis or HTTP: what the
        # server computes in its worker thread, from a snapshot already in memory.
        snap = DrawInputs(
            uid=st.uid, last_epoch=-1, scores=scores, losses=None,
            drawn=np.zeros(n, dtype="<u2"), inclusion=None,
        )  # fmt: skip
        seed = epoch_seed(st.config.params.seed, 0)
        t0 = time.perf_counter()
        engine.epochs.draw_counted(st, st.plan[0], seed, snap, None)
        math.append(time.perf_counter() - t0)
    limit: list[float] = []
    threads = sampling._POOL_SIZE
    sampling.set_draw_threads(1)  # the baseline: plain numpy in one thread, whatever the pool
    try:
        for rep in range(repeats):
            rng = np.random.default_rng(rep)
            t0 = time.perf_counter()
            logits = sampling.standardize(scores, "std") / np.float32(tau)
            sampling.gumbel_topk(logits, k, rng)
            limit.append(time.perf_counter() - t0)
    finally:
        sampling.set_draw_threads(threads)
    return DrawResult(
        target=target,
        num_samples=n,
        k=k,
        service_s=float(np.median(service)),
        limit_s=float(np.median(limit)),
        breakdown={
            "read_s": float(np.median(read)),
            "compute_s": float(np.median(compute)),
            "math_s": float(np.median(math)),
            "server_peak_mib": max(peak),
        },
    )


_REPORT_HEAD = (
    f"{'redis':<9} {'B':>5} {'K':>3} {'c':>5} {'n':>9} {'samples/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
    f" {'limit/s':>10} {'lim p50':>7} {'lim p99':>7} {'ratio':>6} {'srv us':>6} {'rds us':>6}"
    f" {'err':>4}"
)
_DRAW_HEAD = (
    f"{'redis':<9} {'n':>11} {'k':>11} {'draw s':>8} {'read s':>7} {'math s':>7} {'rest s':>7}"
    f" {'numpy s':>8} {'ratio':>6} {'in-proc':>8} {'ratio':>6} {'srv MiB':>8}"
)


def _report_row(r: ReportResult) -> str:
    return (
        f"{r.target:<9} {r.batch:>5} {r.frames:>3} {r.width:>5} {r.num_samples:>9}"
        f" {r.service_rate:>10,.0f} {r.p50_ms:>7.2f} {r.p99_ms:>7.2f} {r.limit_rate:>10,.0f}"
        f" {r.limit_p50_ms:>7.2f} {r.limit_p99_ms:>7.2f} {r.ratio:>6.2f} {r.server_us:>6.2f}"
        f" {r.redis_us:>6.2f} {r.errors:>4}"
    )


def _draw_row(d: DrawResult) -> str:
    b = d.breakdown
    rest = d.service_s - b.get("read_s", 0.0) - b.get("compute_s", 0.0)
    return (
        f"{d.target:<9} {d.num_samples:>11,} {d.k:>11,} {d.service_s:>8.3f}"
        f" {b.get('read_s', float('nan')):>7.3f} {b.get('compute_s', float('nan')):>7.3f}"
        f" {rest:>7.3f} {d.limit_s:>8.3f} {d.ratio:>6.2f} {d.math_s:>8.3f} {d.math_ratio:>6.2f}"
        f" {b.get('server_peak_mib', float('nan')):>8,.0f}"
    )


def run_service_bench(
    *,
    redis_url: str | None = None,
    num_samples: int = 1_000_000,
    quick: bool = False,
    batches: Sequence[int] = (256, 1024),
    widths: Sequence[int] = (10, 100, 1000),
    frames: Sequence[int] = (1,),
    clients: int = 8,
    draw_sizes: Sequence[int] = (1_000_000, 10_000_000),
    reports: bool = True,
    json_path: str | None = None,
    echo: Echo = print,
) -> dict[str, Any]:
    """Run the whole benchmark (see the module docstring) and print its tables."""
    import os

    from docl.services.embedded import RedisProcess, ServerProcess

    if quick:
        num_samples = min(num_samples, 20_000)
        batches, widths, frames = (256,), (10,), (1,)
        draw_sizes = (100_000,)
        per_pass = {10: 4096, 100: 4096, 1000: 2048}
        repeats = 1
    else:
        per_pass = {10: 204_800, 100: 81_920, 1000: 16_384}
        repeats = 2
    targets: list[tuple[str, str | None]] = [("embedded", None)]
    if redis_url:
        targets.append(("given", redis_url))
    echo(
        f"docl bench service: n = {num_samples:,}, clients = {clients}, one uvicorn worker, "
        f"{os.cpu_count()} CPUs shared by load generator, server and Redis"
    )
    all_reports: list[ReportResult] = []
    all_draws: list[DrawResult] = []
    for name, url in targets:
        redis = RedisProcess() if url is None else None
        try:
            if redis is not None:
                redis.start()
                url = redis.unix_url  # as `docl serve` reaches its embedded Redis
            assert url is not None
            with ServerProcess(redis_url=url) as server:
                echo(
                    f"\n[{name}] redis {_no_password(url)}, server {server.url} (pid {server.pid})"
                )
                reps: list[ReportResult] = []
                if reports and batches and widths:
                    echo(
                        "reports: scored samples/s over HTTP vs the same read-modify-write "
                        "in-process (limit); K reports per request; CPU us per sample of the "
                        "server process and of Redis during the best HTTP pass"
                    )
                    echo(_REPORT_HEAD)
                    reps, _ = run_loop(
                        _bench_target(
                            name,
                            url,
                            server.url,
                            num_samples=num_samples,
                            batches=batches,
                            widths=widths,
                            frames_list=frames,
                            samples_per_pass=per_pass,
                            clients=clients,
                            draw_sizes=(),
                            draw_repeats=repeats,
                            rounds=repeats,
                            echo=echo,
                            server_pid=server.pid,
                        )
                    )
                drs: list[DrawResult] = []
                if draw_sizes:
                    echo(
                        "draws: POST /epochs of a selection epoch (read: the server's snapshot read, "
                        "math: its draw math, rest: HTTP + commit + re-read) vs numpy "
                        "standardize + Gumbel-top-k (numpy s) and vs the draw's whole math "
                        "in-process (in-proc: + shuffle + counts, on the draw threads); numpy s: one "
                        "thread; ratio = baseline / draw s; srv MiB: the server's peak RSS during the POST"
                    )
                    echo(_DRAW_HEAD)
                    _, drs = run_loop(
                        _bench_target(
                            name,
                            url,
                            server.url,
                            num_samples=num_samples,
                            batches=(),
                            widths=(),
                            samples_per_pass=per_pass,
                            clients=clients,
                            draw_sizes=draw_sizes,
                            draw_repeats=repeats,
                            rounds=repeats,
                            echo=echo,
                            server_pid=server.pid,
                        )
                    )
                all_reports += reps
                all_draws += drs
        finally:
            if redis is not None:
                redis.stop()
    result = {
        "cpus": os.cpu_count(),
        "quick": quick,
        "reports": [{**asdict(r), "ratio": r.ratio} for r in all_reports],
        "draws": [{**asdict(d), "ratio": d.ratio, "math_ratio": d.math_ratio} for d in all_draws],
    }
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=2)
    bad = sum(r.errors for r in all_reports)
    if bad:
        echo(f"\n{bad} report(s) failed or were miscounted: see above")
    return result


def _no_password(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``: the embedded Redis's is a
    secret, and benchmark output gets pasted into issues."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
