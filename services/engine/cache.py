"""This process's copy of each run's per-sample records (:class:`RecordCache`), and
the write lease that lets a scatter skip its compare."""

from __future__ import annotations

import asyncio
import uuid

import numpy as np

from docl.services.engine.runs import RunStage, RunState
from docl.services.layout import RunLayout
from docl.services.storage import ClaimStatus
from docl.wire.retry import ConstantBackoff

__all__ = ["CacheStage", "RecordCache"]

#: How often a report waits to see whether another report of this process has
#: released its samples (rare: two reports of one sample at once; no limit).
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


class CacheStage(RunStage):
    """Which runs get a record cache (within ``DOCL_RECORD_CACHE_BYTES``), and the lease."""

    def _cache_for(self, st: RunState) -> RecordCache | None:
        """This process's copy of the run's records, if the run qualifies (see RecordCache)."""
        c = self._caches.get(st.run_id)
        if c is not None and c.uid == st.uid:
            return c if c.enabled else None
        if c is not None:  # a re-created run: forget the old incarnation
            self._cache_bytes -= c.nbytes
            del self._caches[st.run_id]
        if st.layout.exp3:  # Exp3 reads the inclusion column, which every draw rewrites
            return None
        need = st.layout.num_samples * (st.layout.rec_size + 2)
        if self._cache_bytes + need > self.settings.record_cache_bytes:
            return None
        c = RecordCache(st.uid, st.layout, owner=self._owner, resets=self.store.resets)
        self._caches[st.run_id] = c
        self._cache_bytes += need
        return c

    def _forget(self, cache: RecordCache | None) -> None:
        """Start ``cache`` over (a new generation, whose lease is claimed anew): when the
        lease was found revoked, and after a write whose outcome it did not see — an
        error after the script was sent (503 NotReplicated, a timeout, a lost connection,
        a cancelled request: the script may still land later, so the old token must not
        vouch for anything). The next report claims the lease anew (or compares, while
        another report holds rows) and reads its samples from Redis (docs/architecture.md,
        "The write lease"). A
        report merely found applied forgets its own rows instead (:meth:`RecordCache.forget`)."""
        if cache is not None:
            cache.clear(self.store.resets)

    async def _acquire(self, st: RunState, cache: RecordCache, idx: np.ndarray) -> None:
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
