"""``rho-loss`` (``services/methods/rho.py``): the step rule against brute force over
every b-subset of tiny pools, its parameters, and a clear error without the IL."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docl.services.methods import get_method, select_step, validate_method_params
from docl.services.methods.rho import IL_SIGNAL


def _brute_force(loss: list[float], il: list[float], b: int) -> tuple[int, ...]:
    """Among all b-subsets, the one whose reducible losses (loss − il, NaN below every
    value), sorted descending, are largest; among equals the lexicographically first."""
    red = [loss[i] - il[i] for i in range(len(loss))]
    key = [(-math.inf if math.isnan(v) else v) for v in red]
    best: tuple[int, ...] | None = None
    best_key: tuple[float, ...] | None = None
    for sub in itertools.combinations(range(len(key)), b):
        k = tuple(sorted((key[i] for i in sub), reverse=True))
        if best_key is None or k > best_key:
            best, best_key = sub, k
    assert best is not None
    return best


VALUES = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, math.nan])


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(VALUES, VALUES), min_size=1, max_size=8), data=st.data())
def test_rho_loss_chooses_the_highest_reducible_losses_by_brute_force(
    pairs: list[tuple[float, float]], data: st.DataObject
) -> None:
    """Small value sets: ties, NaN losses and NaN irreducible losses are frequent."""
    loss, il = [p[0] for p in pairs], [p[1] for p in pairs]
    b = data.draw(st.integers(0, len(pairs)))
    got = select_step(
        "rho-loss",
        b=b,
        values={"loss": np.array(loss), IL_SIGNAL: np.array(il)},
        rng=np.random.default_rng(0),
    )
    assert got.dtype == np.int64 and got.shape == (b,)
    assert tuple(sorted(got.tolist())) == _brute_force(loss, il, b)


def test_rho_loss_differs_from_loss_topk_on_a_known_pool() -> None:
    """Sample 1 has the highest loss but a higher irreducible loss (noise): skipped;
    sample 3 is already learnt (low loss): skipped."""
    loss = np.array([1.0, 3.0, 0.8, 0.05, 1.5])
    il = np.array([0.1, 2.9, 0.2, 0.0, 0.4])  # reducible: 0.9, 0.1, 0.6, 0.05, 1.1
    rng = np.random.default_rng(0)
    got = select_step("rho-loss", b=2, values={"loss": loss, IL_SIGNAL: il}, rng=rng)
    assert got.tolist() == [4, 0]
    assert select_step("loss-topk", b=2, values={"loss": loss}, rng=rng).tolist() == [1, 4]


def test_rho_loss_without_the_irreducible_loss_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="irreducible_loss"):
        select_step("rho-loss", b=1, values={"loss": np.ones(3)}, rng=np.random.default_rng(0))


def test_rho_loss_is_registered_with_its_control_and_parameters() -> None:
    spec = get_method("rho-loss")
    assert spec.control == "pool-random" and spec.signals == (IL_SIGNAL,)
    assert spec.pool_ratio({}) == 4 and spec.pool_ratio({"pool_ratio": 6, "il": "val"}) == 6
    p = spec.params.model_validate({})
    assert (p.il, p.il_epochs, p.il_lr) == ("halves", 30, None)  # type: ignore[attr-defined]
    for bad in ({"il": "test"}, {"il_epochs": 0}, {"il_lr": -1.0}, {"pool_ratio": 1}):
        with pytest.raises(ValueError):
            validate_method_params("rho-loss", bad)


def _brute_force_epoch(loss: list[float], il: list[float], k: int) -> list[tuple[int, ...]]:
    """Every k-subset whose sorted keys (loss − il; NaN = +inf: unvisited first) are the
    largest possible: the draws rho-epoch may return (it breaks ties at the cut randomly)."""
    key = [math.inf if math.isnan(a - b) else a - b for a, b in zip(loss, il, strict=True)]
    best_key: tuple[float, ...] | None = None
    best: list[tuple[int, ...]] = []
    for sub in itertools.combinations(range(len(key)), k):
        kk = tuple(sorted((key[i] for i in sub), reverse=True))
        if best_key is None or kk > best_key:
            best, best_key = [sub], kk
        elif kk == best_key:
            best.append(sub)
    return best


@settings(max_examples=300, deadline=None)
@given(pairs=st.lists(st.tuples(VALUES, VALUES), min_size=1, max_size=8), data=st.data())
def test_rho_epoch_draws_the_highest_stale_reducible_losses_by_brute_force(
    pairs: list[tuple[float, float]], data: st.DataObject
) -> None:
    from docl.services.methods import draw

    loss = [a for a, _ in pairs]
    il = [b for _, b in pairs]
    n = len(pairs)
    k = data.draw(st.integers(0, n), label="k")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    d = draw(
        "rho-epoch",
        k=k,
        scores=np.full(n, np.nan, np.float32),
        losses=np.asarray(loss, np.float32),
        rng=np.random.default_rng(seed),
        signals={IL_SIGNAL: np.asarray(il, np.float32)},
        shuffle=False,
    )
    got = tuple(sorted(int(i) for i in d.indices))
    assert got in _brute_force_epoch(loss, il, k)


def test_rho_epoch_needs_its_signal_and_declares_it() -> None:
    from docl.services.methods import draw

    spec = get_method("rho-epoch")
    assert spec.signals == (IL_SIGNAL,) and spec.step is None and spec.loss_column
    with pytest.raises(ValueError, match="irreducible_loss"):
        draw("rho-epoch", k=1, scores=np.zeros(3), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        draw(
            "rho-epoch",
            k=1,
            scores=np.zeros(3),
            rng=np.random.default_rng(0),
            signals={IL_SIGNAL: np.zeros(4)},
        )
