"""The outage ride-out (docl.client.outage) without a server: its waits are the
outage policy's, it is the one retry loop (the calls it wraps do not retry), and it
gives up at the tolerance. Against a real server that restarts: tests/client/test_sampler_server.py."""

from __future__ import annotations

import time

import pytest

from docl.client.errors import NotFoundError, ServerError, TransportError
from docl.client.outage import outage_policy, ride_out


def test_ride_out_waits_as_the_outage_policy_says_then_returns() -> None:
    sleeps: list[float] = []
    calls = iter([TransportError("refused")] * 7 + [ServerError(503, "loading")])

    def call() -> str:
        err = next(calls, None)
        if err is not None:
            raise err
        return "epoch"

    assert ride_out(call, tolerance=600, what="drawing", sleep=sleeps.append) == "epoch"
    expected = [min(5.0, 0.25 * 2**n) for n in range(8)]  # 0.25, 0.5, 1, 2, 4, 5, 5, 5
    assert sleeps == pytest.approx(expected) and sleeps[-1] == 5.0
    assert outage_policy(600).backoff.compute(3) == 2.0


def test_ride_out_raises_what_another_try_cannot_mend_at_once() -> None:
    sleeps: list[float] = []

    def call() -> None:
        raise NotFoundError(404, "unknown run")

    with pytest.raises(NotFoundError):
        ride_out(call, tolerance=600, what="drawing", sleep=sleeps.append)
    assert sleeps == []


def test_ride_out_gives_up_at_the_tolerance_with_a_note() -> None:
    def call() -> None:
        raise TransportError("refused")

    t0 = time.monotonic()
    with pytest.raises(TransportError) as err:
        ride_out(call, tolerance=0.6, what="drawing epoch 3")
    assert 0.6 <= time.monotonic() - t0 < 3.0
    assert any("outage_tolerance is 0.6 s" in note for note in err.value.__notes__)


def test_the_sampler_module_still_offers_the_ride_out() -> None:
    pytest.importorskip("torch")
    import docl.client.outage as outage
    import docl.client.sampler as sampler

    for name in ("default_outage_tolerance", "first_contact", "outage_policy", "ride_out"):
        assert getattr(sampler, name) is getattr(outage, name) and name in sampler.__all__


def test_ride_out_stops_waiting_when_gone_says_the_server_cannot_come_back() -> None:
    sleeps: list[float] = []
    asked: list[int] = []

    def call() -> None:
        raise TransportError("refused")

    def gone() -> BaseException | None:
        asked.append(len(sleeps))
        return KeyboardInterrupt() if len(asked) == 3 else None

    with pytest.raises(KeyboardInterrupt) as err:
        ride_out(call, tolerance=600, what="drawing epoch 3", sleep=sleeps.append, gone=gone)
    assert asked == [0, 1, 2]  # asked after each failure, before each wait
    assert sleeps == pytest.approx([0.25, 0.5])
    assert isinstance(err.value.__cause__, TransportError)


def test_ride_out_does_not_ask_gone_about_a_call_that_succeeds_or_cannot_be_mended() -> None:
    def gone() -> BaseException | None:
        raise AssertionError("asked")

    assert ride_out(lambda: 7, tolerance=600, what="drawing", gone=gone) == 7

    def refused() -> None:
        raise NotFoundError(404, "unknown run")

    with pytest.raises(NotFoundError):
        ride_out(refused, tolerance=600, what="drawing", gone=gone)
