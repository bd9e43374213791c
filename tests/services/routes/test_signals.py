"""The signals routes (services/routes/signals.py) over HTTP on a real ``docl serve`` and
its own real redis-server: the round trip, slices, pages, and the 4xx matrix — each
refusal shown to change nothing (the list and the stored values read the same after)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from docl.services.embedded import RedisProcess, ServerProcess
from tests.services.test_server_e2e import create, draw

F32 = {"Content-Type": "application/octet-stream"}
N = 600  # > 256 values: one page of DOCL_MAX_PAGE_BYTES = 1024


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    redis = RedisProcess().start()
    env = {"DOCL_MAX_SIGNALS": "2", "DOCL_MAX_PAGE_BYTES": "1024", "DOCL_API_TOKEN": "s3cret"}
    srv = ServerProcess(redis_url=redis.url, env=env).start()
    try:
        yield srv.url
    finally:
        srv.close()
        redis.stop()


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    auth = {"Authorization": "Bearer s3cret"}
    with httpx.Client(base_url=server, timeout=30.0, headers=auth) as client:
        yield client


def _put(http: httpx.Client, path: str, values: Any, **params: int) -> httpx.Response:
    body = np.asarray(values, dtype="<f4").tobytes()
    return http.put(path, content=body, headers=F32, params=params)


def _get(http: httpx.Client, path: str, **params: int) -> np.ndarray:
    r = http.get(path, params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    return np.frombuffer(r.content, "<f4")


def _state(http: httpx.Client, run_id: str) -> tuple[list[str], dict[str, bytes]]:
    """The run's signal names and every one's full bytes (pages joined)."""
    names = http.get(f"/v1/runs/{run_id}/signals").json()["signals"]
    cols = {}
    for name in names:
        parts, start = [], 0
        while True:
            r = http.get(f"/v1/runs/{run_id}/signals/{name}", params={"start": start})
            parts.append(r.content)
            if "X-Docl-Next-Offset" not in r.headers:
                break
            start = int(r.headers["X-Docl-Next-Offset"])
        cols[name] = b"".join(parts)
    return names, cols


def test_upload_read_slices_pages_and_list(http: httpx.Client, run_id: str) -> None:
    create(http, run_id, num_samples=N)
    base = f"/v1/runs/{run_id}/signals"
    assert http.get(base).json() == {
        "run_id": run_id, "length": N, "signals": [], "max_signals": 2,
    }  # fmt: skip
    il = np.random.default_rng(0).normal(size=N).astype(np.float32)
    il[5] = np.nan  # NaN: unknown, accepted
    r = _put(http, f"{base}/irreducible_loss", il)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "run_id": run_id, "name": "irreducible_loss", "start": 0, "stop": N, "signals": 1,
    }  # fmt: skip
    # one page is 256 values: the next offset is announced, the pages join to the column
    r = http.get(f"{base}/irreducible_loss")
    assert r.headers["X-Docl-Next-Offset"] == "256" and r.headers["X-Docl-Total"] == str(N)
    names, cols = _state(http, run_id)
    assert names == ["irreducible_loss"]
    assert np.array_equal(np.frombuffer(cols["irreducible_loss"], "<f4"), il, equal_nan=True)
    got = _get(http, f"{base}/irreducible_loss", start=250, stop=300)
    assert np.array_equal(got, il[250:300]) and got.shape == (50,)
    # two "ranks" upload their contiguous slices of another signal; the rest reads NaN
    assert _put(http, f"{base}/rank_part", np.ones(100), start=0, stop=100).status_code == 200
    assert _put(http, f"{base}/rank_part", 2 * np.ones(50), start=500, stop=550).status_code == 200
    want = np.full(N, np.nan, np.float32)
    want[:100], want[500:550] = 1, 2
    _, cols = _state(http, run_id)
    assert np.array_equal(np.frombuffer(cols["rank_part"], "<f4"), want, equal_nan=True)
    assert http.get(base).json()["signals"] == ["irreducible_loss", "rank_part"]


@pytest.mark.parametrize(
    ("case", "status", "words"),
    [
        ("name_upper", 422, "name"),
        ("name_digit_first", 422, "name"),
        ("name_too_long", 422, "name"),
        ("third_name", 409, "DOCL_MAX_SIGNALS"),
        ("short_body", 422, "needs exactly"),
        ("odd_body", 422, "needs exactly"),
        ("huge_body", 413, "larger than a whole column"),
        ("slice_body_mismatch", 422, "needs exactly"),
        ("slice_outside", 422, "not within"),
        ("inf", 422, "finite or NaN"),
        ("minus_inf", 422, "finite or NaN"),
        ("content_type", 415, "octet-stream"),
        ("unknown_run", 404, "no run"),
        ("no_token", 401, "Bearer"),
    ],
)
def test_a_bad_upload_is_refused_and_changes_nothing(
    http: httpx.Client, run_id: str, case: str, status: int, words: str
) -> None:
    create(http, run_id, num_samples=N)
    base = f"/v1/runs/{run_id}/signals"
    for name, v in (("a", 1.0), ("b", 2.0)):
        assert _put(http, f"{base}/{name}", np.full(N, v)).status_code == 200
    before = _state(http, run_id)
    vals = np.zeros(N, np.float32)
    if case == "name_upper":
        r = _put(http, f"{base}/Bad", vals)
    elif case == "name_digit_first":
        r = _put(http, f"{base}/1abc", vals)
    elif case == "name_too_long":
        r = _put(http, f"{base}/{'x' * 33}", vals)
    elif case == "third_name":
        r = _put(http, f"{base}/c", vals)
    elif case == "short_body":
        r = _put(http, f"{base}/a", vals[:-1])
    elif case == "odd_body":
        r = http.put(f"{base}/a", content=vals.tobytes() + b"\0", headers=F32)
        status, words = 413, "larger than a whole column"  # 4n + 1 bytes: over a column
    elif case == "huge_body":
        r = _put(http, f"{base}/a", np.zeros(N + 1))
    elif case == "slice_body_mismatch":
        r = _put(http, f"{base}/a", vals[:10], start=0, stop=20)
    elif case == "slice_outside":
        r = _put(http, f"{base}/a", vals[:10], start=N - 5, stop=N + 5)
    elif case in ("inf", "minus_inf"):
        bad = vals.copy()
        bad[7] = np.inf if case == "inf" else -np.inf
        r = _put(http, f"{base}/a", bad)
        assert "sample 7" in r.text
    elif case == "content_type":
        r = http.put(f"{base}/a", content=vals.tobytes(), headers={"Content-Type": "text/plain"})
    elif case == "unknown_run":
        r = _put(http, "/v1/runs/no-such-run-xyz/signals/a", vals)
    else:
        r = httpx.put(f"{http.base_url}{base}/a", content=vals.tobytes(), headers=F32, timeout=30)
    assert r.status_code == status, r.text
    assert words in r.text
    assert _state(http, run_id) == before


def test_reads_of_unknown_runs_signals_and_slices(http: httpx.Client, run_id: str) -> None:
    create(http, run_id, num_samples=N)
    base = f"/v1/runs/{run_id}/signals"
    assert http.get("/v1/runs/no-such-run-xyz/signals").status_code == 404
    assert http.get("/v1/runs/no-such-run-xyz/signals/a").status_code == 404
    r = http.get(f"{base}/never")
    assert r.status_code == 404 and "PUT" in r.json()["detail"]
    assert http.get(f"{base}/Bad").status_code == 422
    assert _put(http, f"{base}/a", np.zeros(N)).status_code == 200
    assert http.get(f"{base}/a", params={"start": 10, "stop": 5}).status_code == 422
    assert http.get(f"{base}/a", params={"stop": N + 1}).status_code == 422
    assert http.get(f"{base}/a", params={"start": -1}).status_code == 422
    # deleted: the run and its signals are gone; re-created: none of the old ones
    assert http.delete(f"/v1/runs/{run_id}").status_code == 204
    assert http.get(f"{base}/a").status_code == 404
    create(http, run_id, num_samples=N)
    assert http.get(base).json()["signals"] == []


def test_an_epoch_method_waits_for_its_signal_with_409_then_draws(
    http: httpx.Client, run_id: str
) -> None:
    create(http, run_id, num_samples=N, method="rho-epoch", params={"warmup_epochs": 1})
    draw(http, run_id, 0)  # warmup: uniform, reads no signal
    r = http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 1})
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "irreducible_loss" in detail and f"PUT /v1/runs/{run_id}/signals/irreducible_loss" in (
        detail
    )
    assert http.get(f"/v1/runs/{run_id}").json()["epochs_drawn"] == 1  # nothing drawn
    il = np.linspace(0, 1, N, dtype=np.float32)
    assert _put(http, f"/v1/runs/{run_id}/signals/irreducible_loss", il).status_code == 200
    ep = draw(http, run_id, 1)
    assert ep["phase"] == "select" and ep["size"] < N
    methods = {m["name"]: m for m in http.get("/v1/methods").json()["methods"]}
    assert methods["rho-epoch"]["signals"] == ["irreducible_loss"]
    assert (
        methods["rho-loss"]["signals"] == ["irreducible_loss"] and methods["rho-loss"]["step_level"]
    )
    assert methods["docl"]["signals"] == [] and not methods["docl"]["step_level"]
