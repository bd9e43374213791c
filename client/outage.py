"""Riding out an outage of the score server (or its Redis): :func:`ride_out`, the one
retry loop around the calls training cannot go on without (the epoch draw, the
indices, the plan), under :func:`outage_policy` for up to ``outage_tolerance``
seconds; and :func:`first_contact`, which does not wait for a server that never
answered (a typo is likelier than an outage at that moment).

Used by the samplers (:mod:`docl.client.sampler`, which re-exports these names)
and the training loop; needs no torch. Its lines go to the ``docl.sampler``
logger, where they have always been.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

from docl.client._client import ScoreClient
from docl.client.errors import TransportError, retryable
from docl.wire.retry import ExponentialBackoff, Retry

__all__ = [
    "DEFAULT_OUTAGE_TOLERANCE",
    "ENV_OUTAGE_TOLERANCE",
    "default_outage_tolerance",
    "first_contact",
    "outage_policy",
    "ride_out",
]

log = logging.getLogger("docl.sampler")

T = TypeVar("T")

#: Seconds a draw or index fetch waits for a score server that is down.
DEFAULT_OUTAGE_TOLERANCE = 120.0
ENV_OUTAGE_TOLERANCE = "DOCL_OUTAGE_TOLERANCE_S"


def default_outage_tolerance() -> float:
    """``$DOCL_OUTAGE_TOLERANCE_S`` when set (seconds), else 120."""
    raw = os.environ.get(ENV_OUTAGE_TOLERANCE)
    if raw is None or raw.strip() == "":
        return DEFAULT_OUTAGE_TOLERANCE
    try:
        value = float(raw)
    except ValueError as e:
        raise ValueError(f"{ENV_OUTAGE_TOLERANCE} must be a number of seconds, got {raw!r}") from e
    if not value >= 0:
        raise ValueError(f"{ENV_OUTAGE_TOLERANCE} must be >= 0, got {raw!r}")
    return value


def outage_policy(tolerance: float, max_wait: float = 5.0) -> Retry:
    """The ride-out's policy: waits of 0.25, 0.5, 1, … s up to ``max_wait``, no new try
    once ``tolerance`` seconds have passed since the first."""
    return Retry(ExponentialBackoff(0.25, max_wait), deadline=tolerance)


def ride_out(
    call: Callable[[], T],
    *,
    tolerance: float,
    what: str,
    logger: logging.Logger | None = None,
    max_wait: float = 5.0,
    log_every: float = 15.0,
    sleep: Callable[[float], None] = time.sleep,
    gone: Callable[[], BaseException | None] | None = None,
) -> T:
    """Call ``call()`` until it succeeds or the score server stayed down ``tolerance`` s.

    This rides out outages — a restarted server or Redis — for the calls training
    cannot go on without (the epoch draw, the indices), under :func:`outage_policy`.
    It is their one retry loop: give it calls that do not retry by themselves (a
    client's ``with_options(retries=0)``), or the tolerance is overshot by a whole
    retry schedule per try. Only failures worth another try are waited for
    (:func:`docl.client.errors.retryable`: no connection, timeouts, 5xx, 429); any
    other error is raised at once. One warning when the wait starts, one every
    ``log_every`` s while it lasts, one when the server is back. After ``tolerance``
    seconds the last error is raised, with a note saying how long it waited. Safe
    because every request it wraps is idempotent (a draw is by epoch number).

    ``gone``, when given, is asked after each failure whether the server can still come
    back: an exception it returns (e.g. a KeyboardInterrupt when the server that the job
    started itself has exited of the same Ctrl-C) is raised at once, from the failure,
    instead of waiting out the tolerance for a server that no longer exists.
    """
    lg = logger or log
    tries = outage_policy(tolerance, max_wait).start()
    last_log = tries.started
    while True:
        try:
            result = call()
        except Exception as e:
            if not retryable(e):
                raise
            if gone is not None and (why := gone()) is not None:
                raise why from e
            waited = tries.elapsed()
            delay = tries.next_delay()
            if delay is None:
                if tries.failures > 1:
                    lg.error(
                        "docl: %s: the score server is still unreachable after %.0f s; giving up",
                        what,
                        waited,
                    )
                e.add_note(
                    f"docl: waited {waited:.0f} s for the score server ({what}); "
                    f"outage_tolerance is {tolerance:g} s"
                )
                raise
            if tries.failures == 1:
                lg.warning(
                    "docl: %s failed (%s); the score server or its Redis is down. "
                    "Waiting up to %.0f s for it to come back",
                    what,
                    e,
                    tolerance,
                )
            elif tries.started + waited - last_log >= log_every:
                last_log = tries.started + waited
                lg.warning("docl: %s: still waiting for the score server (%.0f s)", what, waited)
            sleep(delay)
        else:
            if tries.failures:
                lg.warning("docl: score server back after %.1f s; %s done", tries.elapsed(), what)
            return result


def first_contact(client: ScoreClient, call: Callable[[], T], *, tolerance: float, what: str) -> T:
    """``call()`` as the first request to ``client``'s server. A server that never
    answered is a typo or one that was not started, not an outage: no connection fails
    at once (after the client's own few retries, seconds) with one line saying so. A
    server that answers with 5xx or 429 is up but busy or restarting: that is ridden
    out (:func:`ride_out`, with the client's own retries off), as every later outage is."""
    retries = client.retries
    client.retries = 1 if retries is None else min(retries, 1)  # one retry: seconds
    try:
        try:
            return call()
        except TransportError as e:
            cause = str(e).rsplit(": ", 1)[-1]  # the last reason, e.g. "Connection refused"
            raise TransportError(
                f"no score server answers at {client.base_url} ({cause}) while {what}; check "
                "the address (server=… or $DOCL_SERVER) or start one with `docl serve` (an "
                "outage of a server that did answer is waited out instead)"
            ) from None
        except Exception as e:
            if not retryable(e):
                raise
        client.retries = 0  # ride_out is the one retry loop from here
        return ride_out(call, tolerance=tolerance, what=what)
    finally:
        client.retries = retries
