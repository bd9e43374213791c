"""What a partitioned run's operations share (``store.py`` runs them): naming a failed
partition, awaiting every part of a call, the sizes of a group's reports, the reports
found applied on every partition they touch."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from typing import Any

import numpy as np

from docl.services.layout import RunLayout, fold_log
from docl.services.redis.codec import column, text
from docl.services.redis.connection import Connection
from docl.services.redis.errors import translate
from docl.services.redis.keys import keys_of
from docl.services.storage import DrawInputs, NotReplicated, PartitionUnavailable, StoreError

__all__ = [
    "all_parts",
    "partition_error",
    "partitioned_draw_inputs",
    "report_sizes",
    "whole_duplicates",
]


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


async def partitioned_draw_inputs(
    connection: Connection, layout: RunLayout, *, losses: bool
) -> DrawInputs:
    """``RedisStore.draw_inputs`` of a partitioned run: the run's meta and drawn/incl
    columns in one MULTI, each partition's meta, score log and columns in one MULTI per
    partition, all concurrently; the columns concatenated, each partition's log folded
    into its slice (consistent per partition, not across partitions)."""
    n = layout.num_samples
    names = keys_of(layout)
    run_cmds: list[list[Any]] = [["HMGET", names.meta, "uid", "last_epoch"]]
    run_cmds += [["GET", k] for k in names.drawn]
    run_cmds += [["GET", k] for k in names.incl]
    want_loss = losses and layout.loss_column
    subs = [layout.partition(j) for j in range(layout.partitions)]
    part_cmds = []
    for sub in subs:
        sub_names = keys_of(sub)
        cmds: list[list[Any]] = [
            ["HMGET", sub_names.meta, "uid", "log_base"],
            ["LRANGE", sub_names.scorelog, 0, -1],
        ]
        cmds += [["GET", k] for k in sub_names.score]
        cmds += [["GET", k] for k in (sub_names.loss if want_loss else ())]
        part_cmds.append(cmds)
    transaction = connection.transaction
    run_raw, part_raw = await asyncio.gather(
        transaction(run_cmds),
        all_parts(layout, [(j, transaction(c)) for j, c in enumerate(part_cmds)]),
    )
    uid_b, last_b = run_raw[0]
    nd = len(names.drawn)
    drawn = column(run_raw[1 : 1 + nd], n, "<u2", 0)
    incl = column(run_raw[1 + nd :], n, "<f4", 0.0) if layout.exp3 else None
    sc = np.empty(n, dtype="<f4")
    ls = np.empty(n, dtype="<f4") if want_loss else None
    logs: list[tuple[int, int]] = []
    uid = text(uid_b) if uid_b is not None else None
    for j, (sub, raw) in enumerate(zip(subs, part_raw, strict=True)):
        lo, hi = layout.partition_bounds(j)
        s_uid, s_base = raw[0]
        if s_uid is None or text(s_uid) != uid:  # a partition missing or of another incarnation
            uid = None
        ns = len(keys_of(sub).score)
        sc[lo:hi] = column(raw[2 : 2 + ns], hi - lo, "<f4", np.nan)
        if ls is not None:
            ls[lo:hi] = column(raw[2 + ns :], hi - lo, "<f4", np.nan)
        fold_log(sub, raw[1], sc[lo:hi], None if ls is None else ls[lo:hi])
        logs.append((int(s_base) if s_base is not None else 0, len(raw[1])))
    return DrawInputs(
        uid=uid,
        last_epoch=int(last_b) if last_b is not None else -1,
        scores=sc,
        losses=ls,
        drawn=drawn,
        inclusion=incl,
        log_count=sum(c for _, c in logs),
        partition_logs=tuple(logs),
    )
