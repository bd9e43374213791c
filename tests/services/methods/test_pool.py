"""Step-level methods (``services/methods/pool.py``): the rules against brute force and
the exact law, the candidate pools, the step rule's contract and the pool ratio's bounds."""

from __future__ import annotations

import itertools
import math

import httpx
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from docl.services.methods import (
    NoParams,
    SelectionMethod,
    get_method,
    select_step,
    validate_method_params,
)
from docl.services.methods.pool import MAX_POOL_RATIO, candidate_pools, uniform_epochs
from docl.services.seeds import step_rng

# ---------------------------------------------------------------------------
# loss-topk: the chosen set against brute force over every b-subset
# ---------------------------------------------------------------------------


def _brute_force_topk(loss: np.ndarray, b: int) -> tuple[int, ...]:
    """Among all b-subsets, the largest sum of losses (NaN counted as below every
    loss); among equal sums the lexicographically first (= earlier positions win ties)."""
    key = [(-math.inf if math.isnan(v) else v) for v in loss.tolist()]
    best: tuple[int, ...] | None = None
    best_key: tuple[float, ...] | None = None
    for sub in itertools.combinations(range(len(key)), b):  # lexicographic order
        # compare sorted losses (desc), not sums: exact with -inf and no rounding
        k = tuple(sorted((key[i] for i in sub), reverse=True))
        if best_key is None or k > best_key:
            best, best_key = sub, k
    assert best is not None
    return best


@settings(max_examples=300, deadline=None)
@given(
    loss=st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 7.25, math.nan]), min_size=1, max_size=8),
    data=st.data(),
)
def test_loss_topk_chooses_the_highest_losses_by_brute_force(
    loss: list[float], data: st.DataObject
) -> None:
    """Values from a small set, so ties and NaN are frequent."""
    b = data.draw(st.integers(0, len(loss)))
    arr = np.array(loss)
    got = select_step("loss-topk", b=b, values={"loss": arr}, rng=np.random.default_rng(0))
    assert got.dtype == np.int64 and got.shape == (b,)
    assert tuple(sorted(got.tolist())) == _brute_force_topk(arr, b)


def test_loss_topk_on_a_known_pool() -> None:
    loss = np.array([0.1, 2.0, 0.3, np.nan, 2.0, 5.0], np.float32)
    got = select_step("loss-topk", b=3, values={"loss": loss}, rng=np.random.default_rng(0))
    assert got.tolist() == [5, 1, 4]  # highest first; the tie 1 / 4 both in; NaN never
    # b over the pool: every candidate (the NaN one last)
    got = select_step("loss-topk", b=10, values={"loss": loss}, rng=np.random.default_rng(0))
    assert got.tolist() == [5, 1, 4, 2, 0, 3]


# ---------------------------------------------------------------------------
# pool-random: every b-subset equally likely, from the step's Generator
# ---------------------------------------------------------------------------


def test_pool_random_draws_every_subset_with_equal_probability() -> None:
    """p = 5, b = 2: the 10 subsets' frequencies over 20,000 steps' Generators against
    the uniform law (chi-square), and each candidate's inclusion against b/p."""
    p, b, draws = 5, 2, 20_000
    loss = np.array([9.0, 0.0, 3.0, 1.0, 5.0])  # ignored: a high loss must not matter
    subsets = {s: i for i, s in enumerate(itertools.combinations(range(p), b))}
    counts = np.zeros(len(subsets))
    incl = np.zeros(p)
    for step in range(draws):
        got = select_step("pool-random", b=b, values={"loss": loss}, rng=step_rng(7, 0, step))
        assert np.unique(got).size == b
        counts[subsets[tuple(sorted(got.tolist()))]] += 1
        incl[got] += 1
    assert scipy.stats.chisquare(counts, np.full(len(subsets), draws / len(subsets))).pvalue > 1e-3
    assert scipy.stats.chisquare(incl, np.full(p, draws * b / p)).pvalue > 1e-3


