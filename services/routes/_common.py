"""Shared bits of the route modules: the problem responses every route documents."""

from __future__ import annotations

from typing import Any

from docl.services.errors import PROBLEM_CONTENT_TYPE
from docl.wire.models import Problem

__all__ = ["RUN_ID_DOC", "complete_openapi", "problems"]

RUN_ID_DOC = "The run's id (letters, digits, '_', '.', '-'; at most 64 characters)."

_EXAMPLES: dict[int, str] = {
    401: "missing or wrong bearer token",
    403: "this server holds 10000 runs, its limit (DOCL_MAX_RUNS = 10000); delete runs you no longer need (docl runs delete) to create new ones",
    404: "no run 'mnist1d-docl-0'",
    408: "no byte of the request body for 15 s (DOCL_BODY_IDLE_TIMEOUT_S); the connection is closed",
    409: "epoch 7 cannot be drawn before epoch 5: epochs are drawn in order (last drawn: 4; next: epoch 5)",
    410: "the indices of epoch 2 were dropped (the server keeps the last 4 epochs' indices)",
    413: "request body of 80000000 bytes is over this server's limit of 67108864 bytes (DOCL_MAX_BODY_BYTES)",
    500: "internal error: ValueError: ...",
    415: "unsupported Content-Type 'text/plain'",
    422: "indices[3] = 10000 is out of range [0, 10000)",
    503: "the score store (Redis) is unavailable; retry shortly",
}
_TITLES = {
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    409: "Conflict",
    410: "Gone",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


def problems(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these error statuses (problem+json, with an example)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in (*codes, 401, 503):
        out[code] = {"model": Problem, **_problem_response(code)}
    return out


def _problem_response(code: int) -> dict[str, Any]:
    return {
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


def complete_openapi(doc: dict[str, Any]) -> dict[str, Any]:
    """What FastAPI's document leaves out, added in place (idempotent):

    * the schemas that ``openapi_extra`` bodies refer to (``Report``: the reports route
      reads its body itself, so FastAPI never sees the model);
    * the answers every operation can give whatever it does: 413 (the gateway's body
      limits) and 500; with a body 408 (the gateway's body timeouts); on ``/v1`` also 401,
      503 and, with parameters or a body, 422; and the
      problem+json content of any error response declared without one.
    """
    from docl.wire.models import Report

    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "Report", Report.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    schemas.setdefault("Problem", Problem.model_json_schema())
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            codes = [413, 500] + ([408] if operation.get("requestBody") else [])
            if path.startswith("/v1"):
                codes += [401, 503]
                if operation.get("parameters") or operation.get("requestBody"):
                    codes.append(422)
            for code in codes:
                responses.setdefault(str(code), _problem_response(code))
            for code, response in responses.items():
                if code[0] in "45" and "content" not in response and int(code) in _TITLES:
                    response["content"] = _problem_response(int(code))["content"]
    return doc
