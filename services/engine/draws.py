"""Epochs (:class:`EpochDraws`): draw each epoch once (scores → sampling → optional
diversity pruning), store it, re-read it, and serve each rank's shard of its indices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from docl.services import diversity, methods, plan, sampling
from docl.services.config import Settings
from docl.services.engine.runs import RunRegistry, RunState, plan_row
from docl.services.errors import Conflict, Gone, NotFound, ServiceUnavailable, Unprocessable
from docl.services.layout import DRAWN_MAX
from docl.services.seeds import epoch_seed
from docl.services.storage import CommitStatus, DrawInputs, Store
from docl.wire.models import Epoch

__all__ = ["DrawTiming", "EpochDraws", "Pruned", "StoredEpoch"]

#: Tries of a draw whose commit found the run changed (re-created, drawn meanwhile,
#: its temporary keys expired), each from a fresh look at the run; no wait between
#: them (nothing to wait for: the next look sees the change), then a 503.
DRAW_ATTEMPTS = 3


def _mask(n: int, idx: np.ndarray) -> np.ndarray:
    """(n,) uint8: 1 at ``idx``."""
    if idx.shape[0] == n:
        return np.ones(n, dtype=np.uint8)  # a draw of every sample (uniform epochs)
    hit = np.zeros(n, dtype=np.uint8)
    hit[idx] = 1
    return hit


class DrawTiming(BaseModel):
    """Seconds a draw spent reading its snapshot and computing (``docl bench service``)."""

    model_config = ConfigDict(frozen=True)

    read_s: float
    draw_s: float


class Pruned(NamedTuple):
    """A draw pruned for diversity: how many samples the method drew, and the λ used."""

    drawn: int
    lam: float


class StoredEpoch(BaseModel):
    """A drawn epoch as the run's ``epochs`` hash keeps it (JSON, one per epoch); what
    the wire sends is :class:`docl.wire.models.Epoch`, built from this and the plan.
    Keys another version wrote are ignored; ``size`` is absent only in entries older
    than the field (the plan's size then)."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    epoch: int
    seed: int
    size: int | None = None
    weighted: bool = False  # its indices carry per-sample loss weights
    drawn_at: float = 0.0  # unix seconds
    timing: DrawTiming | None = None
    drawn: int | None = None  # diversity pruning: the samples drawn before it
    lam: float | None = Field(None, alias="lambda")  # diversity pruning: its λ

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def size_or(self, spec: plan.EpochSpec) -> int:
        """How many indices the epoch stored (the plan's size for an entry without it)."""
        return int(spec.size) if self.size is None else self.size


class EpochDraws:
    """The epoch routes: draws (committed once, first wins), epochs and index shards."""

    def __init__(self, store: Store, settings: Settings, runs: RunRegistry) -> None:
        self.store = store
        self.settings = settings
        self.runs = runs

    def _epoch_model(self, st: RunState, epoch: int, doc: StoredEpoch) -> Epoch:
        """The drawn epoch: its plan row, or (a ``drawn``-size method's selection epoch
        that kept fewer samples than the plan reserved) the drawn size, its steps and
        the plan's learning rates resampled onto them (plan.drawn_epoch_lr)."""
        spec = st.plan[epoch]
        row = plan_row(spec)
        lr = np.asarray(spec.lr, dtype=np.float64)
        size = doc.size_or(spec)
        bs = st.config.params.batch_size
        if size < spec.size and methods.get_method(st.config.method).size == "drawn":
            steps = max(1, -(-size // bs))
            lr = plan.drawn_epoch_lr(spec, steps)
            row.update(size=size, steps=steps, lr_start=float(lr[0]), lr_end=float(lr[-1]))
        return Epoch(
            **row,
            batch_size=bs,
            lr=[float(x) for x in lr],
            seed=doc.seed,
            weighted=doc.weighted,
        )

    def _check_epoch_number(self, st: RunState, epoch: int) -> None:
        if epoch < 0:
            raise Unprocessable(f"epoch must be >= 0, got {epoch}")
        if epoch >= st.num_epochs:
            raise Unprocessable(
                f"epoch {epoch} is beyond the plan: run {st.run_id!r} has {st.num_epochs} epochs "
                f"(0..{st.num_epochs - 1})"
            )

    async def _stored(self, run_id: str, epoch: int) -> tuple[RunState, StoredEpoch]:
        """The run's state and its stored epoch ``epoch`` (422 beyond the plan, 404 if
        not drawn: looked up again on a fresh state, the run may have been re-created)."""
        st = await self.runs.state(run_id)
        self._check_epoch_number(st, epoch)
        raw = await self.store.epoch_json(st.layout, epoch)
        if raw is None:
            st = await self.runs.state(run_id, fresh=True)  # maybe re-created meanwhile
            raw = await self.store.epoch_json(st.layout, epoch)
            if raw is None:
                raise NotFound(f"epoch {epoch} of run {run_id!r} has not been drawn yet")
        return st, StoredEpoch.model_validate_json(raw)

    async def get_epoch(self, run_id: str, epoch: int) -> Epoch:
        st, doc = await self._stored(run_id, epoch)
        return self._epoch_model(st, epoch, doc)

    async def draw_epoch(self, run_id: str, epoch: int | None) -> Epoch:
        """Draw epoch ``epoch`` (default: the next one) once; later calls return the stored draw."""
        for _ in range(DRAW_ATTEMPTS):
            st, meta = await self.runs.checked_state(run_id)
            last = int(meta.get("last_epoch", "-1"))
            e = last + 1 if epoch is None else epoch
            if epoch is None and e >= st.num_epochs:
                raise Conflict(
                    f"every epoch of run {run_id!r} has been drawn ({st.num_epochs} in its plan)"
                )
            self._check_epoch_number(st, e)
            if e <= last:
                return await self.get_epoch(run_id, e)
            if e > last + 1:
                nxt = f"epoch {last + 1}" if last + 1 < st.num_epochs else "none"
                raise Conflict(
                    f"epoch {e} cannot be drawn before epoch {last + 1}: epochs are drawn in order "
                    f"(last drawn: {last if last >= 0 else 'none'}; next: {nxt})"
                )
            status = await self._draw_and_commit(st, e)
            if status.stored:  # we or a concurrent caller stored it: both read the stored draw
                return await self.get_epoch(run_id, e)
            # GONE: the run was re-created under us; OUT_OF_ORDER: someone drew e meanwhile
            # out of our snapshot's order; EXPIRED: our temporary keys expired. Look again.
            if status == CommitStatus.GONE:
                self.runs.forget(run_id)
        raise ServiceUnavailable(
            f"could not draw epoch {epoch} of run {run_id!r}: the run kept changing"
        )

    async def _draw_and_commit(self, st: RunState, e: int) -> CommitStatus:
        spec = st.plan[e]
        p = st.config.params
        t0 = time.perf_counter()
        select = spec.phase == "select"
        # Always the whole snapshot (losses too when the run keeps them): the draw
        # folds the score log into it, and compacts the log with it afterwards.
        snap = await self.store.draw_inputs(st.layout, losses=st.layout.loss_column)
        if snap.uid != st.uid:
            return CommitStatus.GONE
        if snap.last_epoch != e - 1:
            return CommitStatus.OUT_OF_ORDER if snap.last_epoch < e - 1 else CommitStatus.EXISTS
        records = None
        if select and spec.prune:
            records = await self.store.read_records(st.layout, 0, st.layout.num_samples)
        signals = await self.draw_signals(st) if select else {}
        t_read = time.perf_counter()
        seed = epoch_seed(p.seed, e)
        # Every O(n) numpy step runs in a worker thread: the event loop keeps serving
        # reports meanwhile (numpy releases the GIL for most of it).
        indices, weights, drawn, incl_col, pruned = await asyncio.to_thread(
            self.draw_counted, st, spec, seed, snap, records, signals
        )
        t_draw = time.perf_counter()
        drop = None
        old = e - self.settings.keep_epochs
        if old >= 0:
            size = int(st.plan[old].size)
            if methods.get_method(st.config.method).size == "drawn":  # the draw chose it
                raw = await self.store.epoch_json(st.layout, old)
                if raw is not None:
                    size = StoredEpoch.model_validate_json(raw).size_or(st.plan[old])
            drop = (old, size)
        doc = StoredEpoch(
            epoch=e,
            seed=seed,
            size=int(indices.shape[0]),
            weighted=weights is not None,
            drawn_at=time.time(),
            timing=DrawTiming(read_s=round(t_read - t0, 4), draw_s=round(t_draw - t_read, 4)),
            drawn=None if pruned is None else pruned.drawn,
            lam=None if pruned is None else pruned.lam,
        )
        status = await self.store.commit_epoch(
            st.layout, st.uid, e, doc.to_json(), indices, drawn, incl_col, drop, weights=weights
        )
        if status.stored and snap.log_count:
            await self.store.compact(st.layout, st.uid, snap)
        from docl.services import metrics

        metrics.DRAW_SECONDS.labels(phase=spec.phase).observe(time.perf_counter() - t0)
        return status

    async def draw_signals(self, st: RunState) -> dict[str, np.ndarray]:
        """The signal columns an epoch-level method declares (``SelectionMethod.signals``),
        read whole for a selection draw; 409 naming the first one not uploaded. A
        step-level method's signals are its step rule's (the worker supplies them): none
        here. Read outside the draw's snapshot: a signal is uploaded once, before the
        draws that need it."""
        method = methods.get_method(st.config.method)
        if method.step is not None or not method.signals:
            return {}
        have = set(await self.store.signal_names(st.layout))
        for name in method.signals:
            if name not in have:
                raise Conflict(
                    f"method {method.name!r} draws its selection epochs from the signal "
                    f"{name!r}, which run {st.run_id!r} does not have yet: upload it first "
                    f"(PUT /v1/runs/{st.run_id}/signals/{name}, {st.config.num_samples} "
                    "little-endian float32; ScoreClient.put_signal)"
                )
        n = st.layout.num_samples
        return {
            name: await self.store.read_signal(st.layout, st.uid, name, 0, n)
            for name in method.signals
        }

    def draw_counted(
        self,
        st: RunState,
        spec: plan.EpochSpec,
        seed: int,
        snap: DrawInputs,
        records: np.ndarray | None,
        signals: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None, Pruned | None]:
        """The draw (indices, per-sample weights or None) plus the columns it updates:
        selection counts and Exp3 inclusion, and its diversity pruning (None: none).
        ``signals``: the method's declared signal columns (:meth:`draw_signals`)."""
        indices, inclusion, weights, pruned, hit = self._draw(
            st, spec, seed, snap.scores, snap.losses, records, signals
        )
        # Selection counts (uint16, saturating): one scatter of bytes into a mask and
        # a sequential add is ~2x faster than drawn[indices] += 1 at n = 10M.
        if hit is None:
            hit = np.zeros(st.layout.num_samples, dtype=np.uint8)
            hit[indices] = 1
        drawn = snap.drawn + hit
        if drawn.size and int(snap.drawn.max()) >= DRAWN_MAX:
            drawn[(snap.drawn == DRAWN_MAX)] = DRAWN_MAX  # no wrap-around past the cap
        incl_col = None
        if st.layout.exp3:
            base = snap.inclusion
            incl_col = base.copy() if base is not None else np.zeros(st.layout.num_samples, "<f4")
            incl_col[indices] = inclusion
        return indices, weights, drawn, incl_col, pruned

    def _draw(
        self,
        st: RunState,
        spec: plan.EpochSpec,
        seed: int,
        scores: np.ndarray | None,
        losses: np.ndarray | None,
        records: np.ndarray | None,
        signals: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, Pruned | None, np.ndarray | None]:
        """The pure part of a draw: (indices in training order, inclusion probabilities,
        per-sample weights or None, its diversity pruning or None, the (n,) uint8 mask of
        drawn samples or None).

        The selection is counted before it is shuffled (``methods.draw(shuffle=False)``,
        then ``shuffle_draw`` with the same Generator: what ``methods.draw`` would give):
        marking ~sorted positions is several times faster than random ones at n = 10M."""
        n = st.config.num_samples
        p = st.config.params
        rng = np.random.default_rng(seed)
        size = int(spec.size)
        pruned: Pruned | None = None
        if spec.phase != "select":
            sel = sampling.uniform_epoch(n, rng, size=size, shuffle=False)
            order = sampling.random_order(sel, rng)
            incl = np.full(order.shape[0], size / n, dtype=np.float32)
            return np.ascontiguousarray(order, dtype=np.int64), incl, None, None, _mask(n, sel)
        k = int(spec.draw_size) if spec.draw_size > 0 else size
        # no score column (a method whose signal is not the score): a read-only NaN view
        sc = scores if scores is not None else np.broadcast_to(np.float32(np.nan), (n,))
        prune = records is not None and spec.prune and size < k
        method = methods.get_method(st.config.method)
        d = methods.draw(
            method.name,
            k=k,
            scores=sc,
            losses=losses,
            rng=rng,
            tau=p.tau,
            normalize=p.normalize,
            exp3=p.exp3,
            episode=int(spec.episode),
            epoch=int(spec.epoch),
            num_epochs=st.num_epochs,
            shuffle=False,
            method_params=st.config.method_params,
            signals=signals,
        )
        # the engine always shuffles the drawn subset (no method shuffles itself)
        hit = None if prune else _mask(n, d.indices)
        d = sampling.shuffle_draw(d, rng)
        idx = np.asarray(d.indices, dtype=np.int64)
        incl = (
            np.asarray(d.inclusion, dtype=np.float32)
            if d.inclusion is not None
            else np.full(idx.shape[0], idx.shape[0] / n, dtype=np.float32)
        )
        w = None if d.weights is None else np.asarray(d.weights, dtype=np.float32)
        if records is not None and spec.prune and size < idx.shape[0]:
            # Diversity (Eq. 15) on the stored outputs g_i of the drawn samples; the
            # modular part is the method's standardized signal (mcl: the loss).
            feats = records["g"][idx].astype(np.float32)
            base = losses if method.signal == "loss" and losses is not None else sc
            modular = sampling.standardize(np.asarray(base, dtype=np.float32), p.normalize)[idx]
            pos = diversity.facility_location_greedy(
                feats, modular, size, lam=float(spec.lam), rng=rng
            )
            keep = np.zeros(idx.shape[0], dtype=bool)
            keep[np.asarray(pos, dtype=np.int64)] = True
            idx, incl = idx[keep], incl[keep]  # keeps the drawn (shuffled) training order
            w = None if w is None else w[keep]
            pruned = Pruned(int(keep.shape[0]), float(spec.lam))
        w = None if w is None else w[:size]
        return idx[:size], incl[:size], w, pruned, hit if idx.shape[0] <= size else None

    async def indices(
        self, run_id: str, epoch: int, *, rank: int, world: int, offset: int, limit: int | None
    ) -> tuple[bytes, bytes | None, int, int]:
        """(int64 bytes of rank's shard [offset, offset+limit), the float32 bytes of their
        weights or None when the epoch has none, shard length, epoch size)."""
        if world < 1:
            raise Unprocessable(f"world must be >= 1, got {world}")
        if not 0 <= rank < world:
            raise Unprocessable(f"rank must be in [0, world) = [0, {world}), got {rank}")
        if offset < 0:
            raise Unprocessable(f"offset must be >= 0, got {offset}")
        if limit is not None and limit < 0:
            raise Unprocessable(f"limit must be >= 0, got {limit}")
        st, doc = await self._stored(run_id, epoch)
        size = doc.size_or(st.plan[epoch])
        lo, hi = rank * size // world, (rank + 1) * size // world
        start = min(hi, lo + offset)
        stop = hi if limit is None else min(hi, start + limit)
        data = await self.store.read_indices(st.layout, epoch, size, start, stop)
        weights = None
        if data is not None and doc.weighted:
            weights = await self.store.read_weights(st.layout, epoch, size, start, stop)
        if data is None or (doc.weighted and weights is None):
            raise Gone(
                f"the indices of epoch {epoch} were dropped (the server keeps the last "
                f"{self.settings.keep_epochs} epochs' indices; DOCL_KEEP_EPOCHS)"
            )
        return data, weights, hi - lo, size
