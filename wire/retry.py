"""One retry policy: how long to wait before the next try, and when to stop trying.

In the spirit of redis-py's ``Retry`` and its backoff classes: a *backoff* says how
long to wait after ``n`` earlier failures (:meth:`Backoff.compute`), and a
:class:`Retry` bounds the tries, by count (``retries``: tries after the first) and
by time (``deadline``: seconds from the first try). One operation's tries are an
:class:`Attempts` (:meth:`Retry.start`): after each failure,
:meth:`Attempts.next_delay` answers the wait before the next try, or None when
the policy gives up. Nothing here sleeps: the caller waits the way its thread
can (``time.sleep``, ``asyncio.sleep``, an ``Event.wait`` that ``close()`` ends).

What is worth retrying is not decided here: each side has one definition of it
(the SDK: :func:`docl.client.errors.retryable`; the server retries only its own
compare-and-set conflicts and busy samples). Who uses which policy:

====================================  =====================================================
the clients' requests                 ``EqualJitterBackoff(backoff, max_backoff)``, ``retries``
the Reporter's sends                  ``EqualJitterBackoff(backoff, max_backoff)``, no limit
the samplers' outage ride-out         ``ExponentialBackoff(0.25, 5)``, ``deadline`` = tolerance
the engine's report conflicts         ``FullJitterBackoff(0.0005, 0.02)`` (32 attempts)
the engine's busy samples             ``ConstantBackoff(0.0005)``, no limit
the engine's draw re-reads            no wait, 3 attempts
====================================  =====================================================

Pure standard library: the server and the SDK both import it (``docl.wire``).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

__all__ = [
    "Attempts",
    "Backoff",
    "ConstantBackoff",
    "EqualJitterBackoff",
    "ExponentialBackoff",
    "FullJitterBackoff",
    "Retry",
]

#: 2ⁿ stops growing here (every cap is reached long before; 2.0**1024 overflows).
_MAX_DOUBLINGS = 64


class Backoff(Protocol):
    """How long to wait after ``failures`` earlier failures (0 before the first retry)."""

    @property
    def cap(self) -> float:
        """The longest wait :meth:`compute` answers."""
        ...

    def compute(self, failures: int) -> float: ...


@dataclass(frozen=True)
class ConstantBackoff:
    """The same wait every time."""

    delay: float

    @property
    def cap(self) -> float:
        return self.delay

    def compute(self, failures: int) -> float:
        return self.delay


@dataclass(frozen=True)
class ExponentialBackoff:
    """``min(cap, base·2ⁿ)`` after n failures, without jitter."""

    base: float
    cap: float

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= 0):
            raise ValueError(f"backoff base and cap must be >= 0, got {self.base}, {self.cap}")

    def ceiling(self, failures: int) -> float:
        return min(self.cap, self.base * 2.0 ** min(failures, _MAX_DOUBLINGS))

    def compute(self, failures: int) -> float:
        return self.ceiling(failures)


@dataclass(frozen=True)
class EqualJitterBackoff(ExponentialBackoff):
    """Uniform in ``[½, 1]·min(cap, base·2ⁿ)``: exponential, never shorter than half of
    it, and clients that failed together do not retry in lock step. ``rng``: the
    random source (default: the ``random`` module's)."""

    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def compute(self, failures: int) -> float:
        u = (self.rng or random).random()
        return self.ceiling(failures) * (0.5 + 0.5 * u)


@dataclass(frozen=True)
class FullJitterBackoff(ExponentialBackoff):
    """Uniform in ``[0, min(cap, base·2ⁿ)]`` ("full jitter"): what optimistic writers
    that keep colliding need, so that they spread out."""

    rng: random.Random | None = field(default=None, compare=False, repr=False)

    def compute(self, failures: int) -> float:
        return (self.rng or random).uniform(0.0, self.ceiling(failures))


@dataclass(frozen=True)
class Retry:
    """A retry policy: ``backoff`` between tries, at most ``retries`` tries after the
    first (None: no limit) and no new try ``deadline`` seconds or more after the first
    one began (None: no limit; a wait is cut short so that it ends at the deadline)."""

    backoff: Backoff
    retries: int | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.retries is not None and self.retries < 0:
            raise ValueError(f"retries must be >= 0, got {self.retries}")
        if self.deadline is not None and not self.deadline >= 0:
            raise ValueError(f"deadline must be >= 0 seconds, got {self.deadline}")

    @property
    def attempts(self) -> int | None:
        """Tries in all (the first one included); None: no limit."""
        return None if self.retries is None else self.retries + 1

    def start(self, clock: Callable[[], float] = time.monotonic) -> Attempts:
        """The tries of one operation, starting now."""
        return Attempts(self, clock)


class Attempts:
    """One operation's tries under a :class:`Retry`; call :meth:`next_delay` after
    each failure."""

    __slots__ = ("_clock", "failures", "policy", "started")

    def __init__(self, policy: Retry, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._clock = clock
        self.started = clock()
        #: failures so far (each one asked :meth:`next_delay`)
        self.failures = 0

    def elapsed(self) -> float:
        return self._clock() - self.started

    def next_delay(self, at_least: float | None = None) -> float | None:
        """Count a failure; the seconds to wait before the next try, or None: give up
        (``retries`` used, or the deadline reached). ``at_least`` is the server's hint
        (Retry-After): the wait is at least that, up to the backoff's cap."""
        n = self.failures
        self.failures += 1
        p = self.policy
        if p.retries is not None and n >= p.retries:
            return None
        delay = p.backoff.compute(n)
        if at_least is not None:
            delay = max(delay, min(at_least, p.backoff.cap))
        if p.deadline is not None:
            left = p.deadline - self.elapsed()
            if left <= 0:
                return None
            delay = min(delay, left)
        return delay
