"""The load generator of ``docl bench service``: a separate process that sends
pre-encoded binary reports over raw HTTP/1.1 keep-alive connections (closed loop:
each connection sends its next report when the previous one is answered), so
that encoding and the client's own costs stay out of the server's figures."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from docl.wire import encoding as wire

__all__ = ["http_pass", "report_bodies", "run_loop"]

T = TypeVar("T")


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when installed: the server runs on it (uvicorn's default), so the
    in-process limit and the load generator should too."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)
    return uvloop.run(coro)


def report_bodies(
    run_id: str,
    indices: np.ndarray,
    batch: int,
    width: int,
    lr_sum: float,
    prefix: str,
    seed: int,
    frames: int = 1,
) -> list[bytes]:
    """Request bodies: one binary report of `batch` samples each, or (frames > 1)
    multi-report bodies of `frames` such reports."""
    rng = np.random.default_rng(seed)
    reports = []
    for j in range(0, indices.shape[0], batch):
        idx = indices[j : j + batch]
        outputs = rng.normal(size=(idx.shape[0], width)).astype(np.float32)
        reports.append(
            wire.encode_report(
                report_id=f"{prefix}-{j // batch}",
                epoch=0,
                lr_sum=lr_sum,
                indices=idx,
                outputs=outputs,
                targets=idx % width,
            )
        )
    if frames == 1:
        return reports
    return [wire.encode_reports(reports[k : k + frames]) for k in range(0, len(reports), frames)]


async def _drive(
    host: str, port: int, requests: Sequence[bytes], clients: int
) -> tuple[float, list[float], int]:
    """Send every request over `clients` keep-alive connections; (seconds, latencies, errors)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for r in requests:
        queue.put_nowait(r)
    latencies: list[float] = []
    errors = 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - t0)
                ok = b'"duplicates":0' in body or b'"duplicate":false' in body
                if not head.startswith(b"HTTP/1.1 200") or not ok:
                    errors += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return time.perf_counter() - t0, latencies, errors


def _loadgen(
    host: str, port: int, path: str, spec: dict[str, Any], clients: int, conn: Any
) -> None:  # pragma: no cover - runs in a child process
    bodies = report_bodies(**spec)
    ctype = wire.REPORTS_CONTENT_TYPE if spec.get("frames", 1) > 1 else wire.REPORT_CONTENT_TYPE
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\nContent-Length: "
    ).encode()
    requests = [head + str(len(b)).encode() + b"\r\n\r\n" + b for b in bodies]
    conn.send("ready")
    conn.recv()  # start signal: generation is not timed
    seconds, lat, errors = run_loop(_drive(host, port, requests, clients))
    conn.send((seconds, lat, errors))
    conn.close()


def http_pass(
    url: str, run_id: str, spec: dict[str, Any], clients: int
) -> tuple[float, np.ndarray, int]:
    from urllib.parse import urlsplit

    u = urlsplit(url)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=_loadgen,
        args=(u.hostname, u.port, f"/v1/runs/{run_id}/reports", spec, clients, child),
        daemon=True,
    )
    proc.start()
    try:
        if not parent.poll(300) or parent.recv() != "ready":
            raise RuntimeError("load generator did not start")
        parent.send("go")
        if not parent.poll(600):
            raise RuntimeError("load generator did not finish within 600 s")
        seconds, lat, errors = parent.recv()
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.kill()
    return float(seconds), np.asarray(lat), int(errors)
