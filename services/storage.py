"""The seam between the engine and the storage of runs: the :class:`Store` protocol and
the store's error types.

The engine (``services/engine/``) is typed against this protocol, never against
the Redis implementation (``services/redis/store.py``'s ``RedisStore``, which
satisfies it: mypy checks the assignment at the bottom of that module, and which
spreads a partitioned run over several nodes itself). A store raises the
:class:`StoreError` subclasses below for a failure of the store (the Redis store
translates redis-py's errors into them), so neither the engine nor the HTTP layer
knows the backend's exceptions: ``errors.py`` answers them with a 503 or, for a
:class:`StoreFault`, a 500. Another backend implements these methods and raises
these errors; the methods take a :class:`~docl.services.layout.RunLayout`, the run's
shape (record format, columns, partitions, chunk sizes), which names no storage key:
the Redis store derives its key names from it (``services/redis/keys.py``).

Each atomic operation reports how it went with a named status. On Redis every
one of them is one Lua script (``services/lua/<name>.lua``), whose header
documents its KEYS/ARGV and returns these same numbers under the same names:

========================  ====================  =========================
enum                      script                caller
========================  ====================  =========================
:class:`CreateStatus`     create.lua            ``Store.create_run``
:class:`GatherStatus`     gather.lua            ``Store.gather``
:class:`ScatterStatus`    scatter.lua           ``Store.scatter``
:class:`CommitStatus`     commit_epoch.lua      ``Store.commit_epoch``
:class:`CompactStatus`    compact.lua           ``Store.compact``
:class:`ClaimStatus`      claim.lua             ``Store.claim``
========================  ====================  =========================
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Protocol

import numpy as np

from docl.services.layout import RunLayout, ScatterCounts

__all__ = [
    "SIGNAL_FIELD",
    "Applied",
    "ClaimStatus",
    "ClusterStateError",
    "CommitStatus",
    "CompactStatus",
    "CreateStatus",
    "DrawInputs",
    "GatherStatus",
    "Gathered",
    "NotReplicated",
    "PartitionUnavailable",
    "ScatterStatus",
    "SignalStatus",
    "Store",
    "StoreError",
    "StoreFailover",
    "StoreFault",
    "StoreRefused",
    "StoreUnavailable",
    "meta_signals",
]


class StoreError(Exception):
    """A call to the store failed because of the store, not of the request.

    ``str()`` is the full text, for the server's log (it may name where the store
    lives); ``detail`` what a client may read (it never does); ``kind`` the name of the
    backend's own failure (e.g. redis-py's exception class: the ``kind`` label of
    ``docl_redis_errors_total``); ``reason`` what a partitioned run's layer names a
    partition's failure (``unreachable``, ``failover``, ``refused``; None: none of
    those). ``retry_after``: seconds a client should wait before retrying, None for a
    failure that a retry does not cure (:class:`StoreFault`)."""

    retry_after: int | None = 1

    def __init__(
        self, message: str, detail: str = "", kind: str = "", reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.detail = detail or message
        self.kind = kind or type(self).__name__
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle (Ray, a process pool) rebuilds it from the fields, not from args
        return type(self), (str(self), self.detail, self.kind, self.reason)


class StoreUnavailable(StoreError):
    """The store cannot answer now: the connection lost or refused, a timeout, the store
    still loading or busy. The server answers 503 with ``Retry-After``."""


class StoreFailover(StoreUnavailable):
    """A clustered store is failing over or not serving every slot (a primary down, slots
    moving or not covered): the same call succeeds shortly."""


class ClusterStateError(StoreFailover):
    """The Redis Cluster answers but is not serving (``cluster_state`` is not ``ok``:
    slots not covered, a primary down without a replica), or a single-Redis URL names a
    node of a cluster: at start-up, a configuration error."""

    def __init__(
        self, message: str, detail: str = "", kind: str = "", reason: str | None = None
    ) -> None:
        why = (
            "the score store (Redis Cluster) is failing over or not serving every slot "
            "(ClusterStateError); retry shortly"
        )
        super().__init__(message, detail or why, kind, reason)


class StoreRefused(StoreUnavailable):
    """The store is up but refuses writes (out of memory, a failing disk, a replica)."""

    retry_after = 5


class StoreFault(StoreError):
    """The store answered an error we did not expect: a bug of ours (a 500)."""

    retry_after = None


class NotReplicated(StoreUnavailable):
    """A write was applied on the primary but fewer replicas than ``wait_replicas``
    acknowledged it within ``wait_ms`` (``WAIT``): it could still be lost in a failover.
    The server answers 503; the client re-sends with the same report id (deduplicated).
    ``where``: the partition whose primary it was, for a partitioned run."""

    def __init__(
        self, acked: int, wanted: int, wait_ms: int, why: str = "", where: str = ""
    ) -> None:
        what = why or f"only {acked} of {wanted} replica(s) acknowledged it within {wait_ms} ms"
        primary = f"the primary of {where}" if where else "the primary"
        text = (
            f"the report was applied on {primary} but {what} (DOCL_REDIS_WAIT_REPLICAS="
            f"{wanted}, DOCL_REDIS_WAIT_MS={wait_ms}); re-send it with the same report_id"
        )
        super().__init__(text, f"not yet durable: {text}", "NotReplicated")
        self.acked, self.wanted, self.wait_ms, self.why = acked, wanted, wait_ms, why
        self.where = where

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.acked, self.wanted, self.wait_ms, self.why, self.where)


class PartitionUnavailable(StoreUnavailable):
    """A partition of a partitioned run could not be read or written: the Redis node
    serving its slot is unreachable, failing over or refusing the call. A partitioned
    run takes a report (or draws) only while every partition it touches is served, so
    one down primary stalls it; the server answers 503 naming the partition (never its
    address) and counts it in ``docl_partition_unavailable_total{reason}``. ``reason``:
    ``unreachable``, ``failover`` (the cluster is moving the slot), ``refused`` (Redis
    refuses writes) or ``error``; ``kind``: the failure behind it."""

    def __init__(
        self, run_id: str, partition: int, partitions: int, reason: str, kind: str
    ) -> None:
        text = (
            f"partition {partition} of {partitions} of run {run_id!r} is unavailable "
            f"({reason}: {kind}): a partitioned run waits for the Redis primary of every "
            'partition a request touches (docs/scaling.md, "Failover"); retry shortly'
        )
        super().__init__(text, text, "PartitionUnavailable", reason)
        self.run_id, self.partition, self.partitions = run_id, partition, partitions
        self.cause_kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (
            self.run_id,
            self.partition,
            self.partitions,
            self.reason,
            self.cause_kind,
        )


class CreateStatus(IntEnum):
    """create.lua: creating a run."""

    CREATED = 0
    EXISTS = 1  # with the same config: nothing written
    CONFLICT = 2  # with a different config: nothing written


class GatherStatus(IntEnum):
    """gather.lua: reading a request's records."""

    GONE = -1  # the run does not exist or was re-created (uid differs)
    DUPLICATE = 0  # some report_ids were already applied: nothing read
    OK = 1


