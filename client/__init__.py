"""docl client SDK: typed clients for the score server, a curriculum Sampler and a Reporter.

    from docl.client import ScoreClient, Reporter, track_lr, CurriculumSampler

``import docl.client`` needs only the base install (httpx, numpy, pydantic);
the samplers need torch and are imported on first use. See docs/client.md.

Logging: httpx logs one INFO line per request ("HTTP Request: POST …"), which
buries a training job's own lines under the reporter's traffic as soon as the
root logger is at INFO (Ray workers, ``logging.basicConfig(level=INFO)``). On
import, the ``httpx`` logger is set to WARNING **only if nobody configured it
yet** (its level is NOTSET). To see the request lines, set it yourself, before or
after importing docl: ``logging.getLogger("httpx").setLevel(logging.INFO)``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from docl.client._client import (
    DEFAULT_SERVER,
    AsyncScoreClient,
    ScoreArrays,
    ScoreClient,
    Shard,
    to_numpy,
)
from docl.client.errors import (
    APIError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    DoclError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServerError,
    TransportError,
    ValidationError,
    WireError,
)
from docl.client.reporter import LrSum, Reporter, ReporterCounters, track_lr
from docl.wire.models import (
    Epoch,
    Plan,
    PlanEpoch,
    ReportAck,
    Run,
    RunCreate,
    RunParams,
    Stats,
)


def _quiet_httpx() -> None:
    # Only when the user (or their framework) has not chosen a level for httpx.
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:
        httpx_log.setLevel(logging.WARNING)


_quiet_httpx()

if TYPE_CHECKING:
    from docl.client.batch_sampler import CurriculumBatchSampler
    from docl.client.sampler import CurriculumSampler, WithIndices

__all__ = [
    "DEFAULT_SERVER",
    "APIError",
    "AsyncScoreClient",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "CurriculumBatchSampler",
    "CurriculumSampler",
    "DoclError",
    "Epoch",
    "InvalidRequestError",
    "LrSum",
    "NotFoundError",
    "PayloadTooLargeError",
    "Plan",
    "PlanEpoch",
    "ReportAck",
    "Reporter",
    "ReporterCounters",
    "Run",
    "RunCreate",
    "RunParams",
    "ScoreArrays",
    "ScoreClient",
    "ServerError",
    "Shard",
    "Stats",
    "TransportError",
    "ValidationError",
    "WireError",
    "WithIndices",
    "to_numpy",
    "track_lr",
]

_TORCH_NAMES = ("CurriculumBatchSampler", "CurriculumSampler", "WithIndices")


def __getattr__(name: str) -> Any:
    # The samplers subclass torch classes: import torch only when they are asked for.
    if name == "CurriculumBatchSampler":
        from docl.client import batch_sampler

        return batch_sampler.CurriculumBatchSampler
    if name in _TORCH_NAMES:
        from docl.client import sampler

        return getattr(sampler, name)
    raise AttributeError(f"module 'docl.client' has no attribute {name!r}")
