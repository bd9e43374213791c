"""The plugin contract of services/methods: a draw returns its selection in any order and
``methods.draw`` (so the server) shuffles it; ``DrawContext`` has one ``tau`` default,
the run parameter's; ``SelectionMethod`` is generic over its params model."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator

import numpy as np
import pytest

from docl.services import methods
from docl.services.methods import DEFAULT_TAU, DrawContext, NoParams, SelectionMethod, draw
from docl.services.sampling import Draw, shuffle_draw
from docl.wire.models import RunParams
from tests.services.methods.toy_method import TOY, ParityParams, parity_draw


@pytest.fixture
def toy() -> Iterator[SelectionMethod[ParityParams]]:
    """The toy plugin registered in this process for the test only."""
    methods.register_method(TOY, replace=True)
    try:
        yield TOY
    finally:
        methods._REGISTRY.pop(TOY.name, None)


def test_the_default_tau_is_the_run_parameters_3() -> None:
    assert DEFAULT_TAU == RunParams().tau == 3.0
    fields = {f.name: f for f in dataclasses.fields(DrawContext)}
    assert fields["tau"].default == 3.0
    assert inspect.signature(draw).parameters["tau"].default == 3.0
    scores = np.random.default_rng(0).normal(size=2000).astype(np.float32)

    def picked(tau: float | None = None) -> np.ndarray:
        rng = np.random.default_rng(5)
        if tau is None:
            return np.sort(draw("docl", k=200, scores=scores, rng=rng).indices)
        return np.sort(draw("docl", k=200, scores=scores, rng=rng, tau=tau).indices)

    np.testing.assert_array_equal(picked(), picked(tau=3.0))
    assert not np.array_equal(picked(), picked(tau=0.1))


def test_the_context_has_no_shuffle_flag() -> None:
    assert "shuffle" not in {f.name for f in dataclasses.fields(DrawContext)}


def test_a_plugin_draw_in_selection_order_comes_back_shuffled(
    toy: SelectionMethod[ParityParams],
) -> None:
    """The toy plugin returns odd samples first, in order; methods.draw shuffles them
    (weights follow) with the epoch's Generator right after the plugin's draw."""
    n, k = 40, 20
    scores = np.zeros(n, np.float32)
    params = {"parity": 1, "weight": 0.5}
    d = draw(toy.name, k=k, scores=scores, rng=np.random.default_rng(3), method_params=params)
    odd = np.arange(1, n, 2)
    assert sorted(d.indices.tolist()) == odd.tolist()
    assert not np.array_equal(d.indices, odd)  # not the plugin's order
    assert d.weights is not None and (d.weights == np.float32(0.5)).all()
    g = np.random.default_rng(3)
    ctx = DrawContext(
        k=k, scores=scores, losses=np.full(n, np.nan), rng=g, params=ParityParams(**params)
    )
    want = shuffle_draw(parity_draw(ctx), g)
    np.testing.assert_array_equal(d.indices, want.indices)
    unshuffled = draw(
        toy.name, k=k, scores=scores, rng=np.random.default_rng(3), method_params=params,
        shuffle=False,
    )  # fmt: skip
    np.testing.assert_array_equal(unshuffled.indices, odd)


def test_a_method_is_generic_over_a_pydantic_params_model() -> None:
    def first_k(ctx: DrawContext[NoParams]) -> Draw:
        return Draw(np.arange(ctx.k, dtype=np.int64), None)

    m = SelectionMethod(name="first-k", draw=first_k)
    assert m.params is NoParams
    with pytest.raises(TypeError, match="params must be a pydantic model class"):
        SelectionMethod(name="bad-params", draw=first_k, params=dict)  # type: ignore[arg-type, type-var]
