"""The quiet local Ray of `docl train` names things Ray really has: were Ray to
rename the cleaner's module or the watcher's switch, the noise would come back
silently (measured: 14 PlacementGroupCleaner warnings, one PreemptionWatcher
E-line and three driver notices in one `make demo` before; none after)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest

from docl.worker import ray_quiet

pytest.importorskip("ray.train")


def test_the_cleaner_logger_is_the_one_ray_logs_its_warnings_to() -> None:
    mod = importlib.import_module(ray_quiet._CLEANER_LOGGER)
    assert mod.logger.name == ray_quiet._CLEANER_LOGGER
    assert "Failed to query Ray Train Controller actor state" in Path(str(mod.__file__)).read_text()
    saved = mod.logger.level
    try:
        ray_quiet.setup_worker()
        assert not mod.logger.isEnabledFor(logging.WARNING)
        assert mod.logger.isEnabledFor(logging.ERROR)
    finally:
        mod.logger.setLevel(saved)


def test_the_preemption_watcher_switch_is_rays() -> None:
    from ray.train.v2._internal import constants

    assert set(ray_quiet.ENV) == {constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR}
    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR in constants.ENV_VARS_TO_PROPAGATE
