"""Run lifecycle: each run's immutable state (config, layout, plan), create, read,
list and delete, and the plan route.

A small per-process cache keeps each run's config, layout and plan (all
immutable for the life of a run). A run deleted and re-created under the same
id gets a new ``uid``; every script checks the uid it is given, so a stale cache
is detected on the next Redis call and reloaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from docl.services import methods, plan, scoring
from docl.services.config import Settings
from docl.services.errors import Conflict, NotFound, Unprocessable
from docl.services.layout import MAX_SHARDS, RunLayout
from docl.services.storage import CreateStatus, Store
from docl.wire.models import Plan, PlanEpoch, Run, RunCounters, RunCreate, RunList

if TYPE_CHECKING:
    from docl.services.engine.cache import RecordCache

__all__ = ["RunStage", "RunState"]

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


def _plan_row(spec: plan.EpochSpec) -> dict[str, Any]:
    return plan.plan_epoch(spec).model_dump()


class RunStage:
    """The engine's run routes, and the run state every other stage starts from."""

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
            score_kind=methods.get_method(config.method).score_kind,
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
            method_params=st.config.method_params,
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
            shard_samples=self._shard_samples(config.num_samples),
        )
        need = layout.memory_bytes(self.settings.keep_epochs)
        if methods.get_method(config.method).weights:  # float32 weights beside kept indices
            need += 4 * config.num_samples * self.settings.keep_epochs
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
            st = await asyncio.to_thread(self._build_state, run_id, uid, config, layout, created_at)
        except ValueError as e:
            raise Unprocessable(f"invalid run config: {e}") from None
        if st.num_epochs == 0:
            raise Unprocessable("the run's plan has no epochs; give epochs >= 1 or a larger budget")
        status, _uid, stored = await self.store.create_run(
            layout, _canonical(config), uid, created_at
        )
        if status == CreateStatus.CONFLICT:
            raise Conflict(
                f"run {run_id!r} exists with a different config; delete it first or choose another "
                f"run_id (stored: {stored})"
            )
        if status == CreateStatus.CREATED:
            self._runs[run_id] = st
        st, meta = await self._checked_state(run_id)
        counters = await self.store.counters(st.layout)
        return self._run_model(st, meta, counters), status == CreateStatus.CREATED

    def _shard_samples(self, n: int) -> int:
        """Samples per shard of a new run of n samples (0: not sharded, n fits one shard)."""
        m = self.settings.shard_samples
        if m <= 0 or n <= m:
            return 0
        if -(-n // m) > MAX_SHARDS:
            raise Unprocessable(
                f"a run of {n} samples would need {-(-n // m)} shards of {m} samples, over "
                f"{MAX_SHARDS}; this server's DOCL_SHARD_SAMPLES is too small for it"
            )
        return m

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
