"""Per-sample signal columns on Redis: their key names and their single-slot operations.

A signal is a named float32 column of n values a client uploads (e.g. ``rho-loss``'s
irreducible loss; ``PUT /v1/runs/{run}/signals/{name}``), NaN = unknown. Its keys:

    {run:<id>}:meta                        hash    field ``signal:<name>`` -> registration time,
                                                   one per signal (the run's meta: deleted,
                                                   and so forgotten, with the run)
    {run:<id>}:sig:<uid>:<name>:<k>        string  chunk k of the column, float32 LE, chunked
                                                   as the score column (``col_per_chunk``)

A partitioned run keeps the names on its own meta and each partition the chunks of its
slice under the partition's hash tag (``{run:<id>:<j>.<salt>}:sig:<uid>:<name>:<k>``),
renumbered from 0 like its score column. The run's ``uid`` is part of the chunk keys, so
a run deleted and re-created under the same id never reads the old incarnation's values,
even when a delete died before its sweep reached them (the sweep of ``{run:<id>...}``
removes them otherwise). Every write goes through ``lua/signal.lua``: it checks the uid,
registers the name under the count limit and NaN-fills a chunk before its first write,
atomically on its slot.

The key names come from ``keys.py`` (``RunKeys.signal``), like every other key of a run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from docl.services.layout import RunLayout
from docl.services.redis.codec import NAN32, ranges, text
from docl.services.redis.connection import Connection
from docl.services.redis.keys import keys_of
from docl.services.storage import SignalStatus, meta_signals

__all__ = ["read_signal", "signal_keys", "signal_names", "write_signal"]


def signal_keys(layout: RunLayout, uid: str, name: str) -> tuple[str, ...]:
    """The chunk keys of signal ``name`` of incarnation ``uid`` in ``layout`` (a run on one
    slot, or one partition of a partitioned run)."""
    return keys_of(layout).signal(uid, name)


async def signal_names(conn: Connection, layout: RunLayout) -> list[str]:
    """The names of the run's signals (from its meta hash), sorted."""
    fields = await conn.redis.hkeys(keys_of(layout).meta)
    return meta_signals({text(f): "" for f in fields})


async def write_signal(
    conn: Connection,
    layout: RunLayout,
    uid: str,
    name: str,
    start: int,
    values: np.ndarray,
    *,
    register: int,
) -> tuple[SignalStatus, int]:
    """One signal.lua call on ``layout``'s slot: register ``name`` when ``register`` > 0
    (at most that many signals), then write ``values`` at [start, start + len(values)).
    The values pass through the script's ARGV (copied inside Redis: a signal is written
    once per run, 4 bytes per sample; the epoch commit's temporary keys are not worth it)."""
    data = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    stop = start + int(data.shape[0])
    if not 0 <= start <= stop <= layout.num_samples:
        raise ValueError(f"slice [{start}, {stop}) is outside [0, {layout.num_samples})")
    keys = signal_keys(layout, uid, name)
    per = layout.col_per_chunk
    n = layout.num_samples
    raw = data.tobytes()
    chunk_keys: list[str] = []
    args: list[Any] = [uid, name, int(register), NAN32, repr(time.time())]
    for k, lo, hi in ranges(start, stop, per):
        first = k * per + lo - start  # position in `values` of this piece's first value
        chunk_keys.append(keys[k])
        args += [min(per, n - k * per), 4 * lo, raw[4 * first : 4 * (first + hi - lo)]]
    res = await conn.run("signal", [keys_of(layout).meta, *chunk_keys], args)
    return SignalStatus(int(res[0])), int(res[1])


async def read_signal(
    conn: Connection, layout: RunLayout, uid: str, name: str, start: int, stop: int
) -> np.ndarray:
    """Values [start, stop) of the signal in ``layout`` (float32; NaN where never written)."""
    keys = signal_keys(layout, uid, name)
    pieces = ranges(start, stop, layout.col_per_chunk)
    pipe = conn.redis.pipeline(transaction=False)
    for k, lo, hi in pieces:
        pipe.getrange(keys[k], 4 * lo, 4 * hi - 1)
    raw = await pipe.execute() if pieces else []
    parts = []
    for (_, lo, hi), data in zip(pieces, raw, strict=True):
        got = np.frombuffer(data, dtype="<f4")
        if got.shape[0] < hi - lo:  # a chunk never written: NaN
            got = np.concatenate([got, np.full(hi - lo - got.shape[0], np.nan, dtype="<f4")])
        parts.append(got)
    return np.concatenate(parts) if parts else np.empty(0, dtype="<f4")
