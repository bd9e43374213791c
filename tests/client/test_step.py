"""``client/step.py``: one epoch's pools on a rank, against the pool rule written out
here (tests/worker/helpers.py's ``_pool_parts``), for any shard, step count and ratio."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from docl.client.step import EpochPools, StepLevel, registered
from tests.worker.helpers import _pool_parts


@settings(max_examples=200, deadline=None)
@given(m=st.integers(0, 300), steps=st.integers(1, 40), ratio=st.integers(2, 16),
       seed=st.integers(0, 2**31 - 1))  # fmt: skip
def test_epoch_pools_follow_the_pool_rule(m: int, steps: int, ratio: int, seed: int) -> None:
    shard = np.random.default_rng(seed).permutation(10 * m + 1)[:m].astype(np.int64)
    pools = EpochPools.build(shard, steps, ratio)
    parts = np.array_split(shard, steps)
    assert len(pools.candidates) == steps == len(pools.parts)
    for s in range(steps):
        want = np.concatenate([parts[j] for j in _pool_parts(s, steps, ratio)])
        np.testing.assert_array_equal(pools.candidates[s], want)
        np.testing.assert_array_equal(pools.parts[s], parts[s])
        start, end = int(pools.starts[s]), int(pools.starts[s + 1])
        np.testing.assert_array_equal(pools.order[start:end], want)
        if end > start:  # an empty pool shares its offset with the next one
            assert pools.step_at(start) == s
    assert int(pools.starts[-1]) == pools.order.shape[0]
    # every sample is a candidate in min(ratio, steps) steps of the epoch
    counts = np.bincount(pools.order, minlength=10 * m + 1)[shard]
    np.testing.assert_array_equal(counts, np.full(m, min(ratio, steps)))
    if pools.order.size:
        assert pools.step_at(int(pools.starts[-1]) + 1) is None


def test_step_level_knows_the_registry_s_step_methods() -> None:
    assert StepLevel.of("docl", {}) is None and StepLevel.of("random", None) is None
    topk = StepLevel.of("loss-topk", {"pool_ratio": 5})
    assert topk is not None and (topk.ratio, topk.signals) == (5, ())
    rho = StepLevel.of("rho-loss", {})
    assert rho is not None and (rho.ratio, rho.signals) == (4, ("irreducible_loss",))


def test_a_plugin_method_is_found_through_docl_methods_and_an_unknown_one_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """``registered`` (what the worker loop and the sampler both use) loads the plugins
    named in $DOCL_METHODS when a method is not registered yet; a method no plugin has
    is not step-level here, with a warning naming it."""
    from docl.services import methods

    monkeypatch.setenv("DOCL_METHODS", "tests.services.methods.toy_method:TOY")
    methods._REGISTRY.pop("toy-parity", None)
    try:
        spec = registered("toy-parity")
        assert spec is not None and spec.name == "toy-parity"
        assert StepLevel.of("toy-parity", {}) is None  # epoch-level: no pool ratio
        with caplog.at_level(logging.WARNING, logger="docl.client"):
            assert StepLevel.of("no-such-method", {}) is None
        assert "'no-such-method' is not registered in this process" in caplog.text
    finally:
        methods._REGISTRY.pop("toy-parity", None)
