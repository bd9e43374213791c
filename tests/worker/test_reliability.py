"""Training survives a score server or Redis outage (DESIGN §4 reliability).

Real processes only: a redis-server with AOF (``appendfsync always``), a ``docl
serve`` child process over HTTP, and the real training loop (``train_loop``,
in-process, the path of ``docl train --workers 0``). Mid-run the test SIGKILLs
the score server — or Redis — twice: once in the middle of an epoch (the reporter
must buffer and retry) and once between two epochs (the next draw must wait),
and starts it again 3 s later (same port; Redis replays its AOF). The draw's
requests do not retry by themselves (the loop's ride-out is their one retry loop,
docs/client.md "Retries"), so the draw after the kill between epochs has to wait.
Training must finish, and the server must hold exactly what was trained: every
sample's visits and lr-sum equal those recomputed from the stored epochs, every
step's report applied once (a report that reached the server just before a kill
is retried with its ``report_id`` and counted as a duplicate, not twice).

The third test measures the ``appendfsync everysec`` window: reports
acknowledged more than 2 s before a SIGKILL of Redis all survive it, none is
counted twice; it prints how many of the last ones were lost (docs/training.md,
"Reliability").

The worker-kill case is tests/worker/test_ray_train.py.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from docl.client import ScoreClient, TransportError
from docl.client.errors import ServerError
from docl.services.embedded import RedisProcess, ServerProcess
from docl.worker.loop import LoopConfig, train_loop
from docl.worker.session import LocalSession
from docl.worker.tasks import get_task
from docl.worker.train import TrainError, TrainSpec, _server_gone, build_run
from tests.conftest import RestartLater
from tests.worker.helpers import expected_visits_and_lr_sums

SMALL = {"warmup_epochs": 2, "episode_epochs": 2, "batch_size": 64}
KEEP_EPOCHS = {"DOCL_KEEP_EPOCHS": "1000"}  # the test recomputes visits from every epoch


class _Bar:
    def __init__(self, on_batch: Callable[[int], None]) -> None:
        self.batches = 0
        self.on_batch = on_batch

    def update(self, n: int = 1) -> None:
        self.batches += n
        self.on_batch(self.batches)

    def close(self) -> None:
        pass


class FaultSession(LocalSession):
    """A LocalSession that calls ``fault`` after batch ``mid_batch`` (mid-epoch)
    and at the barrier after epoch ``end_epoch`` (after the flush, before the next
    draw): the loop's own hooks, so the faults land at exact points."""

    def __init__(self, fault: Callable[[str], None], *, mid_batch: int, end_epoch: int) -> None:
        super().__init__()
        self.fault = fault
        self.mid_batch = mid_batch
        self.end_epoch = end_epoch
        self.epochs_done = 0

    def progress(self, *, total: int, initial: int, desc: str) -> _Bar:
        return _Bar(lambda b: self.fault(f"batch {b}") if b == self.mid_batch else None)

    def barrier(self) -> None:
        if self.epochs_done == self.end_epoch:
            self.fault(f"end of epoch {self.epochs_done}")
        self.epochs_done += 1


def _train_through_two_kills(
    victim: RedisProcess | ServerProcess,
    restart_later: Callable[[RedisProcess | ServerProcess, float], RestartLater],
    server_url: str,
    run_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    *,
    between: float,
) -> tuple[dict[str, Any], list[RestartLater], int]:
    data = get_task("digits")
    run = build_run(
        TrainSpec(task="digits", method="docl", epochs=6, run_id=run_id, params=SMALL), data
    )
    with ScoreClient(server_url) as client:
        client.create_run(run)
        steps = [p.steps for p in client.plan(run_id).epochs]
    restarts: list[RestartLater] = []
    pids: list[int | None] = []

    def kill_and_restart_later(where: str) -> None:
        pids.append(victim.pid)
        victim.kill()  # SIGKILL: no shutdown, no final fsync
        logging.getLogger("docl.test").warning("killed %r at %s", victim, where)
        restarts.append(restart_later(victim, between if where.startswith("end") else 3.0))

    session = FaultSession(
        kill_and_restart_later,
        mid_batch=steps[0] + steps[1] // 2,  # the middle of epoch 1
        end_epoch=3,  # after epoch 3's flush, before epoch 4 is drawn
    )
    cfg = LoopConfig(
        run_id=run_id,
        server=server_url,
        seed=0,
        checkpoint=False,
        metrics_path=str(tmp_path / "metrics.jsonl"),
        outage_tolerance=120.0,
        flush_timeout=120.0,
    )
    caplog.set_level(logging.WARNING)
    final = train_loop(cfg, data, session)
    assert len(restarts) == 2 and len(pids) == 2
    for r in restarts:
        assert r.error is None, f"restart failed: {r.error}"
    assert victim.pid is not None and victim.pid not in pids  # really a new process
    for r in restarts:
        assert r.up_at is not None and r.up_at - r.down_at >= r.delay
    return final, restarts, int(sum(steps))


