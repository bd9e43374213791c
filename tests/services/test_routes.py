"""Route unit tests with FastAPI's in-process client (a real Redis behind it).

These pin down the HTTP surface — OpenAPI, problem documents, status codes,
headers — cheaply. They are not the evidence that the server works over the
network: tests/services/test_server_e2e.py is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from docl.services.app import create_app
from docl.services.config import Settings
from docl.services.errors import format_validation_errors
from docl.wire import encoding as wire


@pytest.fixture
def client(redis_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(redis_url=redis_url))) as c:
        yield c


def _run(client: TestClient, run_id: str, **over: Any) -> None:
    body = {
        "run_id": run_id,
        "num_samples": 30,
        "num_outputs": 3,
        "epochs": 3,
        "params": {"warmup_epochs": 1},
    }
    r = client.post("/v1/runs", json={**body, **over})
    assert r.status_code == 201, r.text


def test_openapi_documents_every_route_with_examples(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        ("/v1/runs", "post"),
        ("/v1/runs", "get"),
        ("/v1/runs/{run_id}", "get"),
        ("/v1/runs/{run_id}", "delete"),
        ("/v1/runs/{run_id}/plan", "get"),
        ("/v1/runs/{run_id}/epochs", "post"),
        ("/v1/runs/{run_id}/epochs/{epoch}", "get"),
        ("/v1/runs/{run_id}/epochs/{epoch}/indices", "get"),
        ("/v1/runs/{run_id}/reports", "post"),
        ("/v1/runs/{run_id}/scores", "get"),
        ("/v1/runs/{run_id}/stats", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    }
    got = {(p, m) for p, ops in paths.items() for m in ops}
    assert expected <= got
    report = paths["/v1/runs/{run_id}/reports"]["post"]
    body = report["requestBody"]["content"]
    assert set(body) == {"application/json", wire.REPORT_CONTENT_TYPE, wire.REPORTS_CONTENT_TYPE}
    assert "DOCR" in body[wire.REPORT_CONTENT_TYPE]["schema"]["description"]
    for path, method in expected:
        if path.startswith("/v1"):
            responses = paths[path][method]["responses"]
            assert "401" in responses, (path, method)  # every /v1 route documents auth
            problem = responses["401"]["content"]["application/problem+json"]
            assert problem["example"]["status"] == 401
    assert spec["components"]["schemas"]["RunCreate"]["examples"]
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_problem_documents(client: TestClient) -> None:
    r = client.get("/v1/runs/does-not-exist")
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no run 'does-not-exist'",
        "instance": "/v1/runs/does-not-exist",
    }
    r = client.get("/no/such/path")
    assert r.status_code == 404 and "no route GET /no/such/path" in r.json()["detail"]
    r = client.put("/v1/runs")
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"
    r = client.post("/v1/runs", json={"num_samples": 0, "num_outputs": 3, "epochs": 2})
    assert r.status_code == 422
    assert r.json()["detail"].startswith(
        "body field 'num_samples': Input should be greater than or equal to 1"
    )
    r = client.post("/v1/runs", json={"num_samples": 5, "num_outputs": 3})
    assert r.status_code == 422 and "give 'epochs' or 'params.budget_batches'" in r.json()["detail"]
    r = client.post("/v1/runs", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["title"] == "Unprocessable Entity"


def test_create_is_idempotent_and_conflicts_are_409(client: TestClient, run_id: str) -> None:
    _run(client, run_id)
    again = client.post(
        "/v1/runs",
        json={
            "run_id": run_id,
            "num_samples": 30,
            "num_outputs": 3,
            "epochs": 3,
            "params": {"warmup_epochs": 1},
        },
    )
    assert again.status_code == 200 and again.json()["run_id"] == run_id
    other = client.post(
        "/v1/runs", json={"run_id": run_id, "num_samples": 31, "num_outputs": 3, "epochs": 3}
    )
    assert other.status_code == 409 and "different config" in other.json()["detail"]
    generated = client.post("/v1/runs", json={"num_samples": 4, "num_outputs": 2, "epochs": 1})
    assert generated.status_code == 201 and generated.json()["run_id"].startswith("run-")
    too_big = client.post(
        "/v1/runs", json={"num_samples": 2_000_000_000, "num_outputs": 1000, "epochs": 1}
    )
    assert too_big.status_code == 422 and "GiB" in too_big.json()["detail"]


def test_run_plan_and_epoch_shapes(client: TestClient, run_id: str) -> None:
    _run(client, run_id)
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["epochs_drawn"] == 0 and run["last_epoch"] is None
    plan = client.get(f"/v1/runs/{run_id}/plan").json()
    assert plan["total_steps"] == run["total_steps"] == sum(e["steps"] for e in plan["epochs"])
    ep = client.post(f"/v1/runs/{run_id}/epochs").json()
    row = plan["epochs"][0]
    assert {k: ep[k] for k in row} == row
    assert (
        len(ep["lr"]) == ep["steps"] and ep["batch_size"] == 128 and ep["lr"][0] == row["lr_start"]
    )
    binary = client.get(f"/v1/runs/{run_id}/epochs/0/indices", params={"rank": 0, "world": 2},
                        headers={"Accept": "application/octet-stream"})  # fmt: skip
    assert binary.headers["content-type"] == "application/octet-stream"
    assert (
        binary.headers["x-docl-shard-size"] == "15" and binary.headers["x-docl-epoch-size"] == "30"
    )
    page = client.get(
        f"/v1/runs/{run_id}/epochs/0/indices",
        params={"rank": 0, "world": 2, "offset": 5, "limit": 4},
    ).json()
    assert (
        page["indices"] == wire.decode_indices(binary.content)[5:9].tolist() and page["offset"] == 5
    )


def test_scores_paging_and_encodings(client: TestClient, run_id: str) -> None:
    _run(client, run_id)
    client.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 0})
    idx = np.array([3, 7])
    for lr in (0.0, 1.0):
        body = wire.encode_report(report_id=f"r{lr}", epoch=0, lr_sum=lr, indices=idx,
                                  outputs=np.full((2, 3), lr, np.float32), targets=np.array([0, 1]))  # fmt: skip
        assert (
            client.post(
                f"/v1/runs/{run_id}/reports",
                content=body,
                headers={"Content-Type": wire.REPORT_CONTENT_TYPE},
            ).status_code
            == 200
        )
    js = client.get(f"/v1/runs/{run_id}/scores", params={"offset": 2, "limit": 6})
    doc = js.json()
    assert doc["offset"] == 2 and len(doc["scores"]) == 6
    assert (
        doc["visits"] == [0, 2, 0, 0, 0, 2]
        and doc["scores"][0] is None
        and doc["scores"][1] is not None
    )
    assert doc["lr_sums"][1] == 1.0 and doc["lr_sums"][0] is None
    assert js.headers["x-docl-next-offset"] == "8"
    binary = client.get(
        f"/v1/runs/{run_id}/scores",
        params={"offset": 2, "limit": 6},
        headers={"Accept": wire.SCORES_CONTENT_TYPE},
    )
    off, s, v, lr = wire.decode_scores(binary.content)
    assert (
        off == 2 and v.tolist() == doc["visits"] and float(s[1]) == pytest.approx(doc["scores"][1])
    )
    assert np.isnan(s[0]) and np.isnan(lr[0])


def test_unsupported_media_type_and_wrong_token(redis_url: str, run_id: str) -> None:
    with TestClient(create_app(Settings(redis_url=redis_url, api_token="tok"))) as c:
        r = c.post(
            f"/v1/runs/{run_id}/reports", content=b"x", headers={"Content-Type": "text/plain"}
        )
        assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="docl"'
        auth = {"Authorization": "Bearer tok"}
        _run_auth = c.post(
            "/v1/runs",
            json={"run_id": run_id, "num_samples": 3, "num_outputs": 2, "epochs": 1},
            headers=auth,
        )
        assert _run_auth.status_code == 201
        r = c.post(
            f"/v1/runs/{run_id}/reports",
            content=b"x",
            headers={"Content-Type": "text/plain", **auth},
        )
        assert r.status_code == 415 and "text/plain" in r.json()["detail"]
        assert c.get("/healthz").json()["status"] == "ok"


def test_metrics_count_requests_by_route(client: TestClient, run_id: str) -> None:
    _run(client, run_id)
    client.get(f"/v1/runs/{run_id}")
    text = client.get("/metrics").text
    assert 'docl_http_requests_total{method="GET",route="/v1/runs/{run_id}",status="200"}' in text
    assert "docl_http_request_seconds_bucket" in text and "docl_reports_total" in text


def test_task_name_is_kept_and_optional(client: TestClient, run_id: str) -> None:
    _run(client, run_id, task_name="mnist1d")
    assert client.get(f"/v1/runs/{run_id}").json()["task_name"] == "mnist1d"
    _run(client, run_id + "-b")  # without one: null, and a re-create is the same config
    assert client.get(f"/v1/runs/{run_id}-b").json()["task_name"] is None
    body = {"run_id": run_id + "-b", "num_samples": 30, "num_outputs": 3, "epochs": 3,
            "params": {"warmup_epochs": 1}}  # fmt: skip
    assert client.post("/v1/runs", json=body).status_code == 200
    r = client.post("/v1/runs", json={**body, "run_id": run_id + "-c", "task_name": "x" * 201})
    assert r.status_code == 422 and "task_name" in r.text
    assert client.get(f"/v1/runs/{run_id}-c").status_code == 404  # changed nothing


def test_docs_pages_are_labelled_in_metrics(client: TestClient) -> None:
    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui.css", "/no/such/page"):
        client.get(path)
    text = client.get("/metrics").text
    for route, status in (
        ("/docs", 200),
        ("/openapi.json", 200),
        ("/docs/assets/{path}", 200),
        ("unmatched", 404),
    ):
        assert f'docl_http_requests_total{{method="GET",route="{route}",status="{status}"}}' in text


def test_root_says_what_the_server_is(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    body = r.json()
    assert body["name"] == "docl score server" and body["version"]
    for key in ("docs", "openapi", "healthz", "readyz", "metrics"):
        assert client.get(body[key]).status_code == 200, key  # every link answers
    assert body["api"] == "/v1"


def test_swagger_ui_is_served_without_a_cdn(client: TestClient) -> None:
    import re

    html = client.get("/docs").text
    assets = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", html)
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets), html
    assert any(a.endswith("swagger-ui.css") for a in assets), html
    for url in assets:
        assert url.startswith("/"), f"{url} is not served by this server"
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 100, url
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text


def test_format_validation_errors_is_readable() -> None:
    errs = [
        {
            "loc": ("body", "params", "tau"),
            "msg": "Input should be greater than 0",
            "input": -1,
            "type": "greater_than",
        },
        {
            "loc": ("query", "rank"),
            "msg": "Input should be a valid integer",
            "input": "x",
            "type": "int_parsing",
        },
    ]
    assert format_validation_errors(errs) == (
        "body field 'params.tau': Input should be greater than 0 (got -1); "
        "query field 'rank': Input should be a valid integer (got 'x')"
    )


def test_a_run_this_server_cannot_read_does_not_break_the_list(
    client: TestClient, redis_url: str, run_id: str
) -> None:
    import redis

    r = redis.Redis.from_url(redis_url)
    r.hset(
        f"{{run:{run_id}}}:meta",
        mapping={"config": '{"written by": "another version"}', "uid": "u", "layout": "{}"},
    )
    r.sadd("docl:runs", run_id)
    try:
        listed = client.get("/v1/runs")
        assert listed.status_code == 200
        assert run_id not in [x["run_id"] for x in listed.json()["runs"]]
    finally:
        r.delete(f"{{run:{run_id}}}:meta")
        r.srem("docl:runs", run_id)
