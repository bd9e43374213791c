"""Fuzzing the live server with schemathesis: every operation of its OpenAPI document,
valid and invalid inputs, against a real ``docl serve`` (embedded Redis) with a token.

Fails on any 5xx, any answer its OpenAPI document does not describe (status, content
type, headers, body schema), any invalid input accepted, and any request that takes
longer than ``REQUEST_TIMEOUT_S`` (a hang). Bounded: ``DOCL_FUZZ_EXAMPLES`` cases per
operation and generation mode (default 50: ~1,500 requests, ~12 s of the suite's
time; `make fuzz` runs 500) and ``DOCL_FUZZ_SECONDS`` of wall time in all (default
150); the figures are printed (``pytest -s``) and kept in the test's ``record_property``.

Path parameters: most cases of the run routes use ``fuzz-run``, a real run with
epoch 0 drawn, so that the fuzzer reaches past the 404 of an unknown run (bodies of
``/reports`` are validated against the run); the rest use generated ids. DELETE
never gets ``fuzz-run``.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import CHECKS  # noqa: E402
from schemathesis.specs.openapi import checks as _openapi_checks  # noqa: E402, F401 - registers them

from docl.client.wire import REPORT_CONTENT_TYPE, REPORTS_CONTENT_TYPE  # noqa: E402
from docl.services.embedded import ServerProcess  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = "fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RUN = "fuzz-run"
EXAMPLES = int(os.environ.get("DOCL_FUZZ_EXAMPLES", "50"))
BUDGET_S = float(os.environ.get("DOCL_FUZZ_SECONDS", "150"))
REQUEST_TIMEOUT_S = 10.0
CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
)


@schemathesis.serializer(REPORT_CONTENT_TYPE, REPORTS_CONTENT_TYPE)
def _raw_bytes(ctx: Any, value: Any) -> bytes:
    """The binary report encodings are ``format: binary`` strings: send them as they are."""
    return value if isinstance(value, bytes) else str(value).encode()


@dataclass
class Figures:
    requests: int = 0
    server_errors: int = 0
    violations: int = 0
    hangs: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    by_operation_status: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    with ServerProcess(env={"DOCL_API_TOKEN": TOKEN}) as server:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
            r = http.post(
                "/v1/runs",
                json={
                    "run_id": RUN,
                    "num_samples": 64,
                    "num_outputs": 3,
                    "epochs": 40,
                    "params": {"batch_size": 8, "warmup_epochs": 1},
                },
            )
            assert r.status_code == 201, r.text
            assert http.post(f"/v1/runs/{RUN}/epochs", json={"epoch": 0}).status_code == 200
        yield server


def _checks() -> list[Any]:
    by_name = {c.__name__: c for c in CHECKS.get_all()}
    return [by_name[name] for name in CHECK_NAMES]


def _fuzz(
    strategy: Any, name: str, url: str, checks: list[Any], figures: Figures, deadline: float
) -> None:
    """Up to EXAMPLES cases of one operation; failures are collected, not raised (no
    shrinking: the figures and the first failures are what the test reports)."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        if time.monotonic() > deadline:
            return
        if case.headers and "Authorization" in case.headers:
            case.headers = {**case.headers, **AUTH}  # the real token, not a generated one
        # (a case without the header is a negative one: it must get its 401)
        try:
            response = case.call(base_url=url, timeout=REQUEST_TIMEOUT_S)
        except Exception as e:  # requests' Timeout / ConnectionError: a hang or a crash
            figures.hangs += 1
            figures.failures.append(f"{name}: no answer ({type(e).__name__}: {e})")
            return
        figures.requests += 1
        figures.per_operation[name] += 1
        figures.statuses[response.status_code] += 1
        figures.by_operation_status[name, response.status_code] += 1
        if response.status_code >= 500:
            figures.server_errors += 1
        try:
            case.validate_response(response, checks=checks, headers=AUTH)
        except (Exception, BaseExceptionGroup) as e:  # FailureGroup: checks that failed
            figures.violations += 1
            if len(figures.failures) < 20:
                figures.failures.append(f"{name} [{response.status_code}]: {str(e)[:1500]}")

    run()


def test_fuzz_every_operation_finds_no_5xx_no_violation_no_hang(
    fuzz_server: ServerProcess, record_property: Any
) -> None:
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {(op.method.upper(), op.path) for op in operations}
    assert ("POST", "/v1/runs/{run_id}/reports") in paths, "the fuzzer must reach /reports"
    assert len(paths) == len(operations) >= 14
    checks = _checks()
    figures = Figures()
    started = time.monotonic()
    deadline = started + BUDGET_S

    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            name = f"{op.method.upper()} {op.path}"
            strategy = op.as_strategy(mode)
            if "{run_id}" in op.path and op.method.lower() != "delete":
                ours = op.as_strategy(mode, path_parameters={"run_id": RUN})
                strategy = st.one_of(ours, ours, strategy)
            try:
                _fuzz(strategy, name, fuzz_server.url, checks, figures, deadline)
            except Unsatisfiable:
                # No invalid input exists for an operation without parameters or body.
                assert mode == GenerationMode.NEGATIVE, name

    elapsed = time.monotonic() - started
    summary = (
        f"fuzz: {figures.requests} requests over {len(operations)} operations in "
        f"{elapsed:.0f} s; 5xx {figures.server_errors}, violations {figures.violations}, "
        f"hangs {figures.hangs}; statuses {dict(sorted(figures.statuses.items()))}"
    )
    reports = {
        code: k for (op, code), k in figures.by_operation_status.items() if op.endswith("/reports")
    }
    summary += f"; POST /reports {dict(sorted(reports.items()))}"
    print(summary)
    record_property("fuzz", summary)
    assert fuzz_server.proc is not None and fuzz_server.proc.poll() is None, "the server died"
    assert not figures.failures, summary + "\n" + "\n\n".join(figures.failures)
    # Every operation was exercised (the time budget did not starve the last ones).
    assert set(figures.per_operation) == {f"{m} {p}" for m, p in paths}, figures.per_operation
    assert httpx.get(fuzz_server.url + "/healthz", timeout=5).status_code == 200
