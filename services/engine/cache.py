"""This process's copy of each run's per-sample records (:class:`RecordCache`), the
write lease that lets a scatter skip its compare, and :class:`RecordCaches`, which
owns every run's copy: which runs get one, the lease claim, and what each outcome of
a report does to the copy."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import numpy as np

from docl.services.config import Settings
from docl.services.engine.runs import RunState
from docl.services.layout import RunLayout
from docl.services.storage import ClaimStatus, Store
from docl.wire.retry import ConstantBackoff

__all__ = ["RecordCache", "RecordCaches", "Rows"]

#: How long a report waits before looking again when another report of this process is
#: applying one of its samples, or the cache's lease claim is in flight (rare; no limit).
BUSY_BACKOFF = ConstantBackoff(0.0005)


class RecordCache:
    """This process's copy of a run's per-sample records, to skip the reads of a report.

    Rows start unknown and are filled by gathers and by our own successful writes.

    **The write lease.** A cache claims the run (``store.claim``: its token, unique
    to this process and to this generation of the copy, goes into the run's meta)
    while it is empty, and fills only afterwards. While the token is still the
    run's ``writer``, nobody else wrote a record, so the copy IS the stored state:
    the scatter skips its per-sample compare (one ``redis.call`` per sample instead
    of two). Any write without the lease revokes it; the next scatter of this
    process then compares every sample (as without a cache), finds the lease gone,
    and the copy starts over (:meth:`clear`: a new generation, a new claim). Two
    reports of the same sample are never computed at once in one process (``busy``:
    the second waits for the first), so our own concurrent writes cannot race
    each other under the lease either.

    Without the lease the cache is still an optimisation only: the scatter compares
    every sample against Redis, so a stale row (another server process wrote it,
    Redis lost a write in a crash) costs one retry with the current rows, never a
    wrong score. When several processes write the same run (``--workers N``,
    replicas) leases get revoked and copies go stale often; after ``MIN_REPORTS``
    reports with more than ``MAX_CONFLICT_RATE`` of them conflicting (a revoked
    lease counts), the cache switches itself off for that run and every report
    reads from Redis and is compared.
    """

    MIN_REPORTS = 64
    MAX_CONFLICT_RATE = 0.05

    def __init__(self, uid: str, layout: RunLayout, *, owner: str = "", resets: int = 0) -> None:
        self.uid = uid
        n = layout.num_samples
        self.rec = np.zeros(n, dtype=layout.rec_dtype)  # calloc: pages appear as touched
        # the same memory as rows of 8-byte words: numpy copies those ~2x faster than
        # records of a structured dtype (records are padded to a multiple of 8 bytes)
        self._words = self.rec.view(np.uint64).reshape(n, layout.rec_size // 8)
        self._dtype = layout.rec_dtype
        self.known = np.zeros(n, dtype=bool)
        self.busy = np.zeros(n, dtype=bool)  # samples of a report being applied right now
        self.nbytes = n * (layout.rec_size + 2)
        self.last_epoch = -1
        self.reports = 0
        self.conflicts = 0
        self.enabled = True
        self.owner = owner or uuid.uuid4().hex
        self.gen = 0  # generation of the copy: bumped by clear()
        self.claimed = -1  # the generation whose lease claim completed
        self.claiming = False
        self.resets = resets  # the store's connection-failure count this generation began at

    @property
    def token(self) -> str:
        """This generation's lease token."""
        return f"{self.owner}:{self.gen}"

    @property
    def leased(self) -> bool:
        return self.claimed == self.gen

    def clear(self, resets: int) -> None:
        """Forget every row: a new generation, which must claim the lease again."""
        self.known[:] = False
        self.gen += 1
        self.resets = resets
        self.last_epoch = -1

    def forget(self, idx: np.ndarray) -> None:
        """Forget the rows at ``idx`` (read from Redis next time). The lease stands: a row
        read after this is the stored state, whoever wrote it under our token."""
        self.known[idx] = False

    def get(self, idx: np.ndarray) -> np.ndarray:
        """A copy of the rows at ``idx`` (records)."""
        return self._words[idx].view(self._dtype).reshape(-1)

    def put(self, idx: np.ndarray, rows: np.ndarray) -> None:
        r = np.ascontiguousarray(rows, dtype=self._dtype)
        self._words[idx] = r.view(np.uint64).reshape(r.shape[0], self._words.shape[1])
        self.known[idx] = True

    def note(self, *, conflict: bool) -> None:
        self.reports += 1
        self.conflicts += conflict
        if (
            self.reports >= self.MIN_REPORTS
            and self.conflicts > self.MAX_CONFLICT_RATE * self.reports
        ):
            self.enabled = False


@dataclass(frozen=True)
class Rows:
    """A group's records as read, and what vouches for them: the lease ``token`` to send
    with the scatter ("" = none: the scatter compares every sample) and the cache
    generation ``gen`` they were taken from (-1: read from Redis, no cache). Token,
    generation and rows are taken together (no await in between), so what the lease
    vouches for is exactly this copy."""

    rec: np.ndarray
    inclusion: np.ndarray | None = None  # the Exp3 inclusion column's values (gathers only)
    token: str = ""
    gen: int = -1


class RecordCaches:
    """Every run's :class:`RecordCache` in this process, within ``DOCL_RECORD_CACHE_BYTES``,
    and the one place that changes them. The report path asks it for a run's cache
    (:meth:`for_run`), holds samples (:meth:`acquire` / :meth:`release`) and tells it
    each outcome of a scatter (:meth:`wrote`, :meth:`found_applied`, :meth:`conflicted`,
    :meth:`restart`); the run registry's delete drops a run's copy (:meth:`drop`)."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._caches: dict[str, RecordCache] = {}
        self._bytes = 0
        self._owner = uuid.uuid4().hex  # this process's part of every lease token

    def get(self, run_id: str) -> RecordCache | None:
        """The run's copy as it is now (enabled or not), if it has one."""
        return self._caches.get(run_id)

    def for_run(self, st: RunState) -> RecordCache | None:
        """This process's copy of the run's records, if the run qualifies (see RecordCache)."""
        c = self._caches.get(st.run_id)
        if c is not None and c.uid == st.uid:
            return c if c.enabled else None
        if c is not None:  # a re-created run: forget the old incarnation
            self.drop(st.run_id)
        if st.layout.exp3:  # Exp3 reads the inclusion column, which every draw rewrites
            return None
        need = st.layout.num_samples * (st.layout.rec_size + 2)
        if self._bytes + need > self.settings.record_cache_bytes:
            return None
        c = RecordCache(st.uid, st.layout, owner=self._owner, resets=self.store.resets)
        self._caches[st.run_id] = c
        self._bytes += c.nbytes
        return c

    def drop(self, run_id: str) -> None:
        """Forget the run's copy (the run was deleted, or re-created)."""
        c = self._caches.pop(run_id, None)
        if c is not None:
            self._bytes -= c.nbytes

    def restart(self, cache: RecordCache | None) -> None:
        """Start ``cache`` over (a new generation, whose lease is claimed anew): when the
        lease was found revoked, and after a write whose outcome it did not see — an
        error after the script was sent (503 NotReplicated, a timeout, a lost connection,
        a cancelled request: the script may still land later, so the old token must not
        vouch for anything). The next report claims the lease anew (or compares, while
        another report holds rows) and reads its samples from Redis (docs/architecture.md,
        "The write lease"). A report merely found applied forgets its own rows instead
        (:meth:`found_applied`)."""
        if cache is not None:
            cache.clear(self.store.resets)

    async def acquire(self, st: RunState, cache: RecordCache, idx: np.ndarray) -> None:
        """Mark ``idx`` busy in ``cache`` once no other report of this process is applying
        one of them, after making sure the cache holds the run's write lease (claimed
        while its generation is empty, see RecordCache). The claim fails only when the
        run was re-created: the report then finds out at its gather."""
        while True:
            if self.store.resets != cache.resets:  # Redis restarted: trust no copy
                cache.clear(self.store.resets)
            if cache.busy[idx].any() or cache.claiming:
                await asyncio.sleep(BUSY_BACKOFF.compute(0))  # rare: two reports of one sample
                continue
            if cache.claimed != cache.gen and not cache.known.any():
                gen = cache.gen
                cache.claiming = True
                try:
                    ok = (
                        await self.store.claim(st.layout, st.uid, cache.token)
                        == ClaimStatus.CLAIMED
                    )
                finally:
                    cache.claiming = False
                if ok and cache.gen == gen:
                    cache.claimed = gen
                if not ok:
                    cache.busy[idx] = True
                    return
                continue
            cache.busy[idx] = True
            return

    @staticmethod
    def release(cache: RecordCache, idx: np.ndarray) -> None:
        """The report holding ``idx`` (:meth:`acquire`) is done with them."""
        cache.busy[idx] = False

    @staticmethod
    def rows(cache: RecordCache, idx: np.ndarray) -> tuple[Rows, np.ndarray]:
        """The copy's rows at ``idx`` with the lease token and generation that vouch for
        them, and the positions in ``idx`` the copy does not know (to gather)."""
        token = cache.token if cache.leased else ""
        rows = Rows(cache.get(idx), None, token, cache.gen)
        return rows, np.flatnonzero(~cache.known[idx])

    @staticmethod
    def gathered(
        cache: RecordCache, gen: int, idx: np.ndarray, records: np.ndarray, last_epoch: int
    ) -> None:
        """Rows read from Redis for generation ``gen`` (kept if it is still current)."""
        if cache.gen == gen:
            cache.last_epoch = max(cache.last_epoch, last_epoch)
            cache.put(idx, records)

    def wrote(
        self,
        cache: RecordCache | None,
        rows: Rows,
        idx: np.ndarray,
        write: np.ndarray,
        new: np.ndarray,
        *,
        leased: bool,
        skipped: np.ndarray | None,
    ) -> None:
        """The scatter applied the group read as ``rows``: it wrote ``new``, the records of
        ``idx[write]``; ``leased``: under the token sent; ``skipped`` (a partitioned run): the
        samples of ``idx`` whose part had been applied before."""
        if cache is None:
            return
        revoked = rows.token != "" and not leased
        if cache.gen == rows.gen:
            if revoked:  # someone else wrote: this copy may be stale anywhere
                self.restart(cache)
            elif skipped is not None:  # a partitioned run's parts applied before
                # by a call whose outcome this copy may never have seen (a re-send after
                # an error, the Redis client's own retry): those rows are read again; the
                # others are what was just written
                keep = ~skipped[write]
                cache.put(idx[write][keep], new[keep])
                cache.forget(idx[skipped])
            else:
                cache.put(idx[write], new)
        cache.note(conflict=revoked)

    @staticmethod
    def found_applied(cache: RecordCache | None, gen: int, idx: np.ndarray) -> None:
        """Reports of ``idx`` were found applied before, by whom and when this copy cannot
        tell (our own call whose reply was lost and re-sent by the Redis client, say):
        their rows are read again; the lease stands."""
        if cache is not None and cache.gen == gen:
            cache.forget(idx)

    def conflicted(
        self, cache: RecordCache | None, rows: Rows, idx: np.ndarray, current: np.ndarray
    ) -> None:
        """The scatter found ``idx`` changed since ``rows`` were read; ``current`` is
        their stored state now."""
        if cache is None:
            return
        cache.note(conflict=True)
        if cache.gen == rows.gen:
            if rows.token != "":  # compared under our token: the lease was revoked
                self.restart(cache)
            else:
                cache.put(idx, current)
