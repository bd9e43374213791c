"""The worker tests' session fixtures (one local Ray, the task cache), shared here."""

from tests.worker.conftest import ray_cluster, task_cache

__all__ = ["ray_cluster", "task_cache"]
