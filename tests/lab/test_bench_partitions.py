"""``python -m docl.lab.bench_partitions`` on the real 3-primary cluster, tiny."""

from __future__ import annotations

import pytest

from docl.lab.bench_partitions import main, run_bench
from docl.services.embedded import RedisClusterProcess


def test_bench_partitions_prints_a_row_per_partition_count_and_checks_every_run(
    redis_cluster: RedisClusterProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = run_bench(
        redis_url=redis_cluster.url, partitions=[1, 3], num_samples=3000, width=10, batch=250,
        clients=2, rounds=1, draw_n=5000,
    )  # fmt: skip
    assert [r["partitions"] for r in rows] == [1, 3]
    assert all(r["errors"] == 0 and r["rate"] > 0 for r in rows)  # every sample scored once
    assert all(r["draw_n_s"] > 0 for r in rows)
    assert rows[0]["max_node_share"] == 1.0  # unpartitioned: the whole run on one primary
    assert rows[1]["max_node_share"] < 0.7  # 3 partitions: spread over the primaries
    assert rows[1]["bytes_per_sample"] > 64  # records (64 B at c = 10) + columns, log, ...
    out = capsys.readouterr().out
    assert "vs 1 partition" in out and "1.00x" in out


def test_bench_partitions_wants_the_unpartitioned_baseline_first(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--partitions", "3,6"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--partitions must start with 1" in err and "deprecated" not in err


def test_the_old_shards_option_still_works_with_one_deprecation_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as e:  # read as --partitions: the same refusal
        main(["--shards", "3,6"])
    assert e.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if "deprecated" in line] == [
        "--shards is deprecated: it is --partitions now"
    ]
    assert any("--partitions must start with 1" in line for line in err)
