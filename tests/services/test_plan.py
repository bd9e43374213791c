"""Tests of services/plan.py: a worked example computed by hand, and property
tests that re-derive every rule of docs/architecture.md "The plan"
independently (plain Python loops) for random run configs."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docl.services.config import Settings
from docl.services.methods import method_names, registry
from docl.services.plan import (
    EpochSpec,
    PlanLimits,
    PlanTooLarge,
    build_plan,
    cosine_lr,
    episode_length,
    lambda_at,
    lr_sum_at,
    min_subset,
    plan_epoch,
    plan_size,
    subset_size,
    total_steps,
)
from docl.wire.models import RunCreate, RunParams


def _run(method: str = "docl", n: int = 1000, epochs: int | None = 20, **params: Any) -> RunCreate:
    params.setdefault("batch_size", 100)
    return RunCreate(num_samples=n, num_outputs=10, method=method, epochs=epochs,  # type: ignore[arg-type]
                     params=RunParams(**params))  # fmt: skip


def test_worked_example_docl() -> None:
    """docs/algorithm.md's example: n = 1000, batch 100, docl, defaults, 14 epochs."""
    plan = build_plan(_run(epochs=14))
    got = [(e.episode, e.phase, e.loss, e.size, e.steps) for e in plan]
    assert got == (
        [(0, "warmup", "task", 1000, 10)] * 5
        + [(1, "select", "task", 900, 9)] * 3  # L_1 = 3, k = 1000·0.9
        + [(1, "refresh", "task", 1000, 10)]
        + [(2, "select", "task", 810, 9)] * 4  # L_2 = max(4, round(3.75)) = 4
        + [(2, "refresh", "task", 1000, 10)]
    )
    # episode 1: one cosine over its 3·9 + 10 = 37 steps from 0.1·0.85 to 0.001·0.85
    ep1 = np.concatenate([e.lr for e in plan[5:9]])
    s = np.arange(37)
    np.testing.assert_allclose(
        ep1, 0.00085 + 0.5 * (0.085 - 0.00085) * (1 + np.cos(np.pi * s / 37))
    )
    assert plan[5].lr_start == pytest.approx(0.085) and plan[0].lr_start == pytest.approx(0.1)
    assert plan[0].lr_sum_start == 0.0


def test_worked_example_mcl_grows_and_prunes() -> None:
    plan = build_plan(_run("mcl", epochs=14))
    sel = [e for e in plan if e.phase == "select"]
    # grow from k_min·n = 200: /0.9 per episode (the warmup counts as one), then
    # diversity keeps ceil(0.8·k)
    assert [(e.episode, e.draw_size, e.size) for e in sel] == [(1, 223, 179)] * 3 + [
        (2, 247, 198)
    ] * 4
    assert all(e.prune for e in sel)
    assert [e.lam for e in sel] == pytest.approx([0.9**t for t in range(7)])
    assert {e.loss for e in plan} == {"task"}  # mcl trains warmup/refresh with its task loss


def test_episode_lengths_follow_the_recurrence() -> None:
    p = RunParams(episode_epochs=3, episode_growth=1.25)
    assert [episode_length(p, j) for j in range(1, 7)] == [3, 4, 5, 6, 8, 10]
    p = RunParams(episode_epochs=2, episode_growth=1.0)
    assert [episode_length(p, j) for j in range(1, 5)] == [2, 3, 4, 5]  # strictly grows anyway


def test_budget_only_plan_meets_the_budget_exactly() -> None:
    plan = build_plan(_run(epochs=None, budget_batches=123))
    assert total_steps(plan) == 123
    last = plan[-1]
    assert last.steps == 123 - sum(e.steps for e in plan[:-1])
    assert last.size == min(last.steps * 100, build_plan(_run(epochs=len(plan)))[-1].size)


