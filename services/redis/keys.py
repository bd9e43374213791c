"""The Redis key names of a run: :class:`RunKeys`, every key its state lives under,
derived from its :class:`~docl.services.layout.RunLayout` (the run's shape: record
format, columns, partitions, chunk sizes; it names no key).

Pure (no I/O, no Redis client): the embedded cluster supervisor uses it too. Every key
of a run shares the hash tag ``{run:<id>}`` (:func:`run_prefix`), so a Redis Cluster
keeps a run on one slot, unless the run is partitioned (``RunLayout.partition_samples``
> 0, ``DOCL_PARTITION_SAMPLES``): then each partition's keys are under its own hash tag
(:func:`partition_prefix`), whose slots are spread over the slot space. The key names
are what runs stored before were written under: keep them byte for byte.

    {run:<id>}:meta  :counters  :reports  :epochs  :scorelog      (one key each)
    {run:<id>}:rec:<k>  :score:<k>  :loss:<k>  :drawn:<k>  :incl:<k>  (column chunks)
    {run:<id>}:epoch:<e>:<k>  :weight:<e>:<k>                     (an epoch's chunks)
    {run:<id>}:sig:<uid>:<name>:<k>                               (a signal's chunks)
    docl:runs                                                     (every run id)

What each holds: ``slot.py``'s docstring and docs/architecture.md "The store".
"""

from __future__ import annotations

import math
import uuid
from binascii import crc_hqx
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

from docl.services.layout import RunLayout

__all__ = [
    "RUNS_INDEX",
    "SLOTS",
    "RunKeys",
    "hash_slot",
    "keys_of",
    "partition_prefix",
    "run_pattern",
    "run_prefix",
    "sweep_pattern",
    "temporary_keys",
]

#: The global set of run ids.
RUNS_INDEX = "docl:runs"
#: Redis Cluster's hash slots.
SLOTS = 16384
#: Partition tags aim at this many equal slot ranges at most (so finding a tag stays cheap).
_SLOT_BUCKETS = 64
#: Hex digits of the random nonce in a temporary key's name.
_NONCE_HEX = 12
#: Layouts whose key names :func:`keys_of` keeps computed (a run's chunk keys are built
#: once, not per request; a server with more live runs rebuilds the oldest's on use).
_CACHED_LAYOUTS = 4096


def run_prefix(run_id: str) -> str:
    """The hash-tagged prefix of every key of run ``run_id``."""
    return f"{{run:{run_id}}}"


def hash_slot(tag: str) -> int:
    """Redis Cluster's hash slot of a hash tag (CRC16/XMODEM mod 16384, as redis-py's key_slot)."""
    return crc_hqx(tag.encode(), 0) % SLOTS


def partition_prefix(run_id: str, partition: int, partitions: int) -> str:
    """The hash-tagged prefix of partition ``partition`` of a run cut into ``partitions``
    partitions: ``{run:<id>:<partition>.<salt>}``, with the smallest salt that puts the
    tag's slot in range ``partition mod B`` of the slot space cut into B = min(partitions,
    64) equal ranges.
    So the partitions of a run land on slots spread evenly over 0..16383, hence over the
    primaries of a cluster (which own contiguous slot ranges). Deterministic: a pure
    function of its arguments (nothing to store). Expected tries: B per partition."""
    buckets = min(partitions, _SLOT_BUCKETS)
    lo = (partition % buckets) * SLOTS // buckets
    hi = (partition % buckets + 1) * SLOTS // buckets
    salt = 0
    while not lo <= hash_slot(f"run:{run_id}:{partition}.{salt}") < hi:
        salt += 1
    return f"{{run:{run_id}:{partition}.{salt}}}"


def _chunk_keys(prefix: str, name: str, total: int, per_chunk: int) -> tuple[str, ...]:
    count = max(1, math.ceil(total / per_chunk))
    return tuple(f"{prefix}:{name}:{k}" for k in range(count))


