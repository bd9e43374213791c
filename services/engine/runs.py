"""The run registry (:class:`RunRegistry`): each run's immutable state (config,
layout, plan), create, read, list and delete, and the plan route.

A small per-process cache keeps each run's config, layout and plan (all
immutable for the life of a run), the ``DOCL_RUN_CACHE_SIZE`` most recently used
ones (:class:`RunCache`, an LRU: listing 10,000 runs must not keep 10,000 plans).
A run deleted and re-created under the same id gets a new ``uid``; every script
checks the uid it is given, so a stale cache is detected on the next Redis call
and reloaded.

What one token holder may keep on the server is bounded at create: at most
``DOCL_MAX_RUNS`` runs and ``DOCL_MAX_TOTAL_BYTES`` of (estimated) Redis memory
over all of them (403 above either), besides ``DOCL_MAX_RUN_BYTES`` for one run (422).
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from docl.services import methods, plan, scoring
from docl.services.config import Settings
from docl.services.errors import Conflict, NotFound, ProblemError, Unprocessable
from docl.services.layout import MAX_PARTITIONS, RunLayout
from docl.services.storage import CreateStatus, Store, meta_signals
from docl.wire.models import Plan, PlanEpoch, Run, RunCounters, RunCreate, RunList

__all__ = ["QuotaExceeded", "RunCache", "RunRegistry", "RunState", "plan_row"]

log = logging.getLogger("docl.services")


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
    score_kind: scoring.ScoreKind

    @property
    def num_epochs(self) -> int:
        return len(self.plan)

    @functools.cached_property
    def nbytes(self) -> int:
        """About what the plan holds in memory: its learning rates and ~200 B per epoch."""
        return sum(int(s.lr.nbytes) + 200 for s in self.plan)


def plan_row(spec: plan.EpochSpec) -> dict[str, Any]:
    return plan.plan_epoch(spec).model_dump()


class QuotaExceeded(ProblemError):
    """403: the server holds as many runs, or as much run memory, as a token holder may
    keep (``DOCL_MAX_RUNS``, ``DOCL_MAX_TOTAL_BYTES``); deleting runs frees the quota.
    Not 429: nothing changes by waiting, and clients retry 429."""

    status = 403


class RunCache:
    """The most recently used :class:`RunState` s of this process (an LRU): at most
    ``size`` of them and ``max_bytes`` of plans together (a plan keeps one float64
    learning rate per step: up to 80 MB at DOCL_MAX_PLAN_STEPS), but always the
    latest one."""

    def __init__(self, size: int, max_bytes: int) -> None:
        self.size = size
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._d: OrderedDict[str, RunState] = OrderedDict()

    def get(self, run_id: str) -> RunState | None:
        st = self._d.get(run_id)
        if st is not None:
            self._d.move_to_end(run_id)
        return st

    def __setitem__(self, run_id: str, st: RunState) -> None:
        self.pop(run_id)
        self._d[run_id] = st
        self.nbytes += st.nbytes
        while len(self._d) > 1 and (len(self._d) > self.size or self.nbytes > self.max_bytes):
            self.nbytes -= self._d.popitem(last=False)[1].nbytes

    def pop(self, run_id: str, default: RunState | None = None) -> RunState | None:
        st = self._d.pop(run_id, None)
        if st is None:
            return default
        self.nbytes -= st.nbytes
        return st

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._d


def run_footprint(layout: RunLayout, method: str, keep_epochs: int, signals: int = 0) -> int:
    """Estimated Redis bytes of a run's per-sample state (what DOCL_MAX_RUN_BYTES and
    DOCL_MAX_TOTAL_BYTES count): the layout's columns, plus float32 weights beside the
    kept index lists for a method that has them, plus one float32 column per signal:
    the method's declared ones, or ``signals`` (those the run keeps) if more."""
    spec = methods.get_method(method)
    need = layout.memory_bytes(keep_epochs)
    if spec.weights:
        need += 4 * layout.num_samples * keep_epochs
    need += 4 * layout.num_samples * max(len(spec.signals), signals)
    return need


