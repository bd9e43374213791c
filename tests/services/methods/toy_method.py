"""A selection method defined OUTSIDE docl's package, as a user's plugin would be.

Registered with the server through a real entry point (a ``docl.methods`` group in a
``*.dist-info/entry_points.txt`` on the server's PYTHONPATH; see test_plugins.py).
It draws the samples of one parity first (``params.parity``) and weights them
``params.weight`` — enough to see from outside that the server used it. Its draw
returns them in selection order: the server shuffles every draw (the plugin does not).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from docl.services.methods import DrawContext, SelectionMethod
from docl.services.sampling import Draw


class ParityParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    parity: int = Field(0, ge=0, le=1)
    weight: float = Field(1.0, gt=0)


def parity_draw(ctx: DrawContext[ParityParams]) -> Draw:
    p = ctx.params
    idx = np.arange(ctx.n, dtype=np.int64)
    first = idx[idx % 2 == p.parity]
    rest = idx[idx % 2 != p.parity]
    sel = np.concatenate([first, rest])[: ctx.k]
    return Draw(sel, None, np.full(sel.shape[0], p.weight, np.float32))


TOY = SelectionMethod(
    name="toy-parity",
    draw=parity_draw,
    signal="none",
    size="shrink",
    params=ParityParams,
    weights=True,
    summary="test plugin: samples of one parity first",
)
