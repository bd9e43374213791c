"""Prometheus metrics of the score server (``GET /metrics``).

With ``docl serve --workers N`` every worker is its own process; the parent sets
``PROMETHEUS_MULTIPROC_DIR`` to a fresh directory before the workers start, so
prometheus-client keeps each metric in a memory-mapped file per process and
:func:`render` sums them (prometheus-client's multiprocess mode). Without the
variable the default in-process registry is used.

Names (all prefixed ``docl_``):

- ``http_requests_total{method, route, status}`` and ``http_request_seconds{method, route}``
- ``reports_total{result}`` (applied | duplicate | rejected), ``samples_reported_total``,
  ``samples_scored_total``, ``report_conflicts_total`` (compare-and-set retries)
- ``draw_seconds{phase}``: time to draw and store an epoch
- ``redis_errors_total{kind}``: Redis (Cluster) failures answered 503, by exception class
  (redis-py's, or ``NotReplicated``, ``PartitionUnavailable``, ``ClusterStateError``)
- ``partition_unavailable_total{reason}``: requests to a partitioned run answered 503
  because one partition's node was unreachable, failing over or refusing writes
  (``unreachable`` | ``failover`` | ``refused``) or, with ``DOCL_REDIS_WAIT_REPLICAS``, its
  replicas did not acknowledge in time (``not_replicated``: e.g. its replica was just
  promoted and has no replica of its own yet); the 503 names the partition.
  ``shard_unavailable_total{reason}``, its name before partitions were called so, is
  still exported with the same counts (deprecated: it goes in a later release).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "CONTENT_TYPE_LATEST",
    "DRAW_SECONDS",
    "HTTP_REQUESTS",
    "HTTP_SECONDS",
    "PARTITION_UNAVAILABLE",
    "REDIS_ERRORS",
    "REPORTS",
    "REPORTS_COMPLETED",
    "REPORT_CONFLICTS",
    "SAMPLES_REPORTED",
    "SAMPLES_SCORED",
    "SHARD_UNAVAILABLE",
    "partition_unavailable",
    "render",
]

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

HTTP_REQUESTS = Counter(
    "docl_http_requests_total", "HTTP requests by route and status.", ["method", "route", "status"]
)
HTTP_SECONDS = Histogram(
    "docl_http_request_seconds",
    "Time from request start to the end of the response body.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
REPORTS = Counter("docl_reports_total", "Reports by result.", ["result"])
SAMPLES_REPORTED = Counter("docl_samples_reported_total", "Samples in applied reports.")
SAMPLES_SCORED = Counter("docl_samples_scored_total", "Samples whose score was updated.")
REPORT_CONFLICTS = Counter(
    "docl_report_conflicts_total",
    "Reports re-gathered because another report changed one of their samples meanwhile.",
)
DRAW_SECONDS = Histogram(
    "docl_draw_seconds", "Time to draw and store one epoch.", ["phase"], buckets=_LATENCY_BUCKETS
)
REPORTS_COMPLETED = Counter(
    "docl_reports_completed_total",
    "Requests to a partitioned run whose reports were found applied on some of their "
    "partitions (a partial apply: a process or node died between partition parts) and "
    "completed on the rest.",
)
REDIS_ERRORS = Counter(
    "docl_redis_errors_total",
    "Redis (Cluster) failures answered 503: lost connections, timeouts, failovers, refused "
    "writes, reports not acknowledged by enough replicas.",
    ["kind"],
)
PARTITION_UNAVAILABLE = Counter(
    "docl_partition_unavailable_total",
    "Requests to a partitioned run answered 503 because one of its partitions' Redis node "
    "was unreachable, failing over, refusing writes or not acknowledged by enough replicas "
    "(DOCL_REDIS_WAIT_REPLICAS): the run stalls until it is back.",
    ["reason"],
)
#: Deprecated: docl_partition_unavailable_total's name before "partition" (same counts).
SHARD_UNAVAILABLE = Counter(
    "docl_shard_unavailable_total",
    "Deprecated name of docl_partition_unavailable_total (the same counts).",
    ["reason"],
)


def partition_unavailable(reason: str) -> None:
    """Count a request to a partitioned run answered 503 for ``reason`` (under the
    metric's name and its deprecated one)."""
    PARTITION_UNAVAILABLE.labels(reason=reason).inc()
    SHARD_UNAVAILABLE.labels(reason=reason).inc()


def render() -> tuple[bytes, str]:
    """The exposition text of every metric (summed over worker processes in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