class ScatterStatus(IntEnum):
    """scatter.lua: applying a group of reports atomically."""

    GONE = -1  # the run does not exist or was re-created: nothing written
    DUPLICATE = 0  # some reports were already applied: nothing written but the counter
    LEASED = 1  # applied under the caller's write lease (no per-sample compare)
    CONFLICT = 2  # some samples changed since they were read: nothing written
    COMPARED = 3  # applied after comparing every sample (no lease held)

    @property
    def applied(self) -> bool:
        return self in (ScatterStatus.LEASED, ScatterStatus.COMPARED)


class CommitStatus(IntEnum):
    """commit_epoch.lua: storing a drawn epoch (the first committer of epoch e wins)."""

    EXPIRED = -3  # a temporary key expired before the commit (the caller stalled): nothing changes
    OUT_OF_ORDER = -2  # e is not last_epoch + 1
    GONE = -1  # the run does not exist or was re-created
    EXISTS = 0  # epoch e was drawn already (by someone else)
    COMMITTED = 1

    @property
    def stored(self) -> bool:
        """Epoch e is stored now (by this call or an earlier one): read it back."""
        return self in (CommitStatus.EXISTS, CommitStatus.COMMITTED)


class CompactStatus(IntEnum):
    """compact.lua: folding the score log into the columns."""

    MOVED = 0  # someone else compacted meanwhile (or the run changed): nothing changed
    INSTALLED = 1


