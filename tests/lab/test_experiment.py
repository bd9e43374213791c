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

from docl.lab.experiment import (
    CSV_COLUMNS,
    DEFAULT_TASKS,
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
from docl.lab.study import epoch_record

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


@pytest.mark.parametrize(
    ("name", "flipped_share", "extra"),
    [("digits-noise20", 0.2, 0.0), ("digits-noise40", 0.4, 0.0), ("digits-dup", 0.0, 0.5)],
)
def test_noisy_and_redundant_digits_keep_digits_budget_rule(
    name: str, flipped_share: float, extra: float
) -> None:
    from docl.worker.tasks import get_task

    base, setup = TASKS["digits"], TASKS[name]
    clean = get_task("digits", **base.task_params)
    data = get_task("digits", **setup.task_params)
    # the same validation split and learning rate as digits, and its 50 epochs of
    # ⌈n / 64⌉ batches on the (possibly larger) training set
    assert setup.train_task == "digits" and setup.params == base.params
    assert data.x_val is not None and data.x_val.shape == clean.x_val.shape
    epochs = base.budget // math.ceil(clean.num_samples / 64)
    assert setup.budget == epochs * math.ceil(data.num_samples / 64)
    assert data.num_samples == clean.num_samples + round(extra * clean.num_samples)
    n_labels = clean.num_samples + clean.x_val.shape[0]
    assert abs(data.info["flipped"] - flipped_share * n_labels) <= 4 * math.sqrt(
        n_labels * flipped_share * (1 - flipped_share)
    )
    assert name not in DEFAULT_TASKS  # asked for by name, not run by default


def test_noisy_mnist1d_keeps_mnist1d_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from docl.worker.tasks import get_task

    monkeypatch.setenv("DOCL_CACHE_DIR", str(tmp_path))  # not the user's ~/.cache

    base, setup = TASKS["mnist1d"], TASKS["mnist1d-noise40"]
    assert setup.train_task == "mnist1d"
    assert setup.params == base.params and setup.budget == base.budget
    assert setup.task_params == {**base.task_params, "noise": 0.4}
    # the quick variant builds the same noisy task, smaller (the full one is
    # checked in tests/worker/tasks/test_mnist1d.py)
    clean = get_task("mnist1d", **base.quick_task_params)
    data = get_task("mnist1d", **setup.quick_task_params)
    n_labels = clean.num_samples + clean.x_val.shape[0]  # type: ignore[union-attr]
    changed = int(
        (torch.cat([data.y_train, data.y_val]) != torch.cat([clean.y_train, clean.y_val])).sum()
    )  # type: ignore[list-item]
    assert data.info["flipped"] == changed
    assert abs(changed - 0.4 * n_labels) <= 4 * math.sqrt(n_labels * 0.4 * 0.6)
    assert "mnist1d-noise40" not in DEFAULT_TASKS


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


def test_pays_here_compares_each_method_with_every_control_like_numpy() -> None:
    """Each non-control method gets a verdict: gap and pooled std against random SGD and
    random-subset (final means), and — when it trained fewer batches — against random
    SGD's curve at its own batch count; it pays only when every gap exceeds its pooled std."""
    rng = np.random.default_rng(1)
    curves = {
        "random": rng.uniform(0.80, 0.85, size=(3, 6)),
        "random-subset": rng.uniform(0.70, 0.75, size=(3, 6)),
        "good": rng.uniform(0.95, 0.99, size=(3, 6)),  # beats both by far: pays
        "short": rng.uniform(0.60, 0.99, size=(3, 4)),  # 4 epochs = 400 of 600 batches
    }
    rows = [_row("t", v, s, list(c[s])) for v, c in curves.items() for s in range(3)]
    per = summarize(rows)["tasks"]["t"]["variants"]
    assert "verdict" not in per["random"] and "verdict" not in per["random-subset"]
    for v in ("good", "short"):
        vs = per[v]["verdict"]["vs"]
        final = curves[v][:, -1]
        controls = {k: curves[k][:, -1] for k in ("random", "random-subset")}
        if v == "short":  # random's curve after 400 batches = its 4th epoch
            controls["random@same"] = curves["random"][:, 3]
        assert set(vs) == set(controls)
        want_pays = True
        for k, b in controls.items():
            gap = final.mean() - b.mean()
            pooled = math.sqrt((final.std(ddof=1) ** 2 + b.std(ddof=1) ** 2) / 2)
            assert vs[k]["gap"] == pytest.approx(gap)
            assert vs[k]["pooled_std"] == pytest.approx(pooled)
            want_pays &= bool(gap > pooled)
        assert per[v]["verdict"]["pays"] == want_pays
    assert per["good"]["verdict"]["pays"]
    assert per["good"]["verdict"]["sentence"].startswith("good pays here: test accuracy")
    md = render_markdown(summarize(rows))
    assert "## Does it pay here?" in md
    assert "- good pays here" in md and "after 400 of 600 batches" in md
    # a method whose registry entry names a size-matched control is compared with it too
    ib = rng.uniform(0.80, 0.85, size=(3, 6))
    ctl = rng.uniform(0.78, 0.83, size=(3, 6))
    rows += [_row("t", "infobatch[prune_ratio=0.3]", s, list(ib[s])) for s in range(3)]
    rows += [_row("t", "infobatch-random[prune_ratio=0.3]", s, list(ctl[s])) for s in range(3)]
    per = summarize(rows)["tasks"]["t"]["variants"]
    assert "verdict" not in per["infobatch-random[prune_ratio=0.3]"]
    c = per["infobatch[prune_ratio=0.3]"]["verdict"]["vs"]["control"]
    a_, b_ = ib[:, -1], ctl[:, -1]
    assert c["gap"] == pytest.approx(a_.mean() - b_.mean())
    assert c["pooled_std"] == pytest.approx(
        math.sqrt((a_.std(ddof=1) ** 2 + b_.std(ddof=1) ** 2) / 2)
    )


def test_one_seed_gives_numbers_but_no_verdict() -> None:
    """With --seeds 1 there is no spread to judge a gap by: the report said **yes** and
    "passes yes" at a pooled std of 0.00. Now: "2+ seeds needed", never yes."""
    rows = [_row("t", "random", 0, [0.5, 0.6]), _row("t", "random-subset", 0, [0.5, 0.6]),
            _row("t", "docl", 0, [0.8, 0.9])]  # fmt: skip
    summ = summarize(rows)
    v = summ["tasks"]["t"]["variants"]["docl"]["verdict"]
    assert v["status"] == "2+ seeds needed" and v["pays"] is False
    assert v["sentence"].startswith("docl: no verdict from one seed (2+ seeds needed")
    assert "test accuracy 90.00 ± 0.00" in v["sentence"]  # the numbers are still there
    md = render_markdown(summ)
    assert "**yes**" not in md and "| yes |" not in md
    assert md.count("2+ seeds needed") >= 3  # the pays column, both bar columns


def test_a_budget_that_ends_in_the_warmup_gives_no_verdict_and_a_warning() -> None:
    """`--budget-batches 300` spent in warmup concluded "docl does not pay here"."""
    from docl.lab.experiment.summary import no_selection_warning

    def warm(row: dict[str, Any], phase: str) -> dict[str, Any]:
        return {**row, "history": [{**h, "phase": phase} for h in row["history"]]}

    rows = [warm(_row("t", v, s, [0.5, 0.6 + 0.01 * s]), "warmup")
            for v in ("random", "docl") for s in range(2)]  # fmt: skip
    v = summarize(rows)["tasks"]["t"]["variants"]["docl"]["verdict"]
    assert v["status"] == "no selection epoch" and not v["pays"]
    assert "ended before its first selection epoch" in v["sentence"]
    assert "no selection epoch" in render_markdown(summarize(rows))
    assert no_selection_warning(rows[2]) is not None  # docl
    assert no_selection_warning(rows[0]) is None  # random: uniform anyway
    selecting = warm(rows[2], "select")
    assert no_selection_warning(selecting) is None


def test_wall_time_means_leave_ray_runs_out() -> None:
    """A Ray Train run's wall time includes Ray's start-up: it is not averaged in."""
    rows = [{**_row("t", "random", s, [0.5]), "wall_time": 10.0 + s} for s in range(2)]
    rows[0]["workers"], rows[0]["wall_time"] = "ray:1", 60.0
    rows.append({**_row("t", "docl", 0, [0.5]), "workers": "ray:1", "wall_time": 50.0})
    per = summarize(rows)["tasks"]["t"]["variants"]
    assert per["random"]["wall_mean"] == 11.0 and per["random"]["ray_runs"] == 1
    assert per["docl"]["wall_ray_only"]
    md = render_markdown(summarize(rows))
    assert "| random | 11.0 |" in md and "| docl | 50.0 (Ray) |" in md


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
    r = runner.invoke(app, ["experiment", "--tasks", "no_such_pkg.data:make", "--out",
                            str(tmp_path / "z")])  # fmt: skip
    assert r.exit_code == 2 and "no_such_pkg" in r.output, r.output
    assert not any((tmp_path / d).exists() for d in "xyz")  # no empty out folder left


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


@pytest.mark.slow
def test_experiment_on_a_task_defined_outside_the_repo(tmp_path: Path) -> None:
    """``docl experiment --tasks pkg.module:factory`` like ``docl train``: the user's task
    (tests/worker/user_task.py), the controls, docl and infobatch, one seed; the report
    answers "pays here?" for docl and infobatch."""
    from docl.client.cli import _register, app

    _register()
    out = tmp_path / "user"
    r = CliRunner().invoke(app, [
        "experiment", "--tasks", "tests.worker.user_task:make_task",
        "--methods", "random,random-subset,docl,infobatch", "--seeds", "1",
        "--budget-batches", "120", "--study", "none", "--jobs", "2", "--no-progress",
        "--out", str(out),
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [x["variant"] for x in rows] == ["random", "random-subset", "docl", "infobatch"]
    assert {x["task"] for x in rows} == {"tests.worker.user_task:make_task"}
    batches = {x["variant"]: int(x["batches"]) for x in rows}
    assert batches["random"] == batches["docl"] == 120
    assert batches["infobatch"] < 120  # its pruned epochs took fewer batches
    md = (out / "results.md").read_text()
    assert "### tests.worker.user_task:make_task" in md
    for m in ("docl", "infobatch"):  # one seed: the numbers, and no verdict
        assert any(line.startswith(f"- {m}: no verdict from one seed (2+ seeds needed")
                   and "test accuracy" in line for line in md.splitlines()), md  # fmt: skip
    assert "**yes**" not in md
    assert "random SGD after the same" in md  # infobatch's budget-matched control
    _png_ok(out / "curves.png")


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_runs_and_says_a_rerun_resumes(tmp_path: Path) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) after the first finished run:
    exit 130, results for the runs done marked partial, interrupted.json, and a line
    saying that the same command resumes (before: a traceback and no word)."""
    from tests.cli_interrupt import interrupt_docl

    out = tmp_path / "exp"
    rc, output, _ = interrupt_docl(
        "experiment", "--quick", "--tasks", "digits", "--methods", "random,docl", "--seeds",
        "3", "--study", "none", "--jobs", "1", "--ray-runs", "0", "--no-progress", "--out",
        str(out), when=lambda line: line.startswith("digits "),  # a finished run's row line
    )  # fmt: skip
    assert rc == 130, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    marker = json.loads((out / "interrupted.json").read_text())
    assert marker["runs"] == 6 and 1 <= marker["runs_done"] < 6
    said = [x for x in output.splitlines() if x.startswith("interrupted: ")]
    assert said and f"{marker['runs_done']} of 6 runs are done" in said[0], output[-3000:]
    assert "Run the same `docl experiment` command again to resume" in said[0]
    assert f"**Partial: {marker['runs_done']} of 6 runs**" in (out / "results.md").read_text()
    assert len(list((out / "runs").glob("*/row.json"))) == marker["runs_done"]


# ---------------------------------------------------------------------------
# The early-stopping judge, from hand-made metrics.jsonl files
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([0.1, 0.2, 0.3, 0.4]), st.floats(0, 1, allow_nan=False)),
        min_size=1,
        max_size=12,
    ),
    st.integers(0, 13),
    st.booleans(),
)
def test_early_stop_is_the_first_best_validation_epoch(
    points: list[tuple[float, float]], cap: int, hib: bool
) -> None:
    """Against numpy: the first argmax (MSE: argmin) of the validation metric among the
    epochs whose compute is within the cap (epoch e has spent 100·(e+1) sample-passes)."""
    from docl.lab.experiment.summary import early_stop

    metric = "accuracy" if hib else "mse"
    hist = [{"epoch": e, "batches": 10 * (e + 1), "compute_samples": 100 * (e + 1),
             f"val_{metric}": v, f"test_{metric}": t} for e, (v, t) in enumerate(points)]  # fmt: skip
    val = np.array([v for v, _ in points])[:cap]
    got = early_stop(hist, metric, max_compute=100 * cap)
    if val.size == 0:
        assert got is None
        return
    e = int(np.argmax(val) if hib else np.argmin(val))
    assert got is not None and got["epoch"] == e and got["test"] == points[e][1]
    assert early_stop(hist, metric) == early_stop(hist, metric, max_compute=10**9)


def _write_run(root: Path, name: str, val: list[float], test: list[float],
               compute: list[int], phase: str = "select") -> list[dict[str, Any]]:  # fmt: skip
    """A run's metrics.jsonl as the loop writes it, read back by the runner's reader."""
    from docl.lab.experiment.runner import _read_history

    path = root / name / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    with open(path, "w") as f:
        for e, (v, t, c) in enumerate(zip(val, test, compute, strict=True)):
            line = {"epoch": e, "phase": phase, "size": 100, "batches": 10 * (e + 1),
                    "val_accuracy": v, "test_accuracy": t, "compute_samples": c,
                    "backward_samples": 100 * (e + 1), "forward_samples": c - 100 * (e + 1),
                    "train_loss": 1.0, "wall_time": 1.0}  # fmt: skip
            f.write(json.dumps(line) + "\n")
    return _read_history(path)


def _judge_row(variant: str, seed: int, history: list[dict[str, Any]]) -> dict[str, Any]:
    last = history[-1]
    return {"task": "t", "variant": variant, "method": variant.split("[")[0], "seed": seed,
            "kind": "benchmark", "metric": "accuracy", "batches": last["batches"],
            "test_accuracy": last["test_accuracy"], "val_accuracy": last["val_accuracy"],
            "compute_samples": last["compute_samples"], "wall_time": 1.0,
            "history": history}  # fmt: skip


RANDOM_RUNS = {  # seed: (val, test); compute 1000·(e+1): 6000 in all
    0: ([0.50, 0.60, 0.55, 0.58, 0.70, 0.65], [0.50, 0.61, 0.57, 0.59, 0.72, 0.66]),
    1: ([0.52, 0.62, 0.62, 0.60, 0.68, 0.66], [0.51, 0.63, 0.60, 0.61, 0.70, 0.64]),
}


def test_the_judge_reads_the_best_validation_epoch_and_equal_compute(tmp_path: Path) -> None:
    """Known by construction: random SGD early-stops at epoch 4 (test 0.72, 0.70: mean
    0.71); read up to 3,500 sample-passes (epochs 0–2) it early-stops at epoch 1 (seed
    1: a tie of 0.62 at epochs 1 and 2, the earlier wins): 0.61, 0.63. ``docl`` spent
    3,500 (cheaper), best val at epochs 2 and 3: 0.80, 0.78. ``loss-topk`` spent 18,000,
    three times random SGD's whole run: its equal-compute point is random SGD's whole
    run, marked capped; its control pool-random early-stopped 0.70, 0.72."""
    rows = []
    for s, (val, test) in RANDOM_RUNS.items():
        hist = _write_run(tmp_path, f"random{s}", val, test, [1000 * (e + 1) for e in range(6)])
        rows.append(_judge_row("random", s, hist))
    cheap = [600, 1200, 1800, 2400, 3000, 3500]
    docl = {0: ([0.5, 0.6, 0.7, 0.6, 0.6, 0.6], [0.5, 0.6, 0.80, 0.6, 0.6, 0.55]),
            1: ([0.5, 0.6, 0.65, 0.7, 0.6, 0.6], [0.5, 0.6, 0.6, 0.78, 0.6, 0.57])}  # fmt: skip
    pool = [3000 * (e + 1) for e in range(6)]
    topk = {0: ([0.5, 0.6, 0.6, 0.7, 0.6, 0.6], [0.5, 0.6, 0.6, 0.74, 0.6, 0.6]),
            1: ([0.5, 0.7, 0.6, 0.6, 0.6, 0.6], [0.5, 0.76, 0.6, 0.6, 0.6, 0.6])}  # fmt: skip
    ctl = {0: ([0.5, 0.7, 0.6, 0.6, 0.6, 0.6], [0.5, 0.70, 0.6, 0.6, 0.6, 0.6]),
           1: ([0.5, 0.7, 0.6, 0.6, 0.6, 0.6], [0.5, 0.72, 0.6, 0.6, 0.6, 0.6])}  # fmt: skip
    for variant, runs, compute in (("docl", docl, cheap), ("loss-topk", topk, pool),
                                   ("pool-random", ctl, pool)):  # fmt: skip
        for s, (val, test) in runs.items():
            hist = _write_run(tmp_path, f"{variant}{s}", val, test, compute)
            rows.append(_judge_row(variant, s, hist))

    def pooled(a: list[float], b: list[float]) -> float:
        return math.sqrt((np.std(a, ddof=1) ** 2 + np.std(b, ddof=1) ** 2) / 2)

    summ = summarize(rows)
    per = summ["tasks"]["t"]["variants"]
    assert per["random"]["early"]["test_mean"] == pytest.approx(0.71)
    assert per["random"]["early"]["epochs"] == [4, 4] and per["random"]["compute"] == 6000
    d = per["docl"]
    assert d["early"]["test_mean"] == pytest.approx(0.79) and d["early"]["epochs"] == [2, 3]
    assert d["test_mean"] == pytest.approx(0.56)  # final at budget: memorized
    vs = d["judge"]["vs"]
    assert vs["batches"]["gap"] == pytest.approx(0.08)
    assert vs["batches"]["pooled_std"] == pytest.approx(pooled([0.80, 0.78], [0.72, 0.70]))
    assert vs["compute"]["mean"] == pytest.approx(0.62) and not vs["compute"]["capped"]
    assert vs["compute"]["gap"] == pytest.approx(0.17)
    assert vs["compute"]["pooled_std"] == pytest.approx(pooled([0.80, 0.78], [0.61, 0.63]))
    assert "control" not in vs and d["judge"]["status"] == "pays"
    t = per["loss-topk"]["judge"]
    assert t["vs"]["compute"]["capped"] and t["vs"]["compute"]["mean"] == pytest.approx(0.71)
    assert t["vs"]["control"]["gap"] == pytest.approx(0.04)
    assert t["vs"]["control"]["label"] == "pool-random"
    assert pooled([0.74, 0.76], [0.70, 0.72]) < 0.04 and t["status"] == "pays"
    assert per["pool-random"]["judge"]["status"] == "control"
    assert "judge" not in per["random"]
    md = render_markdown(summ)
    assert "## Early stopping: test at the best validation epoch (the headline)" in md
    early = md.split("## Early stopping")[1].split("## Does it pay here?")[0]
    line = next(x for x in early.splitlines() if x.startswith("| docl |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1:8] == ["79.00 ± 1.41", "35", "56.00 ± 1.41", "60", "3.50k", "0.58",
                          f"+8.00 ({100 * pooled([0.80, 0.78], [0.72, 0.70]):.2f})"]  # fmt: skip
    assert cells[-1] == "**yes**"
    line = next(x for x in early.splitlines() if x.startswith("| loss-topk |"))
    assert "≤ +4.00" in line and "| 3.00 |" in line
    assert "at equal compute" in t["sentence"] and "a longer random run" in t["sentence"]
    # a variant with a parameter its control does not take finds the control without it
    rows += [{**r, "variant": "rho-loss[il=val]", "method": "rho-loss"}
             for r in rows if r["variant"] == "loss-topk"]  # fmt: skip
    per = summarize(rows)["tasks"]["t"]["variants"]
    assert per["rho-loss[il=val]"]["judge"]["vs"]["control"]["label"] == "pool-random"
    assert (
        "validation metric (and the epoch early stopping keeps) is not held out"
        in (per["rho-loss[il=val]"]["judge"]["sentence"])
    )
    assert "not held out" not in per["loss-topk"]["judge"]["sentence"]
    # rho-epoch trains the same IL model: the same caution
    rows += [{**r, "variant": "rho-epoch[il=val]", "method": "rho-epoch"}
             for r in rows if r["variant"] == "docl"]  # fmt: skip
    per = summarize(rows)["tasks"]["t"]["variants"]
    assert "is not held out" in per["rho-epoch[il=val]"]["judge"]["sentence"]
    # one seed: numbers, no verdict; no validation split: no early-stopping figure
    one = summarize([r for r in rows if r["seed"] == 0])["tasks"]["t"]["variants"]
    assert one["docl"]["judge"]["status"] == "2+ seeds needed"
    noval = [{**r, "history": [{k: v for k, v in h.items() if k != "val_accuracy"}
                               for h in r["history"]]} for r in rows]  # fmt: skip
    nv = summarize(noval)["tasks"]["t"]["variants"]["docl"]["judge"]
    assert nv["status"] == "no validation split" and not nv["pays"]
    # a budget spent in the warmup: no verdict either
    warm = [{**r, "history": [{**h, "phase": "warmup"} for h in r["history"]]} for r in rows]
    assert summarize(warm)["tasks"]["t"]["variants"]["docl"]["judge"]["status"] == (
        "no selection epoch"
    )


@pytest.mark.slow
def test_step_level_methods_on_a_task_defined_outside_the_repo(tmp_path: Path) -> None:
    """``docl experiment --tasks pkg.mod:factory --methods random,rho-loss,loss-topk,
    pool-random --seeds 2`` on a noisy user task with a validation split prints the
    early-stopping comparison with batches and compute: the same backward batches for
    all, the pools' forwards and the IL model's training in the compute."""
    from docl.client.cli import _register, app

    _register()
    out = tmp_path / "steps"
    r = CliRunner().invoke(app, [
        "experiment", "--tasks", "tests.worker.user_task:make_noisy_task",
        "--methods", "random,rho-loss,loss-topk,pool-random", "--seeds", "2",
        "--study", "none", "--jobs", "2", "--no-progress", "--out", str(out),
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and all(x["es_test"] and x["es_batches"] for x in rows)
    by = {(x["variant"], int(x["seed"])): x for x in rows}
    n, epochs = 600 - 150 - 120, 5  # training samples; epochs of the plan
    phases = [json.loads(x)["phase"] for x in
              next(out.glob("runs/*/metrics.jsonl")).read_text().splitlines()]  # fmt: skip
    selects = phases.count("select")  # the rest: the warmup and a refresh epoch
    assert len(phases) == epochs and 0 < selects < epochs
    for s in (0, 1):
        assert len({int(by[v, s]["batches"]) for v in ("random", "rho-loss", "loss-topk",
                                                       "pool-random")}) == 1  # fmt: skip
        assert int(by["random", s]["compute_samples"]) == 2 * epochs * n
        pool = 2 * epochs * n + selects * 4 * n  # a pool of 4 parts per selection step
        assert int(by["pool-random", s]["compute_samples"]) == pool
        assert int(by["loss-topk", s]["compute_samples"]) == pool
        il = 30 * n * 2 + n  # halves: 30 epochs over both halves, forward and backward
        assert int(by["rho-loss", s]["compute_samples"]) == pool + il
    assert "early stopping on tests.worker.user_task:make_noisy_task" in r.output
    for m in ("rho-loss", "loss-topk"):
        said = next(x for x in r.output.splitlines() if x.strip().startswith(f"{m} "))
        assert "at the best validation epoch" in said and "sample-passes" in said
        assert "equal backward batches" in said and "equal compute" in said
        assert "its control pool-random" in said
    md = (out / "results.md").read_text()
    assert "## Early stopping: test at the best validation epoch (the headline)" in md
    assert "### tests.worker.user_task:make_noisy_task (accuracy, early stopping)" in md
