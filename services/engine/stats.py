"""Scores and statistics of a run: pages of the per-sample state, and summaries."""

from __future__ import annotations

import asyncio

import numpy as np

from docl.services.config import Settings
from docl.services.engine.runs import RunRegistry, RunState
from docl.services.errors import Unprocessable
from docl.services.storage import Store
from docl.wire.models import Histogram, RunCounters, Stats

__all__ = ["ScorePages"]


class ScorePages:
    """The scores and stats routes: pages of the per-sample state, and summaries."""

    def __init__(self, store: Store, settings: Settings, runs: RunRegistry) -> None:
        self.store = store
        self.settings = settings
        self.runs = runs

    def page_limit(self, st: RunState) -> int:
        return max(1, self.settings.max_page_bytes // st.layout.rec_size)

    async def scores(
        self, run_id: str, offset: int, limit: int | None
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(offset, scores float32, visits uint32, lr_sums float64) of samples [offset, offset+limit)."""
        st = await self.runs.state(run_id)
        n = st.config.num_samples
        cap = self.page_limit(st)
        if offset < 0 or offset > n:
            raise Unprocessable(f"offset must be in [0, {n}], got {offset}")
        if limit is not None and limit < 0:
            raise Unprocessable(f"limit must be >= 0, got {limit}")
        if limit is not None and limit > cap:
            raise Unprocessable(
                f"limit {limit} is over this run's page size of {cap} samples "
                f"({st.layout.rec_size} B per record, DOCL_MAX_PAGE_BYTES); page with offset/limit"
            )
        stop = min(n, offset + (cap if limit is None else limit))
        rec = await self.store.read_records(st.layout, offset, stop)
        seen = rec["visits"] > 0
        scores = np.where(seen, rec["score"], np.float32(np.nan)).astype("<f4")
        lrs = np.where(seen, rec["lr_sum"], np.nan)
        return offset, scores, rec["visits"].astype("<u4"), lrs

    async def stats(self, run_id: str) -> Stats:
        st, meta = await self.runs.checked_state(run_id)
        n = st.config.num_samples
        sc = await self.store.current_scores(st.layout)
        drawn = await self.store.read_column(st.layout, "drawn", 0, n)
        counters = await self.store.counters(st.layout)
        return await asyncio.to_thread(_stats, st, meta, sc, drawn, counters)


def _stats(
    st: RunState, meta: dict[str, str], sc: np.ndarray, drawn: np.ndarray, counters: dict[str, int]
) -> Stats:
    vals = sc[~np.isnan(sc)].astype(np.float64)
    qs = {"min": 0.0, "p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}
    if vals.size:
        qv = np.quantile(vals, list(qs.values()))
        quantiles: dict[str, float | None] = {k: float(v) for k, v in zip(qs, qv, strict=True)}
        counts, edges = np.histogram(vals, bins=20)
        hist = Histogram(edges=[float(x) for x in edges], counts=[int(x) for x in counts])
        mean: float | None = float(vals.mean())
        std: float | None = float(vals.std())
    else:
        quantiles = dict.fromkeys(qs)
        hist = Histogram(edges=[], counts=[])
        mean = std = None
    sel = np.bincount(drawn.astype(np.int64))
    selection = Histogram(
        edges=[float(x) for x in range(sel.shape[0] + 1)], counts=[int(x) for x in sel]
    )
    reported = counters.get("samples_reported", 0)
    skipped = counters.get("samples_skipped", 0)
    return Stats(
        run_id=st.run_id,
        num_samples=st.config.num_samples,
        scored=int(vals.size),
        visited=counters.get("visited", 0),
        visits_total=reported - skipped,
        quantiles=quantiles,
        mean=mean,
        std=std,
        histogram=hist,
        selection=selection,
        epochs_drawn=int(meta.get("last_epoch", "-1")) + 1,
        counters=RunCounters.model_validate(counters),
    )