def test_budget_cut_keeps_the_uncut_learning_rates() -> None:
    full = build_plan(_run(epochs=12))
    cut = build_plan(_run(epochs=12, budget_batches=63))
    assert total_steps(cut) == 63
    for a, b in zip(cut, full, strict=False):
        np.testing.assert_array_equal(a.lr, b.lr[: a.steps])
        assert a.lr_sum_start == b.lr_sum_start


def test_random_keeps_the_same_phases_with_full_data() -> None:
    docl = build_plan(_run("docl", epochs=25))
    rnd = build_plan(_run("random", epochs=25))
    assert [(e.episode, e.phase) for e in rnd] == [(e.episode, e.phase) for e in docl]
    assert {e.size for e in rnd} == {1000} and {e.loss for e in rnd} == {"task"}
    # and random-subset, the control, has exactly DoCL's plan
    assert build_plan(_run("random-subset", epochs=25)) == docl


def test_k_decay_per_epoch() -> None:
    plan = build_plan(_run(epochs=12, k_decay="epoch"))
    sizes = [e.size for e in plan if e.phase == "select"]
    # decays after the warmup and after every selection epoch
    assert sizes == [math.ceil(round(1000 * 0.9**m, 9)) for m in range(1, len(sizes) + 1)]


def test_overrides_of_l2_phases_and_diversity() -> None:
    plan = build_plan(_run("docl", epochs=9, l2_phases=False, diversity=True))
    assert {e.loss for e in plan} == {"task"}
    sel = [e for e in plan if e.phase == "select"]
    assert all(e.prune and e.size == math.ceil(0.8 * e.draw_size) for e in sel)
    plan = build_plan(_run("random", epochs=9, l2_phases=True, refresh=False, warmup_epochs=0))
    assert [e.phase for e in plan] == ["select"] * 3 + ["select"] * 4 + ["select"] * 2
    assert {e.loss for e in plan} == {"task"}  # no warmup/refresh left to use L2


def test_plan_epoch_rows_and_lr_sum_at() -> None:
    plan = build_plan(_run(epochs=10))
    rows = [plan_epoch(e) for e in plan]
    assert [r.epoch for r in rows] == list(range(10))
    for r, e in zip(rows, plan, strict=True):
        assert (r.phase, r.loss, r.size, r.steps) == (e.phase, e.loss, e.size, e.steps)
        assert r.lr_start == e.lr[0] and r.lr_end == e.lr[-1]
        assert r.lr_sum_start == e.lr_sum_start
    with pytest.raises(ValueError, match="epoch"):
        lr_sum_at(plan, 10, 0)
    with pytest.raises(ValueError, match="step"):
        lr_sum_at(plan, 0, plan[0].steps + 1)
    assert lr_sum_at(plan, 3, plan[3].steps) == plan[4].lr_sum_start == plan[3].lr_sum_end


def test_plan_is_a_pure_function_of_the_config() -> None:
    a = build_plan(_run(epochs=30, seed=1))
    b = build_plan(_run(epochs=30, seed=1))
    assert a == b and a is not b
    assert build_plan(_run(epochs=30, lr_peak=0.2)) != a


# --------------------------------------------------------------------------- #
# property test: every rule, re-derived independently
# --------------------------------------------------------------------------- #

configs = st.fixed_dictionaries(
    {
        "method": st.sampled_from(method_names()),
        "n": st.integers(1, 3000),
        "epochs": st.one_of(st.none(), st.integers(1, 60)),
        "batch_size": st.integers(1, 700),
        "warmup_epochs": st.integers(0, 4),
        "episode_epochs": st.integers(1, 4),
        "episode_growth": st.sampled_from([1.0, 1.25, 1.5, 2.0]),
        "refresh": st.booleans(),
        "l2_phases": st.sampled_from([None, True, False]),
        "lr_peak": st.sampled_from([0.1, 0.5]),
        "lr_min": st.sampled_from([0.0, 0.001]),
        "lr_decay": st.sampled_from([0.85, 1.0]),
        "gamma_k": st.sampled_from([0.5, 0.9, 1.0]),
        "k_min": st.sampled_from([0.05, 0.2, 1.0]),
        "k_decay": st.sampled_from(["episode", "epoch"]),
        "budget_batches": st.one_of(st.none(), st.integers(1, 400)),
        "diversity": st.sampled_from([None, True, False]),
        "gamma_k_prime": st.sampled_from([0.5, 0.8, 1.0]),
    }
).filter(lambda c: c["epochs"] is not None or c["budget_batches"] is not None)


