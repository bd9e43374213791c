"""The one seed derivation of a run: every epoch's draw seed from the run's seed.

Pure (numpy only): the score server's draws and the worker's local, server-less
loop use the same functions, so the same (run seed, epoch) gives the same seed,
the same Generator and, for a uniform epoch, the same indices on both sides.
"""

from __future__ import annotations

import numpy as np

__all__ = ["epoch_rng", "epoch_seed", "step_rng"]


def epoch_seed(run_seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s draw: a pure function of (run seed, epoch).

    53 bits, so that it survives a round trip through JSON in any language.
    """
    state = np.random.SeedSequence([int(run_seed), int(epoch)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(11))


def epoch_rng(run_seed: int, epoch: int) -> np.random.Generator:
    """The Generator of epoch ``epoch``'s draw: ``default_rng(epoch_seed(run_seed, epoch))``.

    Independent streams per (run seed, epoch), so drawing epoch e again (the
    idempotent re-draw, another replica, the local loop) gives the same subset."""
    return np.random.default_rng(epoch_seed(run_seed, epoch))


def step_rng(epoch_seed: int, rank: int, step: int) -> np.random.Generator:
    """The Generator of one training step's selection (a step-level method's rule, e.g.
    ``pool-random``): a pure function of (the epoch's seed, :func:`epoch_seed`, rank,
    step), so a step replayed after a restart chooses the same samples. A stream of its
    own: the trailing tag keeps it apart from every epoch's draw."""
    seq = np.random.SeedSequence([int(epoch_seed), int(rank), int(step), 0x57E9])
    return np.random.default_rng(seq)