def test_pool_random_is_reproducible_per_step_and_differs_between_steps() -> None:
    loss = np.zeros(64)

    def pick(seed: int, rank: int, step: int) -> list[int]:
        return select_step(
            "pool-random", b=16, values={"loss": loss}, rng=step_rng(seed, rank, step)
        ).tolist()

    assert pick(3, 0, 5) == pick(3, 0, 5)  # a replayed step chooses the same batch
    assert (
        len({tuple(pick(3, r, s)) for r in range(2) for s in range(3)} | {tuple(pick(4, 0, 5))})
        == 7
    )


# ---------------------------------------------------------------------------
# The candidate pools of an epoch
# ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(steps=st.integers(0, 60), ratio=st.integers(1, MAX_POOL_RATIO))
def test_candidate_pools_cover_every_part_exactly_m_times(steps: int, ratio: int) -> None:
    pools = candidate_pools(steps, ratio)
    assert len(pools) == steps
    m = min(steps, ratio)  # fewer steps than m: every pool is the whole shard
    seen = np.zeros(steps, dtype=np.int64)
    for s, pool in enumerate(pools):
        assert pool.dtype == np.int64 and pool.shape == (m,)
        assert pool[0] == s  # the step's own part first (random SGD's batch of step s)
        assert np.unique(pool).size == m and pool.min() >= 0 and pool.max() < steps
        seen[pool] += 1
    np.testing.assert_array_equal(seen, np.full(steps, m))
    if steps >= ratio:  # spread: the parts of a pool are d = steps // m apart
        d = steps // ratio
        assert all(
            ((pool - s) % steps == np.arange(ratio) * d).all() for s, pool in enumerate(pools)
        )


def test_candidate_pools_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="pool ratio must lie in"):
        candidate_pools(10, 0)
    with pytest.raises(ValueError, match="pool ratio must lie in"):
        candidate_pools(10, MAX_POOL_RATIO + 1)
    with pytest.raises(ValueError, match="steps must be >= 0"):
        candidate_pools(-1, 2)


# ---------------------------------------------------------------------------
# Registry entries, parameters, the rule's contract
# ---------------------------------------------------------------------------


def test_both_methods_are_registered_as_step_level_uniform_epochs() -> None:
    topk, ctl = get_method("loss-topk"), get_method("pool-random")
    for spec in (topk, ctl):
        assert spec.step is not None and spec.size == "full" and spec.signal == "none"
        assert not spec.weights and not spec.loss_column
        assert spec.pool_ratio() == 4 and spec.pool_ratio({"pool_ratio": 9}) == 9
    assert topk.control == "pool-random" and not topk.uniform
    assert ctl.uniform and ctl.control is None
    assert get_method("random").pool_ratio() is None  # an epoch-level method


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (1, "greater than or equal to 2"),
        (0, "greater than or equal to 2"),
        (17, "less than or equal to 16"),
        (2.5, "valid integer"),
        ("four", "valid integer"),
    ],
)
@pytest.mark.parametrize("method", ["loss-topk", "pool-random"])
def test_bad_pool_ratios_are_refused_with_a_clear_error(
    method: str, value: object, message: str
) -> None:
    with pytest.raises(ValueError, match=f"method '{method}'.*pool_ratio: .*{message}"):
        validate_method_params(method, {"pool_ratio": value})
    assert validate_method_params(method, {"pool_ratio": 16}) == {"pool_ratio": 16}


def test_select_step_checks_its_inputs() -> None:
    rng = np.random.default_rng(0)
    loss = np.arange(4.0)
    with pytest.raises(ValueError, match="does not select per step"):
        select_step("random", b=1, values={"loss": loss}, rng=rng)
    with pytest.raises(ValueError, match="at least one"):
        select_step("loss-topk", b=1, values={}, rng=rng)
    with pytest.raises(ValueError, match="ranks by 'loss'"):
        select_step("loss-topk", b=1, values={"irreducible": loss}, rng=rng)
    with pytest.raises(ValueError, match="same pool"):
        select_step("loss-topk", b=1, values={"loss": loss, "other": loss[:3]}, rng=rng)
    with pytest.raises(ValueError, match="same pool"):
        select_step("loss-topk", b=1, values={"loss": loss.reshape(2, 2)}, rng=rng)
    with pytest.raises(ValueError, match="b must be >= 0"):
        select_step("loss-topk", b=-1, values={"loss": loss}, rng=rng)
    with pytest.raises(ValueError, match="pool_ratio"):
        select_step(
            "loss-topk", b=1, values={"loss": loss}, rng=rng, method_params={"pool_ratio": 1}
        )
    # a reducible-loss rule can read other named values beside the loss
    assert select_step(
        "loss-topk", b=2, values={"loss": loss, "irreducible": -loss}, rng=rng
    ).tolist() == [3, 2]


