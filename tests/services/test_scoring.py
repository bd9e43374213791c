"""Tests of services/scoring.py against independent computations.

Two kinds of evidence:
* a naive reference (explicit one-hot, a Python loop per row, scipy) that must
  agree with the vectorized code on random inputs, including stale, unseen and
  unset rows, Exp3 and rho_power;
* the learning-dynamics identities of the paper (Eq. 4-7, 10-12) on tiny linear
  models trained by plain gradient descent: the score computed from two visits
  must predict how the losses change, measured by finite differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
from hypothesis import given, settings
from hypothesis import strategies as st

from docl.services.scoring import (
    MIN_INCLUSION,
    l2_loss,
    residual,
    score_report,
    softmax,
    task_loss,
)

# --------------------------------------------------------------------------- #
# softmax / residual / loss
# --------------------------------------------------------------------------- #


def test_softmax_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(scale=5.0, size=(50, 7))
    np.testing.assert_allclose(softmax(f), scipy.special.softmax(f, axis=1), rtol=1e-12)


@pytest.mark.parametrize("mag", [1e4, 1e30, 1e300])
def test_softmax_residual_loss_finite_for_huge_logits(mag: float) -> None:
    rng = np.random.default_rng(2)
    f = rng.choice([-1.0, 1.0], size=(64, 10)) * mag * rng.uniform(0.5, 1.0, size=(64, 10))
    y = rng.integers(0, 10, size=64)
    p = softmax(f)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-12)
    # the largest logit takes all the mass at these magnitudes
    np.testing.assert_array_equal(p.argmax(axis=1), f.argmax(axis=1))
    assert np.all(np.isfinite(residual(f, y, "classification")))
    loss = task_loss(f, y, "classification")
    assert np.all(np.isfinite(loss))
    # CE = max_j f_j - f_y when one logit dominates by this much
    np.testing.assert_allclose(loss, f.max(axis=1) - f[np.arange(64), y], rtol=1e-9)
    assert np.all(np.isfinite(l2_loss(f, y, "classification")))


def test_score_report_finite_for_logits_1e4() -> None:
    rng = np.random.default_rng(3)
    f = rng.choice([-1e4, 1e4], size=(32, 10))
    g = f + rng.normal(size=(32, 10))
    y = rng.integers(0, 10, size=32)
    for kind in ("docl", "docl-nr"):
        u = score_report(
            f, y, 2.0, g, np.ones(32), np.zeros(32, np.float32), task="classification", kind=kind
        )
        assert u.scored.all()
        assert np.all(np.isfinite(u.scores)) and np.all(np.isfinite(u.raw))
        assert np.all(np.isfinite(u.loss))


@settings(max_examples=60, deadline=None)
@given(
    b=st.integers(1, 12),
    c=st.integers(1, 9),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e3]),
    seed=st.integers(0, 2**32 - 1),
)
def test_residual_and_loss_match_one_hot_reference(b: int, c: int, scale: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    f = rng.normal(scale=scale, size=(b, c))
    y = rng.integers(0, c, size=b)
    onehot = np.eye(c)[y]
    p = scipy.special.softmax(f, axis=1)
    np.testing.assert_allclose(residual(f, y, "classification"), onehot - p, atol=1e-12)
    ce = scipy.special.logsumexp(f, axis=1) - f[np.arange(b), y]
    np.testing.assert_allclose(task_loss(f, y, "classification"), ce, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        l2_loss(f, y, "classification"), 0.5 * ((onehot - p) ** 2).sum(1), atol=1e-12
    )
    t = rng.normal(size=(b, c))
    np.testing.assert_allclose(residual(f, t, "regression"), t - f)
    np.testing.assert_allclose(task_loss(f, t, "regression"), 0.5 * ((t - f) ** 2).sum(1))


# --------------------------------------------------------------------------- #
# score_report against a naive per-row reference
# --------------------------------------------------------------------------- #


def _reference(
    f: np.ndarray,
    y: np.ndarray,
    lr_sum: float,
    g: np.ndarray,
    lrs: np.ndarray,
    prev: np.ndarray,
    task: str,
    kind: str,
    gamma: float,
    rho_power: float,
    inclusion: np.ndarray | None,
) -> tuple[list[bool], list[bool], list[float], list[float]]:
    """DESIGN §1, one row at a time, in plain Python floats."""
    scored, stale, scores, raw = [], [], [], []
    b, c = f.shape
    for i in range(b):
        if math.isnan(lrs[i]):
            scored.append(False), stale.append(False), scores.append(float(prev[i]))
            raw.append(math.nan)
            continue
        if lr_sum <= lrs[i]:
            scored.append(False), stale.append(True), scores.append(float(prev[i]))
            raw.append(math.nan)
            continue
        rho = lr_sum - lrs[i]
        dyn = [(float(f[i, j]) - float(g[i, j])) / rho**rho_power for j in range(c)]
        if kind == "docl-nr":
            a = math.sqrt(sum(d * d for d in dyn))
        else:
            if task == "classification":
                row = [float(v) for v in f[i]]
                mx = max(row)
                ex = [math.exp(v - mx) for v in row]
                z = sum(ex)
                res = [(1.0 if j == y[i] else 0.0) - ex[j] / z for j in range(c)]
            else:
                res = [float(y[i, j]) - float(f[i, j]) for j in range(c)]
            a = sum(r * d for r, d in zip(res, dyn, strict=True))
        if inclusion is not None:
            a /= max(float(inclusion[i]), MIN_INCLUSION)
        new = a if math.isnan(prev[i]) else gamma * float(prev[i]) + (1 - gamma) * a
        scored.append(True), stale.append(False), scores.append(new), raw.append(a)
    return scored, stale, scores, raw


@settings(max_examples=300, deadline=None)
@given(
    b=st.integers(1, 16),
    c=st.sampled_from([1, 2, 3, 10, 70]),
    task=st.sampled_from(["classification", "regression"]),
    kind=st.sampled_from(["docl", "docl-nr"]),
    gamma=st.sampled_from([0.0, 0.5, 0.9]),
    rho_power=st.sampled_from([1.0, 0.1, 2.0]),
    exp3=st.booleans(),
    f32=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_score_report_matches_reference(
    b: int,
    c: int,
    task: str,
    kind: str,
    gamma: float,
    rho_power: float,
    exp3: bool,
    f32: bool,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.float32 if f32 else np.float64
    f = rng.normal(scale=3.0, size=(b, c)).astype(dtype)
    g = (f + rng.normal(scale=0.1, size=(b, c))).astype(dtype)
    y = rng.integers(0, c, size=b) if task == "classification" else rng.normal(size=(b, c))
    lr_sum = 5.0
    # a mix of never seen, stale (<= and ==), and advancing lr-sums
    lrs = rng.choice([np.nan, 6.0, 5.0, 4.9, 1.0, 0.0], size=b)
    prev = rng.choice([np.nan, -1.0, 0.5, 2.0], size=b).astype(np.float32)
    inclusion = rng.choice([0.0, 1e-9, 0.3, 1.0], size=b) if exp3 else None
    u = score_report(
        f, y, lr_sum, g, lrs, prev, task=task, kind=kind, gamma=gamma,
        rho_power=rho_power, inclusion=inclusion,
    )  # fmt: skip
    scored, stale, scores, raw = _reference(
        f, y, lr_sum, g, lrs, prev, task, kind, gamma, rho_power, inclusion
    )
    np.testing.assert_array_equal(u.scored, scored)
    np.testing.assert_array_equal(u.stale, stale)
    assert u.scores.dtype == np.float32 and u.raw.dtype == np.float64
    assert u.loss.dtype == np.float32
    if c < 64:  # float64 math
        np.testing.assert_allclose(u.raw, raw, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(u.scores, np.asarray(scores, dtype=np.float32), rtol=1e-6)
        np.testing.assert_allclose(u.loss, task_loss(f, y, task).astype(np.float32), rtol=1e-6)
    else:
        # float32 math from 64 outputs on (documented in score_report): rounding
        # f and g to float32 moves each dyn_j by <= 2^-24·(|f_j| + |g_j|)/rho^p,
        # so a moves by at most ~Σ_j (1 + |r_j|)·that (÷ the clipped inclusion);
        # allow 16 ulps of that bound.
        with np.errstate(all="ignore"):
            rho = (lr_sum - lrs) ** rho_power
            bound = (np.abs(f) + np.abs(g)).astype(np.float64)
            bound = (bound * (1.0 + np.abs(residual(f, y, task)))).sum(axis=1) / rho
            if inclusion is not None:
                bound /= np.maximum(inclusion, MIN_INCLUSION)
        tol = 16 * 2.0**-24 * bound
        tol = np.where(np.isfinite(tol) & (tol > 0), tol, 0.0)  # unscored rows: exact
        ok = np.isnan(raw) & np.isnan(u.raw) | (np.abs(u.raw - raw) <= tol)
        assert ok.all(), (u.raw, raw, tol)
        sc_ref = np.asarray(scores, dtype=np.float64)
        sc_tol = (1 - gamma) * tol + 2.0**-23 * np.abs(sc_ref)
        ok = np.isnan(sc_ref) & np.isnan(u.scores) | (np.abs(u.scores - sc_ref) <= sc_tol)
        assert ok.all(), (u.scores, sc_ref)
        np.testing.assert_allclose(u.loss, task_loss(f, y, task).astype(np.float32), rtol=1e-5)


@pytest.mark.parametrize("c", [5, 100])
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_score_report_does_not_modify_its_inputs(c: int, task: str) -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(8, c)).astype(np.float32)
    g = (f + 0.1).astype(np.float32)
    y = (
        rng.integers(0, c, 8)
        if task == "classification"
        else rng.normal(size=(8, c)).astype(np.float32)
    )
    lrs, prev, incl = np.zeros(8), np.zeros(8, np.float32), np.full(8, 0.5)
    args = [f, y, g, lrs, prev, incl]
    copies = [a.copy() for a in args]
    score_report(f, y, 1.0, g, lrs, prev, task=task, inclusion=incl)
    for a, b in zip(args, copies, strict=True):
        np.testing.assert_array_equal(a, b)


def test_stale_rows_keep_their_score_and_equal_lr_sum_is_stale() -> None:
    f = np.array([[1.0, 2.0], [0.0, 1.0], [3.0, 0.0]])
    g = f - 0.5
    prev = np.array([0.25, np.nan, -2.0], np.float32)
    u = score_report(f, np.array([0, 1, 1]), 3.0, g, np.array([3.0, 3.5, 2.0]), prev,
                     task="classification")  # fmt: skip
    np.testing.assert_array_equal(u.stale, [True, True, False])
    np.testing.assert_array_equal(u.scored, [False, False, True])
    assert u.scores[0] == np.float32(0.25) and np.isnan(u.scores[1])
    assert np.isnan(u.raw[:2]).all()
    # row 2: rho = 1, dyn = f - g = (0.5, 0.5): <onehot - p, dyn> = 0.5·(Σ(onehot - p)) = 0
    assert u.raw[2] == pytest.approx(0.0, abs=1e-15)
    assert u.scores[2] == pytest.approx(0.9 * -2.0, rel=1e-6)


def test_unseen_rows_are_initialized_not_scored() -> None:
    f = np.ones((3, 4))
    u = score_report(f, np.zeros(3, int), 1.0, np.full((3, 4), np.nan), np.full(3, np.nan),
                     np.full(3, np.nan, np.float32), task="classification")  # fmt: skip
    assert not u.scored.any() and not u.stale.any()
    assert np.isnan(u.scores).all() and np.isnan(u.raw).all()
    np.testing.assert_allclose(u.loss, math.log(4.0), rtol=1e-6)


def test_non_finite_results_do_not_poison_the_table() -> None:
    # row 0: stored output overflowed float16 -> inf; row 1: a beyond float32 range;
    # row 2: a healthy row next to them.
    f = np.array([[1.0, 0.0], [1e30, -1e30], [1.0, 0.0]])
    g = np.array([[np.inf, 0.0], [-1e30, 1e30], [0.0, 0.0]])
    prev = np.array([0.5, 0.5, 0.5], np.float32)
    y = np.array([[0.0, 0.0], [-1e30, 1e30], [2.0, 0.0]])
    u = score_report(f, y, 1.0, g, np.zeros(3), prev, task="regression")
    np.testing.assert_array_equal(u.scored, [False, False, True])
    np.testing.assert_array_equal(u.stale, [False, False, False])
    np.testing.assert_array_equal(u.scores[:2], prev[:2])
    assert np.isnan(u.raw[:2]).all()
    assert np.isfinite(u.scores).all()
    assert u.raw[2] == pytest.approx(1.0)  # <y - f, f - g> = <(1, 0), (1, 0)>
    assert np.isfinite(u.loss).all()  # 1e60 clipped to the float32 range


def test_exp3_divides_by_clipped_inclusion() -> None:
    f = np.array([[1.0], [1.0], [1.0]])
    g = np.zeros((3, 1))
    y = np.array([[2.0], [2.0], [2.0]])
    base = score_report(f, y, 1.0, g, np.zeros(3), np.full(3, np.nan, np.float32),
                        task="regression")  # fmt: skip
    u = score_report(f, y, 1.0, g, np.zeros(3), np.full(3, np.nan, np.float32),
                     task="regression", inclusion=np.array([0.5, 0.0, 1.0]))  # fmt: skip
    np.testing.assert_allclose(u.raw, base.raw / np.array([0.5, MIN_INCLUSION, 1.0]))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"targets": np.array([0, 3])}, "class ids"),
        ({"targets": np.array([0, -1])}, "class ids"),
        ({"targets": np.array([0])}, "targets"),
        ({"targets": np.array([0.5, 1.0])}, "integers"),
        ({"prev_outputs": np.zeros((2, 2))}, "prev_outputs"),
        ({"prev_lr_sums": np.zeros(3)}, "prev_lr_sums"),
        ({"lr_sum": math.inf}, "lr_sum"),
        ({"task": "ranking"}, "task"),
        ({"kind": "loss"}, "kind"),
        ({"gamma": 1.0}, "gamma"),
        ({"rho_power": 0.0}, "rho_power"),
        ({"inclusion": np.ones(3)}, "inclusion"),
        ({"outputs": np.zeros(3)}, "outputs"),
        ({"outputs": np.array([[0.0, np.nan, 0.0], [0.0, 0.0, 0.0]])}, "finite"),
        ({"outputs": np.array([[0.0, np.inf, 0.0], [0.0, 0.0, 0.0]])}, "finite"),
        ({"task": "regression", "targets": np.full((2, 3), np.nan)}, "finite"),
    ],
)
def test_bad_input_raises_clear_value_error(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "outputs": np.zeros((2, 3)),
        "targets": np.array([0, 2]),
        "lr_sum": 1.0,
        "prev_outputs": np.zeros((2, 3)),
        "prev_lr_sums": np.zeros(2),
        "prev_scores": np.zeros(2, np.float32),
        "task": "classification",
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        score_report(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- #
# learning dynamics on tiny linear models (Eq. 4-7, 10-12)
# --------------------------------------------------------------------------- #


def _regression_problem(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, d, c = 40, 5, 3
    x = rng.normal(size=(n, d))
    y = x @ rng.normal(size=(d, c)) + 0.3 * rng.normal(size=(n, c))
    w = rng.normal(scale=0.3, size=(c, d))
    return x, y, w


def _score_of_step(
    f0: np.ndarray, f1: np.ndarray, y: np.ndarray, eta: float, task: str
) -> np.ndarray:
    """a_t(i) from two visits of every sample, eta apart in learning-rate sum."""
    n = f0.shape[0]
    lr0 = 0.7  # arbitrary: only the difference matters
    u = score_report(
        f1, y, lr0 + eta, f0, np.full(n, lr0), np.full(n, np.nan, np.float32), task=task
    )
    assert u.scored.all()
    return u.raw


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_score_is_the_per_sample_loss_decrease_rate(seed: int) -> None:
    """Regression, Eq. 7 with one full-batch GD step of size eta on the L2 objective.

    With f' = f + Δf the exact expansion of ℓ_i = ½‖y_i - f_i‖² gives
        -(ℓ_i(f') - ℓ_i(f)) / eta = <y_i - f'_i, Δf_i / eta> + ½‖Δf_i‖² / eta
                                  = a_i + ½‖Δf_i‖² / eta,
    an identity (the score uses the residual at the new outputs), so the score
    must match the finite difference up to that computable term, and approach
    it as eta -> 0 (the term is O(eta)).
    """
    x, y, w = _regression_problem(seed)
    f0 = x @ w.T
    errors = []
    for eta in (1e-3, 5e-4, 2.5e-4):
        w1 = w + eta * (y - f0).T @ x  # -∇_W Σ ½‖y - Wx‖² = Σ (y - f) xᵀ
        f1 = x @ w1.T
        a = _score_of_step(f0, f1, y, eta, "regression")
        l0 = 0.5 * ((y - f0) ** 2).sum(1)
        l1 = 0.5 * ((y - f1) ** 2).sum(1)
        fd = -(l1 - l0) / eta
        np.testing.assert_allclose(
            a, fd - 0.5 * ((f1 - f0) ** 2).sum(1) / eta, rtol=1e-6, atol=1e-8
        )
        errors.append(np.abs(a - fd).max() / np.abs(fd).max())
    assert errors[0] < 0.05
    # first order in eta: halving the step halves the gap
    assert errors[1] == pytest.approx(errors[0] / 2, rel=0.1)
    assert errors[2] == pytest.approx(errors[1] / 2, rel=0.1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_regression_scores_sum_to_the_data_objective_decrease(seed: int) -> None:
    """Eq. 4-6: Σ_i a_i over the data D (dynamics of the gradient flow on D)
    equals -dL_D/dt = ‖∇_W L_D‖²_F, computed here from the gradient alone, and a
    subset S's Σ_{i∈S} a_i equals -dL_D/dt of a GD step on S only."""
    x, y, w = _regression_problem(seed)
    f0 = x @ w.T
    grad = -((y - f0).T @ x)  # ∇_W L_D
    rate = float((grad**2).sum())
    errs = []
    for eta in (2e-4, 1e-4):
        f1 = x @ (w - eta * grad).T
        a = _score_of_step(f0, f1, y, eta, "regression")
        errs.append(abs(a.sum() - rate) / rate)
    assert errs[0] < 0.05 and errs[1] == pytest.approx(errs[0] / 2, rel=0.1)

    # Eq. 6: Σ_{i∈S} <y_i - f_i, ∂f_i/∂t|_D> = -dL_D/dt|_S (symmetry of the kernel)
    rng = np.random.default_rng(seed + 100)
    s = rng.choice(len(x), size=12, replace=False)

    def big_l(ww: np.ndarray) -> float:
        return float(0.5 * ((y - x @ ww.T) ** 2).sum())

    gaps = []
    for step in (2e-4, 1e-4):
        a = _score_of_step(f0, x @ (w - step * grad).T, y, step, "regression")
        w_s = w + step * (y[s] - f0[s]).T @ x[s]
        fd = -(big_l(w_s) - big_l(w)) / step
        gaps.append(abs(a[s].sum() - fd) / abs(fd))
    assert gaps[0] < 0.02
    assert gaps[1] == pytest.approx(gaps[0] / 2, rel=0.15)


def _classification_problem(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, d, c = 60, 6, 4
    x = rng.normal(size=(n, d))
    y = (x @ rng.normal(size=(d, c))).argmax(1)
    y[:6] = rng.integers(0, c, size=6)  # some label noise
    w = rng.normal(scale=0.5, size=(c, d))
    return x, y, w


def _l2_grad_logits(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∂/∂f_i of ½‖onehot(y_i) - softmax(f_i)‖² = -J_i (onehot - p), J = diag(p) - ppᵀ."""
    p = scipy.special.softmax(f, axis=1)
    r = np.eye(f.shape[1])[y] - p
    jr = p * r - p * (p * r).sum(1, keepdims=True)
    return -jr


def _ce(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    return scipy.special.logsumexp(f, axis=1) - f[np.arange(len(y)), y]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_score_is_the_cross_entropy_decrease_rate(seed: int) -> None:
    """Classification, Eq. 12, with one full-batch GD step on the L2 objective
    ½‖onehot - softmax(Wx)‖² (the warmup/refresh loss).

    The score is <onehot(y_i) - p_i, df_i/dt>. It is NOT the decrease rate of the
    sample's L2 loss (that is <onehot - p, J_i df_i/dt>, with the softmax
    Jacobian J_i = diag(p) - ppᵀ), but since ∂ℓ_xe/∂f = p - onehot it is exactly
    the decrease rate of the sample's cross-entropy under that flow:
        a_i = -dℓ_xe(x_i)/dt.
    So -(ℓ_xe,i(f') - ℓ_xe,i(f)) / eta must match a_i with an O(eta) gap.
    """
    x, y, w = _classification_problem(seed)
    f0 = x @ w.T
    grad = _l2_grad_logits(f0, y).T @ x  # ∇_W L2_D
    errors = []
    for eta in (2e-3, 1e-3, 5e-4):
        f1 = x @ (w - eta * grad).T
        a = _score_of_step(f0, f1, y, eta, "classification")
        fd = -(_ce(f1, y) - _ce(f0, y)) / eta
        errors.append(np.abs(a - fd).max() / np.abs(fd).max())
        # the L2 loss's own rate differs (softmax Jacobian): the comparison is not vacuous
        l2 = lambda f: 0.5 * ((np.eye(4)[y] - scipy.special.softmax(f, axis=1)) ** 2).sum(1)  # noqa: E731
        fd_l2 = -(l2(f1) - l2(f0)) / eta
        assert np.abs(a - fd_l2).max() > 10 * np.abs(a - fd).max()
    assert errors[0] < 0.05
    assert errors[1] == pytest.approx(errors[0] / 2, rel=0.15)
    assert errors[2] == pytest.approx(errors[1] / 2, rel=0.15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_subset_scores_predict_the_data_objective_decrease(seed: int) -> None:
    """Eq. 10-11: the scores (dynamics of the L2 flow on D) summed over a subset S
    equal the rate at which the data's L2 objective Σ_{x∈D} ½‖y - p(x)‖² drops
    when training on S with cross-entropy:
        Σ_{i∈S} a_i = -d/dt Σ_{x∈D} ℓ_2(x) |_{CE flow on S}.
    Both sides are measured by finite differences from the same parameters W
    (eta for the L2 step that yields the scores, delta for the CE step on S);
    the gap is O(eta + delta) and must shrink with them.
    """
    x, y, w = _classification_problem(seed)
    f0 = x @ w.T
    grad_l2 = _l2_grad_logits(f0, y).T @ x
    onehot = np.eye(4)[y]

    def l2_data(ww: np.ndarray) -> float:
        return float(0.5 * ((onehot - scipy.special.softmax(x @ ww.T, axis=1)) ** 2).sum())

    rng = np.random.default_rng(seed + 7)
    subsets = [rng.choice(len(x), size=m, replace=False) for m in (5, 20, 45)]
    gaps = []
    for step in (1e-3, 2.5e-4):
        a = _score_of_step(f0, x @ (w - step * grad_l2).T, y, step, "classification")
        worst = 0.0
        for s in subsets:
            p = scipy.special.softmax(f0[s], axis=1)
            grad_ce = (p - onehot[s]).T @ x[s]
            fd = -(l2_data(w - step * grad_ce) - l2_data(w)) / step
            worst = max(worst, abs(a[s].sum() - fd) / abs(fd))
        gaps.append(worst)
    assert gaps[0] < 0.05
    assert gaps[1] < gaps[0] / 2.5


def test_docl_nr_is_the_speed_of_the_outputs() -> None:
    x, y, w = _classification_problem(0)
    f0 = x @ w.T
    eta = 1e-3
    f1 = x @ (w - eta * (_l2_grad_logits(f0, y).T @ x)).T
    u = score_report(f1, y, 1.0 + eta, f0, np.ones(len(x)), np.full(len(x), np.nan, np.float32),
                     task="classification", kind="docl-nr")  # fmt: skip
    np.testing.assert_allclose(u.raw, np.linalg.norm(f1 - f0, axis=1) / eta, rtol=1e-6)
