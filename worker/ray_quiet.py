"""Quieter Ray for the local cluster ``docl train`` starts (a laptop, one box).

Light on purpose (no torch import): :func:`setup_worker` runs in every process
of that Ray, as its ``worker_process_setup_hook``.

- Ray Train's PlacementGroupCleaner asks the State API (served by the dashboard,
  which is off) about the controller every few seconds and warns each time it
  cannot: 14 lines in one `make demo`. Only its errors get through.
- When another Ray instance runs on the same machine (another user's job, a test
  suite), the State API cannot tell which instance to ask and raises a
  ``ConnectionError`` ("Found multiple active Ray instances") that the cleaner
  does not catch: its monitor thread died with a 28-line traceback on the
  driver's stderr. :func:`setup_worker` turns any failure of that query into the
  ``RayStateApiException`` the cleaner waits out (silenced above).
- The PreemptionWatcher actor (spot-node preemption) logs an E-level line at
  start-up; one machine has no preemption, so it is not started
  (:data:`ENV`).
- The driver's start-up notices (the Ray instance, its auth token) are left
  out by ``ray.init(logging_level=ERROR)`` in ``docl.worker.train``.

A cluster joined with ``--ray-address`` keeps all of Ray's output.
"""

from __future__ import annotations

import functools
import importlib
import logging
from typing import Any

__all__ = ["ENV", "SETUP_HOOK", "setup_worker"]

ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
SETUP_HOOK = "docl.worker.ray_quiet.setup_worker"
# The module's name is also its logger's name.
_CLEANER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def setup_worker() -> None:
    """``worker_process_setup_hook``: the cleaner's warnings off, its errors on, and its
    State API query never fatal to its monitor thread."""
    logging.getLogger(_CLEANER).setLevel(logging.ERROR)
    try:
        cleaner = importlib.import_module(_CLEANER)
        from ray.util.state.exception import RayStateApiException
    except ImportError:  # another Ray version: nothing to guard
        return
    query = getattr(cleaner, "is_actor_alive", None)
    if query is None or getattr(query, "_docl_guarded", False):
        return

    @functools.wraps(query)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return query(*args, **kwargs)
        except RayStateApiException:
            raise
        except Exception as e:  # e.g. ConnectionError: several Ray instances here
            raise RayStateApiException(f"State API query failed: {e}") from e

    guarded._docl_guarded = True  # type: ignore[attr-defined]
    setattr(cleaner, "is_actor_alive", guarded)  # noqa: B010 (a module mypy cannot see)