def _rule_returning(out: np.ndarray) -> SelectionMethod:
    class P(BaseModel):
        pool_ratio: int = 2

    return SelectionMethod(name="bad-rule", draw=uniform_epochs, size="full", params=P,
                           step=lambda ctx: out)  # fmt: skip


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (np.array([0]), "must return 2 integer positions"),
        (np.array([0.0, 1.0]), "must return 2 integer positions"),
        (np.array([0, 4]), "outside"),
        (np.array([1, 1]), "twice"),
    ],
)
def test_select_step_enforces_the_rules_contract(out: np.ndarray, message: str) -> None:
    from docl.services import methods

    spec = _rule_returning(out)
    methods.register_method(spec, replace=True)
    try:
        with pytest.raises(ValueError, match=message):
            select_step("bad-rule", b=2, values={"loss": np.zeros(4)}, rng=np.random.default_rng(0))
    finally:
        methods._REGISTRY.pop("bad-rule")


def test_a_step_level_method_needs_a_pool_ratio_and_no_weights() -> None:
    with pytest.raises(ValueError, match="pool_ratio field"):
        SelectionMethod(name="x", draw=uniform_epochs, params=NoParams, step=lambda c: c.b)
    with pytest.raises(ValueError, match="no weights"):
        SelectionMethod(name="x", draw=uniform_epochs, params=get_method("loss-topk").params,
                        weights=True, step=lambda c: c.b)  # fmt: skip


# ---------------------------------------------------------------------------
# Through a real docl serve: the server knows both, their epochs are random SGD's
# ---------------------------------------------------------------------------


def test_the_server_runs_them_with_random_sgds_plan_and_draws(
    http: httpx.Client, run_id: str
) -> None:
    base = {"num_samples": 300, "num_outputs": 3, "epochs": 6,
            "params": {"batch_size": 32, "warmup_epochs": 1, "seed": 5}}  # fmt: skip
    r = http.post("/v1/runs", json={**base, "run_id": f"{run_id}-bad", "method": "loss-topk",
                                    "method_params": {"pool_ratio": 1}})  # fmt: skip
    assert r.status_code == 422 and "pool_ratio" in r.json()["detail"], r.text
    ids = {m: f"{run_id}-{m}" for m in ("random", "loss-topk", "pool-random")}
    for method, rid in ids.items():
        params = {} if method == "random" else {"pool_ratio": 3}
        r = http.post("/v1/runs", json={**base, "run_id": rid, "method": method,
                                        "method_params": params})  # fmt: skip
        assert r.status_code == 201, r.text
    plans = {m: http.get(f"/v1/runs/{rid}/plan").json()["epochs"] for m, rid in ids.items()}
    assert plans["loss-topk"] == plans["random"] == plans["pool-random"]
    for e in range(3):
        idx = {}
        for m, rid in ids.items():
            assert http.post(f"/v1/runs/{rid}/epochs", json={"epoch": e}).status_code == 200
            got = http.get(f"/v1/runs/{rid}/epochs/{e}/indices", params={"rank": 0, "world": 1})
            idx[m] = got.json()["indices"]
        assert idx["loss-topk"] == idx["random"] == idx["pool-random"]
        assert sorted(idx["random"]) == list(range(300))
    listed = {m["name"]: m for m in http.get("/v1/methods").json()["methods"]}
    assert listed["loss-topk"]["size"] == "full" and listed["pool-random"]["uniform"]
    assert set(listed["loss-topk"]["params"]["properties"]) == {"pool_ratio"}