class RunRegistry:
    """The runs of this server: their immutable state (cached per process), the run
    routes, the quota. Owns :attr:`states` (the LRU of :class:`RunState` s) and the
    runs' footprints; every other part of the engine starts from :meth:`state`."""

    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.states = RunCache(settings.run_cache_size, settings.run_cache_bytes)
        # run id -> its estimated Redis bytes, for DOCL_MAX_TOTAL_BYTES (ids of the run
        # index only: pruned at every create, so bounded by DOCL_MAX_RUNS)
        self._footprints: dict[str, int] = {}
        self._create_lock = asyncio.Lock()  # quota check + create, one at a time per process

    # -- run state ---------------------------------------------------------------------------
    def forget(self, run_id: str) -> None:
        """Drop the run's cached state: the next :meth:`state` reads its meta again."""
        self.states.pop(run_id, None)

    def _state_from_meta(self, run_id: str, meta: dict[str, str]) -> RunState:
        config = RunCreate.model_validate_json(meta["config"]).model_copy(update={"run_id": run_id})
        layout = RunLayout.from_json(run_id, meta["layout"])
        return self.build_state(run_id, meta["uid"], config, layout, float(meta["created_at"]))

    def build_state(
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
            score_kind=methods.get_method(config.method).score_kind,
        )

    async def state(self, run_id: str, *, fresh: bool = False) -> RunState:
        """The run's cached state (``fresh``: re-read its meta from Redis). 404 if unknown."""
        if not fresh:
            st = self.states.get(run_id)
            if st is not None:
                return st
        meta = await self.store.run_meta(run_id)
        if meta is None:
            self.states.pop(run_id, None)
            raise NotFound(f"no run {run_id!r}")
        cached = self.states.get(run_id)
        if cached is not None and cached.uid == meta["uid"]:
            return cached
        st = await asyncio.to_thread(self._state_from_meta, run_id, meta)
        self.states[run_id] = st
        return st

    async def checked_state(self, run_id: str) -> tuple[RunState, dict[str, str]]:
        """State and meta read now (for routes that show the run's position)."""
        meta = await self.store.run_meta(run_id)
        if meta is None:
            self.states.pop(run_id, None)
            raise NotFound(f"no run {run_id!r}")
        cached = self.states.get(run_id)
        if cached is None or cached.uid != meta["uid"]:
            cached = await asyncio.to_thread(self._state_from_meta, run_id, meta)
            self.states[run_id] = cached
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
            method_params=st.config.method_params,
            epochs=st.num_epochs,
            params=st.config.params,
            created_at=st.created_at,
            epochs_drawn=last + 1,
            last_epoch=last if last >= 0 else None,
            total_steps=int(sum(s.steps for s in st.plan)),
            counters=RunCounters.model_validate(counters),
        )

    # -- runs -----------------------------------------------------------------------------------
    async def create_run(self, body: RunCreate) -> tuple[Run, bool]:
        """Create a run (True) or confirm an identical one exists (False); 409 if it differs."""
        run_id = body.run_id or f"run-{uuid.uuid4().hex[:16]}"
        try:  # the method and its own parameters, against the registry (defaults filled in)
            method_params = methods.validate_method_params(body.method, body.method_params)
        except ValueError as e:
            raise Unprocessable(str(e)) from None
        config = body.model_copy(update={"run_id": run_id, "method_params": method_params})
        layout = RunLayout(
            run_id=run_id,
            num_samples=config.num_samples,
            num_outputs=config.num_outputs,
            output_dtype=config.params.output_dtype,
            chunk_bytes=self.settings.chunk_bytes,
            loss_column=methods.get_method(config.method).loss_column,
            exp3=config.params.exp3,
            partition_samples=self._partition_samples(config.num_samples),
        )
        need = run_footprint(layout, config.method, self.settings.keep_epochs)
        if need > self.settings.max_run_bytes:
            raise Unprocessable(
                f"this run would need about {need / 2**30:.1f} GiB of Redis memory "
                f"(n = {config.num_samples}, c = {config.num_outputs}, {layout.rec_size} B per record), "
                f"over this server's limit of {self.settings.max_run_bytes / 2**30:.1f} GiB "
                "(DOCL_MAX_RUN_BYTES); use output_dtype float16 or a smaller run"
            )
        created_at = time.time()
        uid = uuid.uuid4().hex
        try:  # sized from integers first (PlanTooLarge, a ValueError), then built
            await asyncio.to_thread(plan.plan_size, config, self.settings.plan_limits)
            st = await asyncio.to_thread(self.build_state, run_id, uid, config, layout, created_at)
        except ValueError as e:
            raise Unprocessable(f"invalid run config: {e}") from None
        if st.num_epochs == 0:
            raise Unprocessable("the run's plan has no epochs; give epochs >= 1 or a larger budget")
        async with self._create_lock:
            await self._check_quota(run_id, need)
            status, _uid, stored = await self.store.create_run(
                layout, _canonical(config), uid, created_at
            )
            if status == CreateStatus.CREATED:
                self._footprints[run_id] = need
        if status == CreateStatus.CONFLICT:
            raise Conflict(
                f"run {run_id!r} exists with a different config; delete it first or choose another "
                f"run_id (stored: {stored})"
            )
        if status == CreateStatus.CREATED:
            self.states[run_id] = st
        st, meta = await self.checked_state(run_id)
        counters = await self.store.counters(st.layout)
        return self._run_model(st, meta, counters), status == CreateStatus.CREATED

    async def _check_quota(self, run_id: str, need: int) -> None:
        """403 when one more run, of ``need`` bytes, would be over DOCL_MAX_RUNS or
        DOCL_MAX_TOTAL_BYTES. A run that exists already (a retried create) passes: its
        create changes nothing. With several server processes, creates at the same
        instant in different processes may overshoot by one run each."""
        ids = await self.store.list_run_ids()
        if run_id in ids:
            return
        cap = self.settings.max_runs
        if len(ids) >= cap:
            raise QuotaExceeded(
                f"this server holds {len(ids)} runs, its limit (DOCL_MAX_RUNS = {cap}); "
                "delete runs you no longer need (docl runs delete) to create new ones"
            )
        total = await self._total_footprint(ids)
        most = self.settings.max_total_bytes
        if total + need > most:
            raise QuotaExceeded(
                f"this run would need about {need / 2**30:.2f} GiB of Redis memory and the "
                f"server's runs hold about {total / 2**30:.2f} GiB already, over the limit of "
                f"{most / 2**30:.2f} GiB for all runs together (DOCL_MAX_TOTAL_BYTES); delete "
                "runs you no longer need, or create a smaller one"
            )

    async def _total_footprint(self, ids: list[str]) -> int:
        """The summed footprints of the runs ``ids`` (the run index): the known ones
        from this process's table, the others sized from their meta (then kept)."""
        known = set(ids)
        for rid in [r for r in self._footprints if r not in known]:
            del self._footprints[rid]
        unknown = [r for r in ids if r not in self._footprints]
        for i in range(0, len(unknown), 1000):
            batch = unknown[i : i + 1000]
            for rid, (meta, _c) in zip(batch, await self.store.run_metas(batch), strict=True):
                self._footprints[rid] = self._meta_footprint(rid, meta)
        return sum(self._footprints.values())

    async def check_signal_quota(self, st: RunState, signals: int) -> int:
        """The run's footprint keeping ``signals`` signal columns; 422 over
        DOCL_MAX_RUN_BYTES, 403 when it would take all runs over DOCL_MAX_TOTAL_BYTES
        (counted as a create counts them: ``run_footprint``)."""
        keep = self.settings.keep_epochs
        need = run_footprint(st.layout, st.config.method, keep, signals)
        if need > self.settings.max_run_bytes:
            raise Unprocessable(
                f"run {st.run_id!r} with {signals} signal columns would need about "
                f"{need / 2**30:.2f} GiB of Redis memory, over this server's limit of "
                f"{self.settings.max_run_bytes / 2**30:.2f} GiB (DOCL_MAX_RUN_BYTES)"
            )
        ids = await self.store.list_run_ids()
        others = await self._total_footprint(ids) - self._footprints.get(st.run_id, 0)
        most = self.settings.max_total_bytes
        if others + need > most:
            raise QuotaExceeded(
                f"a new signal column of run {st.run_id!r} ({4 * st.layout.num_samples} bytes) "
                f"would take the server's runs to about {(others + need) / 2**30:.2f} GiB of "
                f"Redis memory, over the limit of {most / 2**30:.2f} GiB for all runs together "
                "(DOCL_MAX_TOTAL_BYTES); delete runs you no longer need"
            )
        return need

    def set_footprint(self, run_id: str, need: int) -> None:
        """Record a run's footprint after it grew (a new signal column)."""
        self._footprints[run_id] = need

    def _meta_footprint(self, run_id: str, meta: dict[str, str] | None) -> int:
        """A stored run's footprint from its meta (0 when gone or unreadable)."""
        if meta is None:
            return 0
        try:
            layout = RunLayout.from_json(run_id, meta["layout"])
            method = str(json.loads(meta["config"]).get("method", "docl"))
            signals = len(meta_signals(meta))
            return run_footprint(layout, method, self.settings.keep_epochs, signals)
        except (ValueError, KeyError, TypeError) as e:  # written by another version
            log.warning("run %r: cannot size its meta (%s); counted as 0 bytes", run_id, e)
            return 0

    def _partition_samples(self, n: int) -> int:
        """Samples per partition of a new run of n samples (0: not partitioned, n fits one)."""
        m = self.settings.partition_samples
        if m <= 0 or n <= m:
            return 0
        if -(-n // m) > MAX_PARTITIONS:
            raise Unprocessable(
                f"a run of {n} samples would need {-(-n // m)} partitions of {m} samples, over "
                f"{MAX_PARTITIONS}; this server's DOCL_PARTITION_SAMPLES is too small for it"
            )
        return m

    async def get_run(self, run_id: str) -> Run:
        st, meta = await self.checked_state(run_id)
        return self._run_model(st, meta, await self.store.counters(st.layout))

    async def list_runs(self, *, after: str | None = None, limit: int = 100) -> RunList:
        """One page of runs in run-id order: the first ``limit`` ids after ``after``
        (``next``: the cursor of the following page, None on the last one)."""
        every = await self.store.list_run_ids()  # sorted
        start = 0 if after is None else bisect.bisect_right(every, after)
        ids = every[start : start + limit]
        more = start + limit < len(every)
        runs: list[Run] = []
        for rid, (meta, counters) in zip(ids, await self.store.run_metas(ids), strict=True):
            if meta is None:  # deleted meanwhile, or a half-deleted leftover: tidy the index
                await self.store.forget_run_id(rid)
                continue
            cached = self.states.get(rid)
            if cached is None or cached.uid != meta["uid"]:
                try:
                    cached = await asyncio.to_thread(self._state_from_meta, rid, meta)
                except (ValueError, KeyError) as e:  # written by another version, or by hand
                    log.warning(
                        "run %r has a meta this server cannot read (%s): not listed", rid, e
                    )
                    continue
                self.states[rid] = cached
            runs.append(self._run_model(cached, meta, counters))
        return RunList(runs=runs, next=ids[-1] if more and ids else None)

    async def delete_run(self, run_id: str) -> None:
        meta = await self.store.run_meta(run_id)
        if meta is None:
            self.states.pop(run_id, None)
            raise NotFound(f"no run {run_id!r}")
        layout = RunLayout.from_json(run_id, meta["layout"])
        await self.store.delete_run(layout)
        self.states.pop(run_id, None)
        self._footprints.pop(run_id, None)

    # -- plan -----------------------------------------------------------------------------------
    async def get_plan(self, run_id: str) -> Plan:
        st = (await self.checked_state(run_id))[0]
        return Plan(
            run_id=st.run_id,
            num_epochs=st.num_epochs,
            total_steps=int(sum(s.steps for s in st.plan)),
            epochs=[PlanEpoch(**plan_row(s)) for s in st.plan],
        )
