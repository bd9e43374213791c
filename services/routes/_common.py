"""Shared bits of the route modules: the problem responses every route documents."""

from __future__ import annotations

from typing import Any

from docl.services.errors import PROBLEM_CONTENT_TYPE
from docl.wire.models import Problem

__all__ = ["RUN_ID_DOC", "problems"]

RUN_ID_DOC = "The run's id (letters, digits, '_', '.', '-'; at most 64 characters)."

_EXAMPLES: dict[int, str] = {
    401: "missing or wrong bearer token",
    404: "no run 'mnist1d-docl-0'",
    409: "epoch 7 cannot be drawn before epoch 5: epochs are drawn in order (last drawn: 4; next: epoch 5)",
    410: "the indices of epoch 2 were dropped (the server keeps the last 4 epochs' indices)",
    413: "request body of 80000000 bytes is over this server's limit of 67108864 bytes (DOCL_MAX_BODY_BYTES)",
    415: "unsupported Content-Type 'text/plain'",
    422: "indices[3] = 10000 is out of range [0, 10000)",
    503: "the score store (Redis) is unavailable; retry shortly",
}
_TITLES = {
    401: "Unauthorized",
    404: "Not Found",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    503: "Service Unavailable",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (problem+json, with an example)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in (*codes, 401, 503):
        out[code] = {
            "model": Problem,
            "description": _TITLES[code],
            "content": {
                PROBLEM_CONTENT_TYPE: {
                    "schema": {"$ref": "#/components/schemas/Problem"},
                    "example": {
                        "type": "about:blank",
                        "title": _TITLES[code],
                        "status": code,
                        "detail": _EXAMPLES[code],
                    },
                }
            },
        }
    return out
