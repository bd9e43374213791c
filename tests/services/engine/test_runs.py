"""Run lifecycle bounds (issue 19, item 5), against real redis-server processes and a
real ``docl serve``: per-token quotas (DOCL_MAX_RUNS, DOCL_MAX_TOTAL_BYTES: 403), the
paginated ``GET /v1/runs``, and the engine's bounded run cache (DOCL_RUN_CACHE_SIZE).

Before the fix every create was 201 whatever the count and size, ``GET /v1/runs``
answered every run at once (no ``next``, ``limit`` ignored), and the engine kept the
state of every run it ever listed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import httpx

from docl.services.config import Settings
from docl.services.embedded import RedisProcess, ServerProcess
from docl.services.engine import Engine
from docl.services.redis.store import RedisStore
from docl.wire.models import RunCreate

T = TypeVar("T")
TOKEN = "quota-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _body(run_id: str, n: int = 100) -> dict[str, Any]:
    return {"run_id": run_id, "num_samples": n, "num_outputs": 3, "epochs": 3}


def test_max_runs_is_a_403_naming_the_setting_and_a_delete_frees_it(
    redis_factory: Callable[..., RedisProcess], server_factory: Callable[..., ServerProcess]
) -> None:
    redis = redis_factory()
    srv = server_factory(redis_url=redis.url, env={"DOCL_API_TOKEN": TOKEN, "DOCL_MAX_RUNS": "3"})
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as api:
        for i in range(3):
            assert api.post("/v1/runs", json=_body(f"q-{i}")).status_code == 201
        keys = redis.command("DBSIZE")
        r = api.post("/v1/runs", json=_body("q-3"))
        assert r.status_code == 403, r.text
        assert "DOCL_MAX_RUNS" in r.json()["detail"] and "delete" in r.json()["detail"]
        assert redis.command("DBSIZE") == keys  # the refused create wrote nothing
        assert api.get("/v1/runs/q-3").status_code == 404
        # a retried create of an existing run is no new run: still 200
        assert api.post("/v1/runs", json=_body("q-0")).status_code == 200
        assert api.delete("/v1/runs/q-1").status_code == 204
        assert api.post("/v1/runs", json=_body("q-3")).status_code == 201


def test_max_total_bytes_counts_every_run_and_is_a_403(
    redis_factory: Callable[..., RedisProcess], server_factory: Callable[..., ServerProcess]
) -> None:
    """Each run of n = 10,000, c = 3 is ~0.9 MB by DOCL_MAX_RUN_BYTES' count; 2.5 MB of
    room holds two of them. A server restart (a new process, no cache) counts the same."""
    redis = redis_factory()
    env = {"DOCL_API_TOKEN": TOKEN, "DOCL_MAX_TOTAL_BYTES": str(2_500_000)}
    srv = server_factory(redis_url=redis.url, env=env)
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as api:
        for i in range(2):
            assert api.post("/v1/runs", json=_body(f"b-{i}", 10_000)).status_code == 201
        r = api.post("/v1/runs", json=_body("b-2", 10_000))
        assert r.status_code == 403, r.text
        assert "DOCL_MAX_TOTAL_BYTES" in r.json()["detail"]
        srv.restart()
        assert api.post("/v1/runs", json=_body("b-2", 10_000)).status_code == 403
        assert api.post("/v1/runs", json=_body("b-small", 100)).status_code == 201
        assert api.delete("/v1/runs/b-0").status_code == 204
        assert api.post("/v1/runs", json=_body("b-2", 10_000)).status_code == 201


def test_get_runs_is_paginated_with_a_bounded_default_page(
    redis_factory: Callable[..., RedisProcess], server_factory: Callable[..., ServerProcess]
) -> None:
    redis = redis_factory()
    srv = server_factory(redis_url=redis.url, env={"DOCL_API_TOKEN": TOKEN})
    ids = [f"p-{i:03d}" for i in range(105)]
    with httpx.Client(base_url=srv.url, headers=AUTH, timeout=30) as api:
        for rid in ids:
            assert api.post("/v1/runs", json=_body(rid, 10)).status_code == 201
        first = api.get("/v1/runs").json()  # the default page: 100
        assert [r["run_id"] for r in first["runs"]] == ids[:100]
        assert first["next"] == ids[99]
        rest = api.get("/v1/runs", params={"after": first["next"]}).json()
        assert [r["run_id"] for r in rest["runs"]] == ids[100:] and rest["next"] is None
        seen: list[str] = []
        after: str | None = None
        while True:
            page = api.get("/v1/runs", params={"limit": 7, **({"after": after} if after else {})})
            assert page.status_code == 200, page.text
            body = page.json()
            assert len(body["runs"]) <= 7
            seen += [r["run_id"] for r in body["runs"]]
            after = body["next"]
            if after is None:
                break
        assert seen == ids
        for bad in ({"limit": 0}, {"limit": 1001}, {"after": "../x"}, {"limit": "many"}):
            r = api.get("/v1/runs", params=bad)
            assert r.status_code == 422, (bad, r.text)


def test_the_engine_keeps_a_bounded_number_of_run_states(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    """DOCL_RUN_CACHE_SIZE = 3: listing and reading 8 runs leaves at most 3 states in
    memory, the most recently used; an evicted run is read again from Redis."""

    redis_url = redis_factory().url  # its own Redis: a listing sees only this test's runs

    async def main() -> None:
        store = RedisStore.from_url(redis_url)
        engine = Engine(store, Settings(redis_url=redis_url, run_cache_size=3))
        ids = [f"lru-{i}-{id(engine)}" for i in range(8)]
        try:
            for rid in ids:
                await engine.create_run(RunCreate.model_validate(_body(rid, 10)))
                assert len(engine.runs.states) <= 3
            page = await engine.list_runs(limit=1000)
            assert set(ids) <= {r.run_id for r in page.runs}
            assert len(engine.runs.states) <= 3
            assert (await engine.get_run(ids[0])).run_id == ids[0]  # evicted: re-read
            assert ids[0] in engine.runs.states and len(engine.runs.states) <= 3
            await engine.get_run(ids[1])
            await engine.get_run(ids[0])  # most recently used: stays
            await engine.get_run(ids[2])
            await engine.get_run(ids[3])
            assert ids[0] in engine.runs.states and ids[1] not in engine.runs.states
        finally:
            for rid in ids:
                await engine.delete_run(rid)
            await store.close()

    _run(main())


def test_the_run_cache_is_bounded_in_plan_bytes_too(
    redis_factory: Callable[..., RedisProcess],
) -> None:
    """DOCL_RUN_CACHE_BYTES: runs with 2,000-step plans (~16 kB of learning rates each)
    under a 40 kB cap: never more than two in memory, whatever DOCL_RUN_CACHE_SIZE."""

    redis_url = redis_factory().url  # its own Redis: a listing sees only this test's runs

    async def main() -> None:
        store = RedisStore.from_url(redis_url)
        settings = Settings(redis_url=redis_url, run_cache_size=100, run_cache_bytes=40_000)
        engine = Engine(store, settings)
        ids = [f"lru-bytes-{i}-{id(engine)}" for i in range(6)]
        try:
            for rid in ids:
                body = {**_body(rid, 2000), "epochs": 2, "params": {"batch_size": 2}}
                await engine.create_run(RunCreate.model_validate(body))
                assert engine.runs.states.nbytes <= 40_000 and 1 <= len(engine.runs.states) <= 2
            await engine.list_runs(limit=1000)  # other tests' runs too (one session's Redis)
            assert engine.runs.states.nbytes <= 40_000
            assert sum(rid in engine.runs.states for rid in ids) <= 2
        finally:
            for rid in ids:
                await engine.delete_run(rid)
            await store.close()

    _run(main())
