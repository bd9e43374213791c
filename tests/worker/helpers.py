"""What the server must hold after a training run, recomputed from its stored epochs."""

from __future__ import annotations

from typing import Any

import numpy as np


def expected_visits_and_lr_sums(
    client: Any, run_id: str, *, world: int, num_samples: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per sample: how many times it was trained (once per epoch that drew it) and
    the lr_sum of its last visit — the running float64 sum of the plan's learning
    rates before the step that trained it, with each rank's shard split into
    exactly ``steps`` mini-batches. Also the total number of optimizer steps."""
    plan = client.plan(run_id)
    visits = np.zeros(num_samples, dtype=np.int64)
    lr_sums = np.full(num_samples, np.nan)
    for e in range(plan.num_epochs):
        epoch = client.get_epoch(run_id, e)
        for rank in range(world):
            shard = client.indices(run_id, e, rank=rank, world=world)
            acc = float(epoch.lr_sum_start)
            for s, part in enumerate(np.array_split(shard, epoch.steps)):
                visits[part] += 1
                lr_sums[part] = acc
                acc += float(epoch.lr[s])
    return visits, lr_sums, int(plan.total_steps)
