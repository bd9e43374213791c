"""redis-py, RESP and Redis Cluster exceptions translated into storage's error types.

The store raises only :class:`~docl.services.storage.StoreError`\\ s for a failure of
Redis (and whatever a bug of ours raises): :func:`translating` wraps every public
coroutine of a store class so, and :func:`translate` is the one mapping (issue 19:
never a 500 for Redis being away, failing over or refusing writes; the client's detail
names what failed, never where the store lives — the log keeps the full text):

* the connection lost or refused, a timeout, Redis still loading or busy:
  :class:`~docl.services.storage.StoreUnavailable`;
* a Redis Cluster failing over or not serving every slot (``CLUSTERDOWN``,
  ``MASTERDOWN``, ``TRYAGAIN``, redirections that did not settle, unreachable nodes, a
  slot not covered): :class:`~docl.services.storage.StoreFailover`;
* Redis up but refusing writes (``OOM``, ``MISCONF``: a failing disk, ``READONLY``: a
  replica): :class:`~docl.services.storage.StoreRefused`;
* any other error reply (a bug of ours): :class:`~docl.services.storage.StoreFault`.

Each carries ``reason``: what a partitioned run's layer names the partition's failure
(``unreachable``, ``failover``, ``refused``; None where a partition is not to blame).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ClusterError,
    CrossSlotTransactionError,
    InvalidPipelineStack,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from docl.services.storage import (
    StoreError,
    StoreFailover,
    StoreFault,
    StoreRefused,
    StoreUnavailable,
)

__all__ = ["REDIS_ERRORS", "redirected", "scrub", "translate", "translating"]

#: Every exception class redis-py and its cluster client (whose errors are not
#: RedisErrors) raise for a failure of Redis.
REDIS_ERRORS = (RedisError, RedisClusterException)

#: Redis up but refusing writes, as the raw reply says it (the store's own RESP client, or
#: a write inside a script); redis-py turns OOM and READONLY into classes and drops the code.
_REFUSED = re.compile(r"(?:^|[-:\s])(?:OOM|MISCONF|READONLY)\b")
#: Replies of a Redis (Cluster) that is failing over, resharding or still loading, as the
#: fast client passes them on (a plain ResponseError): the same call succeeds shortly.
_IN_TRANSIT = re.compile(r"^(?:CLUSTERDOWN|TRYAGAIN|MOVED|ASK|MASTERDOWN|LOADING|BUSY)\b")
#: Where the store lives, as error texts name it: ``host:port``, ``[v6]:port``, a socket
#: path. Kept in the server's log, cut from what clients read (issue 19).
_WHERE = re.compile(
    r"\[[0-9A-Fa-f:.]+\](?::\d{1,5})?"  # [v6]:port
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d{1,5})?\b"  # v4[:port]
    r"|\b[A-Za-z0-9][A-Za-z0-9.-]*:\d{2,5}\b"  # host:port
    r"|(?:unix://)?/\S*?\.sock\b"  # a socket path
)


def scrub(text: str) -> str:
    """``text`` without the store's addresses (host:port, socket paths): what a client may
    read of an error from Redis."""
    return _WHERE.sub("<redis>", text)


def redirected(e: ResponseError) -> bool:
    """A MOVED/ASK/TRYAGAIN reply: the slot is (being) served by another node."""
    return str(e).startswith(("MOVED", "ASK", "TRYAGAIN"))


def _failover_reason(exc: BaseException) -> bool:
    """What a partitioned run's layer counts as its partition failing over (narrower than
    :class:`StoreFailover`: a ``LOADING``/``BUSY`` reply is not)."""
    return (
        isinstance(exc, ClusterDownError | ClusterError | TryAgainError | RedisClusterException)
        or (isinstance(exc, ResponseError) and redirected(exc))
        or str(exc).startswith(("CLUSTERDOWN", "MASTERDOWN"))
    )


def translate(exc: BaseException) -> BaseException:
    """storage's error for a redis-py / RESP / cluster exception (see the module); any
    other exception (a StoreError already, a bug, a cancellation) as it is."""
    if isinstance(exc, StoreError) or not isinstance(exc, REDIS_ERRORS):
        return exc
    text, kind = str(exc), type(exc).__name__
    reason: str | None = None
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        reason = "unreachable"  # BusyLoadingError is a ConnectionError too
    elif _failover_reason(exc):
        reason = "failover"
    elif isinstance(exc, OutOfMemoryError | ReadOnlyError):
        reason = "refused"
    if isinstance(exc, BusyLoadingError) or text.startswith(("LOADING", "BUSY")):
        why = "the score store (Redis) is loading its data or busy; retry shortly"
        return StoreUnavailable(text, why, kind, reason)
    if isinstance(exc, RedisTimeoutError):
        why = "the score store (Redis) did not answer in time; retry shortly"
        return StoreUnavailable(text, why, kind, reason)
    if isinstance(exc, RedisConnectionError):
        why = "the connection to the score store (Redis) failed; retry shortly"
        return StoreUnavailable(text, why, kind, reason)
    bug = (CrossSlotTransactionError, InvalidPipelineStack)
    in_transit = _IN_TRANSIT.match(text)
    if (
        isinstance(exc, ClusterDownError | ClusterError | TryAgainError | AskError)
        or (isinstance(exc, RedisClusterException) and not isinstance(exc, bug))
        or in_transit
    ):
        what = text.split(maxsplit=1)[0] if in_transit else kind
        why = (
            f"the score store (Redis Cluster) is failing over or not serving every slot "
            f"({what}); retry shortly"
        )
        return StoreFailover(text, why, kind, reason)
    if isinstance(exc, OutOfMemoryError | ReadOnlyError) or _REFUSED.search(text):
        why = f"the score store (Redis) refuses writes ({scrub(text)}); retry later"
        return StoreRefused(text, why, kind, reason)
    return StoreFault(text, f"internal error: Redis said: {scrub(text)}", kind, reason)


F = TypeVar("F", bound=Callable[..., Any])
C = TypeVar("C", bound=type)


def _translated(fn: F) -> F:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except REDIS_ERRORS as e:
            raise translate(e) from e

    return call  # type: ignore[return-value]


def translating(cls: C) -> C:
    """Wrap every public coroutine method of ``cls`` so that a Redis failure leaves it
    as storage's error (:func:`translate`), the original chained as its cause."""
    for name, fn in list(vars(cls).items()):
        if not name.startswith("_") and inspect.iscoroutinefunction(fn):
            setattr(cls, name, _translated(fn))
    return cls
