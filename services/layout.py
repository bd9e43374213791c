"""The shape of a run's state: the fixed-width record, the columns, the partitions, the sizes.

A pure function of the run's config (no I/O): the engine reads records in this
format whatever the store behind it, and the store cuts the columns into chunks of
``chunk_bytes``. It names no storage key: the Redis store names its keys from a
layout (``services/redis/keys.py``). A run may be partitioned (``partition_samples`` > 0,
``DOCL_PARTITION_SAMPLES``): then its per-sample records, score/loss columns, score log,
dedup markers and counters are cut into partitions of ``partition_samples`` samples, each
a layout of its own (:meth:`RunLayout.partition`), which the Redis store puts under its
own hash tag. See docs/architecture.md "Partitioned runs" (called "sharded runs" before;
the stored layout JSON keeps that name: ``"shard_samples"``).

A record is ``RECORD_HEAD`` bytes of state followed by the stored output g_i:

    offset  size  field
    0       8     lr_sum of the last visit, float64 (meaningless while visits = 0)
    8       4     visits, uint32 (0 = never seen)
    12      4     score, float32 (NaN = unset; the score column holds the same value)
    16      4     loss of the last visit, float32
    20      4     zero padding
    24      c·w   g_i, float32 (w = 4) or float16 (w = 2) per ``params.output_dtype``
    ...           zero padding up to a multiple of 8
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import numpy as np

from docl.wire.models import RunCounters

__all__ = [
    "CAS_BYTES",
    "COUNTER_FIELDS",
    "DRAWN_MAX",
    "MAX_PARTITIONS",
    "RECORD_HEAD",
    "STORED_PARTITION_SAMPLES",
    "RunLayout",
    "ScatterCounts",
    "fold_log",
]

#: Bytes of per-sample state before g_i in a record.
RECORD_HEAD = 24
#: Bytes of the record head that the compare-and-set compares (lr_sum + visits).
CAS_BYTES = 12
#: The fields of a run's stored counters, in the one order every counter list follows:
#: the wire's ``RunCounters``, then ``visited`` (served by /stats).
COUNTER_FIELDS: tuple[str, ...] = (*RunCounters.model_fields, "visited")


class ScatterCounts(NamedTuple):
    """What one scatter adds to the counters: ``COUNTER_FIELDS`` but ``duplicates`` (the
    script counts those itself), in that order — ``scatter.lua``'s counters argument
    and its list of names (tests/services/test_storage.py checks the script's)."""

    reports: int
    samples_reported: int
    samples_scored: int
    samples_skipped: int
    visited: int  # samples visited for the first time


if ScatterCounts._fields != tuple(f for f in COUNTER_FIELDS if f != "duplicates"):
    raise AssertionError("ScatterCounts must list COUNTER_FIELDS but duplicates, in order")
#: Selection counts saturate here (uint16).
DRAWN_MAX = 65535
#: Most partitions of one run (a run that would need more is refused: raise DOCL_PARTITION_SAMPLES).
MAX_PARTITIONS = 1024
#: The key of ``partition_samples`` in a run's stored layout JSON: its name from before
#: "partition" (runs stored then must read the same), so it stays.
STORED_PARTITION_SAMPLES = "shard_samples"


@dataclass(frozen=True)
class RunLayout:
    """How a run's state is laid out (record format, columns, partitions, chunk sizes):
    a pure function of its config.

    Stored in the run's meta at creation, so a later change of ``chunk_bytes``
    does not move an existing run's data.
    """

    run_id: str
    num_samples: int
    num_outputs: int
    output_dtype: str  # "float32" | "float16"
    chunk_bytes: int
    loss_column: bool
    exp3: bool
    #: samples per partition (0 = not partitioned: every key under ``{run:<id>}``)
    partition_samples: int = 0
    #: None: the run; (j, S): the sub-layout of partition j of the run's S partitions (:meth:`partition`)
    partition_of: tuple[int, int] | None = None

    # -- sizes ----------------------------------------------------------------------------
    @property
    def out_width(self) -> int:
        return 2 if self.output_dtype == "float16" else 4

    @cached_property
    def rec_size(self) -> int:
        raw = RECORD_HEAD + self.num_outputs * self.out_width
        return raw + (-raw) % 8

    def per_chunk(self, itemsize: int) -> int:
        return max(1, self.chunk_bytes // itemsize)

    @cached_property
    def rec_per_chunk(self) -> int:
        return self.per_chunk(self.rec_size)

    @cached_property
    def col_per_chunk(self) -> int:
        return self.per_chunk(4)

    @property
    def drawn_per_chunk(self) -> int:
        return self.per_chunk(2)

    @property
    def idx_per_chunk(self) -> int:
        return self.per_chunk(8)

    def memory_bytes(self, keep_epochs: int) -> int:
        """Redis bytes of the run's per-sample state when every sample has been reported."""
        n = self.num_samples
        # record + score column + one epoch of score-log entries + counts + indices
        per_sample = self.rec_size + 4 + 8 + 2 + 8 * keep_epochs
        per_sample += 4 if self.loss_column else 0
        per_sample += 4 if self.exp3 else 0
        return n * per_sample

    # -- partitions ---------------------------------------------------------------------------
    @property
    def partitions(self) -> int:
        """How many partitions the run's per-sample data is cut into (1: not partitioned)."""
        if self.partition_samples <= 0 or self.partition_of is not None:
            return 1
        return max(1, math.ceil(self.num_samples / self.partition_samples))

    def partition_bounds(self, j: int) -> tuple[int, int]:
        """The run's samples [lo, hi) that partition ``j`` holds."""
        m = self.partition_samples
        return j * m, min(self.num_samples, (j + 1) * m)

    def partition(self, j: int) -> RunLayout:
        """The layout of partition ``j`` of a partitioned run: its samples renumbered from 0
        (the Redis store puts its keys under the partition's own hash tag). A partition holds the
        records, score (loss) column, score log, meta (uid, writer lease, log_base), dedup
        markers and counters of its samples; the run keeps meta, epochs, epoch indices and
        weights, and the selection-count and Exp3 inclusion columns (written with the epoch
        by one first-wins script)."""
        return self._partition_layouts[j]

    @cached_property
    def _partition_layouts(self) -> tuple[RunLayout, ...]:
        out = []
        for j in range(self.partitions):
            lo, hi = self.partition_bounds(j)
            out.append(
                RunLayout(
                    run_id=self.run_id,
                    num_samples=hi - lo,
                    num_outputs=self.num_outputs,
                    output_dtype=self.output_dtype,
                    chunk_bytes=self.chunk_bytes,
                    loss_column=self.loss_column,
                    exp3=False,  # the inclusion column stays with the run
                    partition_of=(j, self.partitions),
                )
            )
        return tuple(out)

    def split(
        self, indices: np.ndarray, sizes: Sequence[int]
    ) -> tuple[list[tuple[int, np.ndarray, list[int]]], np.ndarray]:
        """Cut a request's samples (``indices``: reports one after the other, ``sizes``
        samples each) into partition parts. Returns ([(partition j, positions in ``indices`` of
        its samples in order, positions of the reports with samples there), ...] in partition
        order, and each report's home partition: the partition of its first sample (-1 for a
        report without samples here, which touches no partition)."""
        idx = np.asarray(indices, dtype=np.int64)
        owner = idx // self.partition_samples
        starts = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
        homes = np.array(
            [int(owner[s]) if z else -1 for s, z in zip(starts, sizes, strict=True)], np.int64
        )
        order = np.argsort(owner, kind="stable")  # positions grouped by partition, in order
        cuts = np.flatnonzero(np.diff(owner[order])) + 1
        rep_of = None if len(sizes) == 1 else np.repeat(np.arange(len(sizes)), sizes)
        parts = []
        for pos in np.split(order, cuts) if idx.shape[0] else []:
            reps = [0] if rep_of is None else np.unique(rep_of[pos]).tolist()
            parts.append((int(owner[pos[0]]), pos, reps))
        return parts, homes

    # -- numpy views ----------------------------------------------------------------------
    @cached_property
    def rec_dtype(self) -> np.dtype[Any]:
        out = "<f2" if self.output_dtype == "float16" else "<f4"
        return np.dtype(
            {
                "names": ["lr_sum", "visits", "score", "loss", "g"],
                "formats": ["<f8", "<u4", "<f4", "<f4", (out, (self.num_outputs,))],
                "offsets": [0, 8, 12, 16, RECORD_HEAD],
                "itemsize": self.rec_size,
            }
        )

    @cached_property
    def log_dtype(self) -> np.dtype[Any]:
        """One entry of the score log: (index uint32, score float32[, loss float32])."""
        fields = [("i", "<u4"), ("s", "<f4")]
        if self.loss_column:
            fields.append(("l", "<f4"))
        return np.dtype(fields)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_json(self) -> str:
        doc: dict[str, Any] = {
            "num_samples": self.num_samples,
            "num_outputs": self.num_outputs,
            "output_dtype": self.output_dtype,
            "chunk_bytes": self.chunk_bytes,
            "loss_column": self.loss_column,
            "exp3": self.exp3,
            "rec_size": self.rec_size,
            "record_head": RECORD_HEAD,
        }
        if self.partitions > 1:  # absent: not partitioned (its JSON as before partitions)
            doc[STORED_PARTITION_SAMPLES] = self.partition_samples
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, run_id: str, text: str | bytes) -> RunLayout:
        d = json.loads(text)
        return cls(
            run_id=run_id,
            num_samples=int(d["num_samples"]),
            num_outputs=int(d["num_outputs"]),
            output_dtype=str(d["output_dtype"]),
            chunk_bytes=int(d["chunk_bytes"]),
            loss_column=bool(d["loss_column"]),
            exp3=bool(d["exp3"]),
            partition_samples=int(d.get(STORED_PARTITION_SAMPLES, 0)),
        )


def fold_log(
    layout: RunLayout, entries: Sequence[bytes], scores: np.ndarray, losses: np.ndarray | None
) -> None:
    """Apply score-log entries, oldest first, to full (n,) score/loss columns in place.

    Later entries win: NumPy's assignment through an index array that repeats a
    position keeps the last value (documented behaviour for 1-D arrays)."""
    if not entries:
        return
    log = np.frombuffer(b"".join(entries), dtype=layout.log_dtype)
    idx = log["i"].astype(np.intp)
    scores[idx] = log["s"]
    if losses is not None and layout.loss_column:
        losses[idx] = log["l"]