class ClaimStatus(IntEnum):
    """claim.lua: taking a run's write lease."""

    GONE = -1  # the run does not exist or was re-created
    CLAIMED = 1


#: A run's meta (``Store.run_meta``) holds one field ``signal:<name>`` per signal column.
SIGNAL_FIELD = "signal:"


def meta_signals(meta: dict[str, str]) -> list[str]:
    """The signal names a run's meta registers, sorted."""
    return sorted(k[len(SIGNAL_FIELD) :] for k in meta if k.startswith(SIGNAL_FIELD))


class SignalStatus(IntEnum):
    """signal.lua: registering a per-sample signal column and writing a slice of it."""

    TOO_MANY = -2  # a new name, and the run keeps DOCL_MAX_SIGNALS signals: nothing written
    GONE = -1  # the run does not exist or was re-created: nothing written
    WRITTEN = 1


@dataclass(frozen=True)
class Gathered:
    """What ``gather`` read for one request."""

    status: GatherStatus
    last_epoch: int
    records: np.ndarray | None  # (B,) rec_dtype, a writable copy
    inclusion: np.ndarray | None  # (B,) float32 or None
    duplicates: tuple[int, ...] = ()  # DUPLICATE: 0-based positions of the applied report_ids


@dataclass(frozen=True)
class Applied:
    """Result of ``scatter`` (:class:`ScatterStatus`).

    On a conflict, ``conflicts`` are the 0-based positions (over all the samples
    sent) whose stored state differs from what the caller computed from, and
    ``current`` their records as stored now (nothing was written). On DUPLICATE,
    ``duplicates`` are the 0-based positions of the reports already applied
    (nothing was written but the duplicates counter). A partitioned run's scatter may also
    be applied (LEASED/COMPARED) with ``duplicates`` set: those reports were applied
    before on every partition they touch, the others now (see docs/architecture.md
    "Partitioned runs"); and its CONFLICT may follow parts applied on other partitions, which a
    re-send finds applied there.
    """

    status: ScatterStatus
    conflicts: tuple[int, ...] = ()
    current: np.ndarray | None = None
    duplicates: tuple[int, ...] = ()
    #: A partitioned run only (see ``RedisStore.scatter``): positions (over all the samples
    #: sent) left unwritten because their report's part on their partition was applied
    #: before (a retry completing a partial apply). Their stored records are not the ones sent.
    skipped: np.ndarray | None = None

    @property
    def leased(self) -> bool:
        """Applied under the caller's write lease, without the per-sample compare."""
        return self.status == ScatterStatus.LEASED


@dataclass(frozen=True)
class DrawInputs:
    """A consistent snapshot of what an epoch draw reads."""

    uid: str | None
    last_epoch: int
    scores: np.ndarray | None  # (n,) float32
    losses: np.ndarray | None  # (n,) float32
    drawn: np.ndarray  # (n,) uint16
    inclusion: np.ndarray | None  # (n,) float32
    log_base: int = 0  # score-log entries trimmed before this snapshot
    log_count: int = 0  # score-log entries folded into `scores`/`losses` here
    #: a partitioned run: (log_base, log_count) of each partition's score log, in order
    partition_logs: tuple[tuple[int, int], ...] = ()


