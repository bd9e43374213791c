"""What a partitioned run's operations share (``store.py`` runs them): naming a failed
partition, awaiting every part of a call, the sizes of a group's reports, the reports
found applied on every partition they touch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import numpy as np

from docl.services.layout import RunLayout
from docl.services.redis.errors import translate
from docl.services.storage import NotReplicated, PartitionUnavailable, StoreError

__all__ = ["all_parts", "partition_error", "report_sizes", "whole_duplicates"]


def partition_error(layout: RunLayout, part: int, e: BaseException) -> BaseException:
    """What a failed part of a partitioned run raises: NotReplicated naming the partition,
    PartitionUnavailable for a store failure a partition is to blame for, anything else
    (a bug, a cancellation, an error reply we did not expect) as it is."""
    e = translate(e)
    where = f"partition {part} of {layout.partitions}"
    if isinstance(e, NotReplicated):
        return NotReplicated(e.acked, e.wanted, e.wait_ms, e.why, e.where or where)
    if isinstance(e, PartitionUnavailable) or not isinstance(e, StoreError) or e.reason is None:
        return e
    return PartitionUnavailable(layout.run_id, part, layout.partitions, e.reason, e.kind)


async def all_parts(layout: RunLayout, calls: Sequence[tuple[int, Awaitable[Any]]]) -> list[Any]:
    """Await every partition part ``(partition, awaitable)`` to its end — none is left
    running behind an error (a part still in flight could land after the caller gave up
    and started over) — then raise the first failure as :func:`partition_error` names it."""
    got = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
    for (j, _), g in zip(calls, got, strict=True):
        if isinstance(g, BaseException):
            raise partition_error(layout, j, g) from g
    return list(got)


def report_sizes(ids: Sequence[str], indices: np.ndarray, sizes: Sequence[int] | None) -> list[int]:
    """Samples per report: ``sizes``, or all of them for one report."""
    if sizes is not None:
        return [int(z) for z in sizes]
    if len(ids) != 1:
        raise ValueError("a partitioned run's gather/scatter of several reports needs their sizes")
    return [int(np.asarray(indices).shape[0])]


def whole_duplicates(
    count: int, parts: Sequence[tuple[int, np.ndarray, list[int]]], applied: Sequence[set[int]]
) -> tuple[int, ...]:
    """Reports (of ``count``) whose marker every partition they touch has: ``applied[k]``
    the reports found applied on the partition of ``parts[k]``."""
    touched: dict[int, int] = {}
    seen: dict[int, int] = {}
    for (_, _, reps), done in zip(parts, applied, strict=True):
        for r in reps:
            touched[r] = touched.get(r, 0) + 1
            seen[r] = seen.get(r, 0) + (r in done)
    return tuple(r for r in range(count) if touched.get(r, 0) and seen[r] == touched[r])
