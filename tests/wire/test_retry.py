"""The retry policy (docl.wire.retry): its delays against an independent computation,
and the bounds by attempts and by deadline."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docl.wire.retry import (
    ConstantBackoff,
    EqualJitterBackoff,
    ExponentialBackoff,
    FullJitterBackoff,
    Retry,
)

bases = st.floats(min_value=1e-4, max_value=10.0, allow_nan=False)
caps = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
failures = st.integers(min_value=0, max_value=2000)


def doubled(base: float, cap: float, n: int) -> float:
    """min(cap, base·2ⁿ) by n doublings, each capped (what a hand-written loop does)."""
    d = min(cap, base)
    for _ in range(n):
        d = min(cap, d * 2)
        if d == cap:
            break
    return d


@settings(max_examples=300, deadline=None)
@given(base=bases, cap=caps, n=failures)
def test_exponential_backoff_doubles_up_to_its_cap(base: float, cap: float, n: int) -> None:
    assert ExponentialBackoff(base, cap).compute(n) == doubled(base, cap, n)


@settings(max_examples=300, deadline=None)
@given(base=bases, cap=caps, n=failures, seed=st.integers(0, 2**32))
def test_jittered_backoffs_draw_from_their_ranges(
    base: float, cap: float, n: int, seed: int
) -> None:
    c = doubled(base, cap, n)
    u = random.Random(seed).random()
    equal = EqualJitterBackoff(base, cap, rng=random.Random(seed)).compute(n)
    assert equal == c * (0.5 + 0.5 * u) and c / 2 <= equal <= c
    full = FullJitterBackoff(base, cap, rng=random.Random(seed)).compute(n)
    assert full == random.Random(seed).uniform(0.0, c) and 0.0 <= full <= c


def test_jitter_varies_and_constant_does_not() -> None:
    b = EqualJitterBackoff(1.0, 8.0, rng=random.Random(0))
    assert len({b.compute(3) for _ in range(20)}) > 1
    assert {ConstantBackoff(0.5).compute(n) for n in range(10)} == {0.5}


@given(retries=st.integers(0, 50))
def test_retries_bound_the_tries(retries: int) -> None:
    tries = Retry(ExponentialBackoff(0.1, 1.0), retries=retries).start()
    delays = [tries.next_delay() for _ in range(retries + 5)]
    assert delays[:retries] == [min(1.0, 0.1 * 2**n) for n in range(retries)]
    assert delays[retries:] == [None] * 5
    assert Retry(ConstantBackoff(0.0), retries=retries).attempts == retries + 1


def test_a_deadline_cuts_the_last_wait_and_then_gives_up() -> None:
    now = [100.0]
    tries = Retry(ExponentialBackoff(1.0, 60.0), deadline=10.0).start(clock=lambda: now[0])
    waits = []
    while (d := tries.next_delay()) is not None:
        waits.append(d)
        now[0] += d
    assert waits == [1.0, 2.0, 4.0, 3.0]  # 1 + 2 + 4 = 7: the last wait ends at 10
    assert tries.failures == 5 and tries.elapsed() == 10.0
    assert Retry(ConstantBackoff(1.0), deadline=0.0).start().next_delay() is None


def test_no_limit_means_no_limit_and_the_exponent_never_overflows() -> None:
    tries = Retry(EqualJitterBackoff(0.2, 5.0)).start()
    assert all(0.0 < (tries.next_delay() or 0.0) <= 5.0 for _ in range(3000))


def test_a_servers_hint_lengthens_the_wait_up_to_the_cap() -> None:
    tries = Retry(ExponentialBackoff(0.01, 4.0), retries=3).start()
    assert tries.next_delay(2.0) == 2.0
    assert tries.next_delay(100.0) == 4.0
    assert tries.next_delay(0.0) == 0.04


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Retry(ConstantBackoff(0.1), retries=-1),
        lambda: Retry(ConstantBackoff(0.1), deadline=-1.0),
        lambda: ExponentialBackoff(-1.0, 1.0),
    ],
)
def test_nonsense_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        bad()  # type: ignore[operator]