@dataclass(frozen=True)
class RunKeys:
    """The key names of one layout: a run, a partitioned run's own keys, or one
    partition of it (``RunLayout.partition(j)``: its own hash tag). Get one through
    :func:`keys_of` (cached per layout)."""

    layout: RunLayout

    @cached_property
    def prefix(self) -> str:
        """The layout's hash tag, the prefix of each of its keys."""
        lay = self.layout
        if lay.partition_of is not None:
            return partition_prefix(lay.run_id, *lay.partition_of)
        return run_prefix(lay.run_id)

    @property
    def meta(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def counters(self) -> str:
        return f"{self.prefix}:counters"

    @property
    def reports(self) -> str:
        return f"{self.prefix}:reports"

    @property
    def epochs(self) -> str:
        return f"{self.prefix}:epochs"

    @property
    def scorelog(self) -> str:
        return f"{self.prefix}:scorelog"

    @cached_property
    def rec(self) -> tuple[str, ...]:
        lay = self.layout
        return _chunk_keys(self.prefix, "rec", lay.num_samples, lay.rec_per_chunk)

    @cached_property
    def score(self) -> tuple[str, ...]:
        lay = self.layout
        return _chunk_keys(self.prefix, "score", lay.num_samples, lay.col_per_chunk)

    @cached_property
    def loss(self) -> tuple[str, ...]:
        lay = self.layout
        if not lay.loss_column:
            return ()
        return _chunk_keys(self.prefix, "loss", lay.num_samples, lay.col_per_chunk)

    @cached_property
    def drawn(self) -> tuple[str, ...]:
        lay = self.layout
        return _chunk_keys(self.prefix, "drawn", lay.num_samples, lay.drawn_per_chunk)

    @cached_property
    def incl(self) -> tuple[str, ...]:
        lay = self.layout
        if not lay.exp3:
            return ()
        return _chunk_keys(self.prefix, "incl", lay.num_samples, lay.col_per_chunk)

    def epoch(self, epoch: int, size: int) -> tuple[str, ...]:
        """Chunks of epoch ``epoch``'s int64 indices (``size`` of them)."""
        return _chunk_keys(self.prefix, f"epoch:{epoch}", size, self.layout.idx_per_chunk)

    def weight(self, epoch: int, size: int) -> tuple[str, ...]:
        """Chunks of epoch ``epoch``'s float32 weights (as many per chunk as its indices)."""
        return _chunk_keys(self.prefix, f"weight:{epoch}", size, self.layout.idx_per_chunk)

    def signal(self, uid: str, name: str) -> tuple[str, ...]:
        """Chunks of signal ``name`` of incarnation ``uid`` (float32, chunked as the score
        column; ``signals.py``): the uid in the name, so a re-created run never reads
        the old incarnation's values."""
        lay = self.layout
        return _chunk_keys(self.prefix, f"sig:{uid}:{name}", lay.num_samples, lay.col_per_chunk)

    def static(self) -> tuple[str, ...]:
        """Every key of the layout except the per-epoch index and weight chunks."""
        return (
            self.meta,
            self.counters,
            self.reports,
            self.epochs,
            self.scorelog,
            *self.rec,
            *self.score,
            *self.loss,
            *self.drawn,
            *self.incl,
        )

    def partition(self, j: int) -> RunKeys:
        """The keys of partition ``j`` of a partitioned run (``RunLayout.partition``)."""
        return keys_of(self.layout.partition(j))


@lru_cache(maxsize=_CACHED_LAYOUTS)
def keys_of(layout: RunLayout) -> RunKeys:
    """The key names of ``layout`` (equal layouts share one :class:`RunKeys`)."""
    return RunKeys(layout)


def run_pattern(run_id: str) -> str:
    """SCAN pattern of every key of run ``run_id``, partitioned or not: ``{run:<id>}:*``
    and its partitions' ``{run:<id>:<j>.<salt>}:*`` (a run id has no ':' or '}', so no
    other run's keys match)."""
    return f"{{run:{run_id}[:}}]*"


def sweep_pattern(layout: RunLayout) -> str:
    """SCAN pattern of every key of the layout's run: :func:`run_pattern` for a
    partitioned run, the run's own tag's ``{run:<id>}:*`` for one that is not."""
    if layout.partitions > 1:
        return run_pattern(layout.run_id)
    return f"{keys_of(layout).prefix}:*"


def temporary_keys(finals: Sequence[str]) -> list[str]:
    """Fresh names for values written before a script renames them into ``finals``:
    ``<final>:tmp:<nonce>``, one random nonce per call (each beside its final key, under
    the same hash tag, hence on the same slot)."""
    nonce = uuid.uuid4().hex[:_NONCE_HEX]
    return [f"{k}:tmp:{nonce}" for k in finals]
