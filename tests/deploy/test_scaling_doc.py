"""docs/scaling.md's sizes are the store's: recomputed here from ``RunLayout``.

The store's record layout is code (``services/store.py``); the doc quotes it.
When the layout changes, these tests say which figures of the doc to update
(``deploy/bench/redis_memory.py`` prints the new ones beside a measurement).
"""

from __future__ import annotations

import re

from docl.services.config import Settings
from docl.services.layout import RunLayout
from tests.deploy.deploy_util import REPO, manifest, option_value

DOC = (REPO / "docs" / "scaling.md").read_text()
SETTINGS = Settings()


def _per_sample(c: int, dtype: str) -> int:
    layout = RunLayout(
        run_id="doc",
        num_samples=1,
        num_outputs=c,
        output_dtype=dtype,
        chunk_bytes=SETTINGS.chunk_bytes,
        loss_column=False,
        exp3=False,
    )
    return layout.memory_bytes(SETTINGS.keep_epochs)


def _num(text: str) -> float:
    return float(text.replace(",", "").strip("*"))


def test_bytes_per_sample_table_is_the_layout_formula() -> None:
    row = re.compile(
        r"^\| (?P<c>\d+) \| (?P<rec>[\d,]+) B \| \*\*(?P<f32>[\d,]+) B\*\* \| [^|]+ \| (?P<f16>[\d,]+) B \|"
    )
    rows = {int(m["c"]): m for line in DOC.splitlines() if (m := row.match(line))}
    assert set(rows) == {10, 100, 1000}, "the table lists c = 10, 100, 1000"
    for c, m in rows.items():
        rec = RunLayout("doc", 1, c, "float32", SETTINGS.chunk_bytes, False, False).rec_size
        assert _num(m["rec"]) == rec, f"c={c}: record is {rec} B in the code"
        assert _num(m["f32"]) == _per_sample(c, "float32"), (
            f"c={c}: layout f32 is {_per_sample(c, 'float32')} B/sample in the code"
        )
        assert _num(m["f16"]) == _per_sample(c, "float16"), (
            f"c={c}: layout f16 is {_per_sample(c, 'float16')} B/sample in the code"
        )


def test_whole_run_sizes_follow_from_the_formula() -> None:
    sizes = {"1M": 1_000_000, "10M": 10_000_000, "1.28M": 1_281_167}
    unit = {"MB": 1e6, "GB": 1e9}
    row = re.compile(
        r"^\| (?:[\w-]+, )?n = (?P<n>[\d.]+M) \| (?P<c>\d+) \| (?P<f32>[\d.]+) (?P<u32>[MG]B) \| "
        r"(?P<f16>[\d.]+) (?P<u16>[MG]B) \|$"
    )
    found = 0
    for line in DOC.splitlines():
        m = row.match(line)
        if not m:
            continue
        found += 1
        n, c = sizes[m["n"]], int(m["c"])
        for dtype, val, u in (("float32", m["f32"], m["u32"]), ("float16", m["f16"], m["u16"])):
            want = n * _per_sample(c, dtype)
            got = float(val) * unit[u]
            assert abs(got - want) <= 0.01 * want, f"{line}: {dtype} is {want / unit[u]:.3g} {u}"
    assert found >= 4, "the whole-run table is missing"


def test_default_kubernetes_redis_capacity_follows_from_maxmemory() -> None:
    sts = manifest("StatefulSet", "docl-redis")
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    maxmemory = option_value(c["args"], "--maxmemory")
    assert maxmemory is not None and maxmemory.endswith("mb")
    budget = int(maxmemory[:-2]) * 2**20
    assert f"--maxmemory {maxmemory}` = {budget:,} B" in DOC
    m = re.search(
        r"holds about (?P<a>[\d.]+)M samples at c = 10,\s+(?P<b>[\d.]+)M at c = 100 and "
        r"(?P<k>[\d.]+)k at c = 1000",
        DOC,
    )
    assert m is not None
    for quoted, c in (
        (float(m["a"]) * 1e6, 10),
        (float(m["b"]) * 1e6, 100),
        (float(m["k"]) * 1e3, 1000),
    ):
        want = budget / _per_sample(c, "float32")
        assert abs(quoted - want) <= 0.03 * want, f"c={c}: about {want:,.0f} samples fit"


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """Cells of the rows of the first markdown table whose header starts with ``header_start``."""
    lines = text.splitlines()
    i = next(j for j, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[i + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_replica_figures_quote_performance_md_and_do_the_arithmetic() -> None:
    """R per (B, c) is performance.md's measured service rate, and the derived
    columns are the formula of the doc (u = 0.5; 2,500 and 25,000 samples/s per GPU)."""
    perf = (REPO / "docs" / "performance.md").read_text()
    measured = {
        (int(_num(r[0])), int(_num(r[1]))): _num(r[3])
        for r in _table_rows(perf, "| B | c | n | service samples/s")
    }
    rows = _table_rows(DOC, "| c | B | R: scored samples/s, one replica")
    assert len(rows) >= 3
    for r in rows:
        c, b = int(_num(r[0])), int(_num(r[1]))
        rate = _num(r[2].split()[0])
        assert (b, c) in measured, f"performance.md has no B={b}, c={c} row"
        assert rate == measured[(b, c)], (
            f"B={b}, c={c}: performance.md now says {measured[(b, c)]:,.0f}"
        )
        assert _num(r[3]) == round(0.5 * rate), f"B={b}, c={c}: u x R"
        assert float(r[4]) == round(0.5 * rate / 2500, 1), f"B={b}, c={c}: GPUs per replica"
        assert float(r[5]) == round(25000 / (0.5 * rate), 1), f"B={b}, c={c}: replicas per GPU"
