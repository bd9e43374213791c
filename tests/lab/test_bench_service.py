"""`docl bench service --quick` runs end to end and prints its tables (not a timing test:
the figures themselves are not asserted, only that every row is there and error-free)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_bench_service_quick_prints_the_tables(tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()", "bench", "service", "--quick",
         "--clients", "4", "--json", str(out_json)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "samples/s" in text and "limit/s" in text and "ratio" in text
    (where,) = [line for line in text.splitlines() if line.startswith("[embedded] redis ")]
    assert ":***@" in where, where  # the embedded Redis's password is not printed
    assert "numpy s" in text and "draw s" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("embedded ")]
    assert len(rows) == 2  # one report row (B=256, c=10) and one draw row (n=100k)
    report_row, draw_row = rows
    assert report_row[1:4] == ["256", "1", "10"] and report_row[-1] == "0"  # no failed report
    assert draw_row[1] == "100,000"
    result = json.loads(out_json.read_text())
    (rep,) = result["reports"]
    assert rep["service_rate"] > 0 and rep["limit_rate"] > 0 and rep["errors"] == 0
    assert rep["frames"] == 1 and rep["redis_us"] > 0
    # process CPU comes in 10 ms clock ticks: the quick pass's one frame may cost the
    # server less than one (seen once in a loaded -n 3 run), never a negative amount
    assert 0 <= rep["server_us"] < 1e6, rep
    assert rep["p50_ms"] <= rep["p99_ms"]
    (draw,) = result["draws"]
    assert draw["k"] == 90_000 and draw["service_s"] > 0 and draw["limit_s"] > 0
    # the server's own timing of its read and its math fit inside the end-to-end time
    b = draw["breakdown"]
    assert b["read_s"] > 0 and b["compute_s"] > 0 and b["math_s"] > 0
    assert b["read_s"] + b["compute_s"] < draw["service_s"]
    assert draw["math_ratio"] == b["math_s"] / draw["service_s"]
    assert 20 < b["server_peak_mib"] < 4096  # a Python process with numpy and the app loaded


def test_a_redis_url_is_printed_without_its_password() -> None:
    from docl.lab.bench_service import _no_password

    assert _no_password("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert _no_password("redis://u:pw@h:1/0") == "redis://u:***@h:1/0"
    assert _no_password("unix://:pw@/tmp/r.sock?db=0") == "unix://:***@/tmp/r.sock?db=0"
    assert _no_password("redis://h:6379/0") == "redis://h:6379/0"
