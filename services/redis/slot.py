"""The single-slot store: :class:`SlotStore`, every store operation on the keys of one
hash tag, hence one Redis Cluster slot.

The layout it is handed is a whole run (``{run:<id>}``), a partitioned run's own keys,
or one partition of it (``RunLayout.partition(j)``, its own hash tag): it does not know
which. Spreading a partitioned run over its partitions is ``store.py``'s
(:class:`~docl.services.redis.store.RedisStore`), which wraps this class.

The keys of a run (named by ``keys.py`` from the layout; see docs/architecture.md
"The store"):

    {run:<id>}:meta          hash    config (canonical JSON), uid, created_at, layout, last_epoch
    {run:<id>}:counters      hash    reports, duplicates, samples_reported, samples_scored,
                                     samples_skipped, visited
    {run:<id>}:reports       zset    applied report_ids -> time applied (the dedup markers)
    {run:<id>}:epochs        hash    e -> JSON of the drawn epoch (seed, size, ...)
    {run:<id>}:epoch:<e>:<k> string  chunk k of epoch e's indices, int64 LE, training order
    {run:<id>}:weight:<e>:<k> string chunk k of epoch e's per-index loss weights, float32 LE,
                                     the same order (only methods with weights, e.g. infobatch)
    {run:<id>}:rec:<k>       string  chunk k of the per-sample records (fixed width, layout.py)
    {run:<id>}:score:<k>     string  chunk k of the score column, float32 LE (NaN = unset)
    {run:<id>}:loss:<k>      string  chunk k of the last-loss column, float32 (methods whose
                                     signal is the loss: spl, mcl, infobatch)
    {run:<id>}:scorelog      list    one entry per applied report: (index, score[, loss])
    {run:<id>}:drawn:<k>     string  chunk k of the selection counts, uint16 (saturating)
    {run:<id>}:incl:<k>      string  chunk k of Exp3 inclusion probabilities, float32 (exp3 only)
    docl:runs                set     every run id (for GET /v1/runs)

Records are created lazily: a chunk grows as samples are first written, and a record
that was never written reads as zeros (visits = 0: never seen). The score and loss
columns are NaN-filled when the run is created.

Every write of a report happens in one Lua script (``lua/scatter.lua``) that checks the
report's dedup marker and, unless the caller holds the write lease, compares each
sample's stored (lr_sum, visits) with what was read at gather time — a compare-and-set
— before writing anything; see docs/architecture.md for why this and not MULTI/EXEC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from docl.services.layout import CAS_BYTES, RunLayout, fold_log
from docl.services.redis.codec import (
    NAN32,
    chunk_views,
    chunks_of,
    column,
    counters_of,
    f64_indices,
    ranges,
    text,
    write_mask,
)
from docl.services.redis.connection import Connection
from docl.services.redis.errors import translating
from docl.services.redis.keys import RUNS_INDEX, keys_of, run_prefix, temporary_keys
from docl.services.storage import (
    Applied,
    ClaimStatus,
    CommitStatus,
    CompactStatus,
    CreateStatus,
    DrawInputs,
    Gathered,
    GatherStatus,
    ScatterStatus,
)

__all__ = ["DEDUP_TTL_S", "SlotStore"]

#: How long a report's dedup marker is kept unless told (``DOCL_DEDUP_TTL_S``'s default).
DEDUP_TTL_S = 7 * 24 * 3600.0
#: Keys UNLINKed per call when a delete sweeps a run's keys.
_UNLINK_BATCH = 1000


@translating
class SlotStore:
    """Every store operation on one hash tag, over a :class:`Connection`. Stateless
    itself: safe to share per process. ``dedup_ttl_s``: how long a report's dedup marker
    is kept (``DOCL_DEDUP_TTL_S``)."""

    def __init__(self, conn: Connection, *, dedup_ttl_s: float = DEDUP_TTL_S) -> None:
        self.conn = conn
        self.redis = conn.redis
        self.dedup_ttl_s = dedup_ttl_s

    # -- runs -----------------------------------------------------------------------------
    async def create(
        self,
        layout: RunLayout,
        config_json: str,
        uid: str,
        created_at: float,
        *,
        columns: bool = True,
    ) -> tuple[CreateStatus, str, str | None]:
        """create.lua on the layout's slot: (CREATED | EXISTS with the same config |
        CONFLICT with another config, uid, stored config). ``columns``: NaN-fill the
        score (loss) columns too (False: a partitioned run's own keys, whose columns live
        in its partitions)."""
        names = keys_of(layout)
        n = layout.num_samples
        per = layout.col_per_chunk
        col_keys = (*names.score, *names.loss) if columns else ()
        sizes = [hi - lo for _, lo, hi in ranges(0, n, per)]
        counts = sizes * (len(col_keys) // len(sizes))
        res = await self.conn.run(
            "create",
            [names.meta, *col_keys],
            [config_json, uid, repr(created_at), layout.to_json(), NAN32, *counts],
        )
        stored = text(res[2]) if len(res) > 2 else None
        return CreateStatus(int(res[0])), text(res[1]), stored

    async def index_run(self, run_id: str) -> None:
        """Add the run to the run index (``docl:runs``)."""
        await self.redis.sadd(RUNS_INDEX, run_id)

    async def run_meta(self, run_id: str) -> dict[str, str] | None:
        """The run's meta hash (decoded), or None when the run does not exist."""
        raw = await self.redis.hgetall(f"{run_prefix(run_id)}:meta")
        if not raw or b"config" not in raw:
            return None
        return {text(k): text(v) for k, v in raw.items()}

    async def run_metas(
        self, run_ids: list[str]
    ) -> list[tuple[dict[str, str] | None, dict[str, int]]]:
        """Meta and counters hash of several runs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hgetall(f"{run_prefix(rid)}:meta")
            pipe.hgetall(f"{run_prefix(rid)}:counters")
        raw = await pipe.execute()
        out: list[tuple[dict[str, str] | None, dict[str, int]]] = []
        for j in range(len(run_ids)):
            meta, counters = raw[2 * j], raw[2 * j + 1]
            m = {text(k): text(v) for k, v in meta.items()} if meta and b"config" in meta else None
            out.append((m, counters_of(counters)))
        return out

    async def count_duplicate(self, layout: RunLayout, count: int = 1) -> None:
        # a write, so its WAIT also covers the earlier write of the report it duplicates
        await self.conn.replicated(["HINCRBY", keys_of(layout).counters, "duplicates", count])

    async def counters(self, layout: RunLayout) -> dict[str, int]:
        """Every counter of the layout's counters hash (see ``codec.counters_of``)."""
        return counters_of(await self.redis.hgetall(keys_of(layout).counters))

    async def counter_sums(self, layouts: Sequence[RunLayout]) -> dict[str, int]:
        """The sums of several layouts' counters, read in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for lay in layouts:
            pipe.hgetall(keys_of(lay).counters)
        total: dict[str, int] = {}
        for raw in await pipe.execute():
            for k, v in counters_of(raw).items():
                total[k] = total.get(k, 0) + v
        return total

    async def list_run_ids(self) -> list[str]:
        return sorted(text(m) for m in await self.redis.smembers(RUNS_INDEX))

    async def forget_run_id(self, run_id: str) -> None:
        await self.redis.srem(RUNS_INDEX, run_id)

    async def unlink_static(self, layout: RunLayout) -> int:
        """UNLINK the layout's known keys (all but the per-epoch chunks); how many existed."""
        return int(await self.redis.unlink(*keys_of(layout).static()))

    async def delete_run(self, layout: RunLayout, *, sweep: str | None = None) -> int:
        """Drop every key of the run: its known keys, then a SCAN sweep of ``sweep``
        (default: the layout's hash tag, ``{run:<id>}:*``), then its index entry."""
        deleted = await self.unlink_static(layout)
        # Epoch index chunks and anything a future layout adds: sweep the prefix.
        # The run id alphabet [A-Za-z0-9_.-] has no glob characters.
        batch: list[bytes] = []
        async for key in self.conn.scan(sweep or f"{keys_of(layout).prefix}:*"):
            batch.append(key)
            if len(batch) >= _UNLINK_BATCH:
                deleted += int(await self.redis.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await self.redis.unlink(*batch))
        await self.redis.srem(RUNS_INDEX, layout.run_id)
        return deleted

    async def keys(self, match: str) -> list[str]:
        """Every key matching the glob ``match`` (on a cluster: on every primary)."""
        return sorted([text(k) async for k in self.conn.scan(match)])

    async def meta_fields(self, layout: RunLayout, *fields: str) -> list[Any]:
        """Fields of the layout's meta hash (HMGET)."""
        return list(await self.redis.hmget(keys_of(layout).meta, list(fields)))

    # -- epochs ---------------------------------------------------------------------------
    async def draw_inputs(self, layout: RunLayout, *, losses: bool) -> DrawInputs:
        """One MULTI/EXEC snapshot of last_epoch and the columns a draw reads, with the
        score log folded into the score (and loss) column (see :meth:`scatter`).

        The columns are read-only views of the replies (no copy) unless the log had to
        be folded into them."""
        names = keys_of(layout)
        cmds: list[list[Any]] = [
            ["HMGET", names.meta, "uid", "last_epoch", "log_base"],
            ["LRANGE", names.scorelog, 0, -1],
        ]
        cmds += [["GET", k] for k in names.score]
        cmds += [["GET", k] for k in (names.loss if losses else ())]
        cmds += [["GET", k] for k in names.drawn]
        cmds += [["GET", k] for k in names.incl]
        raw = await self.conn.transaction(cmds)
        uid_b, last_b, base_b = raw[0]
        log: list[bytes] = raw[1]
        pos = 2
        n = layout.num_samples

        def read(keys: tuple[str, ...], dtype: str, fill: float, writable: bool) -> np.ndarray:
            nonlocal pos
            arr = column(raw[pos : pos + len(keys)], n, dtype, fill)
            pos += len(keys)
            return arr.copy() if writable and not arr.flags.writeable else arr

        sc = read(names.score, "<f4", np.nan, bool(log))
        ls = None
        if losses and layout.loss_column:
            ls = read(names.loss, "<f4", np.nan, bool(log))
        dr = read(names.drawn, "<u2", 0, False)
        inc = read(names.incl, "<f4", 0.0, False) if layout.exp3 else None
        fold_log(layout, log, sc, ls)
        return DrawInputs(
            uid=text(uid_b) if uid_b is not None else None,
            last_epoch=int(last_b) if last_b is not None else -1,
            scores=sc,
            losses=ls,
            drawn=dr,
            inclusion=inc,
            log_base=int(base_b) if base_b is not None else 0,
            log_count=len(log),
        )

    async def compact(self, layout: RunLayout, uid: str, snap: DrawInputs) -> CompactStatus:
        """Write the score (and loss) column of a snapshot back and drop the log entries
        it folded in. Returns INSTALLED, or MOVED when another process compacted meanwhile
        (nothing changes then: its columns already hold these entries); see
        lua/compact.lua."""
        names = keys_of(layout)
        if snap.log_count == 0 or snap.scores is None:
            return CompactStatus.INSTALLED
        finals = list(names.score)
        values = chunk_views(snap.scores, "<f4", layout.col_per_chunk)
        if layout.loss_column and snap.losses is not None:
            finals += names.loss
            values += chunk_views(snap.losses, "<f4", layout.col_per_chunk)
        temps = temporary_keys(finals)
        await self.conn.set_temporary(temps, values)
        keys = [names.meta, names.scorelog, *finals, *temps]
        args = [uid, snap.log_base, snap.log_count, len(finals)]
        return CompactStatus(int(await self.conn.run("compact", keys, args)))

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
    ) -> CommitStatus:
        """Store epoch ``epoch`` if nobody did yet; see lua/commit_epoch.lua.
        ``weights`` (float32 per index) are stored beside the indices, chunked alike.

        The big values (indices: 8 bytes per sample; selection counts; Exp3 inclusion)
        are first written with plain SETs to temporary keys (expiring, in case this
        process dies here), then one small script checks that the epoch is still
        free and next in order and RENAMEs them into place, or deletes them. Passing
        100 MB through a script's ARGV would copy it three times inside Redis.
        """
        names = keys_of(layout)
        idx_parts = chunk_views(indices, "<i8", layout.idx_per_chunk)
        idx_keys = names.epoch(epoch, int(indices.shape[0]))
        drawn_parts = chunk_views(drawn, "<u2", layout.drawn_per_chunk)
        incl_parts: list[bytes | memoryview] = []
        if layout.exp3 and inclusion is not None:
            incl_parts = chunk_views(inclusion, "<f4", layout.col_per_chunk)
        finals = [*idx_keys, *names.drawn, *names.incl[: len(incl_parts)]]
        values = [*idx_parts, *drawn_parts, *incl_parts]
        if weights is not None:  # beside the indices, chunked the same way
            if weights.shape != indices.shape:
                raise ValueError(f"weights {weights.shape} must match indices {indices.shape}")
            finals += names.weight(epoch, int(indices.shape[0]))
            values += chunk_views(weights, "<f4", layout.idx_per_chunk)
        temps = temporary_keys(finals)
        drop: tuple[str, ...] = ()
        if drop_epoch is not None:  # an old epoch's indices, and its weights if it had any
            drop = (*names.epoch(*drop_epoch), *names.weight(*drop_epoch))
        await self.conn.set_temporary(temps, values)
        keys = [names.meta, names.epochs, *finals, *temps, *drop]
        args: list[Any] = [uid, epoch, epoch_json, len(finals), len(drop)]
        return CommitStatus(int(await self.conn.run("commit_epoch", keys, args)))

    async def epoch_json(self, layout: RunLayout, epoch: int) -> str | None:
        raw = await self.redis.hget(keys_of(layout).epochs, str(epoch))
        return text(raw) if raw is not None else None

    async def epochs_json(self, layout: RunLayout) -> dict[int, str]:
        raw = await self.redis.hgetall(keys_of(layout).epochs)
        return {int(k): text(v) for k, v in raw.items()}

    async def read_indices(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None:
        """int64 bytes of epoch ``epoch``'s indices [start, stop); None when they were dropped."""
        keys = keys_of(layout).epoch(epoch, size)
        return await self._read_slice(keys, layout.idx_per_chunk, 8, start, stop)

    async def read_weights(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None:
        """float32 bytes of epoch ``epoch``'s weights [start, stop); None when they were dropped."""
        keys = keys_of(layout).weight(epoch, size)
        return await self._read_slice(keys, layout.idx_per_chunk, 4, start, stop)

    async def _read_slice(
        self, keys: tuple[str, ...], per_chunk: int, itemsize: int, start: int, stop: int
    ) -> bytes | None:
        if stop <= start:
            return b"" if await self.redis.exists(keys[0]) else None
        pipe = self.redis.pipeline(transaction=False)
        for k, lo, hi in ranges(start, stop, per_chunk):
            pipe.getrange(keys[k], itemsize * lo, itemsize * hi - 1)
        data = b"".join(await pipe.execute())
        return data if len(data) == itemsize * (stop - start) else None

    # -- records and columns --------------------------------------------------------------
    async def read_records(self, layout: RunLayout, start: int, stop: int) -> np.ndarray:
        """Records [start, stop) as a structured array (never-written ones are zeros)."""
        rs = layout.rec_size
        pipe = self.redis.pipeline(transaction=False)
        pieces = ranges(start, stop, layout.rec_per_chunk)
        keys = keys_of(layout).rec
        for k, lo, hi in pieces:
            pipe.getrange(keys[k], rs * lo, rs * hi - 1)
        raw = await pipe.execute()
        parts = []
        for (_, lo, hi), data in zip(pieces, raw, strict=True):
            want = rs * (hi - lo)
            parts.append(data + b"\0" * (want - len(data)) if len(data) < want else data)
        return np.frombuffer(b"".join(parts), dtype=layout.rec_dtype)

    async def current_scores(self, layout: RunLayout) -> np.ndarray:
        """The whole score column with the score log folded in (what a draw would see)."""
        names = keys_of(layout)
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(names.scorelog, 0, -1)
        for k in names.score:
            pipe.get(k)
        raw = await pipe.execute()
        n = layout.num_samples
        sc = np.frombuffer(b"".join(p or b"" for p in raw[1:]), dtype="<f4")[:n].copy()
        if sc.shape[0] < n:
            sc = np.concatenate([sc, np.full(n - sc.shape[0], np.nan, "<f4")])
        fold_log(layout, raw[0], sc, None)
        return sc

    async def read_column(self, layout: RunLayout, name: str, start: int, stop: int) -> np.ndarray:
        """Values [start, stop) of a stored column: 'score', 'loss' (float32, WITHOUT the
        score log: see :meth:`current_scores`) or 'drawn' (uint16)."""
        names = keys_of(layout)
        if name == "drawn":
            keys, dtype, per, fill = names.drawn, "<u2", layout.drawn_per_chunk, 0.0
        elif name == "score":
            keys, dtype, per, fill = names.score, "<f4", layout.col_per_chunk, np.nan
        elif name == "loss" and layout.loss_column:
            keys, dtype, per, fill = names.loss, "<f4", layout.col_per_chunk, np.nan
        else:
            raise KeyError(f"no column {name!r} in this run")
        w = np.dtype(dtype).itemsize
        pipe = self.redis.pipeline(transaction=False)
        pieces = ranges(start, stop, per)
        for k, lo, hi in pieces:
            pipe.getrange(keys[k], w * lo, w * hi - 1)
        raw = await pipe.execute()
        parts = []
        for (_, lo, hi), data in zip(pieces, raw, strict=True):
            got = np.frombuffer(data, dtype=dtype)
            if got.shape[0] < hi - lo:
                got = np.concatenate([got, np.full(hi - lo - got.shape[0], fill, dtype=dtype)])
            parts.append(got)
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    async def write_column(self, layout: RunLayout, name: str, values: np.ndarray) -> None:
        """Overwrite a whole float32 column ('score' or 'loss'). For tools and the benchmark
        (e.g. to time a draw over realistic scores without reporting n samples first);
        records are not touched, so the column and the records disagree afterwards."""
        names = keys_of(layout)
        keys = {"score": names.score, "loss": names.loss}.get(name)
        if not keys:
            raise KeyError(f"no float32 column {name!r} in this run")
        data = np.ascontiguousarray(values, dtype="<f4")
        if data.shape != (layout.num_samples,):
            raise ValueError(f"{name} must have shape ({layout.num_samples},), got {data.shape}")
        parts = chunks_of(data.tobytes(), 4, layout.col_per_chunk)
        pipe = self.redis.pipeline(transaction=True)
        for key, part in zip(keys, parts, strict=True):
            pipe.set(key, part)
        pipe.delete(names.scorelog)  # older log entries would override the new column
        await pipe.execute()

    async def read_inclusion(self, layout: RunLayout, idx: np.ndarray) -> np.ndarray:
        """The Exp3 inclusion of samples ``idx`` (float32; 0 = never drawn)."""
        per = layout.col_per_chunk
        pipe = self.redis.pipeline(transaction=False)
        for i in idx.tolist():
            k = i // per
            pipe.getrange(keys_of(layout).incl[k], 4 * (i - k * per), 4 * (i - k * per) + 3)
        raw = await pipe.execute() if idx.shape[0] else []
        return np.frombuffer(b"".join(r if len(r) == 4 else b"\0" * 4 for r in raw), "<f4")

    # -- reports --------------------------------------------------------------------------
    async def gather(
        self, layout: RunLayout, uid: str, report_ids: str | Sequence[str], indices: np.ndarray
    ) -> Gathered:
        """Read the records (and Exp3 inclusion) of these samples, unless one of the
        reports was already applied; see lua/gather.lua."""
        names = keys_of(layout)
        ids = [report_ids] if isinstance(report_ids, str) else list(report_ids)
        incl_keys = names.incl
        res = await self.conn.run(
            "gather",
            [names.meta, names.reports, *names.rec, *incl_keys],
            [
                uid,
                f64_indices(indices),
                layout.rec_size,
                layout.rec_per_chunk,
                len(names.rec),
                len(incl_keys),
                layout.col_per_chunk,
                *ids,
            ],
        )
        status = GatherStatus(int(res[0]))
        if status != GatherStatus.OK:
            last = int(res[1]) if len(res) > 1 else -1
            dups = tuple(int(j) - 1 for j in res[2:])
            return Gathered(status, last, None, None, dups)
        records = np.frombuffer(bytearray(res[2]), dtype=layout.rec_dtype)
        incl = np.frombuffer(res[3], dtype="<f4") if incl_keys else None
        return Gathered(status, int(res[1]), records, incl)

    async def claim(self, layout: RunLayout, uid: str, token: str) -> ClaimStatus:
        """Take the layout's write lease for ``token`` (CLAIMED), or GONE: the run is gone
        or was re-created. See lua/claim.lua and lua/scatter.lua."""
        return ClaimStatus(int(await self.conn.run("claim", [keys_of(layout).meta], [uid, token])))

    async def last_epoch(self, layout: RunLayout) -> int:
        raw = await self.redis.hget(keys_of(layout).meta, "last_epoch")
        return int(raw) if raw is not None else -1

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
        counters: tuple[int, int, int, int, int],
        token: str = "",
        count_duplicates: bool = True,
    ) -> Applied:
        """Apply one or more reports' writes atomically; see lua/scatter.lua for the contract.

        ``report_id`` is one id, or the ids of several reports whose samples follow
        each other in ``indices`` (no index twice). ``expected`` are the (S,) records
        the new state was computed from (their lr-sum and visits are compared, unless
        ``token`` is the run's current write lease), ``write`` the (S,) mask of samples
        to write, ``records``/``scores``/``losses`` the new values of those samples, in
        order; ``counters`` the sums over the reports.

        The records are written in place; the new scores (and losses) go to the
        run's score log as ONE entry appended per call, not S writes into the
        score column: a ``redis.call`` costs microseconds, and the column is only
        read by draws and stats, which fold the log in (:func:`fold_log`) and
        compact it (:meth:`compact`).

        ``count_duplicates=False``: a duplicate adds nothing to the duplicates counter (a
        partition's part: the partitioned caller counts whole duplicates).
        """
        names = keys_of(layout)
        ids = [report_id] if isinstance(report_id, str) else list(report_id)
        rs = layout.rec_size
        idx = np.asarray(indices)
        exp = np.ascontiguousarray(expected)
        # the heads travel even with a lease: the script compares them when it was revoked
        heads = exp.view(np.uint8).reshape(-1, rs)[:, :CAS_BYTES]
        log = np.empty(int(np.count_nonzero(write)), dtype=layout.log_dtype)
        log["i"] = idx[write]
        log["s"] = scores
        if layout.loss_column:
            log["l"] = losses
        res = await self.conn.run_replicated(
            "scatter",
            [
                names.meta,
                names.reports,
                names.counters,
                names.scorelog,
                *names.rec,
            ],
            [
                uid,
                token,
                repr(now),
                repr(now - self.dedup_ttl_s),
                f64_indices(idx),
                rs,
                layout.rec_per_chunk,
                np.ascontiguousarray(heads).tobytes(),
                CAS_BYTES,
                write_mask(write),
                np.ascontiguousarray(records).tobytes(),
                log.tobytes(),
                ",".join(str(int(v)) for v in counters) + ("" if count_duplicates else ",0"),
                *ids,
            ],
        )
        if isinstance(res, list):
            if ScatterStatus(int(res[0])) == ScatterStatus.DUPLICATE:
                dups = tuple(int(j) - 1 for j in res[1:])
                return Applied(ScatterStatus.DUPLICATE, duplicates=dups)
            current = np.frombuffer(bytearray(res[1]), dtype=layout.rec_dtype)
            return Applied(ScatterStatus.CONFLICT, tuple(int(j) - 1 for j in res[2:]), current)
        return Applied(ScatterStatus(int(res)))
