"""What the server must hold after a training run, recomputed from its stored epochs."""

from __future__ import annotations

from typing import Any

import numpy as np


def _pool_parts(s: int, steps: int, m: int) -> list[int]:
    """Step s's candidate pool, written here from the rule in docs/training.md (not with
    the code under test): the parts s, s + d, …, s + (m−1)d mod steps, d = steps // m;
    every part when there are fewer steps than m."""
    if steps < m:
        return [(s + j) % steps for j in range(steps)]
    d = steps // m
    return [(s + k * d) % steps for k in range(m)]


def expected_visits_and_lr_sums(
    client: Any,
    run_id: str,
    *,
    world: int,
    num_samples: int,
    pool_ratio: int | None = None,
    passes: dict[str, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Per sample: how many times it was reported (once per epoch that drew it) and
    the lr_sum of its last visit — the running float64 sum of the plan's learning
    rates before the step that reported it, with each rank's shard split into
    exactly ``steps`` mini-batches. Also the total number of optimizer steps.

    ``pool_ratio`` m: a step-level method, whose selection steps report their whole
    candidate pool (m parts), so a sample is reported m times per selection epoch.
    ``passes``, when given, receives the forward and backward sample-passes the run
    must have counted: every step trains (forward and backward) as many samples as its
    own part holds, and a selection step also forwards its pool."""
    plan = client.plan(run_id)
    visits = np.zeros(num_samples, dtype=np.int64)
    lr_sums = np.full(num_samples, np.nan)
    forward = backward = 0
    for e in range(plan.num_epochs):
        epoch = client.get_epoch(run_id, e)
        pooled = pool_ratio is not None and epoch.phase == "select"
        for rank in range(world):
            shard = client.indices(run_id, e, rank=rank, world=world)
            parts = np.array_split(shard, epoch.steps)
            acc = float(epoch.lr_sum_start)
            for s, part in enumerate(parts):
                backward += part.size
                forward += part.size
                reported = part
                if pooled:
                    assert pool_ratio is not None
                    reported = np.concatenate(
                        [parts[j] for j in _pool_parts(s, len(parts), pool_ratio)]
                    )
                    forward += reported.size
                visits[reported] += 1
                lr_sums[reported] = acc
                acc += float(epoch.lr[s])
    if passes is not None:
        passes.update(forward=forward, backward=backward)
    return visits, lr_sums, int(plan.total_steps)