def _expected_lr(plan: list[EpochSpec], p: RunParams) -> None:
    """Per episode, the lrs are one cosine over the episode's steps, from
    lr_peak·lr_decay^j toward lr_min·lr_decay^j. An episode the plan ends inside
    (epoch cap or budget) is a prefix of its cosine: only its shape is checked."""
    for j in sorted({e.episode for e in plan}):
        eps = [e for e in plan if e.episode == j]
        lr = np.concatenate([e.lr for e in eps])
        peak, floor = p.lr_peak * p.lr_decay**j, p.lr_min * p.lr_decay**j
        assert lr[0] == pytest.approx(peak, rel=1e-12)
        if eps[-1] is not plan[-1]:  # a complete episode
            s = np.arange(lr.size)
            np.testing.assert_allclose(
                lr, floor + 0.5 * (peak - floor) * (1 + np.cos(np.pi * s / lr.size)), rtol=1e-12
            )
        assert np.all(lr >= floor - 1e-15) and np.all(lr <= peak + 1e-15)
        assert np.all(np.diff(lr) <= 1e-15)  # anneals


@settings(max_examples=150, deadline=None)
@given(c=configs)
def test_plan_rules_hold_for_random_configs(c: dict[str, Any]) -> None:
    method, n, epochs = c.pop("method"), c.pop("n"), c.pop("epochs")
    run = RunCreate(num_samples=n, num_outputs=3, method=method, epochs=epochs,
                    params=RunParams(**c))  # fmt: skip
    p = run.params
    plan = build_plan(run)
    spec = registry()[method]
    bs = p.batch_size
    l2 = spec.l2_phases if p.l2_phases is None else p.l2_phases
    prune = spec.diversity if p.diversity is None else p.diversity
    kmin = min(n, max(1, math.ceil(round(p.k_min * n, 9))))

    # length: the epoch cap or the budget, whichever comes first
    steps = [e.steps for e in plan]
    assert all(s >= 1 for s in steps)
    budget = p.budget_batches
    if budget is not None and sum(steps) == budget:
        assert epochs is None or len(plan) <= epochs
    else:
        assert len(plan) == epochs
        assert budget is None or sum(steps) < budget
    assert [e.epoch for e in plan] == list(range(len(plan)))

    # structure: warmup, then episodes of L_j selects (+ refresh)
    expected_phases: list[tuple[int, str]] = [(0, "warmup")] * p.warmup_epochs
    j, length = 1, p.episode_epochs
    while len(expected_phases) < len(plan):
        expected_phases += [(j, "select")] * length + ([(j, "refresh")] if p.refresh else [])
        j, length = j + 1, max(length + 1, math.floor(length * p.episode_growth + 0.5))
    assert [(e.episode, e.phase) for e in plan] == expected_phases[: len(plan)]

    # sizes, steps, losses, λ
    cut = budget is not None and sum(steps) == budget
    t = 0
    for e in plan:
        last = e is plan[-1]
        if e.phase == "select":
            m = e.episode if p.k_decay == "episode" else t + 1
            if spec.size in ("full", "drawn"):
                k = n
            elif spec.size == "shrink":
                k = max(kmin, math.ceil(round(n * p.gamma_k**m, 9)))
            else:
                k = min(n, max(kmin, math.ceil(round(kmin / p.gamma_k**m, 9))))
            k = min(k, n)
            want = math.ceil(round(p.gamma_k_prime * k, 9)) if prune else k
            assert e.loss == "task" and e.select_index == t
            assert e.lam == pytest.approx(p.lambda0 * p.gamma_lambda**t)
            assert e.lam == lambda_at(p, t) and e.prune == prune
            assert e.draw_size == (k if prune or not (last and cut) else e.size)
            t += 1
        else:
            want = n
            assert e.loss == ("l2" if l2 else "task") and not e.prune
            assert e.draw_size == e.size
        if last and cut:
            assert e.steps <= math.ceil(want / bs)
            assert e.size == min(want, e.steps * bs)
        else:
            assert e.size == want and e.steps == math.ceil(want / bs)
        assert e.lr.shape == (e.steps,) and e.lr.dtype == np.float64

    # sizes per schedule over the selection epochs
    sel = [e.draw_size for e in plan if e.phase == "select" and not (e is plan[-1] and cut)]
    if spec.size == "shrink":
        assert all(a >= b for a, b in itertools.pairwise(sel))
    elif spec.size == "grow":
        assert all(a <= b for a, b in itertools.pairwise(sel))

    # learning rates and their exact running sum
    _expected_lr(plan, p)
    running = 0.0
    for e in plan:
        assert e.lr_sum_start == running  # bit for bit: same order of additions
        for s in range(e.steps):
            assert lr_sum_at(plan, e.epoch, s) == running
            running += float(e.lr[s])
        assert lr_sum_at(plan, e.epoch, e.steps) == running == e.lr_sum_end


