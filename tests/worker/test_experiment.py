"""docl experiment: variant parsing, the summary math, the study's per-epoch numbers,
and the whole pipeline in --quick mode through a real score server, the real
loop and (once) Ray Train.

The quick run checks the pipeline and its files (CSV columns, the table, valid
PNGs, every run's server-side visit counts), not which method wins: that is
what docs/results.md is for.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from docl.lab.study import epoch_record
from docl.worker.experiment import (
    CSV_COLUMNS,
    STUDY_METHODS,
    TASKS,
    ExperimentError,
    ExperimentSpec,
    batches_to_reach,
    build_jobs,
    parse_variant,
    parse_variants,
    render_markdown,
    run_experiment,
    summarize,
)

# ---------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------


def test_parse_variant_reads_method_and_typed_params() -> None:
    v = parse_variant("docl[tau=1,normalize=none,exp3=true,episode_epochs=4,l2_phases=None]")
    assert v.method == "docl"
    assert v.params == {
        "tau": 1,
        "normalize": "none",
        "exp3": True,
        "episode_epochs": 4,
        "l2_phases": None,
    }
    assert parse_variant(" random ").params == {}
    assert parse_variant("docl[rho_power=0.1]").params == {"rho_power": 0.1}


def test_parse_variants_splits_on_top_level_commas_only() -> None:
    vs = parse_variants("random,docl[tau=1,normalize=none],spl")
    assert [v.label for v in vs] == ["random", "docl[tau=1,normalize=none]", "spl"]
    assert [v.method for v in vs] == ["random", "docl", "spl"]


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("sgd", "unknown method 'sgd'"),
        ("docl[tua=1]", "unknown run parameter 'tua'"),
        ("docl[tau=-1]", "tau"),
        ("docl[normalize=l1]", "normalize"),
        ("docl[tau]", "is not key=value"),
        ("docl[seed=3]", "set by the experiment"),
        ("docl[tau=1", "cannot parse"),
    ],
)
def test_bad_variants_are_clear_errors(label: str, message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        parse_variant(label)


def test_duplicate_variants_are_an_error() -> None:
    with pytest.raises(ExperimentError, match="given twice"):
        parse_variants("docl,random,docl")


def test_jobs_share_the_task_schedule_and_the_variant_overrides_it() -> None:
    variants = parse_variants("random,docl[lr_peak=0.3,tau=2]")
    jobs = build_jobs(["digits"], variants, [0, 1], study_task="digits", ray_runs=1)
    bench = [j for j in jobs if j.kind == "benchmark"]
    study = [j for j in jobs if j.kind == "study"]
    assert len(bench) == 4 and [j.method for j in study] == list(STUDY_METHODS)
    setup = TASKS["digits"]
    assert all(j.budget == setup.budget for j in jobs)
    rnd = next(j for j in bench if j.variant == "random")
    assert rnd.params == setup.params
    docl = next(j for j in bench if j.method == "docl")
    assert docl.params["lr_peak"] == 0.3 and docl.params["tau"] == 2
    assert [j.ray for j in jobs].count(True) == 1 and jobs[0].ray
    # a changed configuration is a different run directory (resume never mixes them)
    assert len({j.key for j in jobs}) == len(jobs)
    other = build_jobs(["digits"], variants, [0, 1], budget=7)
    assert {j.key for j in other}.isdisjoint(j.key for j in jobs)


# ---------------------------------------------------------------------------
# Summary math, against independent computations
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=30),
    st.floats(0, 1, allow_nan=False),
    st.booleans(),
)
def test_batches_to_reach_is_the_first_crossing(
    values: list[float], target: float, hib: bool
) -> None:
    batches = [10 * (i + 1) for i in range(len(values))]
    got = batches_to_reach(batches, values, target, higher_is_better=hib)
    v = np.asarray(values)
    hits = np.flatnonzero(v >= target if hib else v <= target)
    assert got == (None if hits.size == 0 else float(batches[hits[0]]))


def _row(
    task: str, variant: str, seed: int, curve: list[float], metric: str = "accuracy"
) -> dict[str, Any]:
    hist = [
        {"batches": 100 * (i + 1), f"test_{metric}": v, f"val_{metric}": v - 0.01}
        for i, v in enumerate(curve)
    ]
    return {
        "task": task,
        "variant": variant,
        "method": variant.split("[")[0],
        "seed": seed,
        "kind": "benchmark",
        "metric": metric,
        "batches": 100 * len(curve),
        f"test_{metric}": curve[-1],
        f"val_{metric}": curve[-1] - 0.01,
        "wall_time": 1.0,
        "history": hist,
    }


def test_summary_means_stds_bar_and_reach_match_numpy() -> None:
    rng = np.random.default_rng(0)
    curves = {
        "random": rng.uniform(0.5, 0.9, size=(3, 5)),
        "random-subset": rng.uniform(0.5, 0.9, size=(3, 5)),
        "docl": rng.uniform(0.5, 0.95, size=(3, 5)),
    }
    rows = [_row("t", v, s, list(c[s])) for v, c in curves.items() for s in range(3)]
    summ = summarize(rows)
    per = summ["tasks"]["t"]["variants"]
    for v, c in curves.items():
        assert per[v]["test_mean"] == pytest.approx(c[:, -1].mean())
        assert per[v]["test_std"] == pytest.approx(c[:, -1].std(ddof=1))
        assert per[v]["curve"]["mean"] == pytest.approx(c.mean(axis=0).tolist())
        # first epoch end at which the mean curve reaches random's final mean,
        # relative to random's own first crossing
        target = curves["random"][:, -1].mean()
        base = 100.0 * (np.flatnonzero(curves["random"].mean(axis=0) >= target)[0] + 1)
        hit = np.flatnonzero(c.mean(axis=0) >= target)
        want = None if hit.size == 0 else 100.0 * (hit[0] + 1) / base
        assert per[v]["reach_ratio"] == (None if want is None else pytest.approx(want))
    bar = summ["tasks"]["t"]["bar"]
    for base in ("random", "random-subset"):
        d, b = curves["docl"][:, -1], curves[base][:, -1]
        gap = d.mean() - b.mean()
        pooled = math.sqrt((d.std(ddof=1) ** 2 + b.std(ddof=1) ** 2) / 2)
        assert bar[base]["gap"] == pytest.approx(gap)
        assert bar[base]["pooled_std"] == pytest.approx(pooled)
        assert bar[base]["passes"] == (gap > pooled)
    md = render_markdown(summ)
    best = max(curves, key=lambda v: curves[v][:, -1].mean())
    best_line = next(line for line in md.splitlines() if line.startswith(f"| {best} |"))
    assert "**" in best_line  # the best mean is bold


def test_summary_of_mse_prefers_lower_and_signs_the_gap() -> None:
    rows = [_row("d", "random", s, [0.9, 0.5 + 0.01 * s], "mse") for s in range(2)]
    rows += [_row("d", "docl", s, [0.8, 0.4 + 0.01 * s], "mse") for s in range(2)]
    summ = summarize(rows)
    assert summ["tasks"]["d"]["best_test"] == pytest.approx(0.405)
    assert summ["tasks"]["d"]["bar"]["random"]["gap"] == pytest.approx(0.1)  # DoCL lower = better
    assert summ["tasks"]["d"]["variants"]["docl"]["reach_batches"] == 200.0


# ---------------------------------------------------------------------------
# The study's per-epoch record
# ---------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(st.integers(4, 60), st.integers(0, 2**31 - 1))
def test_epoch_record_matches_a_direct_computation(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=n).astype(np.float32)
    scores[rng.random(n) < 0.2] = np.nan
    p = rng.uniform(size=n)
    sel = rng.choice(n, size=max(1, n // 3), replace=False)
    rec = epoch_record(sel, scores, p)
    mask = np.zeros(n, bool)
    mask[sel] = True
    s_sel = scores[mask][np.isfinite(scores[mask])].astype(np.float64)
    if s_sel.size:
        assert rec["sel_score_mean"] == pytest.approx(s_sel.mean(), rel=1e-6)
    else:
        assert rec["sel_score_mean"] is None
    assert rec["unsel_p_mean"] == pytest.approx(p[~mask].mean())
    # the high half: unselected, scored samples at or above the median split
    un = [i for i in range(n) if not mask[i] and np.isfinite(scores[i])]
    un.sort(key=lambda i: (scores[i], i))
    h = len(un) // 2
    if h:
        assert rec["unsel_hi_p_mean"] == pytest.approx(p[un[len(un) - h :]].mean())
        assert rec["unsel_lo_p_mean"] == pytest.approx(p[un[:h]].mean())
        assert rec["unsel_hi_score_mean"] >= rec["unsel_lo_score_mean"]


# ---------------------------------------------------------------------------
# The CLI rejects bad input before starting anything
# ---------------------------------------------------------------------------


def test_cli_rejects_a_bad_variant_and_an_unknown_task(tmp_path: Path) -> None:
    from docl.client.cli import _register, app

    _register()
    runner = CliRunner()
    r = runner.invoke(app, ["experiment", "--methods", "docl[tua=1]", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2
    assert "unknown run parameter 'tua'" in r.output
    r = runner.invoke(app, ["experiment", "--tasks", "cifar", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2
    assert "unknown task(s) cifar" in r.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ---------------------------------------------------------------------------
# The pipeline, --quick, through a real server, the real loop and Ray
# ---------------------------------------------------------------------------


def _png_ok(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.stat().st_size <= 300_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


@pytest.mark.slow
def test_quick_experiment_writes_every_output_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "exp"
    spec = ExperimentSpec(
        out=out,
        tasks=["digits", "distill"],
        variants=parse_variants("random,random-subset,docl"),
        seeds=[0, 1],
        quick=True,
        jobs=2,
        study_task="digits",
        progress=False,
    )
    lines: list[str] = []
    summary = run_experiment(spec, echo=lines.append)
    assert summary["failures"] == []
    n_bench = 2 * 3 * 2
    n_runs = n_bench + len(STUDY_METHODS)

    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == n_runs
    assert {(r["task"], r["variant"], r["seed"]) for r in rows if r["kind"] == "benchmark"} == {
        (t, v, str(s))
        for t in ("digits", "distill")
        for v in ("random", "random-subset", "docl")
        for s in (0, 1)
    }
    assert {r["workers"] for r in rows} == {"in-process"}
    for r in rows:
        # the server saw every run: samples were reported and visited
        assert int(r["visits_total"]) > 0 and int(r["visited"]) > 0, r
        assert int(r["batches"]) == TASKS[r["task"]].quick_budget
        assert math.isfinite(float(r["test"])) and math.isfinite(float(r["val"]))
        metric = "mse" if r["task"] == "distill" else "accuracy"
        assert r["metric"] == metric
        if metric == "accuracy":
            assert 0.0 <= float(r["test"]) <= 1.0
        # DoCL-style runs scored samples on the server (seen twice at least)
        if r["method"] in ("docl", "top", "bottom", "alternate"):
            assert int(r["samples_scored"]) > 0

    md = (out / "results.md").read_text()
    for v in ("random", "random-subset", "docl"):
        assert any(line.startswith(f"| {v} |") for line in md.splitlines())
    assert "The bar" in md and "| digits |" in md and "| distill |" in md

    w, h = _png_ok(out / "curves.png")
    assert w > 300 and h > 200
    _png_ok(out / "study.png")

    study = [json.loads(p.read_text()) for p in (out / "runs").glob("digits__top__*/row.json")]
    assert len(study) == 1
    recs = study[0]["study"]
    assert [r["epoch"] for r in recs] == list(range(len(recs)))
    sel = [r for r in recs if r["phase"] == "select"]
    assert sel, "the quick plan reaches selection epochs"
    k = sel[0]["selected"]
    assert all(r["selected"] == k for r in sel[:-1])  # fixed k = 0.2 n (the last may be cut)

    # Resume: nothing is trained again, the results are the same runs.
    again: list[str] = []
    summary2 = run_experiment(spec, echo=again.append)
    assert any(f"{n_runs} runs ({n_runs} already in" in line for line in again)
    assert any("(0 runs trained now" in line for line in again)
    with open(out / "results.csv", newline="") as f:
        assert [r["run_id"] for r in csv.DictReader(f)] == [r["run_id"] for r in rows]
    assert summary2["failures"] == []


@pytest.mark.slow
@pytest.mark.ray
def test_a_run_through_ray_train_matches_the_same_run_in_process(
    ray_cluster: str, tmp_path: Path
) -> None:
    """--quick sends its first run through Ray Train (one worker, RaySession, DDP
    code path, checkpoints): the same job in-process trains the same model."""
    common: dict[str, Any] = {
        "tasks": ["digits"],
        "variants": parse_variants("docl"),
        "seeds": [0],
        "quick": True,
        "jobs": 1,
        "study_task": None,
        "progress": False,
    }
    r1 = run_experiment(
        ExperimentSpec(out=tmp_path / "ray", ray_runs=1, ray_address=ray_cluster, **common),
        echo=lambda _: None,
    )
    r2 = run_experiment(ExperimentSpec(out=tmp_path / "local", **common), echo=lambda _: None)
    assert r1["failures"] == [] and r2["failures"] == []
    rows = {}
    for name in ("ray", "local"):
        with open(tmp_path / name / "results.csv", newline="") as f:
            (rows[name],) = list(csv.DictReader(f))
    assert rows["ray"]["workers"] == "ray:1" and rows["local"]["workers"] == "in-process"
    for r in rows.values():
        assert int(r["visits_total"]) > 0 and int(r["samples_scored"]) > 0
    # same plan, same draws (same run seed), same init: the same training
    for key in ("batches", "visits_total", "visited", "samples_scored"):
        assert rows["ray"][key] == rows["local"][key], key
    assert float(rows["ray"]["test"]) == pytest.approx(float(rows["local"]["test"]), abs=1e-9)
