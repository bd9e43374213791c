"""A selection method defined OUTSIDE docl's package, as a user's plugin would be.

Registered with the server through a real entry point (a ``docl.methods`` group in a
``*.dist-info/entry_points.txt`` on the server's PYTHONPATH; see test_plugins.py).
It draws the samples of one parity first (``params.parity``), in a random order, and
weights them ``params.weight`` — enough to see from outside that the server used it.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from docl.services.methods import DrawContext, SelectionMethod
from docl.services.sampling import Draw, shuffle_draw


class ParityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    parity: int = Field(0, ge=0, le=1)
    weight: float = Field(1.0, gt=0)


def parity_draw(ctx: DrawContext) -> Draw:
    p = ctx.params
    assert isinstance(p, ParityParams)
    idx = np.arange(ctx.n, dtype=np.int64)
    first = idx[idx % 2 == p.parity]
    rest = idx[idx % 2 != p.parity]
    sel = np.concatenate([first, rest])[: ctx.k]
    d = Draw(sel, None, np.full(sel.shape[0], p.weight, np.float32))
    return shuffle_draw(d, ctx.rng) if ctx.shuffle else d


TOY = SelectionMethod(
    name="toy-parity",
    draw=parity_draw,
    signal="none",
    size="shrink",
    params=ParityParams,
    weights=True,
    summary="test plugin: samples of one parity first",
)
