"""`docl bench store` on a real Redis, small: every variant runs, and the safe ones
(the Lua compare-and-set the store uses, MULTI/EXEC watching the records) lose no
update even when all writers meet on shared samples."""

from __future__ import annotations

from docl.lab.bench_store import run_store_bench


def test_store_bench_runs_every_variant_and_the_safe_ones_lose_nothing(redis_url: str) -> None:
    lines: list[str] = []
    results = run_store_bench(
        redis_url=redis_url, num_samples=2000, batch=16, width=4, clients=3, reports=6,
        echo=lines.append,
    )  # fmt: skip
    got = {(r.variant, r.shared) for r in results}
    variants = ("lua-cas", "multi-watch-marker", "multi-watch-records")
    assert got == {(v, s) for v in variants for s in (False, True)}
    for r in results:
        assert r.samples_per_s > 0
        if r.variant != "multi-watch-marker":
            assert r.lost_updates == 0, r
    assert len(lines) == 2 + len(results)  # two header lines, one row per result
