"""Quieter Ray for the local cluster ``docl train`` starts (a laptop, one box).

Light on purpose (no torch import): :func:`setup_worker` runs in every process
of that Ray, as its ``worker_process_setup_hook``.

- Ray Train's PlacementGroupCleaner asks the State API (served by the dashboard,
  which is off) about the controller every few seconds and warns each time it
  cannot: 14 lines in one `make demo`. Only its errors get through.
- The PreemptionWatcher actor (spot-node preemption) logs an E-level line at
  start-up; one machine has no preemption, so it is not started
  (:data:`ENV`).
- The driver's start-up notices (the Ray instance, its auth token) are left
  out by ``ray.init(logging_level=ERROR)`` in ``docl.worker.train``.

A cluster joined with ``--ray-address`` keeps all of Ray's output.
"""

from __future__ import annotations

import logging

__all__ = ["ENV", "SETUP_HOOK", "setup_worker"]

ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
SETUP_HOOK = "docl.worker.ray_quiet.setup_worker"
_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def setup_worker() -> None:
    """``worker_process_setup_hook``: the cleaner's warnings off, its errors on."""
    logging.getLogger(_CLEANER_LOGGER).setLevel(logging.ERROR)
