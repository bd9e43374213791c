"""Fixtures of the worker tests.

``ray_cluster``  ONE real local Ray for the whole session (``ray.init(num_cpus=2)``;
                 start-up costs 5–20 s here), its GCS address as the value.
                 Ray Train's controller is told to poll workers every 0.2 s
                 (the launcher's default too) so epochs do not wait on it.
``task_cache``   (autouse) MNIST-1D's generated arrays go to a session temp dir,
                 not the user's ~/.cache.

``worker_server`` a real ``docl serve`` process (over HTTP, on the shared session
                 ``redis_server``) that keeps every epoch's indices
                 (``DOCL_KEEP_EPOCHS=1000``; the default keeps the last 4), so a
                 test can recompute after training what each sample's visits and
                 lr-sum must be. Each test uses its own run id.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from docl.services.embedded import RedisProcess, ServerProcess


@pytest.fixture(scope="session", autouse=True)
def task_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("docl-cache"))
    old = os.environ.get("DOCL_CACHE_DIR")
    os.environ["DOCL_CACHE_DIR"] = path
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("DOCL_CACHE_DIR", None)
        else:
            os.environ["DOCL_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    # No idle workers started ahead of tasks: each imports Ray (~1 s of CPU) and most
    # are never used by the tests' jobs.
    os.environ.setdefault("RAY_enable_worker_prestart", "0")
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        if started:
            ray.shutdown()


@pytest.fixture(scope="session")
def worker_server(redis_server: RedisProcess) -> Iterator[str]:
    server = ServerProcess(redis_url=redis_server.url, env={"DOCL_KEEP_EPOCHS": "1000"})
    server.start()
    try:
        yield server.url
    finally:
        server.close()
