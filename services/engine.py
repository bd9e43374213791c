"""What each route does, between the HTTP layer and the store.

The engine validates input, calls the pure math (``scoring``, ``sampling``,
``plan``, ``diversity``) and reads/writes through :class:`~docl.services.store.Store`.
It knows nothing about HTTP except the :mod:`docl.services.errors` it raises, so
the service benchmark can run the same report path in-process, without HTTP,
as the limit the server is compared with.

A small per-process cache keeps each run's config, layout and plan (all
immutable for the life of a run). A run deleted and re-created under the same
id gets a new ``uid``; every script checks the uid it is given, so a stale cache
is detected on the next Redis call and reloaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from docl.client.models import (
    Epoch,
    Histogram,
    Plan,
    PlanEpoch,
    Report,
    ReportAck,
    Run,
    RunCounters,
    RunCreate,
    RunList,
    Stats,
)
from docl.client.wire import ReportArrays
from docl.services import diversity, plan, sampling, scoring
from docl.services.config import Settings
from docl.services.errors import (
    Conflict,
    Gone,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
)
from docl.services.store import DRAWN_MAX, LOSS_METHODS, DrawInputs, RunLayout, Store

__all__ = ["Engine", "RunState", "epoch_seed", "report_arrays_from_json"]

log = logging.getLogger("docl.services")

#: A report whose samples keep being changed by other reports between its gather
#: and its scatter is retried this many times before the client is told to retry.
MAX_REPORT_ATTEMPTS = 8


def epoch_seed(run_seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s draw: a pure function of (run seed, epoch).

    53 bits, so that it survives a round trip through JSON in any language.
    """
    state = np.random.SeedSequence([int(run_seed), int(epoch)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(11))


def _canonical(config: RunCreate) -> str:
    # Without a task_name the JSON is what it was before the field existed (stored runs match).
    exclude = {"run_id"} | ({"task_name"} if config.task_name is None else set())
    return json.dumps(
        config.model_dump(mode="json", exclude=exclude), sort_keys=True, separators=(",", ":")
    )


@dataclass(frozen=True)
class RunState:
    """Everything immutable about one incarnation of a run."""

    run_id: str
    uid: str
    config: RunCreate
    layout: RunLayout
    plan: list[plan.EpochSpec]
    created_at: float
    score_kind: str

    @property
    def num_epochs(self) -> int:
        return len(self.plan)


def _plan_row(spec: plan.EpochSpec) -> dict[str, Any]:
    return plan.plan_epoch(spec).model_dump()


def report_arrays_from_json(body: bytes) -> ReportArrays:
    """Parse a JSON report into the arrays the binary decoder yields (422 when malformed)."""
    try:
        rep = Report.model_validate_json(body)
    except ValidationError as e:
        from docl.services.errors import format_validation_errors

        errs = [{**err, "loc": ("body", *err.get("loc", ()))} for err in e.errors()]
        raise Unprocessable(format_validation_errors(errs)) from None
    b = len(rep.indices)
    rows = {len(r) for r in rep.outputs}
    if len(rep.outputs) != b or len(rows) != 1:
        raise Unprocessable(
            f"outputs must be a B × c matrix with B = {b} rows of equal length, "
            f"got {len(rep.outputs)} rows of lengths {sorted(rows)[:5]}"
        )
    try:
        return _json_arrays(rep, b)
    except OverflowError:
        raise Unprocessable(
            "an index or class id does not fit in a 64-bit integer (indices must be in [0, n))"
        ) from None


def _json_arrays(rep: Report, b: int) -> ReportArrays:
    with np.errstate(over="ignore"):
        outputs = np.asarray(rep.outputs, dtype=np.float32)
        if rep.targets and isinstance(rep.targets[0], list):
            lens = {len(r) for r in rep.targets if isinstance(r, list)}
            if len(rep.targets) != b or len(lens) != 1:
                raise Unprocessable(f"regression targets must be a B × c matrix with B = {b}")
            targets = np.asarray(rep.targets, dtype=np.float32)
        else:
            targets = np.asarray(rep.targets, dtype=np.int64)
        features = None
        if rep.features is not None:
            flens = {len(r) for r in rep.features}
            if len(rep.features) != b or len(flens) != 1 or 0 in flens:
                raise Unprocessable(f"features must be a B × d matrix with B = {b} and d >= 1")
            features = np.asarray(rep.features, dtype=np.float32)
    return ReportArrays(
        report_id=rep.report_id,
        epoch=rep.epoch,
        lr_sum=rep.lr_sum,
        indices=np.asarray(rep.indices, dtype=np.int64),
        outputs=outputs,
        targets=targets,
        features=features,
    )


def _duplicate_positions(idx: np.ndarray) -> tuple[int, int, int] | None:
    """(value, first position, second position) of a repeated index, or None."""
    order = np.argsort(idx, kind="stable")
    s = idx[order]
    rep = np.flatnonzero(s[1:] == s[:-1])
    if rep.size == 0:
        return None
    j = int(rep[0])
    return int(s[j]), int(order[j]), int(order[j + 1])


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


#: Most samples one scatter script call writes: a script blocks Redis while it runs
#: (~2-5 µs per sample here), so a large multi-report request is applied in pieces.
MAX_GROUP_SAMPLES = 4096
#: Most reports one scatter script call applies (Lua's unpack() limit is ~8000 values).
MAX_GROUP_REPORTS = 1024


def _mask(n: int, idx: np.ndarray) -> np.ndarray:
    """(n,) uint8: 1 at ``idx``."""
    if idx.shape[0] == n:
        return np.ones(n, dtype=np.uint8)  # a draw of every sample (uniform epochs)
    hit = np.zeros(n, dtype=np.uint8)
    hit[idx] = 1
    return hit


def report_groups(reps: Sequence[ReportArrays]) -> list[list[int]]:
    """Split a request's reports, in order, into groups applied by one script call each:
    no sample twice in a group (the script compares every sample with the state from
    before the call), at most MAX_GROUP_SAMPLES samples and MAX_GROUP_REPORTS reports."""
    if len(reps) == 1:
        return [[0]]
    sizes = [int(r.indices.shape[0]) for r in reps]
    if sum(sizes) <= MAX_GROUP_SAMPLES and len(reps) <= MAX_GROUP_REPORTS:
        every = np.concatenate([r.indices for r in reps])
        if _duplicate_positions(every) is None:  # the usual case: one group
            return [list(range(len(reps)))]
    groups: list[list[int]] = []
    cur: list[int] = []
    seen: set[int] = set()
    count = 0
    for j, r in enumerate(reps):
        ids = r.indices.tolist()
        if cur and (
            count + sizes[j] > MAX_GROUP_SAMPLES
            or len(cur) >= MAX_GROUP_REPORTS
            or not seen.isdisjoint(ids)
        ):
            groups.append(cur)
            cur, seen, count = [], set(), 0
        cur.append(j)
        seen.update(ids)
        count += sizes[j]
    groups.append(cur)
    return groups


class Engine:
    """The score server's behaviour, one method per route."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._runs: dict[str, RunState] = {}
        self._caches: dict[str, RecordCache] = {}
        self._cache_bytes = 0
        self._owner = uuid.uuid4().hex  # this process's part of every lease token

    # -- run state ---------------------------------------------------------------------------
    def _state_from_meta(self, run_id: str, meta: dict[str, str]) -> RunState:
        config = RunCreate.model_validate_json(meta["config"]).model_copy(update={"run_id": run_id})
        layout = RunLayout.from_json(run_id, meta["layout"])
        return self._build_state(run_id, meta["uid"], config, layout, float(meta["created_at"]))

    def _build_state(
        self, run_id: str, uid: str, config: RunCreate, layout: RunLayout, created_at: float
    ) -> RunState:
        the_plan = plan.build_plan(config)
        return RunState(
            run_id=run_id,
            uid=uid,
            config=config,
            layout=layout,
            plan=the_plan,
            created_at=created_at,
            score_kind=sampling.method_spec(config.method).score,
        )

    async def state(self, run_id: str, *, fresh: bool = False) -> RunState:
        """The run's cached state (``fresh``: re-read its meta from Redis). 404 if unknown."""
        if not fresh:
            st = self._runs.get(run_id)
            if st is not None:
                return st
        meta = await self.store.run_meta(run_id)
        if meta is None:
            self._runs.pop(run_id, None)
            raise NotFound(f"no run {run_id!r}")
        cached = self._runs.get(run_id)
        if cached is not None and cached.uid == meta["uid"]:
            return cached
        st = await asyncio.to_thread(self._state_from_meta, run_id, meta)
        self._runs[run_id] = st
        return st

    async def _checked_state(self, run_id: str) -> tuple[RunState, dict[str, str]]:
        """State and meta read now (for routes that show the run's position)."""
        meta = await self.store.run_meta(run_id)
        if meta is None:
            self._runs.pop(run_id, None)
            raise NotFound(f"no run {run_id!r}")
        cached = self._runs.get(run_id)
        if cached is None or cached.uid != meta["uid"]:
            cached = await asyncio.to_thread(self._state_from_meta, run_id, meta)
            self._runs[run_id] = cached
        return cached, meta

    def _run_model(self, st: RunState, meta: dict[str, str], counters: dict[str, int]) -> Run:
        last = int(meta.get("last_epoch", "-1"))
        return Run(
            run_id=st.run_id,
            num_samples=st.config.num_samples,
            num_outputs=st.config.num_outputs,
            task=st.config.task,
            task_name=st.config.task_name,
            method=st.config.method,
            epochs=st.num_epochs,
            params=st.config.params,
            created_at=st.created_at,
            epochs_drawn=last + 1,
            last_epoch=last if last >= 0 else None,
            total_steps=int(sum(s.steps for s in st.plan)),
            counters=RunCounters(**{k: counters[k] for k in RunCounters.model_fields}),
        )

    # -- runs -----------------------------------------------------------------------------------
    async def create_run(self, body: RunCreate) -> tuple[Run, bool]:
        """Create a run (True) or confirm an identical one exists (False); 409 if it differs."""
        run_id = body.run_id or f"run-{uuid.uuid4().hex[:16]}"
        config = body.model_copy(update={"run_id": run_id})
        if config.method not in sampling.METHODS:
            raise Unprocessable(
                f"unknown method {config.method!r}; known: {', '.join(sampling.METHODS)}"
            )
        layout = RunLayout(
            run_id=run_id,
            num_samples=config.num_samples,
            num_outputs=config.num_outputs,
            output_dtype=config.params.output_dtype,
            chunk_bytes=self.settings.chunk_bytes,
            loss_column=config.method in LOSS_METHODS,
            exp3=config.params.exp3,
        )
        need = layout.memory_bytes(self.settings.keep_epochs)
        if need > self.settings.max_run_bytes:
            raise Unprocessable(
                f"this run would need about {need / 2**30:.1f} GiB of Redis memory "
                f"(n = {config.num_samples}, c = {config.num_outputs}, {layout.rec_size} B per record), "
                f"over this server's limit of {self.settings.max_run_bytes / 2**30:.1f} GiB "
                "(DOCL_MAX_RUN_BYTES); use output_dtype float16 or a smaller run"
            )
        created_at = time.time()
        uid = uuid.uuid4().hex
        try:
            st = await asyncio.to_thread(self._build_state, run_id, uid, config, layout, created_at)
        except ValueError as e:
            raise Unprocessable(f"invalid run config: {e}") from None
        if st.num_epochs == 0:
            raise Unprocessable("the run's plan has no epochs; give epochs >= 1 or a larger budget")
        status, _uid, stored = await self.store.create_run(
            layout, _canonical(config), uid, created_at
        )
        if status == 2:
            raise Conflict(
                f"run {run_id!r} exists with a different config; delete it first or choose another "
                f"run_id (stored: {stored})"
            )
        if status == 0:
            self._runs[run_id] = st
        st, meta = await self._checked_state(run_id)
        counters = await self.store.counters(st.layout)
        return self._run_model(st, meta, counters), status == 0

    async def get_run(self, run_id: str) -> Run:
        st, meta = await self._checked_state(run_id)
        return self._run_model(st, meta, await self.store.counters(st.layout))

    async def list_runs(self) -> RunList:
        ids = await self.store.list_run_ids()
        runs: list[Run] = []
        for rid, (meta, counters) in zip(ids, await self.store.run_metas(ids), strict=True):
            if meta is None:  # deleted meanwhile, or a half-deleted leftover: tidy the index
                await self.store.forget_run_id(rid)
                continue
            cached = self._runs.get(rid)
            if cached is None or cached.uid != meta["uid"]:
                try:
                    cached = await asyncio.to_thread(self._state_from_meta, rid, meta)
                except (ValueError, KeyError) as e:  # written by another version, or by hand
                    log.warning(
                        "run %r has a meta this server cannot read (%s): not listed", rid, e
                    )
                    continue
                self._runs[rid] = cached
            runs.append(self._run_model(cached, meta, counters))
        runs.sort(key=lambda r: r.created_at)
        return RunList(runs=runs)

    async def delete_run(self, run_id: str) -> None:
        meta = await self.store.run_meta(run_id)
        if meta is None:
            self._runs.pop(run_id, None)
            raise NotFound(f"no run {run_id!r}")
        layout = RunLayout.from_json(run_id, meta["layout"])
        await self.store.delete_run(layout)
        self._runs.pop(run_id, None)
        c = self._caches.pop(run_id, None)
        if c is not None:
            self._cache_bytes -= c.nbytes

    # -- plan -----------------------------------------------------------------------------------
    async def get_plan(self, run_id: str) -> Plan:
        st = (await self._checked_state(run_id))[0]
        return Plan(
            run_id=st.run_id,
            num_epochs=st.num_epochs,
            total_steps=int(sum(s.steps for s in st.plan)),
            epochs=[PlanEpoch(**_plan_row(s)) for s in st.plan],
        )

    # -- epochs ---------------------------------------------------------------------------------
    def _epoch_model(self, st: RunState, epoch: int, seed: int) -> Epoch:
        spec = st.plan[epoch]
        return Epoch(
            **_plan_row(spec),
            batch_size=st.config.params.batch_size,
            lr=[float(x) for x in np.asarray(spec.lr, dtype=np.float64)],
            seed=seed,
        )

    def _check_epoch_number(self, st: RunState, epoch: int) -> None:
        if epoch < 0:
            raise Unprocessable(f"epoch must be >= 0, got {epoch}")
        if epoch >= st.num_epochs:
            raise Unprocessable(
                f"epoch {epoch} is beyond the plan: run {st.run_id!r} has {st.num_epochs} epochs "
                f"(0..{st.num_epochs - 1})"
            )

    async def get_epoch(self, run_id: str, epoch: int) -> Epoch:
        st = await self.state(run_id)
        self._check_epoch_number(st, epoch)
        raw = await self.store.epoch_json(st.layout, epoch)
        if raw is None:
            st = await self.state(run_id, fresh=True)  # maybe re-created meanwhile
            raw = await self.store.epoch_json(st.layout, epoch)
            if raw is None:
                raise NotFound(f"epoch {epoch} of run {run_id!r} has not been drawn yet")
        return self._epoch_model(st, epoch, int(json.loads(raw)["seed"]))

    async def draw_epoch(self, run_id: str, epoch: int | None) -> Epoch:
        """Draw epoch ``epoch`` (default: the next one) once; later calls return the stored draw."""
        for _ in range(3):
            st, meta = await self._checked_state(run_id)
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
            if status in (0, 1):  # we or a concurrent caller stored it: both read the stored draw
                return await self.get_epoch(run_id, e)
            # -1: the run was re-created under us; -2: someone drew e meanwhile out of our
            # snapshot's order. Look again.
            if status == -1:
                self._runs.pop(run_id, None)
        raise ServiceUnavailable(
            f"could not draw epoch {epoch} of run {run_id!r}: the run kept changing"
        )

    async def _draw_and_commit(self, st: RunState, e: int) -> int:
        spec = st.plan[e]
        p = st.config.params
        t0 = time.perf_counter()
        select = spec.phase == "select"
        # Always the whole snapshot (losses too when the run keeps them): the draw
        # folds the score log into it, and compacts the log with it afterwards.
        snap = await self.store.draw_inputs(st.layout, losses=st.layout.loss_column)
        if snap.uid != st.uid:
            return -1
        if snap.last_epoch != e - 1:
            return -2 if snap.last_epoch < e - 1 else 0
        records = None
        if select and spec.prune:
            records = await self.store.read_records(st.layout, 0, st.layout.num_samples)
        t_read = time.perf_counter()
        seed = epoch_seed(p.seed, e)
        # Every O(n) numpy step runs in a worker thread: the event loop keeps serving
        # reports meanwhile (numpy releases the GIL for most of it).
        indices, drawn, incl_col, info = await asyncio.to_thread(
            self._draw_counted, st, spec, seed, snap, records
        )
        t_draw = time.perf_counter()
        drop = None
        old = e - self.settings.keep_epochs
        if old >= 0:
            drop = (old, int(st.plan[old].size))
        info["timing"] = {"read_s": round(t_read - t0, 4), "draw_s": round(t_draw - t_read, 4)}
        doc = json.dumps(
            {
                "epoch": e,
                "seed": seed,
                "size": int(indices.shape[0]),
                "drawn_at": time.time(),
                **info,
            }
        )
        status = await self.store.commit_epoch(
            st.layout, st.uid, e, doc, indices, drawn, incl_col, drop
        )
        if status in (0, 1) and snap.log_count:
            await self.store.compact(st.layout, st.uid, snap)
        from docl.services import metrics

        metrics.DRAW_SECONDS.labels(phase=spec.phase).observe(time.perf_counter() - t0)
        return status

    def _draw_counted(
        self,
        st: RunState,
        spec: plan.EpochSpec,
        seed: int,
        snap: DrawInputs,
        records: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
        """The draw plus the columns it updates: selection counts and Exp3 inclusion."""
        indices, inclusion, info, hit = self._draw(
            st, spec, seed, snap.scores, snap.losses, records
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
        return indices, drawn, incl_col, info

    def _draw(
        self,
        st: RunState,
        spec: plan.EpochSpec,
        seed: int,
        scores: np.ndarray | None,
        losses: np.ndarray | None,
        records: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any], np.ndarray | None]:
        """The pure part of a draw: (indices in training order, inclusion probabilities,
        info, the (n,) uint8 mask of drawn samples or None).

        The selection is counted before it is shuffled (``sampling.draw(shuffle=False)``,
        then ``shuffle_draw`` with the same Generator: the same draw): marking ~sorted
        positions is several times faster than random ones at n = 10M."""
        n = st.config.num_samples
        p = st.config.params
        rng = np.random.default_rng(seed)
        size = int(spec.size)
        info: dict[str, Any] = {}
        if spec.phase != "select":
            sel = sampling.uniform_epoch(n, rng, size=size, shuffle=False)
            order = sampling.random_order(sel, rng)
            incl = np.full(order.shape[0], size / n, dtype=np.float32)
            return np.ascontiguousarray(order, dtype=np.int64), incl, info, _mask(n, sel)
        k = int(spec.draw_size) if spec.draw_size > 0 else size
        sc = scores if scores is not None else np.full(n, np.nan, np.float32)
        prune = records is not None and spec.prune and size < k
        d = sampling.draw(
            st.config.method,
            k=k,
            scores=sc,
            losses=losses,
            rng=rng,
            tau=p.tau,
            normalize=p.normalize,
            exp3=p.exp3,
            episode=int(spec.episode),
            shuffle=prune,
        )
        hit = None
        if not prune:
            hit = _mask(n, d.indices)
            d = sampling.shuffle_draw(d, rng)
        idx = np.asarray(d.indices, dtype=np.int64)
        incl = (
            np.asarray(d.inclusion, dtype=np.float32)
            if d.inclusion is not None
            else np.full(idx.shape[0], idx.shape[0] / n, dtype=np.float32)
        )
        if records is not None and spec.prune and size < idx.shape[0]:
            # Diversity (Eq. 15) on the stored outputs g_i of the drawn samples; the
            # modular part is the standardized score (mcl: the standardized loss).
            feats = records["g"][idx].astype(np.float32)
            base = losses if st.config.method == "mcl" and losses is not None else sc
            modular = sampling.standardize(np.asarray(base, dtype=np.float32), p.normalize)[idx]
            pos = diversity.facility_location_greedy(
                feats, modular, size, lam=float(spec.lam), rng=rng
            )
            keep = np.zeros(idx.shape[0], dtype=bool)
            keep[np.asarray(pos, dtype=np.int64)] = True
            idx, incl = idx[keep], incl[keep]  # keeps the drawn (shuffled) training order
            info = {"drawn": int(keep.shape[0]), "lambda": float(spec.lam)}
        return idx[:size], incl[:size], info, hit if idx.shape[0] <= size else None

    async def indices(
        self, run_id: str, epoch: int, *, rank: int, world: int, offset: int, limit: int | None
    ) -> tuple[bytes, int, int]:
        """(int64 bytes of rank's shard [offset, offset+limit), shard length, epoch size)."""
        if world < 1:
            raise Unprocessable(f"world must be >= 1, got {world}")
        if not 0 <= rank < world:
            raise Unprocessable(f"rank must be in [0, world) = [0, {world}), got {rank}")
        if offset < 0:
            raise Unprocessable(f"offset must be >= 0, got {offset}")
        if limit is not None and limit < 0:
            raise Unprocessable(f"limit must be >= 0, got {limit}")
        st = await self.state(run_id)
        self._check_epoch_number(st, epoch)
        raw = await self.store.epoch_json(st.layout, epoch)
        if raw is None:
            st = await self.state(run_id, fresh=True)
            raw = await self.store.epoch_json(st.layout, epoch)
            if raw is None:
                raise NotFound(f"epoch {epoch} of run {run_id!r} has not been drawn yet")
        size = int(json.loads(raw)["size"])
        lo, hi = rank * size // world, (rank + 1) * size // world
        start = min(hi, lo + offset)
        stop = hi if limit is None else min(hi, start + limit)
        data = await self.store.read_indices(st.layout, epoch, size, start, stop)
        if data is None:
            raise Gone(
                f"the indices of epoch {epoch} were dropped (the server keeps the last "
                f"{self.settings.keep_epochs} epochs' indices; DOCL_KEEP_EPOCHS)"
            )
        return data, hi - lo, size

    # -- reports --------------------------------------------------------------------------------
    def validate_report(self, st: RunState, rep: ReportArrays) -> None:
        """Every check a report must pass before Redis is touched (422 with the reason)."""
        cfg = st.config
        n, c = cfg.num_samples, cfg.num_outputs
        b = int(rep.indices.shape[0])
        if b < 1:
            raise Unprocessable("a report needs at least one sample")
        if rep.outputs.ndim != 2 or rep.outputs.shape != (b, c):
            raise Unprocessable(
                f"outputs must be B × c = {b} × {c} (num_outputs of run {st.run_id!r}), "
                f"got {' × '.join(map(str, rep.outputs.shape))}"
            )
        if cfg.task == "regression":
            if rep.targets.ndim != 2 or rep.targets.shape != (b, c):
                raise Unprocessable(
                    f"run {st.run_id!r} is a regression run: targets must be B × c = {b} × {c} floats, "
                    f"got shape {rep.targets.shape}"
                )
            if not np.isfinite(rep.targets).all():
                raise Unprocessable("targets contain NaN or Inf")
        else:
            if rep.targets.ndim != 1 or rep.targets.shape[0] != b:
                raise Unprocessable(
                    f"run {st.run_id!r} is a classification run: targets must be B = {b} class ids, "
                    f"got shape {rep.targets.shape}"
                )
            bad = (rep.targets < 0) | (rep.targets >= c)
            if bad.any():
                j = int(np.flatnonzero(bad)[0])
                raise Unprocessable(
                    f"targets[{j}] = {int(rep.targets[j])} is not a class id in [0, {c})"
                )
        if not np.isfinite(rep.outputs).all():
            j = int(np.flatnonzero(~np.isfinite(rep.outputs).all(axis=1))[0])
            raise Unprocessable(f"outputs contain NaN or Inf (first in row {j})")
        if rep.features is not None and not np.isfinite(rep.features).all():
            raise Unprocessable("features contain NaN or Inf")
        if not math.isfinite(rep.lr_sum) or rep.lr_sum < 0:
            raise Unprocessable(f"lr_sum must be finite and >= 0, got {rep.lr_sum}")
        bad_idx = (rep.indices < 0) | (rep.indices >= n)
        if bad_idx.any():
            j = int(np.flatnonzero(bad_idx)[0])
            raise Unprocessable(f"indices[{j}] = {int(rep.indices[j])} is out of range [0, {n})")
        dup = _duplicate_positions(rep.indices)
        if dup is not None:
            v, a, bpos = dup
            raise Unprocessable(
                f"index {v} appears twice in one report (positions {a} and {bpos}); "
                "a report must name each sample at most once"
            )
        if rep.epoch >= st.num_epochs:
            raise Unprocessable(
                f"epoch {rep.epoch} is beyond the plan of run {st.run_id!r} "
                f"({st.num_epochs} epochs, 0..{st.num_epochs - 1})"
            )

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

    async def _acquire(self, st: RunState, cache: RecordCache, idx: np.ndarray) -> None:
        """Mark ``idx`` busy in ``cache`` once no other report of this process is applying
        one of them, after making sure the cache holds the run's write lease (claimed
        while its generation is empty, see RecordCache). The claim fails only when the
        run was re-created: the report then finds out at its gather."""
        while True:
            if self.store.resets != cache.resets:  # Redis restarted: trust no copy
                cache.clear(self.store.resets)
            if cache.busy[idx].any() or cache.claiming:
                await asyncio.sleep(0.0005)  # rare: two reports of one sample at once
                continue
            if cache.claimed != cache.gen and not cache.known.any():
                gen = cache.gen
                cache.claiming = True
                try:
                    ok = await self.store.claim(st.layout, st.uid, cache.token) == 1
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

    async def apply_report(self, run_id: str, rep: ReportArrays) -> ReportAck:
        """Score one report; see :meth:`apply_reports`."""
        return (await self.apply_reports(run_id, [rep]))[0]

    async def apply_reports(self, run_id: str, reps: Sequence[ReportArrays]) -> list[ReportAck]:
        """Score one or more reports: validate them all, then per group of reports
        (:func:`report_groups`) read the samples' records, score (numpy), scatter (one
        atomic script: dedup markers + compare-and-set of every sample, or the write
        lease + writes). Every report is applied exactly once, in order; a report
        already applied is acknowledged as a duplicate and changes nothing.

        The whole request is validated before anything is written: one invalid
        report is a 422 for all of them, and nothing changes. A report of an epoch
        not drawn yet is a 409 for its group and every group after it (groups
        before it stay applied: their acknowledgements are lost with the error, and
        a retry finds them as duplicates).

        The records come from this process's :class:`RecordCache` when it has them,
        else from Redis (``gather``). Without the write lease, the scatter compares
        each sample's stored (lr_sum, visits) with the state the update was computed
        from and writes nothing on a mismatch, returning the current records; the
        update is then recomputed from those. So a stale copy costs a retry, never a
        wrong score.
        """
        if not reps:
            raise Unprocessable("a request needs at least one report")
        st = await self.state(run_id)
        self._validate_all(st, reps)
        acks: list[ReportAck | None] = [None] * len(reps)
        for group in report_groups(reps):
            st = await self._apply_group(run_id, st, reps, group, acks)
        assert all(a is not None for a in acks)
        return [a for a in acks if a is not None]

    def _validate_all(self, st: RunState, reps: Sequence[ReportArrays]) -> None:
        """validate_report for every report of a request (422 naming the report), and
        distinct report_ids. Several reports are first checked together — a dozen numpy
        passes over all their samples instead of a dozen per report — and one by one
        only when that finds something (for the message) or a report has features."""
        if len(reps) == 1:
            self.validate_report(st, reps[0])
            return
        first: dict[str, int] = {}
        for j, rep in enumerate(reps):
            k = first.setdefault(rep.report_id, j)
            if k != j:
                raise Unprocessable(
                    f"report_id {rep.report_id!r} appears twice in one request "
                    f"(reports {k} and {j}); every report needs its own id"
                )
        if self._valid_together(st, reps):
            return
        for j, rep in enumerate(reps):
            try:
                self.validate_report(st, rep)
            except Unprocessable as e:
                raise Unprocessable(f"report {j} ({rep.report_id!r}): {e.detail}") from None

    def _valid_together(self, st: RunState, reps: Sequence[ReportArrays]) -> bool:
        """True when every check of validate_report passes for all of ``reps`` (False:
        something fails, or a case this fast path leaves to validate_report)."""
        cfg = st.config
        n, c = cfg.num_samples, cfg.num_outputs
        regression = cfg.task == "regression"
        for rep in reps:
            b = rep.indices.shape[0]
            if b < 1 or rep.features is not None or rep.outputs.shape != (b, c):
                return False
            if rep.targets.shape != ((b, c) if regression else (b,)):
                return False
            if not (math.isfinite(rep.lr_sum) and rep.lr_sum >= 0 and rep.epoch < st.num_epochs):
                return False
        idx = np.concatenate([r.indices for r in reps])
        if not (np.isfinite(np.concatenate([r.outputs for r in reps])).all()):
            return False
        tgt = np.concatenate([r.targets for r in reps])
        if regression:
            if not np.isfinite(tgt).all():
                return False
        elif tgt.size and (int(tgt.min()) < 0 or int(tgt.max()) >= c):
            return False
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
            return False
        # an index twice within one report: sort (report, index) pairs as one key
        sizes = [r.indices.shape[0] for r in reps]
        key = np.repeat(np.arange(len(reps), dtype=np.int64) * n, sizes) + idx
        key.sort()
        return not bool((key[1:] == key[:-1]).any())

    async def _apply_group(
        self,
        run_id: str,
        st: RunState,
        reps: Sequence[ReportArrays],
        group: list[int],
        acks: list[ReportAck | None],
    ) -> RunState:
        from docl.services import metrics

        live = list(group)  # reports of the group not acknowledged yet
        marked: tuple[RecordCache, np.ndarray] | None = None
        try:
            cache = self._cache_for(st)
            rec: np.ndarray | None = None
            inclusion: np.ndarray | None = None
            token, gen = "", -1
            for _attempt in range(MAX_REPORT_ATTEMPTS):
                if not live:
                    return st
                frames = [reps[j] for j in live]
                idx = (
                    frames[0].indices
                    if len(frames) == 1
                    else np.concatenate([f.indices for f in frames])
                )
                if rec is None:
                    if cache is not None and marked is None:
                        await self._acquire(st, cache, idx)
                        marked = (cache, idx)
                    rec, inclusion, token, gen, st, cache, dups = await self._read(
                        run_id, st, cache, frames, idx
                    )
                    if dups:
                        for d in dups:
                            acks[live[d]] = self._duplicate(frames[d])
                        gone = {live[d] for d in dups}
                        live = [j for j in live if j not in gone]
                        rec = None
                        continue
                    if rec is None:  # the run was re-created: read again
                        continue
                upd, write, new = self._score(st, frames, rec, inclusion)
                sizes = [int(f.indices.shape[0]) for f in frames]
                if len(frames) == 1:
                    per_frame = [(sizes[0], int(upd.scored.sum()))]
                else:
                    starts = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
                    sc_per = np.add.reduceat(upd.scored.astype(np.int64), starts)
                    per_frame = [(b, int(x)) for b, x in zip(sizes, sc_per, strict=True)]
                scored = int(upd.scored.sum())
                skipped = int(upd.stale.sum())
                first = int((write & (rec["visits"] == 0)).sum())
                res = await self.store.scatter(
                    st.layout,
                    st.uid,
                    [f.report_id for f in frames],
                    now=time.time(),
                    indices=idx,
                    expected=rec,
                    write=write,
                    records=new,
                    scores=upd.scores[write],
                    losses=upd.loss[write],
                    counters=(len(frames), int(idx.shape[0]), scored, skipped, first),
                    token=token,
                )
                if res.status == 1:
                    revoked = token != "" and not res.leased
                    if cache is not None and cache.gen == gen:
                        if revoked:  # someone else wrote: this copy may be stale anywhere
                            cache.clear(self.store.resets)
                        else:
                            cache.put(idx[write], new)
                    if cache is not None:
                        cache.note(conflict=revoked)
                    for j, (b, sc) in zip(live, per_frame, strict=True):
                        acks[j] = ReportAck(accepted=b, scored=sc, duplicate=False)
                    metrics.REPORTS.labels(result="applied").inc(len(frames))
                    metrics.SAMPLES_REPORTED.inc(int(idx.shape[0]))
                    metrics.SAMPLES_SCORED.inc(scored)
                    return st
                if res.status == 0:  # some were applied before (the script counted them)
                    for d in res.duplicates:
                        acks[live[d]] = self._duplicate(frames[d])
                    gone = {live[d] for d in res.duplicates}
                    live = [j for j in live if j not in gone]
                    rec = None
                    continue
                if res.status == -1:
                    st = await self.state(run_id, fresh=True)  # 404 if gone, else a new run
                    self._validate_all(st, [reps[j] for j in live])
                    cache = self._cache_for(st)
                    if marked is not None:
                        marked[0].busy[marked[1]] = False
                        marked = None
                    rec = None
                    continue
                # status 2: some samples changed since we read them; the script sent their
                # current records: recompute from those (inclusion stays: same draw).
                metrics.REPORT_CONFLICTS.inc()
                assert res.current is not None
                pos = np.asarray(res.conflicts, dtype=np.int64)
                rec = rec.copy()
                rec[pos] = res.current
                if cache is not None:
                    cache.note(conflict=True)
                    if cache.gen == gen:
                        if token != "":  # compared under our token: the lease was revoked
                            cache.clear(self.store.resets)
                        else:
                            cache.put(idx[pos], res.current)
                token = ""  # the retry compares (a new lease is claimed by later reports)
            raise ServiceUnavailable(
                f"report {reps[live[0]].report_id!r}: its samples kept being changed by "
                "concurrent reports; retry"
            )
        finally:
            if marked is not None:
                marked[0].busy[marked[1]] = False

    def _duplicate(self, rep: ReportArrays) -> ReportAck:
        from docl.services import metrics

        metrics.REPORTS.labels(result="duplicate").inc()
        return ReportAck(accepted=int(rep.indices.shape[0]), scored=0, duplicate=True)

    async def _read(
        self,
        run_id: str,
        st: RunState,
        cache: RecordCache | None,
        frames: list[ReportArrays],
        idx: np.ndarray,
    ) -> tuple[
        np.ndarray | None,
        np.ndarray | None,
        str,
        int,
        RunState,
        RecordCache | None,
        tuple[int, ...],
    ]:
        """The records (and Exp3 inclusion) of ``idx``, from the cache where it has them.

        Returns (rows, inclusion, lease token to send, cache generation read, state,
        cache, duplicates): ``rows`` None when the run was re-created (state and cache
        are the new ones then), ``duplicates`` the positions in ``frames`` of reports
        the gather found already applied (nothing read then)."""
        max_epoch = max(f.epoch for f in frames)
        ids = [f.report_id for f in frames]
        if cache is None:
            g = await self.store.gather(st.layout, st.uid, ids, idx)
            missing_pos = None
            rec = None
            token, gen = "", -1
        else:
            # Token, generation and rows taken together (no await in between): what the
            # lease vouches for is exactly this copy.
            token = cache.token if cache.leased else ""
            gen = cache.gen
            rec = cache.get(idx)
            missing_pos = np.flatnonzero(~cache.known[idx])
            if not missing_pos.size and max_epoch <= cache.last_epoch:
                return rec, None, token, gen, st, cache, ()
            g = await self.store.gather(st.layout, st.uid, ids, idx[missing_pos])
        if g.status == -1:
            st = await self.state(run_id, fresh=True)  # 404 if gone, else a new run
            self._validate_all(st, frames)
            return None, None, "", -1, st, self._cache_for(st), ()
        if g.status == 0:
            await self.store.count_duplicate(st.layout, len(g.duplicates))
            return None, None, "", -1, st, cache, g.duplicates
        if max_epoch > g.last_epoch:
            bad = next(f for f in frames if f.epoch > g.last_epoch)
            raise Conflict(
                f"epoch {bad.epoch} of run {run_id!r} has not been drawn yet "
                f"(last drawn: {g.last_epoch if g.last_epoch >= 0 else 'none'}; "
                f"report {bad.report_id!r})"
            )
        assert g.records is not None
        if cache is None or rec is None or missing_pos is None:
            return g.records, g.inclusion, "", -1, st, cache, ()
        rec[missing_pos] = g.records
        if cache.gen == gen:
            cache.last_epoch = max(cache.last_epoch, g.last_epoch)
            cache.put(idx[missing_pos], g.records)
        return rec, None, token, gen, st, cache, ()

    def _score(
        self,
        st: RunState,
        frames: Sequence[ReportArrays],
        rec: np.ndarray,
        inclusion: np.ndarray | None,
    ) -> tuple[scoring.ScoreUpdate, np.ndarray, np.ndarray]:
        """Score the reports of a group (their samples one after the other in ``rec``)
        in ONE ``score_report`` call: its fixed cost (~0.2 ms) would otherwise be paid
        per report. Reports carry their own lr_sum; score_report takes one, and uses
        it only through ``lr_sum - prev``: each sample's stored lr-sum is shifted by
        its report's lr_sum and the call gets 0, which gives the same ρ and the same
        stale test bit for bit (fl(0 - (p - L)) = fl(L - p); fl(p - L) >= 0 iff p >= L).
        Returns (update, write mask, the new records of the written samples)."""
        p = st.config.params
        seen = rec["visits"] > 0
        prev_scores = np.where(seen, rec["score"], np.float32(np.nan)).astype(np.float32)
        if len(frames) == 1:
            f = frames[0]
            outputs, targets, lr_sum = f.outputs, f.targets, f.lr_sum
            prev_lrs = np.where(seen, rec["lr_sum"], np.nan)
            lrs: float | np.ndarray = f.lr_sum
        else:
            outputs = np.concatenate([f.outputs for f in frames])
            targets = np.concatenate([f.targets for f in frames])
            lrs = np.repeat(
                np.array([f.lr_sum for f in frames], dtype=np.float64),
                [f.indices.shape[0] for f in frames],
            )
            prev_lrs = np.where(seen, rec["lr_sum"] - lrs, np.nan)
            lr_sum = 0.0
        incl = None
        if p.exp3 and inclusion is not None:
            incl = np.where(inclusion > 0, inclusion, np.float32(1.0))
        upd = scoring.score_report(
            outputs,
            targets,
            lr_sum,
            rec["g"],
            prev_lrs,
            prev_scores,
            task=st.config.task,
            kind=st.score_kind,
            gamma=p.gamma,
            rho_power=p.rho_power,
            inclusion=incl,
        )
        write = ~upd.stale
        new = np.zeros(int(write.sum()), dtype=st.layout.rec_dtype)
        new["lr_sum"] = lrs if isinstance(lrs, float) else lrs[write]
        new["visits"] = rec["visits"][write] + 1
        new["score"] = upd.scores[write]
        new["loss"] = upd.loss[write]
        new["g"] = outputs[write]
        return upd, write, new

    # -- scores and stats ------------------------------------------------------------------------
    def page_limit(self, st: RunState) -> int:
        return max(1, self.settings.max_page_bytes // st.layout.rec_size)

    async def scores(
        self, run_id: str, offset: int, limit: int | None
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """(offset, scores float32, visits uint32, lr_sums float64) of samples [offset, offset+limit)."""
        st = await self.state(run_id)
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
        st, meta = await self._checked_state(run_id)
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
        counters=RunCounters(**{k: counters[k] for k in RunCounters.model_fields}),
    )
