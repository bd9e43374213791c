""":class:`RedisStore`, the engine's :class:`~docl.services.storage.Store` on Redis.

It wraps the single-slot store (:class:`~docl.services.redis.slot.SlotStore`): a run
on one hash tag — every run, unless it is partitioned — is handed to it as it is; a
partitioned run (``DOCL_PARTITION_SAMPLES``; docs/architecture.md "Partitioned runs")
is spread over its partitions here, each partition an ordinary single-slot layout
(``RunLayout.partition(j)``) with its own hash tag. What spans partitions is done here, not
by Lua: every script keeps its single-slot contract.

- create: the run's meta decides the uid (first wins), then every partition is made
  with it; a retry completes a create that died half-way.
- reports: a group is cut into partition parts (``RunLayout.split``), gathered and
  scattered per part, concurrently, with the same report ids as the markers on each
  partition; a report is a duplicate only when every partition it touches has its
  marker; a partial apply is completed by the re-send.
- draws: one snapshot per partition (``parts.partitioned_draw_inputs``), concatenated;
  the epoch is committed on the run's slot, each partition's score log compacted on
  its own.
- a failed partition part raises :class:`~docl.services.storage.PartitionUnavailable`
  naming it (after every other part ended: none is left running behind an error).

Redis failures leave as storage's error types (``errors.py``), never redis-py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from docl.services import storage
from docl.services.layout import STORED_PARTITION_SAMPLES, RunLayout
from docl.services.redis.codec import text
from docl.services.redis.connection import MAX_CONNECTIONS, TIMEOUT_S, WAIT_MS, Connection
from docl.services.redis.errors import translating
from docl.services.redis.keys import keys_of, sweep_pattern
from docl.services.redis.parts import (
    all_parts,
    partitioned_draw_inputs,
    report_sizes,
    whole_duplicates,
)
from docl.services.redis.signals import read_signal, signal_names, write_signal
from docl.services.redis.slot import DEDUP_TTL_S, SlotStore
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
    SignalStatus,
)

__all__ = ["RedisStore"]


@translating
class RedisStore:
    """Async access to the state of every run, on Redis (or a Redis Cluster): a run on
    one slot through :class:`SlotStore`, a partitioned run over its partitions. Stateless
    itself: safe to share per process. The constructor takes redis-py's client (plus the
    fast path's URL); :meth:`from_url` makes both from a URL."""

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        *,
        dedup_ttl_s: float = DEDUP_TTL_S,
        fast_url: str | None = None,
        timeout_s: float = TIMEOUT_S,
        wait_replicas: int = 0,
        wait_ms: int = WAIT_MS,
    ) -> None:
        self.connection = Connection(
            redis,
            fast_url=fast_url,
            timeout_s=timeout_s,
            wait_replicas=wait_replicas,
            wait_ms=wait_ms,
        )
        self.slot = SlotStore(self.connection, dedup_ttl_s=dedup_ttl_s)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        dedup_ttl_s: float = DEDUP_TTL_S,
        wait_replicas: int = 0,
        wait_ms: int = WAIT_MS,
    ) -> RedisStore:
        """A store on ``url``: ``redis://``, ``rediss://``, ``unix://`` (one Redis) or
        ``redis+cluster://`` / ``rediss+cluster://`` (a Redis Cluster: any node's
        address; the others are discovered from it; ``max_connections`` is per node).
        ``wait_replicas`` > 0: each report is acknowledged only once that many replicas
        have it (:meth:`Connection.replicated`)."""
        conn = Connection.from_url(
            url,
            timeout_s=timeout_s,
            max_connections=max_connections,
            wait_replicas=wait_replicas,
            wait_ms=wait_ms,
        )
        return cls(
            conn.redis,
            dedup_ttl_s=dedup_ttl_s,
            fast_url=conn.fast_url,
            timeout_s=timeout_s,
            wait_replicas=wait_replicas,
            wait_ms=wait_ms,
        )

    # -- the connection -------------------------------------------------------------------
    @property
    def redis(self) -> aioredis.Redis | RedisCluster:
        """redis-py's client (tools and tests)."""
        return self.connection.redis

    @property
    def cluster(self) -> RedisCluster | None:
        return self.connection.cluster

    @property
    def wait_replicas(self) -> int:
        return self.connection.wait_replicas

    @property
    def dedup_ttl_s(self) -> float:
        return self.slot.dedup_ttl_s

    @property
    def resets(self) -> int:
        """How many times the hot path's connections to Redis failed (0 without it): a
        Redis restart moves this, and a record cache must not outlive one."""
        return self.connection.resets

    async def check_cluster(self) -> None:
        await self.connection.check_cluster()

    async def load_scripts(self) -> None:
        await self.connection.load_scripts()

    async def ping(self) -> bool:
        return await self.connection.ping()

    async def close(self) -> None:
        await self.connection.close()

    # -- runs -----------------------------------------------------------------------------
    async def create_run(
        self, layout: RunLayout, config_json: str, uid: str, created_at: float
    ) -> tuple[CreateStatus, str, str | None]:
        """Create the run once. Returns (CREATED | EXISTS with the same config | CONFLICT
        with another config, uid, stored config); see lua/create.lua."""
        parted = layout.partitions > 1
        status, stored_uid, stored = await self.slot.create(
            layout, config_json, uid, created_at, columns=not parted
        )
        if parted and status != CreateStatus.CONFLICT:
            # after the run's meta (which decided the uid), every partition; again on a
            # retry (EXISTS), which so completes a create that died half-way
            await self._create_partitions(layout, stored_uid, created_at)
        if status == CreateStatus.CREATED:
            await self.slot.index_run(layout.run_id)
        return status, stored_uid, stored

    async def _create_partitions(self, layout: RunLayout, uid: str, created_at: float) -> None:
        """Initialise every partition (create.lua on its meta, its columns NaN-filled),
        with the run's uid as the partition's "config": a no-op on a partition already
        made for this incarnation. A partition left by an earlier incarnation (a delete
        that died half-way cannot leave one: it drops the run's meta last) is dropped and
        made again."""

        async def one(j: int) -> None:
            sub = layout.partition(j)
            # stored as each partition's "config": the name from before "partition", kept
            # (a different mark would make a retried create remake existing partitions)
            mark = f'{{"shard_of":"{uid}"}}'
            status, _, _ = await self.slot.create(sub, mark, uid, created_at)
            if status == CreateStatus.CONFLICT:
                await self.slot.unlink_static(sub)
                await self.slot.create(sub, mark, uid, created_at)

        await asyncio.gather(*(one(j) for j in range(layout.partitions)))

    async def run_meta(self, run_id: str) -> dict[str, str] | None:
        return await self.slot.run_meta(run_id)

    async def run_metas(
        self, run_ids: list[str]
    ) -> list[tuple[dict[str, str] | None, dict[str, int]]]:
        """Meta and counters of several runs in one round trip (and one more per
        partitioned run, whose counters are spread over its partitions)."""
        out = await self.slot.run_metas(run_ids)
        for j, (m, _) in enumerate(out):
            if m is not None and f'"{STORED_PARTITION_SAMPLES}"' in m.get("layout", ""):
                out[j] = (m, await self.counters(RunLayout.from_json(run_ids[j], m["layout"])))
        return out

    async def count_duplicate(self, layout: RunLayout, count: int = 1) -> None:
        await self.slot.count_duplicate(layout, count)

    async def counters(self, layout: RunLayout) -> dict[str, int]:
        """Every counter of the run; of a partitioned run, the sums over its own counters
        hash and every partition's."""
        if layout.partitions == 1:
            return await self.slot.counters(layout)
        return await self.slot.counter_sums([layout, *self._partitions(layout)])

    async def list_run_ids(self) -> list[str]:
        return await self.slot.list_run_ids()

    async def forget_run_id(self, run_id: str) -> None:
        await self.slot.forget_run_id(run_id)

    async def delete_run(self, layout: RunLayout) -> int:
        """Drop every key of the run (known keys, then a SCAN sweep of its hash tag).
        A partitioned run: its partitions first, its meta last, so a delete that died
        half-way leaves a run that still exists (and a retry finishes it)."""
        deleted = 0
        for sub in self._partitions(layout):
            deleted += await self.slot.unlink_static(sub)
        return deleted + await self.slot.delete_run(layout, sweep=sweep_pattern(layout))

    async def run_keys(self, layout: RunLayout) -> list[str]:
        """Every key of the run that exists (tests and tools use this)."""
        return await self.slot.keys(sweep_pattern(layout))

    # -- epochs ---------------------------------------------------------------------------
    async def draw_inputs(self, layout: RunLayout, *, losses: bool) -> DrawInputs:
        """One consistent snapshot of what a draw reads (``SlotStore.draw_inputs``). A
        partitioned run: the run's meta and drawn/incl columns in one MULTI, each
        partition's meta, score log and columns in one MULTI per partition, all
        concurrently; the columns concatenated, each partition's log folded into its
        slice. That snapshot is consistent per partition, not across partitions: a report
        spanning partitions may be seen on one and not yet on another (as if it had
        arrived a moment later there)."""
        if layout.partitions == 1:
            return await self.slot.draw_inputs(layout, losses=losses)
        return await partitioned_draw_inputs(self.connection, layout, losses=losses)

    async def compact(self, layout: RunLayout, uid: str, snap: DrawInputs) -> CompactStatus:
        """Fold a snapshot's score log into the columns (``SlotStore.compact``); a
        partitioned run: compact.lua on every partition whose log had entries in the
        snapshot, concurrently (INSTALLED only if every one installed)."""
        if snap.log_count == 0 or snap.scores is None:
            return CompactStatus.INSTALLED
        if layout.partitions == 1:
            return await self.slot.compact(layout, uid, snap)
        calls = []
        for j, (base, count) in enumerate(snap.partition_logs):
            if count == 0:
                continue
            lo, hi = layout.partition_bounds(j)
            part = DrawInputs(
                uid=snap.uid,
                last_epoch=snap.last_epoch,
                scores=snap.scores[lo:hi],
                losses=None if snap.losses is None else snap.losses[lo:hi],
                drawn=snap.drawn[lo:hi],
                inclusion=None,
                log_base=base,
                log_count=count,
            )
            calls.append((j, self.slot.compact(layout.partition(j), uid, part)))
        got = await all_parts(layout, calls)
        ok = all(c == CompactStatus.INSTALLED for c in got)
        return CompactStatus.INSTALLED if ok else CompactStatus.MOVED

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
        """``SlotStore.commit_epoch`` on the run's slot (a partitioned run keeps its epochs,
        selection counts and Exp3 inclusion there: the commit stays one first-wins script)."""
        return await self.slot.commit_epoch(
            layout, uid, epoch, epoch_json, indices, drawn, inclusion, drop_epoch, weights=weights
        )

    async def epoch_json(self, layout: RunLayout, epoch: int) -> str | None:
        return await self.slot.epoch_json(layout, epoch)

    async def epochs_json(self, layout: RunLayout) -> dict[int, str]:
        return await self.slot.epochs_json(layout)

    async def last_epoch(self, layout: RunLayout) -> int:
        return await self.slot.last_epoch(layout)

    async def read_indices(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None:
        return await self.slot.read_indices(layout, epoch, size, start, stop)

    async def read_weights(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None:
        return await self.slot.read_weights(layout, epoch, size, start, stop)

    # -- records and columns --------------------------------------------------------------
    def _partitions(self, layout: RunLayout) -> list[RunLayout]:
        """The layouts of a partitioned run's partitions (none for a run on one slot)."""
        return (
            [layout.partition(j) for j in range(layout.partitions)] if layout.partitions > 1 else []
        )

    async def _per_partition(
        self,
        layout: RunLayout,
        start: int,
        stop: int,
        read: Callable[[RunLayout, int, int], Awaitable[np.ndarray]],
    ) -> list[np.ndarray]:
        """``await read(partition layout, lo, hi)`` for the partition-local pieces of
        [start, stop), concurrently, in order."""
        calls = []
        for j in range(layout.partitions):
            lo, hi = layout.partition_bounds(j)
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                calls.append((j, read(layout.partition(j), a - lo, b - lo)))
        return await all_parts(layout, calls)

    async def read_records(self, layout: RunLayout, start: int, stop: int) -> np.ndarray:
        """Records [start, stop) as a structured array (never-written ones are zeros)."""
        if layout.partitions == 1:
            return await self.slot.read_records(layout, start, stop)
        parts = await self._per_partition(layout, start, stop, self.slot.read_records)
        return np.concatenate(parts) if parts else np.empty(0, dtype=layout.rec_dtype)

    async def current_scores(self, layout: RunLayout) -> np.ndarray:
        """The whole score column with the score log folded in (what a draw would see)."""
        if layout.partitions == 1:
            return await self.slot.current_scores(layout)

        async def scores(sub: RunLayout, lo: int, hi: int) -> np.ndarray:
            return (await self.slot.current_scores(sub))[lo:hi]

        n = layout.num_samples
        return np.concatenate(await self._per_partition(layout, 0, n, scores))

    async def read_column(self, layout: RunLayout, name: str, start: int, stop: int) -> np.ndarray:
        """Values [start, stop) of a stored column: 'score', 'loss' (float32, WITHOUT the
        score log: see :meth:`current_scores`) or 'drawn' (uint16, which a partitioned
        run keeps on its own slot)."""
        if layout.partitions == 1 or name == "drawn":
            return await self.slot.read_column(layout, name, start, stop)
        if name not in ("score", "loss") or (name == "loss" and not layout.loss_column):
            raise KeyError(f"no column {name!r} in this run")

        async def part(sub: RunLayout, lo: int, hi: int) -> np.ndarray:
            return await self.slot.read_column(sub, name, lo, hi)

        parts = await self._per_partition(layout, start, stop, part)
        return np.concatenate(parts) if parts else np.empty(0, dtype="<f4")

    async def write_column(self, layout: RunLayout, name: str, values: np.ndarray) -> None:
        """Overwrite a whole float32 column ('score' or 'loss'): ``SlotStore.write_column``,
        per partition for a partitioned run. For tools and the benchmark."""
        if layout.partitions == 1:
            await self.slot.write_column(layout, name, values)
            return
        data = np.ascontiguousarray(values, dtype="<f4")
        if data.shape != (layout.num_samples,):
            raise ValueError(f"{name} must have shape ({layout.num_samples},), got {data.shape}")
        for j, sub in enumerate(self._partitions(layout)):
            lo, hi = layout.partition_bounds(j)
            await self.slot.write_column(sub, name, data[lo:hi])

    # -- signals --------------------------------------------------------------------------
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
        """Register signal ``name`` on the run's meta (at most ``max_signals``) and write
        ``values`` at [start, start + len(values)): one signal.lua call on a run on one
        slot. A partitioned run: the registration on the run's slot first, then each
        partition's piece of the slice on its own slot, concurrently (a write that died
        half-way leaves NaN, "unknown", where it did not reach: re-sending it completes it)."""
        if max_signals < 1:
            return SignalStatus.TOO_MANY, 0
        conn = self.connection
        if layout.partitions == 1:
            return await write_signal(conn, layout, uid, name, start, values, register=max_signals)
        data = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
        stop = start + int(data.shape[0])
        if not 0 <= start <= stop <= layout.num_samples:
            raise ValueError(f"slice [{start}, {stop}) is outside [0, {layout.num_samples})")
        empty = np.empty(0, dtype="<f4")
        status, count = await write_signal(conn, layout, uid, name, 0, empty, register=max_signals)
        if status != SignalStatus.WRITTEN:
            return status, count
        calls = []
        for j in range(layout.partitions):
            lo, hi = layout.partition_bounds(j)
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                piece = data[a - start : b - start]
                sub = layout.partition(j)
                calls.append((j, write_signal(conn, sub, uid, name, a - lo, piece, register=0)))
        got = await all_parts(layout, calls)
        if any(st == SignalStatus.GONE for st, _ in got):
            return SignalStatus.GONE, 0
        return SignalStatus.WRITTEN, count

    async def read_signal(
        self, layout: RunLayout, uid: str, name: str, start: int, stop: int
    ) -> np.ndarray:
        """Values [start, stop) of signal ``name`` (float32, NaN where never written); a
        partitioned run: each partition's piece, concurrently, concatenated."""
        if layout.partitions == 1:
            return await read_signal(self.connection, layout, uid, name, start, stop)

        async def part(sub: RunLayout, lo: int, hi: int) -> np.ndarray:
            return await read_signal(self.connection, sub, uid, name, lo, hi)

        parts = await self._per_partition(layout, start, stop, part)
        return np.concatenate(parts) if parts else np.empty(0, dtype="<f4")

    async def signal_names(self, layout: RunLayout) -> list[str]:
        """The run's signal names (registered on its own meta, partitioned or not)."""
        return await signal_names(self.connection, layout)

    # -- reports --------------------------------------------------------------------------
    async def gather(
        self,
        layout: RunLayout,
        uid: str,
        report_ids: str | Sequence[str],
        indices: np.ndarray,
        *,
        sizes: Sequence[int] | None = None,
    ) -> Gathered:
        """Read the records (and Exp3 inclusion) of these samples, unless one of the
        reports was already applied (``SlotStore.gather``). ``sizes``: samples per report
        (needed for a partitioned run with several reports; :meth:`_gather_parts`)."""
        if layout.partitions == 1:
            return await self.slot.gather(layout, uid, report_ids, indices)
        ids = [report_ids] if isinstance(report_ids, str) else list(report_ids)
        return await self._gather_parts(layout, uid, ids, indices, sizes)

    async def _gather_parts(
        self,
        layout: RunLayout,
        uid: str,
        ids: list[str],
        indices: np.ndarray,
        sizes: Sequence[int] | None,
    ) -> Gathered:
        """Gather each partition's part (its samples, the ids of the reports with samples
        there) concurrently. A report is a DUPLICATE only when every partition it touches
        has its marker; a report applied on some of its partitions only (a partial apply:
        the process died between parts) is read whole, and the scatter applies the parts
        still missing."""
        sizes = report_sizes(ids, indices, sizes)
        idx = np.asarray(indices, dtype=np.int64)
        parts, _homes = layout.split(idx, sizes)

        async def one(j: int, pos: np.ndarray, reps: list[int]) -> tuple[Gathered, set[int]]:
            sub = layout.partition(j)
            local = idx[pos] - layout.partition_bounds(j)[0]
            g = await self.slot.gather(sub, uid, [ids[r] for r in reps], local)
            if g.status != GatherStatus.DUPLICATE:
                return g, set()
            applied = {reps[d] for d in g.duplicates}
            return await self.slot.gather(sub, uid, [], local), applied

        meta, got = await asyncio.gather(
            self.slot.meta_fields(layout, "uid", "last_epoch"),
            all_parts(layout, [(j, one(j, pos, reps)) for j, pos, reps in parts]),
        )
        last = int(meta[1]) if meta[1] is not None else -1
        if (
            meta[0] is None
            or text(meta[0]) != uid
            or any(g.status == GatherStatus.GONE for g, _ in got)
        ):
            return Gathered(GatherStatus.GONE, last, None, None)
        dups = whole_duplicates(len(ids), parts, [a for _, a in got])
        if dups:
            if self.wait_replicas:  # what count_duplicate's WAIT does on one slot, per partition
                hit = {
                    j for (j, _, reps), _ in zip(parts, got, strict=True) if set(reps) & set(dups)
                }
                replicated = self.connection.replicated
                cmds = [
                    (
                        j,
                        replicated(
                            ["HINCRBY", keys_of(layout).partition(j).counters, "duplicates", 0]
                        ),
                    )
                    for j in sorted(hit)
                ]
                await all_parts(layout, cmds)
            return Gathered(GatherStatus.DUPLICATE, last, None, None, dups)
        rec = np.zeros(idx.shape[0], dtype=layout.rec_dtype)
        for (_, pos, _), (g, _) in zip(parts, got, strict=True):
            assert g.records is not None
            rec[pos] = g.records
        incl = await self.slot.read_inclusion(layout, idx) if layout.exp3 else None
        return Gathered(GatherStatus.OK, last, rec, incl)

    async def claim(self, layout: RunLayout, uid: str, token: str) -> ClaimStatus:
        """Take the run's write lease for ``token`` (CLAIMED), or GONE: the run is gone or
        was re-created. See lua/claim.lua and lua/scatter.lua. A partitioned run: every
        partition (each holds its own lease; a write without it revokes that one's only)."""
        if layout.partitions == 1:
            return await self.slot.claim(layout, uid, token)
        subs = self._partitions(layout)
        calls = [(j, self.slot.claim(sub, uid, token)) for j, sub in enumerate(subs)]
        got = await all_parts(layout, calls)
        ok = all(c == ClaimStatus.CLAIMED for c in got)
        return ClaimStatus.CLAIMED if ok else ClaimStatus.GONE

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
        sizes: Sequence[int] | None = None,
        scored: np.ndarray | None = None,
    ) -> Applied:
        """Apply one or more reports' writes atomically (``SlotStore.scatter``, whose
        docstring is the contract). A partitioned run is applied per partition, atomically
        on each: see :meth:`_scatter_parts` (``sizes``: samples per report; ``scored``: the
        (S,) mask of scored samples, for the per-partition counters)."""
        if layout.partitions == 1:
            return await self.slot.scatter(
                layout,
                uid,
                report_id,
                now=now,
                indices=indices,
                expected=expected,
                write=write,
                records=records,
                scores=scores,
                losses=losses,
                counters=counters,
                token=token,
            )
        ids = [report_id] if isinstance(report_id, str) else list(report_id)
        arrays = (indices, expected, write, records, scores, losses)
        return await self._scatter_parts(layout, uid, ids, now, token, arrays, sizes, scored)

    async def _scatter_parts(
        self,
        layout: RunLayout,
        uid: str,
        ids: list[str],
        now: float,
        token: str,
        arrays: tuple[np.ndarray, ...],
        sizes: Sequence[int] | None,
        scored: np.ndarray | None,
    ) -> Applied:
        """Apply a group of reports on a partitioned run: one scatter.lua per partition
        touched (concurrently), each atomic on its partition, with the SAME report ids as
        dedup markers on each. A partition that finds some of its reports' markers (their
        part there was applied before: a retry after a partial apply) drops their samples
        and applies the rest. Counters go to the partition of the samples; ``reports`` (and
        a whole duplicate's ``duplicates``) once per report, on its home partition (that of
        its first sample).

        Returns: GONE if any partition is gone; CONFLICT (positions over all the samples,
        their current records) if any partition conflicted: the other partitions' parts
        may be applied, and the caller's re-send finds them applied there; otherwise
        applied (LEASED only if every part written was), with ``duplicates`` the reports
        found applied on every partition they touch (all of them: DUPLICATE) and
        ``skipped`` the samples left unwritten as parts applied before. ``arrays``:
        :meth:`scatter`'s (indices, expected, write, records, scores, losses)."""
        indices, expected, write, records, scores, losses = arrays
        sizes = report_sizes(ids, indices, sizes)
        idx = np.asarray(indices, dtype=np.int64)
        write = np.asarray(write, dtype=bool)
        sc_mask = np.zeros(idx.shape[0], bool) if scored is None else np.asarray(scored, bool)
        parts, homes = layout.split(idx, sizes)
        rep_of = np.repeat(np.arange(len(ids)), np.asarray(sizes, dtype=np.int64))
        wpos = np.cumsum(write) - 1  # row of each written sample in records/scores/losses
        first = write & (expected["visits"] == 0)

        async def one(j: int, pos: np.ndarray, reps: list[int]) -> tuple[Applied, set[int]]:
            sub = layout.partition(j)
            lo = layout.partition_bounds(j)[0]
            live, done = list(reps), set[int]()
            while live:
                p = pos if len(live) == len(reps) else pos[np.isin(rep_of[pos], live)]
                w = write[p]
                rows = wpos[p[w]]
                res = await self.slot.scatter(
                    sub,
                    uid,
                    [ids[r] for r in live],
                    now=now,
                    indices=idx[p] - lo,
                    expected=expected[p],
                    write=w,
                    records=records[rows],
                    scores=scores[rows],
                    losses=losses[rows],
                    counters=(
                        int(np.count_nonzero(homes[live] == j)),
                        int(p.shape[0]),
                        int(np.count_nonzero(sc_mask[p])),
                        int(np.count_nonzero(~w)),
                        int(np.count_nonzero(first[p])),
                    ),
                    token=token,
                    count_duplicates=False,
                )
                if res.status != ScatterStatus.DUPLICATE:
                    if res.status == ScatterStatus.CONFLICT:  # positions over all the samples
                        res = Applied(
                            res.status, tuple(int(p[c]) for c in res.conflicts), res.current
                        )
                    return res, done
                done |= {live[d] for d in res.duplicates}
                live = [r for r in live if r not in done]
            return Applied(ScatterStatus.DUPLICATE), done

        got = await all_parts(layout, [(j, one(j, pos, reps)) for j, pos, reps in parts])
        if any(a.status == ScatterStatus.GONE for a, _ in got):
            return Applied(ScatterStatus.GONE)
        bad = [a for a, _ in got if a.status == ScatterStatus.CONFLICT]
        if bad:
            current = np.concatenate([a.current for a in bad if a.current is not None])
            return Applied(
                ScatterStatus.CONFLICT, tuple(c for a in bad for c in a.conflicts), current
            )
        dups = whole_duplicates(len(ids), parts, [d for _, d in got])
        if dups:
            await self.slot.count_duplicate(layout, len(dups))
        if len(dups) == len(ids):
            return Applied(ScatterStatus.DUPLICATE, duplicates=dups)
        # a sample is skipped when its report's part on ITS partition was found applied
        skip = np.zeros(idx.shape[0], dtype=bool)
        for (_, pos, _), (_, d) in zip(parts, got, strict=True):
            if d:
                skip[pos[np.isin(rep_of[pos], sorted(d))]] = True
        leased = all(a.status == ScatterStatus.LEASED for a, _ in got if a.status.applied)
        status = ScatterStatus.LEASED if leased and token else ScatterStatus.COMPARED
        return Applied(status, duplicates=dups, skipped=skip if skip.any() else None)


def _satisfies_the_protocol(store: RedisStore) -> storage.Store:
    return store  # mypy checks RedisStore against the engine's Store protocol here
