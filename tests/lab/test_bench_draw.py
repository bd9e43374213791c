"""``docl bench draw``: the draw math per thread count, each row beside the one-thread row."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from docl.lab.bench_draw import run_draw_bench
from docl.services import sampling


def test_draw_bench_rows_per_thread_count_draw_the_same_indices() -> None:
    """Above PARALLEL_MIN the pieces run on the pool; the bench itself raises if any
    thread count draws differently from one thread (checked here by the rows existing)."""
    lines: list[str] = []
    n = sampling.PARALLEL_MIN + 1_000
    rows = run_draw_bench(sizes=(n,), threads=(2,), repeats=1, echo=lines.append)
    assert [r["threads"] for r in rows] == [1, 2]
    for r in rows:
        assert r["k"] == int(0.9 * n)
        parts = r["standardize_s"] + r["gumbel_s"] + r["shuffle_s"]
        assert r["total_s"] == pytest.approx(parts) and r["total_s"] > 0
    assert rows[0]["speedup"] == 1.0
    assert rows[1]["speedup"] == pytest.approx(rows[0]["total_s"] / rows[1]["total_s"])
    assert "speed-up" in lines[1] and len(lines) == 4
    assert min(8, os.cpu_count() or 1) == sampling._POOL_SIZE  # the default again afterwards


def test_draw_bench_cli_prints_its_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()", "bench", "draw", "--n", "20000", "-t", "2",
         "--repeats", "1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.strip().startswith("20,000")]
    assert [r[2] for r in rows] == ["1", "2"]