class Store(Protocol):
    """What the engine needs from the storage of runs (``RedisStore`` on Redis).

    Every method is atomic where its docstring in ``services/redis/slot.py`` says so; a run's
    incarnation is named by its ``uid`` and every mutating call checks it (GONE
    when the run was deleted or re-created).
    """

    @property
    def resets(self) -> int:
        """Moves when the store may have lost writes (e.g. a Redis restart): a record
        cache must not outlive a change of it."""
        ...

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...

    # -- runs
    async def create_run(
        self, layout: RunLayout, config_json: str, uid: str, created_at: float
    ) -> tuple[CreateStatus, str, str | None]: ...

    async def run_meta(self, run_id: str) -> dict[str, str] | None: ...

    async def run_metas(
        self, run_ids: list[str]
    ) -> list[tuple[dict[str, str] | None, dict[str, int]]]: ...

    async def counters(self, layout: RunLayout) -> dict[str, int]: ...

    async def count_duplicate(self, layout: RunLayout, count: int = 1) -> None: ...

    async def list_run_ids(self) -> list[str]: ...

    async def forget_run_id(self, run_id: str) -> None: ...

    async def delete_run(self, layout: RunLayout) -> int: ...

    # -- epochs
    async def draw_inputs(self, layout: RunLayout, *, losses: bool) -> DrawInputs: ...

    async def commit_epoch(
        self,
        layout: RunLayout,
        uid: str,
        epoch: int,
        epoch_json: str,
        indices: np.ndarray,
        drawn: np.ndarray,
        inclusion: np.ndarray | None,
        drop_epoch: tuple[int, int] | None,
        *,
        weights: np.ndarray | None = None,
    ) -> CommitStatus: ...

    async def compact(self, layout: RunLayout, uid: str, snap: DrawInputs) -> CompactStatus: ...

    async def epoch_json(self, layout: RunLayout, epoch: int) -> str | None: ...

    async def read_indices(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None: ...

    async def read_weights(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None: ...

    # -- records and columns
    async def read_records(self, layout: RunLayout, start: int, stop: int) -> np.ndarray: ...

    async def current_scores(self, layout: RunLayout) -> np.ndarray: ...

    async def read_column(
        self, layout: RunLayout, name: str, start: int, stop: int
    ) -> np.ndarray: ...

    # -- per-sample signal columns (named float32 columns a client uploads; NaN = unknown)
    async def write_signal(
        self,
        layout: RunLayout,
        uid: str,
        name: str,
        start: int,
        values: np.ndarray,
        *,
        max_signals: int,
    ) -> tuple[SignalStatus, int]:
        """Register signal ``name`` (unless the run keeps it already; TOO_MANY when that
        would make more than ``max_signals``) and write ``values`` (float32) at samples
        [start, start + len(values)). Returns the status and how many signals the run
        keeps. Values never written read as NaN. A partitioned run: each partition its
        slice; registration first, on the run's slot."""
        ...

    async def read_signal(
        self, layout: RunLayout, uid: str, name: str, start: int, stop: int
    ) -> np.ndarray:
        """Values [start, stop) of signal ``name`` of incarnation ``uid`` (float32; NaN
        where never written, and everywhere for a name never registered)."""
        ...

    async def signal_names(self, layout: RunLayout) -> list[str]:
        """The names of the run's signals, sorted."""
        ...

    # -- reports
    async def gather(
        self,
        layout: RunLayout,
        uid: str,
        report_ids: str | Sequence[str],
        indices: np.ndarray,
        *,
        sizes: Sequence[int] | None = None,
    ) -> Gathered: ...

    async def claim(self, layout: RunLayout, uid: str, token: str) -> ClaimStatus: ...

    async def scatter(
        self,
        layout: RunLayout,
        uid: str,
        report_id: str | Sequence[str],
        *,
        now: float,
        indices: np.ndarray,
        expected: np.ndarray,
        write: np.ndarray,
        records: np.ndarray,
        scores: np.ndarray,
        losses: np.ndarray,
        counters: ScatterCounts,
        token: str = "",
        sizes: Sequence[int] | None = None,
        scored: np.ndarray | None = None,
    ) -> Applied: ...
