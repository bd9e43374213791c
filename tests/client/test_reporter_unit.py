"""Reporter and LrSum without a server: the queue policy made deterministic with a
MockTransport that holds answers back, and ``track_lr`` against torch's own
schedulers. The Reporter against a real server (outage, restart, dedup) is in
tests/client/test_sdk_server.py.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time

import httpx
import numpy as np
import pytest

from docl.client import Reporter, ScoreClient, WireError, track_lr, wire

ACK = {"accepted": 1, "scored": 1, "duplicate": False}


class Gate:
    """A server that records report ids and answers only when the gate is open.

    It reads one-report and multi-report bodies; with ``status`` != 200 it rejects a
    request when any of its reports has an id starting with "bad" (as the real server
    validates a whole request before writing), else it acknowledges every report."""

    def __init__(self, status: int = 200) -> None:
        self.open = threading.Event()
        self.seen: list[str] = []
        self.requests: list[list[str]] = []
        self.first = threading.Event()
        self.status = status

    def __call__(self, request: httpx.Request) -> httpx.Response:
        multi = request.headers["content-type"] == wire.REPORTS_CONTENT_TYPE
        reps = (
            wire.decode_reports(request.content) if multi else [wire.decode_report(request.content)]
        )
        ids = [r.report_id for r in reps]
        self.requests.append(ids)
        self.first.set()
        assert self.open.wait(10), "test gate never opened"
        if self.status != 200 and any(i.startswith("bad") for i in ids):
            return httpx.Response(
                self.status, json={"title": "Unprocessable", "detail": "index 99 out of range"}
            )
        self.seen += ids
        if not multi:
            return httpx.Response(200, json=ACK)
        return httpx.Response(
            200,
            json={"reports": [ACK] * len(ids), "accepted": len(ids), "scored": len(ids),
                  "duplicates": 0},
        )  # fmt: skip


def send(rep: Reporter, rid: str) -> str:
    return rep.report(
        epoch=0,
        indices=np.array([1]),
        outputs=np.zeros((1, 2)),
        targets=np.array([0]),
        lr_sum=0.1,
        report_id=rid,
    )


def test_full_queue_drops_the_oldest_counts_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate()
    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(gate))
    rep = Reporter(client, "r1", max_queue=3, senders=1)
    try:
        send(rep, "r0")
        assert gate.first.wait(5)  # r0 is in flight, the queue is empty
        with caplog.at_level(logging.WARNING, logger="docl.reporter"):
            for i in range(1, 6):
                send(rep, f"r{i}")  # returns at once although nothing is acknowledged
        c = rep.counters()
        assert (c.queued, c.dropped, c.pending, c.sent) == (6, 2, 4, 0)
        assert any("queue full" in r.message and "dropped" in r.message for r in caplog.records)
        assert rep.flush(timeout=0.2) is False  # still held at the gate
        gate.open.set()
        assert rep.flush(timeout=10) is True
        assert gate.seen == ["r0", "r3", "r4", "r5"]  # r1, r2 were the oldest waiting
        # what queued up while r0 was in flight went out in one request, in order
        assert gate.requests == [["r0"], ["r3", "r4", "r5"]]
        c = rep.counters()
        assert (c.sent, c.scored, c.dropped, c.pending, c.rejected) == (4, 4, 2, 0, 0)
        assert c.requests == 2
    finally:
        gate.open.set()
        rep.close()
        client.close()


def test_a_4xx_is_rejected_once_and_not_retried(caplog: pytest.LogCaptureFixture) -> None:
    gate = Gate(status=422)
    gate.open.set()
    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(gate))
    with caplog.at_level(logging.ERROR, logger="docl.reporter"), Reporter(client, "r1") as rep:
        send(rep, "bad")
        assert rep.flush(timeout=10)
        assert (rep.rejected, rep.sent, rep.retried) == (1, 0, 0)
        assert "index 99 out of range" in str(rep.last_error)
    assert gate.requests == [["bad"]]
    assert any("rejected" in r.message for r in caplog.records)
    client.close()


def test_what_the_sdk_retries_the_reporter_retries_and_nothing_else() -> None:
    """One definition of retryable (docl.client.errors.retryable): a 503 and a 429 are
    sent again, with the same report_id; a 501 repeats itself and is rejected."""
    answers = [503, 429, 200, 501]
    seen: list[str] = []

    def server(request: httpx.Request) -> httpx.Response:
        seen.append(wire.decode_report(request.content).report_id)
        status = answers.pop(0)
        return httpx.Response(status, json=ACK if status == 200 else {"detail": "x"})

    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(server))
    with Reporter(client, "r1", senders=1, backoff=0.001, max_backoff=0.002) as rep:
        send(rep, "a")
        assert rep.flush(timeout=10)
        send(rep, "b")
        assert rep.flush(timeout=10)
        assert (rep.sent, rep.retried, rep.rejected) == (1, 2, 1)
    assert seen == ["a", "a", "a", "b"]
    client.close()


def test_a_rejected_batch_is_resent_report_by_report(caplog: pytest.LogCaptureFixture) -> None:
    """One bad report in a coalesced request fails the request (nothing written); the
    reporter then sends each report alone, so only the bad one is rejected."""
    gate = Gate(status=422)
    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(gate))
    with caplog.at_level(logging.ERROR, logger="docl.reporter"):
        rep = Reporter(client, "r1", senders=1)
        send(rep, "r0")
        assert gate.first.wait(5)  # r0 in flight: the next three queue up behind it
        for rid in ("r1", "bad", "r2"):
            send(rep, rid)
        gate.open.set()
        assert rep.flush(timeout=10)
        rep.close()
    assert gate.requests == [["r0"], ["r1", "bad", "r2"], ["r1"], ["bad"], ["r2"]]
    assert gate.seen == ["r0", "r1", "r2"]
    c = rep.counters()
    assert (c.sent, c.rejected, c.retried, c.requests) == (3, 1, 0, 3)
    assert "index 99 out of range" in str(rep.last_error)
    client.close()


def test_batches_respect_the_sample_and_report_limits() -> None:
    gate = Gate()
    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(gate))
    rep = Reporter(client, "r1", senders=1, max_batch_samples=5, max_batch_reports=3)
    try:
        send(rep, "r0")
        assert gate.first.wait(5)
        for i in range(1, 5):  # 1 sample each: at most 3 per request
            send(rep, f"r{i}")
        for i in (5, 6):  # 4 samples each: 4 + 4 > 5, one per request
            rep.report(epoch=0, indices=np.arange(4), outputs=np.zeros((4, 2)),
                       targets=np.zeros(4, np.int64), lr_sum=0.1, report_id=f"r{i}")  # fmt: skip
        rep.report(epoch=0, indices=np.arange(9), outputs=np.zeros((9, 2)),
                   targets=np.zeros(9, np.int64), lr_sum=0.1, report_id="r7")  # fmt: skip
        gate.open.set()
        assert rep.flush(timeout=10)
        assert gate.requests == [["r0"], ["r1", "r2", "r3"], ["r4", "r5"], ["r6"], ["r7"]]
    finally:
        gate.open.set()
        rep.close()
        client.close()


def test_report_copies_its_arrays_and_checks_shapes_on_the_callers_side() -> None:
    gate = Gate()
    bodies: list[bytes] = []

    def capture(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return gate(request)

    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(capture))
    rep = Reporter(client, "r1", senders=1)
    try:
        out = np.ones((2, 3), dtype=np.float32)
        send(rep, "r0")
        assert gate.first.wait(5)
        rep.report(
            epoch=1, indices=np.array([3, 4]), outputs=out, targets=np.array([0, 2]), lr_sum=0.5
        )
        out[:] = 7.0  # the caller reuses its buffer before the report is sent
        with pytest.raises(WireError, match="outputs must be"):
            rep.report(
                epoch=1, indices=np.array([3]), outputs=out, targets=np.array([0]), lr_sum=0.5
            )
        gate.open.set()
        assert rep.flush(timeout=10)
        assert np.all(wire.decode_report(bodies[1]).outputs == 1.0)
        assert rep.counters().queued == 2
    finally:
        gate.open.set()
        rep.close()
        client.close()


def test_close_abandons_what_it_cannot_deliver_and_counts_it() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(down))
    rep = Reporter(client, "r1", senders=1, backoff=0.01, max_backoff=0.05)
    for i in range(3):
        send(rep, f"r{i}")
    assert rep.close(timeout=0.3) is False
    c = rep.counters()
    assert c.dropped == 3 and c.pending == 0 and c.sent == 0 and c.retried >= 1
    with pytest.raises(RuntimeError, match="closed"):
        send(rep, "late")


def test_flush_asks_check_while_it_waits_and_ends_on_what_it_raises() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(down))
    rep = Reporter(client, "r1", senders=1, backoff=0.01, max_backoff=0.05)
    send(rep, "r0")
    asked: list[float] = []

    def check() -> None:
        asked.append(time.monotonic())
        if len(asked) == 4:
            raise KeyboardInterrupt

    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        rep.flush(60.0, check=check, check_every=0.05)
    assert len(asked) == 4 and time.monotonic() - t0 < 5.0  # not the 60 s timeout
    assert all(b - a >= 0.04 for a, b in itertools.pairwise(asked))
    assert rep.counters().pending == 1  # the report is still queued, not lost
    assert rep.close(timeout=0.0) is False
    assert rep.flush(0.1, check=check) is True  # nothing pending: check not needed
    assert len(asked) == 4


# ---------------------------------------------------------------------------
# track_lr against torch's schedulers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["step", "cosine", "manual"])
def test_track_lr_sums_the_rate_each_step_applied(schedule: str) -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    steps = 23
    if schedule == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.3)
        expected_lrs = [0.5 * 0.3 ** (k // 5) for k in range(steps)]
    elif schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.01)
        expected_lrs = [
            0.01 + 0.5 * (0.5 - 0.01) * (1 + np.cos(np.pi * k / steps)) for k in range(steps)
        ]
    else:
        sched = None
        expected_lrs = [0.1 / (k + 1) for k in range(steps)]
    lrs = track_lr(opt, start=2.0)
    before = []
    x = torch.randn(4, 3)
    for k in range(steps):
        if sched is None:
            for g in opt.param_groups:
                g["lr"] = expected_lrs[k]
        before.append(lrs.value)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()
    # value before step k == start + the rates of steps 0..k-1 (an independent sum)
    expected_before = 2.0 + np.concatenate([[0.0], np.cumsum(expected_lrs)[:-1]])
    np.testing.assert_allclose(before, expected_before, rtol=1e-12)
    assert lrs.steps == steps
    assert lrs.value == pytest.approx(2.0 + sum(expected_lrs), rel=1e-12)
    state = lrs.state_dict()
    lrs.remove()
    opt.step()  # no longer tracked
    assert lrs.value == state["value"]
    again = track_lr(opt)
    again.load_state_dict(state)
    assert float(again) == state["value"] and again.steps == steps


def test_linger_coalesces_reports_and_flush_does_not_wait_for_it() -> None:
    gate = Gate()
    gate.open.set()
    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(gate))
    rep = Reporter(client, "r1", senders=2, linger=0.5)
    try:
        for i in range(3):  # well within the linger window of the first
            send(rep, f"a{i}")
        assert gate.first.wait(5)
        assert gate.requests == [["a0", "a1", "a2"]]  # one request, after the linger
        slow = Reporter(client, "r1", senders=1, linger=60.0)
        t0 = time.monotonic()
        send(slow, "b0")
        assert slow.flush(timeout=10) and time.monotonic() - t0 < 5  # flush: no lingering
        slow.close()
        assert gate.requests[-1] == ["b0"]
    finally:
        rep.close()
        client.close()
