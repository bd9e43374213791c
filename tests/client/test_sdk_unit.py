"""Unit tests of the SDK's HTTP plumbing with an injected ``httpx.MockTransport``.

These pin down what a real server cannot be made to do on demand (answer 503
twice then 200, send a Retry-After, reset a connection) and what the client
puts on the wire. They are NOT the evidence that the SDK works against the
server: tests/client/test_sdk_server.py runs every route against a real one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from docl.client import (
    AsyncScoreClient,
    AuthenticationError,
    ConflictError,
    DoclError,
    NotFoundError,
    PayloadTooLargeError,
    ScoreClient,
    ServerError,
    TransportError,
    ValidationError,
    WireError,
    wire,
)
from docl.client.errors import APIError
from docl.wire.retry import ConstantBackoff, ExponentialBackoff, Retry

RUN = {
    "run_id": "r1",
    "num_samples": 10,
    "num_outputs": 3,
    "task": "classification",
    "method": "docl",
    "epochs": 4,
    "params": {},
    "created_at": 1.0,
    "epochs_drawn": 2,
    "last_epoch": 1,
    "total_steps": 4,
}
ACK = {"accepted": 2, "scored": 1, "duplicate": False}


def problem(status: int, detail: str, title: str = "Error") -> httpx.Response:
    return httpx.Response(
        status,
        json={"type": "about:blank", "title": title, "status": status, "detail": detail},
        headers={"content-type": "application/problem+json"},
    )


class Recorder:
    """A MockTransport handler that answers from a script and records every request."""

    def __init__(self, *answers: httpx.Response | Exception | Callable[[httpx.Request], Any]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer) and not isinstance(answer, httpx.Response):
            return answer(request)
        return answer


def make(handler: Recorder, **kw: Any) -> tuple[ScoreClient, list[float]]:
    client = ScoreClient("http://docl.test", transport=httpx.MockTransport(handler), **kw)
    sleeps: list[float] = []
    client._sleep = sleeps.append  # no real waiting in unit tests
    return client, sleeps


def test_5xx_and_429_are_retried_then_succeed() -> None:
    h = Recorder(
        problem(503, "redis down"), problem(429, "slow down"), httpx.Response(200, json=RUN)
    )
    client, sleeps = make(h, retries=3, backoff=0.1)
    run = client.get_run("r1")
    assert run.run_id == "r1" and run.last_epoch == 1
    assert len(h.requests) == 3
    assert client.retry_count == 2
    # attempt 0 waits in [0.05, 0.1], attempt 1 in [0.1, 0.2]
    assert 0.05 <= sleeps[0] <= 0.1 and 0.1 <= sleeps[1] <= 0.2


def test_backoff_is_exponential_capped_and_jittered() -> None:
    h = Recorder(problem(502, "bad gateway"))
    client, sleeps = make(h, retries=6, backoff=0.5, max_backoff=3.0)
    with pytest.raises(ServerError) as ei:
        client.plan("r1")
    assert ei.value.status == 502 and ei.value.detail == "bad gateway"
    assert len(h.requests) == 7  # first try + 6 retries
    caps = [min(3.0, 0.5 * 2**a) for a in range(6)]
    assert all(c / 2 <= s <= c for s, c in zip(sleeps, caps, strict=True))
    assert len(set(sleeps)) > 1  # jittered, not a constant


def test_retry_after_is_honoured_up_to_max_backoff() -> None:
    h = Recorder(
        httpx.Response(429, headers={"retry-after": "2"}, json={"detail": "x"}),
        httpx.Response(429, headers={"retry-after": "100"}, json={"detail": "x"}),
        httpx.Response(200, json=RUN),
    )
    client, sleeps = make(h, retries=5, backoff=0.01, max_backoff=4.0)
    client.get_run("r1")
    assert sleeps[0] >= 2.0 and sleeps[1] == 4.0


def test_connection_errors_are_retried_then_raise_transport_error() -> None:
    h = Recorder(httpx.ConnectError("refused"))
    client, sleeps = make(h, retries=2)
    with pytest.raises(TransportError, match="3 attempt"):
        client.get_run("r1")
    assert len(h.requests) == 3 and len(sleeps) == 2
    h2 = Recorder(httpx.ReadTimeout("slow"), httpx.Response(200, json=RUN))
    client2, _ = make(h2, retries=2)
    assert client2.get_run("r1").run_id == "r1"


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (401, AuthenticationError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, PayloadTooLargeError),
        (422, ValidationError),
    ],
)
def test_4xx_map_to_their_error_and_are_not_retried(status: int, cls: type[APIError]) -> None:
    h = Recorder(problem(status, f"the detail of {status}", title="Some Title"))
    client, sleeps = make(h)
    with pytest.raises(cls) as ei:
        client.get_run("r1")
    e = ei.value
    assert isinstance(e, DoclError) and e.status == status
    assert e.detail == f"the detail of {status}" and e.title == "Some Title"
    assert e.method == "GET" and e.url == "http://docl.test/v1/runs/r1"
    assert f"the detail of {status}" in str(e)
    assert len(h.requests) == 1 and sleeps == []


def test_fastapi_default_validation_list_becomes_a_readable_detail() -> None:
    body = {
        "detail": [{"loc": ["body", "num_samples"], "msg": "Field required", "type": "missing"}]
    }
    h = Recorder(httpx.Response(422, json=body))
    client, _ = make(h)
    with pytest.raises(ValidationError, match=r"body\.num_samples: Field required"):
        client.get_run("r1")


def test_non_json_error_body_is_kept_as_detail() -> None:
    h = Recorder(httpx.Response(404, text="no such thing"))
    client, _ = make(h)
    with pytest.raises(NotFoundError, match="no such thing"):
        client.get_run("r1")


def test_binary_report_body_round_trips_and_keeps_its_id_across_retries() -> None:
    h = Recorder(httpx.ReadTimeout("lost answer"), httpx.Response(200, json=ACK))
    client, _ = make(h, retries=1)
    rng = np.random.default_rng(0)
    idx = np.array([4, 7], dtype=np.int32)
    out = rng.normal(size=(2, 3))  # float64: sent as float32
    tgt = np.array([2, 0])
    ack = client.report("r1", epoch=3, indices=idx, outputs=out, targets=tgt, lr_sum=1.25)
    assert ack.scored == 1 and not ack.duplicate
    bodies = [wire.decode_report(r.content) for r in h.requests]
    assert [r.headers["content-type"] for r in h.requests] == [wire.REPORT_CONTENT_TYPE] * 2
    assert bodies[0].report_id == bodies[1].report_id  # the retry is the same report
    b = bodies[1]
    assert b.epoch == 3 and b.lr_sum == 1.25
    np.testing.assert_array_equal(b.indices, idx)
    np.testing.assert_array_equal(b.outputs, out.astype(np.float32))
    np.testing.assert_array_equal(b.targets, tgt)
    assert b.features is None and not b.regression


def test_report_many_sends_one_multi_report_body_and_keeps_ids_across_retries() -> None:
    acks = {"reports": [ACK, {**ACK, "duplicate": True}], "accepted": 2, "scored": 1,
            "duplicates": 1}  # fmt: skip
    h = Recorder(httpx.ReadTimeout("lost answer"), httpx.Response(200, json=acks))
    client, _ = make(h, retries=1)
    reports = [
        {"epoch": 0, "indices": [4], "outputs": [[1.0, 2.0]], "targets": [1], "lr_sum": 0.5},
        {"epoch": 1, "indices": np.array([7, 9]), "outputs": np.ones((2, 2)),
         "targets": np.array([0, 1]), "lr_sum": 2.0, "report_id": "mine"},
    ]  # fmt: skip
    ack = client.report_many("r1", reports)
    assert [a.duplicate for a in ack.reports] == [False, True] and ack.duplicates == 1
    assert [r.headers["content-type"] for r in h.requests] == [wire.REPORTS_CONTENT_TYPE] * 2
    first, again = (wire.decode_reports(r.content) for r in h.requests)
    assert [r.report_id for r in first] == [r.report_id for r in again]  # the retry: same ids
    assert first[1].report_id == "mine" and len(first[0].report_id) == 32
    assert (first[0].epoch, first[0].lr_sum, first[1].epoch, first[1].lr_sum) == (0, 0.5, 1, 2.0)
    np.testing.assert_array_equal(first[1].indices, [7, 9])
    np.testing.assert_array_equal(first[0].outputs, [[1.0, 2.0]])
    with pytest.raises(WireError, match="report 1: outputs must be"):
        client.report_many("r1", [reports[0], {**reports[1], "outputs": np.ones(2)}])
    with pytest.raises(WireError, match="report 0: missing field 'lr_sum'"):
        client.report_many("r1", [{k: v for k, v in reports[0].items() if k != "lr_sum"}])
    with pytest.raises(WireError, match="at least one"):
        client.report_many("r1", [])
    assert len(h.requests) == 2  # the bad calls never reached the transport


def test_multi_report_container_round_trips_and_names_the_bad_report() -> None:
    frames = [
        wire.encode_report(report_id=f"r{k}", epoch=k, lr_sum=0.5 * k, indices=np.arange(k + 1),
                           outputs=np.full((k + 1, 3), k, np.float32), targets=np.zeros(k + 1, np.int64))
        for k in range(3)
    ]  # fmt: skip
    body = wire.encode_reports(frames)
    assert len(body) % 8 == 0
    got = wire.decode_reports(body)
    assert [(r.report_id, r.epoch, r.lr_sum, r.indices.shape[0]) for r in got] == [
        ("r0", 0, 0.0, 1), ("r1", 1, 0.5, 2), ("r2", 2, 1.0, 3)
    ]  # fmt: skip
    np.testing.assert_array_equal(got[2].outputs, np.full((3, 3), 2, np.float32))
    broken = bytearray(body)
    at = 16 + 8 + len(frames[0]) + (-len(frames[0])) % 8 + 8  # report 1's magic
    broken[at : at + 4] = b"XXXX"
    with pytest.raises(WireError, match="report 1: bad magic"):
        wire.decode_reports(bytes(broken))
    with pytest.raises(WireError, match="runs past the end"):
        wire.decode_reports(body[:-16])
    with pytest.raises(WireError, match="bytes after the last"):
        wire.decode_reports(body + b"\0" * 8)
    with pytest.raises(WireError, match=r"1\.\.4096 reports"):
        wire.encode_reports([])


def test_json_report_carries_the_same_fields() -> None:
    h = Recorder(httpx.Response(200, json=ACK))
    client, _ = make(h, binary=False)
    client.report(
        "r1",
        epoch=0,
        indices=[1, 2],
        outputs=[[0.5, 1.0], [2.0, -1.0]],
        targets=[[0.0, 1.0], [1.0, 0.0]],
        lr_sum=0.0,
        features=[[1.0], [2.0]],
        report_id="fixed-id",
    )
    req = h.requests[0]
    assert req.headers["content-type"] == "application/json"
    doc = json.loads(req.content)
    assert doc == {
        "report_id": "fixed-id",
        "epoch": 0,
        "indices": [1, 2],
        "outputs": [[0.5, 1.0], [2.0, -1.0]],
        "targets": [[0.0, 1.0], [1.0, 0.0]],
        "lr_sum": 0.0,
        "features": [[1.0], [2.0]],
    }


def test_torch_tensors_are_detached_and_converted() -> None:
    torch = pytest.importorskip("torch")
    h = Recorder(httpx.Response(200, json=ACK))
    client, _ = make(h)
    w = torch.randn(3, requires_grad=True)
    out = (torch.ones(2, 3) * w).to(torch.bfloat16)  # needs grad, and a dtype numpy lacks
    client.report(
        "r1",
        epoch=1,
        indices=torch.tensor([0, 5]),
        outputs=out,
        targets=torch.tensor([1, 2]),
        lr_sum=0.5,
    )
    b = wire.decode_report(h.requests[0].content)
    np.testing.assert_array_equal(b.outputs, out.detach().float().numpy())
    np.testing.assert_array_equal(b.indices, [0, 5])


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"outputs": np.zeros((3, 2))}, r"outputs must be \(B, c\) = \(2, c\)"),
        ({"outputs": np.zeros(2)}, "outputs must be"),
        ({"indices": np.array([0.5, 1.0])}, "indices must be integers"),
        ({"indices": np.zeros((2, 1), dtype=int)}, "1-D"),
        ({"targets": np.array([0.0, 1.0])}, "class ids and must be integers"),
        ({"targets": np.zeros((2, 5))}, "regression targets"),
        ({"epoch": -1}, "epoch"),
        ({"features": np.zeros(2)}, "features"),
    ],
)
def test_malformed_reports_fail_before_any_request(kw: dict[str, Any], match: str) -> None:
    h = Recorder(httpx.Response(200, json=ACK))
    client, _ = make(h)
    args: dict[str, Any] = {
        "epoch": 0,
        "indices": np.array([0, 1]),
        "outputs": np.zeros((2, 2)),
        "targets": np.array([0, 1]),
        "lr_sum": 0.0,
    }
    args.update(kw)
    with pytest.raises(WireError, match=match):
        client.report("r1", **args)
    assert h.requests == []


def test_draw_epoch_without_number_resolves_next_by_get_run() -> None:
    def epoch_answer(request: httpx.Request) -> httpx.Response:
        e = json.loads(request.content)["epoch"]
        return httpx.Response(
            200,
            json={
                "epoch": e, "episode": 1, "phase": "select", "loss": "task", "size": 5,
                "steps": 1, "lr_start": 0.1, "lr_end": 0.1, "lr_sum_start": 2.0,
                "batch_size": 8, "lr": [0.1], "seed": 7,
            },
        )  # fmt: skip

    h = Recorder(httpx.Response(200, json=RUN), epoch_answer)
    client, _ = make(h)
    ep = client.draw_epoch("r1")
    assert [r.method for r in h.requests] == ["GET", "POST"]
    assert json.loads(h.requests[1].content) == {"epoch": 2}  # last_epoch 1 -> 2
    assert ep.epoch == 2 and ep.lr == [0.1]


def test_create_run_sends_an_id_so_a_retry_is_the_same_create() -> None:
    h = Recorder(httpx.ConnectError("reset"), lambda r: httpx.Response(201, json=RUN))
    client, _ = make(h, retries=1)
    client.create_run(num_samples=10, num_outputs=3, epochs=4, params={"tau": 0.5})
    docs = [json.loads(r.content) for r in h.requests]
    assert docs[0] == docs[1]
    assert docs[0]["run_id"].startswith("run-") and docs[0]["params"]["tau"] == 0.5
    with pytest.raises(TypeError):
        client.create_run(RunCreateLike(), num_samples=3)  # type: ignore[arg-type]


class RunCreateLike:
    pass


def test_token_and_server_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCL_SERVER", "http://from-env:1234/")
    monkeypatch.setenv("DOCL_API_TOKEN", "s3cret")
    h = Recorder(httpx.Response(200, json={"status": "ok"}))
    client = ScoreClient(transport=httpx.MockTransport(h))
    assert client.health() == {"status": "ok"}
    assert str(h.requests[0].url) == "http://from-env:1234/healthz"
    assert h.requests[0].headers["authorization"] == "Bearer s3cret"
    explicit = ScoreClient("http://x", token="other", transport=httpx.MockTransport(h))
    explicit.health()
    assert h.requests[1].headers["authorization"] == "Bearer other"


def test_ready_is_false_on_503_and_on_no_connection_without_retrying() -> None:
    h = Recorder(problem(503, "redis unreachable"))
    client, sleeps = make(h, retries=5)
    assert client.ready() is False and len(h.requests) == 1 and sleeps == []
    h2 = Recorder(httpx.ConnectError("refused"))
    client2, _ = make(h2, retries=5)
    assert client2.ready() is False and len(h2.requests) == 1


def test_scores_json_nulls_become_nan() -> None:
    h = Recorder(
        httpx.Response(
            200, json={"offset": 5, "scores": [None, 1.5], "visits": [1, 2], "lr_sums": [0.5, None]}
        )
    )
    client, _ = make(h, binary=False)
    s = client.scores("r1", offset=5, limit=2)
    assert (
        h.requests[0].url.params["offset"] == "5"
        and h.requests[0].headers["accept"] == "application/json"
    )
    assert s.offset == 5 and list(s.sample_ids) == [5, 6]
    assert np.isnan(s.scores[0]) and s.scores[1] == 1.5 and np.isnan(s.lr_sums[1])
    assert s.scored.tolist() == [False, True]


def test_binary_scores_and_indices_are_decoded() -> None:
    scores = np.array([np.nan, 2.0], dtype=np.float32)
    body = wire.encode_scores(scores, np.array([0, 3]), np.array([np.nan, 1.0]), offset=9)
    h = Recorder(
        httpx.Response(200, content=body, headers={"content-type": wire.SCORES_CONTENT_TYPE}),
        httpx.Response(200, content=wire.encode_indices(np.array([3, 1, 2])),
                       headers={"content-type": "application/octet-stream"}),
    )  # fmt: skip
    client, _ = make(h)
    s = client.scores("r1")
    assert h.requests[0].headers["accept"] == wire.SCORES_CONTENT_TYPE
    assert s.offset == 9 and s.visits.tolist() == [0, 3] and np.isnan(s.scores[0])
    idx = client.indices("r1", 4, rank=1, world=2, limit=3)
    assert h.requests[1].url.params["rank"] == "1" and h.requests[1].url.params["limit"] == "3"
    assert idx.tolist() == [3, 1, 2] and idx.flags.writeable


def test_with_options_shares_connections_but_not_retry_settings() -> None:
    h = Recorder(problem(503, "down"))
    client, _ = make(h, retries=4)
    once = client.with_options(retries=0)
    with pytest.raises(ServerError):
        once.get_run("r1")
    assert len(h.requests) == 1 and client.retries == 4
    once.close()  # must not close the shared pool
    assert h.answers and not client._http.is_closed


def test_async_client_retries_and_maps_errors() -> None:
    h = Recorder(
        problem(500, "boom"), httpx.Response(200, json=RUN), problem(404, "unknown run 'zz'")
    )

    async def main() -> None:
        async with AsyncScoreClient(
            "http://docl.test", transport=httpx.MockTransport(h), backoff=0.001
        ) as client:
            run = await client.get_run("r1")
            assert run.run_id == "r1"
            with pytest.raises(NotFoundError, match="unknown run 'zz'"):
                await client.get_run("zz")

    asyncio.run(main())
    assert len(h.requests) == 3


def test_a_policy_of_ones_own_replaces_retries_and_backoff() -> None:
    h = Recorder(problem(503, "down"))
    client, sleeps = make(h, retry=Retry(ConstantBackoff(0.125), retries=3))
    with pytest.raises(ServerError):
        client.get_run("r1")
    assert sleeps == [0.125] * 3 and len(h.requests) == 4 and client.retry_count == 3
    assert client.retries == 3 and client.max_backoff == 0.125
    copy = client.with_options(retries=1)
    assert copy.retry.backoff == ConstantBackoff(0.125) and copy.retries == 1
    with pytest.raises(TypeError, match="exponential"):
        client.with_options(backoff=0.5)


def test_a_deadline_bounds_a_request_by_time() -> None:
    h = Recorder(httpx.ConnectError("refused"))
    client = ScoreClient(
        "http://docl.test", transport=httpx.MockTransport(h),
        retry=Retry(ExponentialBackoff(0.01, 0.04), deadline=0.2),
    )  # fmt: skip
    t0 = time.monotonic()
    with pytest.raises(TransportError):
        client.get_run("r1")
    assert 0.2 <= time.monotonic() - t0 < 2.0 and len(h.requests) >= 5
