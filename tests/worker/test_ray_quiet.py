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


def test_the_cleaner_logger_is_the_one_ray_logs_its_warnings_to() -> None:
    mod = importlib.import_module(ray_quiet._CLEANER)
    assert mod.logger.name == ray_quiet._CLEANER
    assert "Failed to query Ray Train Controller actor state" in Path(str(mod.__file__)).read_text()
    saved = mod.logger.level
    try:
        ray_quiet.setup_worker()
        assert not mod.logger.isEnabledFor(logging.WARNING)
        assert mod.logger.isEnabledFor(logging.ERROR)
    finally:
        mod.logger.setLevel(saved)


def test_a_failed_state_query_is_one_the_cleaner_waits_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With another Ray instance on the machine the cleaner's State API query raised
    ConnectionError("Found multiple active Ray instances: …"), which its monitor loop
    does not catch: a 28-line traceback in `make demo` (seen on this box while other
    test suites ran Ray). The hook turns it into the exception the loop waits out."""
    from ray.util.state.exception import RayStateApiException

    mod = importlib.import_module(ray_quiet._CLEANER)
    source = Path(str(mod.__file__)).read_text()
    assert "alive = is_actor_alive(" in source
    assert "except ray.util.state.exception.RayStateApiException:" in source

    def several_instances(*args: object, **kwargs: object) -> bool:
        raise ConnectionError("Found multiple active Ray instances: {'a:1', 'b:2'}.")

    monkeypatch.setattr(mod, "is_actor_alive", several_instances)  # undone after the test
    monkeypatch.setattr(mod.logger, "level", mod.logger.level)
    ray_quiet.setup_worker()
    ray_quiet.setup_worker()  # idempotent: wrapped once
    with pytest.raises(RayStateApiException, match="multiple active Ray instances"):
        mod.is_actor_alive(actor_id="00" * 16, timeout=1)
    assert mod.is_actor_alive.__wrapped__ is several_instances


def test_the_preemption_watcher_switch_is_rays() -> None:
    from ray.train.v2._internal import constants

    assert set(ray_quiet.ENV) == {constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR}
    assert constants.ENABLE_PREEMPTION_WATCHER_ENV_VAR in constants.ENV_VARS_TO_PROPAGATE