def _check_exactly_what_was_trained(
    server_url: str, run_id: str, final: dict[str, Any], total_steps: int, n: int
) -> None:
    with ScoreClient(server_url) as client:
        visits, lr_sums, plan_steps = expected_visits_and_lr_sums(
            client, run_id, world=1, num_samples=n
        )
        got = client.scores(run_id)
        counters = client.get_run(run_id).counters
    assert plan_steps == total_steps
    # Training finished: every epoch of the plan, every step.
    assert [m["epoch"] for m in final["history"]] == list(range(6))
    assert final["batches"] == total_steps
    rep = final["reporter"]
    assert rep["queued"] == rep["sent"] == total_steps
    assert rep["dropped"] == 0 and rep["rejected"] == 0 and rep["pending"] == 0
    assert rep["retried"] > 0  # the outage was felt by the reporter
    # The server holds exactly what was trained: no report lost, none counted twice.
    np.testing.assert_array_equal(got.visits, visits)
    np.testing.assert_array_equal(got.lr_sums, lr_sums)
    assert counters.reports == total_steps  # applied once each ...
    assert (
        counters.duplicates == rep["duplicates"]
    )  # ... retries of applied ones answered duplicate
    assert counters.samples_reported == int(visits.sum())


@pytest.mark.slow
def test_training_survives_the_score_server_killed_twice(
    redis_factory: Callable[..., RedisProcess],
    server_factory: Callable[..., ServerProcess],
    restart_later: Callable[[RedisProcess | ServerProcess, float], RestartLater],
    run_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = redis_factory(appendonly=True, appendfsync="always")
    server = server_factory(redis_url=redis.url, env=KEEP_EPOCHS)
    final, _, total = _train_through_two_kills(
        server, restart_later, server.url, run_id, tmp_path, caplog, between=3.0
    )
    _check_exactly_what_was_trained(
        server.url, run_id, final, total, get_task("digits").num_samples
    )
    log = caplog.text
    assert "docl reporter: cannot deliver reports" in log  # mid-epoch: buffered
    assert "docl: drawing epoch 4 failed" in log and "Waiting up to 120 s" in log  # the draw waited
    assert "score server back after" in log


@pytest.mark.slow
def test_training_survives_redis_killed_twice_and_restarted_from_its_aof(
    redis_factory: Callable[..., RedisProcess],
    server_factory: Callable[..., ServerProcess],
    restart_later: Callable[[RedisProcess | ServerProcess, float], RestartLater],
    run_id: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis = redis_factory(appendonly=True, appendfsync="always")
    server = server_factory(redis_url=redis.url, env=KEEP_EPOCHS)
    final, _, total = _train_through_two_kills(
        redis,
        restart_later,
        server.url,
        run_id,
        tmp_path,
        caplog,
        between=3.0,
    )
    _check_exactly_what_was_trained(
        server.url, run_id, final, total, get_task("digits").num_samples
    )
    assert (redis.data_dir / "appendonly.aof").stat().st_size > 0  # what the restarts replayed
    log = caplog.text
    assert "docl reporter: cannot deliver reports" in log
    assert "docl: drawing epoch 4 failed" in log and "Waiting up to 120 s" in log


def test_appendfsync_everysec_keeps_every_report_acknowledged_before_the_window(
    redis_factory: Callable[..., RedisProcess],
    server_factory: Callable[..., ServerProcess],
    restart_later: Callable[[RedisProcess | ServerProcess, float], RestartLater],
    run_id: str,
) -> None:
    """Reports of disjoint samples, sent one after another; Redis is SIGKILLed
    mid-stream and restarted from its AOF. A report is applied entirely or not at
    all (one script), so report i survived iff its 16 samples have visits 1."""
    b, count = 16, 4000
    redis = redis_factory(appendonly=True, appendfsync="everysec")
    server = server_factory(redis_url=redis.url)
    acked: list[float] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    with ScoreClient(server.url, retries=0) as client:
        client.create_run(run_id=run_id, num_samples=b * count, num_outputs=2, epochs=1)
        client.draw_epoch(run_id, 0)
        rng = np.random.default_rng(0)

        def send() -> None:
            for i in range(count):
                if stop.is_set():
                    return
                idx = np.arange(i * b, (i + 1) * b)
                try:
                    client.report(run_id, epoch=0, indices=idx, outputs=rng.normal(size=(b, 2)),
                                  targets=idx % 2, lr_sum=0.0, report_id=f"r{i}")  # fmt: skip
                except (TransportError, ServerError):
                    return  # Redis is gone: the acknowledged ones are what counts
                except BaseException as e:
                    errors.append(e)
                    return
                acked.append(time.monotonic())

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(4.0)  # several fsync periods of acknowledged reports
        killed_at = time.monotonic()
        redis.kill()  # SIGKILL
        stop.set()
        sender.join(60)
        assert not errors, errors
        restart_later(redis, 0.5)
        deadline = time.monotonic() + 60
        while not client.ready():
            assert time.monotonic() < deadline, "the server did not get Redis back"
            time.sleep(0.2)
        visits = client.scores(run_id).visits.reshape(count, b)
    n_acked = len(acked)
    assert n_acked > 50, "too few reports before the kill to say anything"
    per_report = visits[:n_acked]
    assert np.all(per_report == per_report[:, :1]), "a report was applied in part"
    survived = per_report[:, 0] == 1
    assert visits.max() <= 1  # none counted twice
    ack = np.array(acked)
    old = ack < killed_at - 2.0
    assert survived[old].all(), (
        f"{int((~survived[old]).sum())} reports acknowledged >2 s before the kill were lost"
    )
    lost = int((~survived).sum())
    window = ack >= killed_at - 2.0
    print(
        f"everysec + SIGKILL of redis-server: {n_acked} reports acknowledged, "
        f"{lost} lost ({int(window.sum())} acknowledged in the last 2 s before the kill)"
    )


@pytest.mark.parametrize(
    ("how", "where", "raised"),
    [
        (signal.SIGINT, "end", KeyboardInterrupt),  # docl serve exits 0: a Ctrl-C
        (signal.SIGKILL, "mid", TrainError),  # status -9: a crash, said as one
    ],
)
def test_training_stops_at_once_when_the_jobs_own_server_has_exited(
    server_factory: Callable[..., ServerProcess],
    run_id: str,
    tmp_path: Path,
    how: int,
    where: str,
    raised: type[BaseException],
) -> None:
    """The job's own server (docl train's ServerProcess) exits for good: after an
    epoch's flush (the next draw fails) or mid-epoch (the flush cannot deliver). With
    ``gone`` the loop stops within seconds instead of waiting out the outage tolerance
    and the flush timeout (120 s each here) for a server that cannot come back."""
    server = server_factory(env=KEEP_EPOCHS)  # its own embedded Redis, as docl train's
    data = get_task("digits")
    run = build_run(
        TrainSpec(task="digits", method="docl", epochs=6, run_id=run_id, params=SMALL), data
    )
    with ScoreClient(server.url) as client:
        client.create_run(run)
        steps = [p.steps for p in client.plan(run_id).epochs]
    stopped_at: list[float] = []

    def stop_server(at: str) -> None:
        assert server.proc is not None
        server.proc.send_signal(how)
        server.proc.wait(timeout=30)  # gone before the loop's next request
        stopped_at.append(time.monotonic())

    session = FaultSession(
        stop_server,
        mid_batch=steps[0] + steps[1] // 2 if where == "mid" else -1,
        end_epoch=1 if where == "end" else -1,
    )
    cfg = LoopConfig(
        run_id=run_id,
        server=server.url,
        seed=0,
        checkpoint=False,
        metrics_path=str(tmp_path / "metrics.jsonl"),
        outage_tolerance=120.0,
        flush_timeout=120.0,
    )
    with pytest.raises(raised) as err:
        train_loop(cfg, data, session, gone=_server_gone(server))
    took = time.monotonic() - stopped_at[0]
    assert took < 20, took
    kept = (tmp_path / "metrics.jsonl").read_text().splitlines()
    # "end": stopped at epoch 1's barrier, so epoch 1 ends and epoch 2's draw fails;
    # "mid": stopped in epoch 1, whose flush cannot deliver
    assert len(kept) == (2 if where == "end" else 1)
    if raised is TrainError:
        assert "exited with status -9" in str(err.value)
