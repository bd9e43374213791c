"""``python -m docl.lab.bench_wait`` on a real 3 + 3 cluster, tiny: both servers (WAIT
off and WAIT 1) score every report without an error, and the summary line is printed."""

from __future__ import annotations

import pytest

from docl.lab.bench_wait import run_wait_bench


def test_bench_wait_measures_both_modes_without_errors(
    capsys: pytest.CaptureFixture[str],
) -> None:
    res = run_wait_bench(reports=12, batch=64, clients=2, rounds=1, wait_ms=2000)
    assert set(res) == {"off", "on"}
    for mode, r in res.items():
        assert r["errors"] == 0, mode  # a 503 (too few replicas acked) counts as an error
        assert r["reports_s"] > 0 and r["samples_s"] == pytest.approx(64 * r["reports_s"])
        assert 0 < r["p50_ms"] <= r["p99_ms"]
    assert "on / off throughput:" in capsys.readouterr().out