def test_cosine_lr_formula() -> None:
    lr = cosine_lr(1.0, 0.1, 4)
    np.testing.assert_allclose(lr, [1.0, 0.1 + 0.45 * (1 + math.cos(math.pi / 4)), 0.55,
                                    0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4))])  # fmt: skip


# -- issue 10: the plan is sized from integers before anything is built --------------------
@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(method_names()),
    n=st.integers(1, 3000),
    bs=st.integers(1, 700),
    epochs=st.one_of(st.none(), st.integers(1, 60)),
    budget=st.one_of(st.none(), st.integers(1, 400)),
    warmup=st.integers(0, 4),
    k_decay=st.sampled_from(["episode", "epoch"]),
    refresh=st.booleans(),
    limit_epochs=st.integers(1, 80),
    limit_steps=st.integers(1, 5000),
    limit_epoch_steps=st.integers(1, 800),
)
def test_plan_size_counts_what_build_plan_builds_or_names_the_limit(
    method: str, n: int, bs: int, epochs: int | None, budget: int | None, warmup: int,
    k_decay: str, refresh: bool, limit_epochs: int, limit_steps: int, limit_epoch_steps: int,
) -> None:  # fmt: skip
    if epochs is None and budget is None:
        epochs = 10
    run = _run(method, n, epochs, batch_size=bs, budget_batches=budget, warmup_epochs=warmup,
               k_decay=k_decay, refresh=refresh)  # fmt: skip
    limits = PlanLimits(epochs=limit_epochs, steps=limit_steps, epoch_steps=limit_epoch_steps)
    plan = build_plan(run)  # unbounded: the reference
    # the rules, checked on the built plan (an independent count)
    episodes: dict[int, int] = {}
    for e in plan:
        episodes[e.episode] = episodes.get(e.episode, 0) + 1
    over = (
        len(plan) > limit_epochs
        or total_steps(plan) > limit_steps
        or max(e.steps for e in plan) > limit_epoch_steps
        or (warmup > limit_epochs and 0 in episodes)
        or any(episode_length(run.params, j) + refresh > limit_epochs for j in episodes if j)
    )
    if over:
        with pytest.raises(PlanTooLarge) as err:
            plan_size(run, limits)
        assert err.value.setting in str(err.value)
        assert err.value.setting in (
            "DOCL_MAX_PLAN_EPOCHS",
            "DOCL_MAX_PLAN_STEPS",
            "DOCL_MAX_EPOCH_STEPS",
        )
        with pytest.raises(PlanTooLarge):
            build_plan(run, limits)
    else:
        assert plan_size(run, limits) == (len(plan), total_steps(plan))
        assert build_plan(run, limits) == plan


