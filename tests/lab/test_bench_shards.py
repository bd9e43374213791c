"""``python -m docl.lab.bench_shards`` on the real 3-primary cluster, tiny."""

from __future__ import annotations

import pytest

from docl.lab.bench_shards import main, run_bench
from docl.services.embedded import RedisClusterProcess


def test_bench_shards_prints_a_row_per_shard_count_and_checks_every_run(
    redis_cluster: RedisClusterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = run_bench(
        redis_url=redis_cluster.url, shards=[1, 3], num_samples=3000, width=10, batch=250,
        clients=2, rounds=1, draw_n=5000,
    )  # fmt: skip
    assert [r["shards"] for r in rows] == [1, 3]
    assert all(r["errors"] == 0 and r["rate"] > 0 for r in rows)  # every sample scored once
    assert all(r["draw_n_s"] > 0 for r in rows)
    assert rows[0]["max_node_share"] == 1.0  # unsharded: the whole run on one primary
    assert rows[1]["max_node_share"] < 0.7  # 3 shards: spread over the primaries
    assert rows[1]["bytes_per_sample"] > 64  # records (64 B at c = 10) + columns, log, ...
    out = capsys.readouterr().out
    assert "vs 1 shard" in out and "1.00x" in out


def test_bench_shards_wants_the_unsharded_baseline_first() -> None:
    with pytest.raises(SystemExit):
        main(["--shards", "3,6"])