@pytest.mark.parametrize(
    ("body", "setting"),
    [
        ({"num_samples": 1000, "params": {"budget_batches": 10**10}}, "DOCL_MAX_PLAN_EPOCHS"),
        ({"num_samples": 10**6, "epochs": 1000, "params": {"batch_size": 1}}, "DOCL_MAX_PLAN_STEPS"),
        ({"num_samples": 100, "params": {"warmup_epochs": 10**13, "budget_batches": 1}}, "DOCL_MAX_PLAN_EPOCHS"),
        ({"num_samples": 100, "epochs": 3, "params": {"warmup_epochs": 0, "episode_epochs": 10**12}}, "DOCL_MAX_PLAN_EPOCHS"),
        ({"num_samples": 100, "params": {"budget_batches": 10**6, "episode_growth": 1e300}}, "DOCL_MAX_PLAN_EPOCHS"),
        ({"num_samples": 2 * 10**6, "epochs": 1, "params": {"batch_size": 1}}, "DOCL_MAX_EPOCH_STEPS"),
    ],
)  # fmt: skip
def test_the_issues_plans_are_refused_at_once(body: dict[str, Any], setting: str) -> None:
    """Before: the first never finished (7 GB), the second took 2.7 GB in 7.5 s, the third
    raised MemoryError; the fifth OverflowError. Now each is refused with bounded work:
    checked by the memory it allocates (not by a clock, which a loaded box stretches:
    the first case took 2.7 s at load 25 here), with a generous time bound against a
    refusal that never comes."""
    import time
    import tracemalloc

    run = RunCreate.model_validate({"num_outputs": 2, **body})
    limits = Settings().plan_limits
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(PlanTooLarge) as err:
            plan_size(run, limits)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.setting == setting and setting in str(err.value)
    assert peak < 16 * 2**20, f"refusing took {peak / 2**20:.1f} MiB"
    assert elapsed < 60.0


def test_a_plan_at_the_limits_builds_in_bounded_time() -> None:
    """The largest plan the default limits let through (100k epochs) is sized and built in
    seconds, so building it cannot outlive its request by much."""
    import time

    run = _run("docl", 12_800, 100_000, batch_size=128)
    limits = Settings().plan_limits
    t0 = time.perf_counter()
    epochs, steps = plan_size(run, limits)
    plan = build_plan(run)
    took = time.perf_counter() - t0
    assert (epochs, steps) == (len(plan), total_steps(plan)) and epochs == limits.epochs
    assert took < 30, took


def test_an_episode_the_plan_never_reaches_is_never_built() -> None:
    """A plan that ends with the warmup does not look at episode 1 (10^12 epochs long)."""
    run = _run("docl", 100, 3, warmup_epochs=3, episode_epochs=10**12)
    assert plan_size(run, Settings().plan_limits) == (3, 3)
    assert [e.phase for e in build_plan(run)] == ["warmup"] * 3


def test_a_tiny_gamma_k_does_not_divide_by_zero() -> None:
    """γ_k^decays underflows to 0 after enough decays: the grow schedule reaches n (before:
    ZeroDivisionError or OverflowError, a 500)."""
    p = RunParams(gamma_k=1e-300)
    assert subset_size("grow", 1000, p, 2) == 1000
    assert subset_size("shrink", 1000, p, 2) == min_subset(p, 1000)
    plan = build_plan(_run("spl", 1000, 20, gamma_k=1e-300))
    assert {e.size for e in plan if e.phase == "select"} == {1000}
