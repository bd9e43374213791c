"""The score server end to end, over real HTTP, against real redis-server processes.

Every test talks to a ``docl serve`` child process (uvicorn) with httpx and the
binary encodings of ``docl.wire.encoding``; nothing is mocked. Scores are checked
against the pure core (``scoring.score_report`` applied to the same inputs by an
independent reference table kept in the test) and, for samples seen exactly
twice, against the DESIGN §1 formula written out by hand.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from docl.lab.crash import Tally, stream_reports
from docl.services.embedded import RedisClusterProcess, RedisProcess, ServerProcess
from docl.services.scoring import score_report
from docl.wire import encoding as wire

BIN = {"Content-Type": wire.REPORT_CONTENT_TYPE}


# -- helpers ----------------------------------------------------------------------------------
def create(http: httpx.Client, run_id: str, **over: Any) -> dict[str, Any]:
    params = {"warmup_epochs": 1, "batch_size": 8, "episode_epochs": 2, **over.pop("params", {})}
    body = {
        "run_id": run_id,
        "num_samples": 48,
        "num_outputs": 4,
        "epochs": 5,
        "params": params,
        **over,
    }
    r = http.post("/v1/runs", json=body)
    assert r.status_code == 201, r.text
    return dict(r.json())


def draw(http: httpx.Client, run_id: str, epoch: int | None = None) -> dict[str, Any]:
    r = http.post(f"/v1/runs/{run_id}/epochs", json={} if epoch is None else {"epoch": epoch})
    assert r.status_code == 200, r.text
    return dict(r.json())


def shard(http: httpx.Client, run_id: str, epoch: int, rank: int = 0, world: int = 1) -> np.ndarray:
    r = http.get(
        f"/v1/runs/{run_id}/epochs/{epoch}/indices",
        params={"rank": rank, "world": world},
        headers={"Accept": wire.INDICES_CONTENT_TYPE},
    )
    assert r.status_code == 200, r.text
    return wire.decode_indices(r.content).copy()


def report(
    http: httpx.Client,
    run_id: str,
    *,
    rid: str,
    epoch: int,
    lr_sum: float,
    idx: np.ndarray,
    out: np.ndarray,
    tgt: np.ndarray,
    as_json: bool = False,
) -> httpx.Response:
    if as_json:
        doc = {
            "report_id": rid,
            "epoch": epoch,
            "lr_sum": lr_sum,
            "indices": idx.tolist(),
            "outputs": out.tolist(),
            "targets": tgt.tolist(),
        }
        return http.post(f"/v1/runs/{run_id}/reports", json=doc)
    body = wire.encode_report(
        report_id=rid, epoch=epoch, lr_sum=lr_sum, indices=idx, outputs=out, targets=tgt
    )
    return http.post(f"/v1/runs/{run_id}/reports", content=body, headers=BIN)


def get_scores(http: httpx.Client, run_id: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r = http.get(f"/v1/runs/{run_id}/scores", headers={"Accept": wire.SCORES_CONTENT_TYPE})
    assert r.status_code == 200, r.text
    _, s, v, lr = wire.decode_scores(r.content)
    return s.copy(), v.astype(np.int64), lr.copy()


class Reference:
    """The per-sample table of DESIGN §1 kept by the test, updated by the pure core."""

    def __init__(self, n: int, c: int, *, gamma: float = 0.9, task: str = "classification") -> None:
        self.g = np.zeros((n, c), np.float32)
        self.lrs = np.full(n, np.nan)
        self.score = np.full(n, np.nan, np.float32)
        self.visits = np.zeros(n, np.int64)
        self.by_hand = np.full(n, np.nan)  # the EMA score written out by hand in float64
        self.gamma = gamma
        self.task = task

    def apply(self, idx: np.ndarray, out: np.ndarray, tgt: np.ndarray, lr: float) -> int:
        upd = score_report(
            out,
            tgt,
            lr,
            self.g[idx],
            self.lrs[idx],
            self.score[idx],
            task=self.task,
            gamma=self.gamma,
        )
        w = ~upd.stale
        # DESIGN §1 written out by hand (float64, explicit one-hot): an independent check.
        for j in np.flatnonzero(upd.scored):
            i = idx[j]
            f = out[j].astype(np.float64)
            p = np.exp(f - f.max())
            p /= p.sum()
            resid = -p
            resid[int(tgt[j])] += 1.0
            a = float(resid @ ((f - self.g[i].astype(np.float64)) / (lr - self.lrs[i])))
            prev = self.by_hand[i]
            self.by_hand[i] = a if np.isnan(prev) else self.gamma * prev + (1 - self.gamma) * a
        self.g[idx[w]] = out[w]
        self.lrs[idx[w]] = lr
        self.score[idx[w]] = upd.scores[w]
        self.visits[idx[w]] += 1
        return int(upd.scored.sum())


# -- single Redis and a Redis Cluster ---------------------------------------------------------
# Every test below taking ``http``, ``server_url`` or ``store_url`` runs twice: against the
# session's single Redis (with conftest's ``score_server``) and against the session's
# 3-primary cluster (``redis_cluster``, with a ``docl serve`` on it shared by this module).
# Tests that kill or restart a single Redis take ``redis_factory`` instead (single only).


@pytest.fixture(scope="module")
def cluster_score_server(redis_cluster: RedisClusterProcess) -> Iterator[str]:
    """Base URL of a ``docl serve --redis-url redis+cluster://…`` on ``redis_cluster``."""
    with ServerProcess(redis_url=redis_cluster.url) as server:
        yield server.url


@pytest.fixture
def server_url(store_url: str, request: pytest.FixtureRequest) -> str:
    """The score server on ``store_url``: conftest's ``score_server`` for the single Redis,
    ``cluster_score_server`` for the cluster."""
    if store_url.startswith("redis+cluster://"):
        return str(request.getfixturevalue("cluster_score_server"))
    return str(request.getfixturevalue("score_server"))


@pytest.fixture
def http(server_url: str) -> Iterator[httpx.Client]:
    """conftest's ``http``, on ``server_url`` (so on both backends)."""
    with httpx.Client(base_url=server_url, timeout=30.0) as client:
        yield client


# -- the flow --------------------------------------------------------------------------------
def test_full_flow_matches_the_pure_core(http: httpx.Client, run_id: str) -> None:
    n, c, world = 48, 4, 2
    run = create(http, run_id, num_samples=n, num_outputs=c)
    plan = http.get(f"/v1/runs/{run_id}/plan").json()
    assert plan["num_epochs"] == run["epochs"] == 5
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, c)).astype(np.float32)
    targets = rng.integers(0, c, size=n)
    ref = Reference(n, c)
    scored_acks = 0
    for e in range(plan["num_epochs"]):
        ep = draw(http, run_id)
        assert ep["epoch"] == e
        assert ep["size"] == plan["epochs"][e]["size"] and ep["phase"] == plan["epochs"][e]["phase"]
        assert len(ep["lr"]) == ep["steps"]
        shards = [shard(http, run_id, e, r, world) for r in range(world)]
        whole = np.concatenate(shards)
        assert whole.shape[0] == ep["size"] and np.unique(whole).shape[0] == ep["size"]
        assert ((whole >= 0) & (whole < n)).all()
        # JSON and binary shards agree
        js = http.get(
            f"/v1/runs/{run_id}/epochs/{e}/indices", params={"rank": 1, "world": world}
        ).json()
        assert js["indices"] == shards[1].tolist() and js["shard_size"] == shards[1].shape[0]
        for r, mine in enumerate(shards):
            lr = ep["lr_sum_start"]
            for s, batch in enumerate(np.array_split(mine, ep["steps"])):
                if batch.size:
                    logits[batch] += rng.normal(scale=0.3, size=(batch.size, c)).astype(np.float32)
                    out, tgt = logits[batch].copy(), targets[batch]
                    resp = report(
                        http, run_id, rid=f"e{e}-r{r}-s{s}", epoch=e, lr_sum=lr, idx=batch, out=out,
                        tgt=tgt, as_json=(s % 3 == 1),
                    )  # fmt: skip
                    assert resp.status_code == 200, resp.text
                    ack = resp.json()
                    expect = ref.apply(batch, out, tgt, lr)
                    assert ack == {"accepted": batch.size, "scored": expect, "duplicate": False}
                    scored_acks += ack["scored"]
                lr += ep["lr"][s]
    s, v, lrs = get_scores(http, run_id)
    np.testing.assert_array_equal(v, ref.visits)
    np.testing.assert_array_equal(lrs, ref.lrs)
    np.testing.assert_array_equal(s, ref.score)
    assert (~np.isnan(s)).sum() > n // 2
    np.testing.assert_allclose(s, ref.by_hand, rtol=1e-4, atol=1e-5)
    # JSON scores say the same (null for unset)
    js = http.get(f"/v1/runs/{run_id}/scores").json()
    assert js["visits"] == v.tolist()
    assert [x is None for x in js["scores"]] == np.isnan(s).tolist()
    # counters and stats agree with the table
    got = http.get(f"/v1/runs/{run_id}").json()
    assert got["epochs_drawn"] == 5 and got["last_epoch"] == 4
    assert got["counters"]["samples_scored"] == scored_acks
    stats = http.get(f"/v1/runs/{run_id}/stats").json()
    assert stats["visits_total"] == int(ref.visits.sum())
    assert stats["visited"] == int((ref.visits > 0).sum())
    assert stats["scored"] == int((~np.isnan(ref.score)).sum())
    sel = np.asarray(stats["selection"]["counts"])
    assert sel.sum() == n  # every sample counted once by how often it was drawn
    assert (sel * np.arange(sel.size)).sum() == sum(ep["size"] for ep in plan["epochs"])


def test_replayed_report_is_a_duplicate_and_changes_nothing(
    http: httpx.Client, run_id: str, store_url: str, run_snapshot: Callable[..., dict[str, Any]]
) -> None:
    create(http, run_id)
    draw(http, run_id)
    idx = shard(http, run_id, 0)[:8]
    out = np.arange(32, dtype=np.float32).reshape(8, 4)
    first = report(http, run_id, rid="once", epoch=0, lr_sum=0.0, idx=idx, out=out, tgt=idx % 4)
    assert first.json() == {"accepted": 8, "scored": 0, "duplicate": False}
    before = run_snapshot(store_url, run_id)
    for as_json in (False, True):  # the same report_id in either encoding, other contents even
        again = report(
            http,
            run_id,
            rid="once",
            epoch=0,
            lr_sum=5.0,
            idx=idx,
            out=out + 1,
            tgt=idx % 4,
            as_json=as_json,
        )
        assert again.status_code == 200 and again.json() == {
            "accepted": 8,
            "scored": 0,
            "duplicate": True,
        }
    after = run_snapshot(store_url, run_id)
    counters_key = f"{{run:{run_id}}}:counters"
    assert {k: v for k, v in after.items() if k != counters_key} == {
        k: v for k, v in before.items() if k != counters_key
    }
    assert http.get(f"/v1/runs/{run_id}").json()["counters"]["duplicates"] == 2


def test_stale_lr_sum_leaves_samples_untouched(http: httpx.Client, run_id: str) -> None:
    create(http, run_id)
    draw(http, run_id)
    idx = shard(http, run_id, 0)[:6]
    out = np.ones((6, 4), np.float32)
    assert (
        report(
            http, run_id, rid="a", epoch=0, lr_sum=1.0, idx=idx, out=out, tgt=idx % 4
        ).status_code
        == 200
    )
    assert (
        report(
            http, run_id, rid="b", epoch=0, lr_sum=2.0, idx=idx, out=out * 2, tgt=idx % 4
        ).json()["scored"]
        == 6
    )
    before = get_scores(http, run_id)
    for rid, lr in (("c", 2.0), ("d", 0.5)):  # equal and older lr-sums are both stale
        ack = report(
            http, run_id, rid=rid, epoch=0, lr_sum=lr, idx=idx, out=out * 9, tgt=idx % 4
        ).json()
        assert ack == {"accepted": 6, "scored": 0, "duplicate": False}
    after = get_scores(http, run_id)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
    assert counters["samples_skipped"] == 12 and counters["samples_scored"] == 6


# -- several reports in one request ----------------------------------------------------------
MULTI = {"Content-Type": wire.REPORTS_CONTENT_TYPE}


def frame(rid: str, epoch: int, lr: float, idx: np.ndarray, out: np.ndarray, c: int = 4) -> bytes:
    return wire.encode_report(
        report_id=rid, epoch=epoch, lr_sum=lr, indices=idx, outputs=out, targets=idx % c
    )


def test_multi_report_body_applies_each_report_once_in_order(
    http: httpx.Client, run_id: str, store_url: str, run_snapshot: Callable[..., dict[str, Any]]
) -> None:
    """Each report of a multi-report body is applied as if it had come alone, in order —
    also when two of them name the same sample — and acknowledged one by one; a replay
    of the body is all duplicates and changes nothing."""
    create(http, run_id)
    draw(http, run_id)
    idx = shard(http, run_id, 0)
    rng = np.random.default_rng(7)
    a, b, c = idx[:8], idx[8:16], idx[16:30]
    plan = [  # (report_id, lr_sum, samples): "a2" reports a's samples again, later
        ("a1", 0.0, a),
        ("b1", 0.0, b),
        ("a2", 0.5, a),
        ("c1", 0.0, c),
        ("a3", 1.5, a[:5]),
    ]
    outs = [rng.normal(size=(s.size, 4)).astype(np.float32) for _, _, s in plan]
    body = wire.encode_reports(
        [frame(rid, 0, lr, s, o) for (rid, lr, s), o in zip(plan, outs, strict=True)]
    )
    ref = Reference(48, 4)
    want = [ref.apply(s, o, s % 4, lr) for (_, lr, s), o in zip(plan, outs, strict=True)]
    r = http.post(f"/v1/runs/{run_id}/reports", content=body, headers=MULTI)
    assert r.status_code == 200, r.text
    ack = r.json()
    assert [x["scored"] for x in ack["reports"]] == want == [0, 0, 8, 0, 5]
    assert [x["accepted"] for x in ack["reports"]] == [8, 8, 8, 14, 5]
    assert not any(x["duplicate"] for x in ack["reports"])
    assert (ack["accepted"], ack["scored"], ack["duplicates"]) == (43, 13, 0)
    scores, visits, lrs = get_scores(http, run_id)
    np.testing.assert_array_equal(visits, ref.visits)
    np.testing.assert_array_equal(lrs, ref.lrs)
    np.testing.assert_array_equal(scores, ref.score)
    np.testing.assert_allclose(scores[a], ref.by_hand[a], rtol=1e-4)  # DESIGN §1 by hand
    counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
    assert (counters["reports"], counters["samples_scored"]) == (5, 13)

    before = run_snapshot(store_url, run_id)
    again = http.post(f"/v1/runs/{run_id}/reports", content=body, headers=MULTI).json()
    assert [x["duplicate"] for x in again["reports"]] == [True] * 5
    assert (again["scored"], again["duplicates"]) == (0, 5)
    counters_key = f"{{run:{run_id}}}:counters"
    after = run_snapshot(store_url, run_id)
    assert {k: v for k, v in after.items() if k != counters_key} == {
        k: v for k, v in before.items() if k != counters_key
    }
    # old and new reports mixed: the applied ones are duplicates, the new ones apply
    d = idx[30:38]
    out_d = rng.normal(size=(8, 4)).astype(np.float32)
    mixed = wire.encode_reports(
        [frame("b1", 0, 0.0, b, outs[1]), frame("d1", 0, 0.0, d, out_d), frame("a1", 0, 0.0, a, outs[0])]
    )  # fmt: skip
    got = http.post(f"/v1/runs/{run_id}/reports", content=mixed, headers=MULTI).json()
    assert [x["duplicate"] for x in got["reports"]] == [True, False, True]
    ref.apply(d, out_d, d % 4, 0.0)
    _, visits, _ = get_scores(http, run_id)
    np.testing.assert_array_equal(visits, ref.visits)
    counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
    assert (counters["reports"], counters["duplicates"]) == (6, 7)


def test_multi_report_body_with_a_bad_report_changes_nothing(
    http: httpx.Client, run_id: str, store_url: str, run_snapshot: Callable[..., dict[str, Any]]
) -> None:
    create(http, run_id)
    draw(http, run_id)
    idx = shard(http, run_id, 0)
    ones = np.ones((8, 4), np.float32)
    good = frame("g1", 0, 0.0, idx[:8], ones)
    http.post(f"/v1/runs/{run_id}/reports", content=wire.encode_reports([good]), headers=MULTI)
    before = run_snapshot(store_url, run_id)
    out_of_range = frame("bad", 0, 1.0, np.array([1, 2, 99, 3, 4, 5, 6, 7]), ones)
    nan = ones.copy()
    nan[2, 1] = np.nan
    cases = {
        "is out of range": [frame("g2", 0, 1.0, idx[8:16], ones), out_of_range],
        "NaN": [frame("g2", 0, 1.0, idx[8:16], ones), frame("n", 0, 1.0, idx[16:24], nan)],
        "appears twice in one request": [
            frame("g2", 0, 1.0, idx[8:16], ones),
            frame("g2", 0, 1.0, idx[16:24], ones),
        ],
        "beyond the plan": [frame("g2", 0, 1.0, idx[8:16], ones), frame("e", 99, 1.0, idx[:8], ones)],
        "appears twice in one report": [
            frame("g2", 0, 1.0, idx[8:16], ones),
            frame("d", 0, 1.0, np.r_[idx[16:23], idx[16]], ones),
        ],
        "is not a class id": [
            frame("g2", 0, 1.0, idx[8:16], ones),
            wire.encode_report(report_id="t", epoch=0, lr_sum=1.0, indices=idx[16:24],
                               outputs=ones, targets=np.full(8, 4)),
        ],
        "lr_sum must be finite": [frame("g2", 0, 1.0, idx[8:16], ones), frame("l", 0, -1.0, idx[:8], ones)],
    }  # fmt: skip
    for needle, frames in cases.items():
        r = http.post(
            f"/v1/runs/{run_id}/reports", content=wire.encode_reports(frames), headers=MULTI
        )
        assert r.status_code == 422, r.text
        assert needle in r.json()["detail"] and "report" in r.json()["detail"]
        assert "report 1" in r.json()["detail"] or "reports 0 and 1" in r.json()["detail"]
    # an epoch not drawn yet: 409, nothing written (the valid first report neither)
    r = http.post(
        f"/v1/runs/{run_id}/reports",
        content=wire.encode_reports([frame("g2", 0, 1.0, idx[8:16], ones), frame("e", 1, 1.0, idx[:8], ones)]),
        headers=MULTI,
    )  # fmt: skip
    assert r.status_code == 409 and "has not been drawn" in r.json()["detail"], r.text
    body = wire.encode_reports([good, good])
    for broken in (body[:-3], body[:20], b"DOCM" + body[4:8] + b"\0\0\0\0" + body[12:]):
        r = http.post(f"/v1/runs/{run_id}/reports", content=broken, headers=MULTI)
        assert r.status_code == 422 and "multi-report" in r.json()["detail"], r.text
    assert run_snapshot(store_url, run_id) == before


# -- epochs ----------------------------------------------------------------------------------
def test_draws_are_idempotent_ordered_and_agree_under_concurrency(
    http: httpx.Client, run_id: str
) -> None:
    create(http, run_id)
    with ThreadPoolExecutor(8) as pool:
        eps = list(pool.map(lambda _: draw(http, run_id, 0), range(8)))
    assert all(ep == eps[0] for ep in eps)
    with ThreadPoolExecutor(4) as pool:
        shards = list(pool.map(lambda _: shard(http, run_id, 0).tolist(), range(4)))
    assert all(s == shards[0] for s in shards)
    assert draw(http, run_id, 0) == eps[0]
    assert http.get(f"/v1/runs/{run_id}/epochs/0").json() == eps[0]
    r = http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 3})
    assert r.status_code == 409 and "in order" in r.json()["detail"]
    assert draw(http, run_id)["epoch"] == 1  # {} = the next one
    assert http.post(f"/v1/runs/{run_id}/epochs").json()["epoch"] == 2  # no body at all
    r = http.post(f"/v1/runs/{run_id}/epochs", json={"epoch": 99})
    assert r.status_code == 422 and "beyond the plan" in r.json()["detail"]
    assert http.get(f"/v1/runs/{run_id}/epochs/4").status_code == 404
    draw(http, run_id)
    draw(http, run_id)
    r = http.post(f"/v1/runs/{run_id}/epochs", json={})
    assert r.status_code == 409 and "every epoch" in r.json()["detail"]


def _train_epochs(http: httpx.Client, run_id: str, epochs: int, seed: int) -> list[list[int]]:
    """Draw and report `epochs` epochs with outputs that depend on the sample only."""
    drawn = []
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(48, 4)).astype(np.float32)
    for e in range(epochs):
        ep = draw(http, run_id)
        idx = shard(http, run_id, e)
        drawn.append(idx.tolist())
        lr = ep["lr_sum_start"]
        for s, batch in enumerate(np.array_split(idx, ep["steps"])):
            out = table[batch] * (1 + 0.1 * e) + 0.01 * s
            assert (
                report(
                    http,
                    run_id,
                    rid=f"{e}-{s}",
                    epoch=e,
                    lr_sum=lr,
                    idx=batch,
                    out=out,
                    tgt=batch % 4,
                ).status_code
                == 200
            )
            lr += ep["lr"][s]
    return drawn


def test_seeded_draws_are_reproducible(http: httpx.Client, run_id: str) -> None:
    for suffix in ("a", "b"):
        create(http, run_id + suffix, params={"seed": 7})
    create(http, run_id + "c", params={"seed": 8})
    a = _train_epochs(http, run_id + "a", 4, 0)
    b = _train_epochs(http, run_id + "b", 4, 0)
    c = _train_epochs(http, run_id + "c", 4, 0)
    assert a == b  # same seed, same scores: the same draws, select epochs included
    assert a[2] != c[2]
    assert (
        http.get(f"/v1/runs/{run_id}a/epochs/2").json()["seed"]
        == http.get(f"/v1/runs/{run_id}b/epochs/2").json()["seed"]
    )


def _listed(http: httpx.Client) -> list[str]:
    """Every run id of GET /v1/runs, page after page (the shared server holds many)."""
    ids: list[str] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        body = http.get("/v1/runs", params=params).json()
        ids += [r["run_id"] for r in body["runs"]]
        if body["next"] is None:
            return ids
        params["after"] = body["next"]


def test_runs_list_get_delete(
    http: httpx.Client, run_id: str, store_url: str, run_snapshot: Callable[..., dict[str, Any]]
) -> None:
    create(http, run_id)
    draw(http, run_id)
    idx = shard(http, run_id, 0)[:4]
    report(
        http,
        run_id,
        rid="x",
        epoch=0,
        lr_sum=0.0,
        idx=idx,
        out=np.zeros((4, 4), np.float32),
        tgt=idx % 4,
    )
    assert run_id in _listed(http)
    assert len(run_snapshot(store_url, run_id)) > 5
    assert http.delete(f"/v1/runs/{run_id}").status_code == 204
    assert run_snapshot(store_url, run_id) == {"<in docl:runs>": False}  # every key dropped
    assert http.get(f"/v1/runs/{run_id}").status_code == 404
    assert http.delete(f"/v1/runs/{run_id}").status_code == 404
    assert run_id not in _listed(http)
    # the id is free again, with another config
    create(http, run_id, num_samples=10)
    assert http.get(f"/v1/runs/{run_id}").json()["num_samples"] == 10


# -- bad input: a 4xx and nothing changed ----------------------------------------------------
def _bad_requests(run_id: str, n: int, c: int) -> list[tuple[str, int, str, dict[str, Any]]]:
    idx = np.array([0, 1, 2], np.int64)
    good = {
        "report_id": "bad",
        "epoch": 0,
        "lr_sum": 1.0,
        "indices": idx,
        "outputs": np.ones((3, c), np.float32),
        "targets": idx % c,
    }

    def binary(**over: Any) -> dict[str, Any]:
        fields = {**good, **over}
        return {"content": wire.encode_report(**fields), "headers": BIN}

    nan_out = np.ones((3, c), np.float32)
    nan_out[1, 2] = np.nan
    inf_out = np.ones((3, c), np.float32)
    inf_out[2, 0] = np.inf
    truncated = binary()["content"][:-5]
    bad_magic = b"XXXX" + binary()["content"][4:]
    path = f"/v1/runs/{run_id}/reports"
    js = {
        "report_id": "j",
        "epoch": 0,
        "lr_sum": 1.0,
        "indices": [0, 1],
        "outputs": [[1.0] * c] * 2,
        "targets": [0, 1],
    }
    return [
        ("wrong output width", 422, path, binary(outputs=np.ones((3, c + 1), np.float32))),
        ("target out of range", 422, path, binary(targets=np.array([0, c, 1]))),
        (
            "regression targets on a classification run",
            422,
            path,
            binary(targets=np.ones((3, c), np.float32)),
        ),
        ("index out of range", 422, path, binary(indices=np.array([0, 1, n]))),
        ("negative index", 422, path, binary(indices=np.array([0, -1, 2]))),
        ("same index twice", 422, path, binary(indices=np.array([0, 1, 0]))),
        ("NaN output", 422, path, binary(outputs=nan_out)),
        ("Inf output", 422, path, binary(outputs=inf_out)),
        ("NaN lr_sum", 422, path, binary(lr_sum=float("nan"))),
        ("negative lr_sum", 422, path, binary(lr_sum=-1.0)),
        ("epoch beyond the plan", 422, path, binary(epoch=99)),
        ("epoch not drawn yet", 409, path, binary(epoch=1)),
        ("truncated binary", 422, path, {"content": truncated, "headers": BIN}),
        ("bad magic", 422, path, {"content": bad_magic, "headers": BIN}),
        (
            "JSON missing field",
            422,
            path,
            {"json": {k: v for k, v in js.items() if k != "outputs"}},
        ),
        ("JSON ragged outputs", 422, path, {"json": {**js, "outputs": [[1.0] * c, [1.0]]}}),
        (
            "JSON NaN token",
            422,
            path,
            {
                "content": b'{"report_id":"j","epoch":0,"lr_sum":NaN,"indices":[0],"outputs":[[1,2,3,4]],"targets":[0]}',
                "headers": {"Content-Type": "application/json"},
            },
        ),
        (
            "JSON not JSON",
            422,
            path,
            {"content": b"{nope", "headers": {"Content-Type": "application/json"}},
        ),
        ("JSON index beyond int64", 422, path, {"json": {**js, "indices": [0, 10**30]}}),
        ("JSON output beyond float32", 422, path, {"json": {**js, "outputs": [[1e39] * c] * 2}}),
        (
            "JSON empty indices",
            422,
            path,
            {"json": {**js, "indices": [], "outputs": [], "targets": []}},
        ),
        (
            "unsupported media type",
            415,
            path,
            {"content": b"hi", "headers": {"Content-Type": "text/plain"}},
        ),
        (
            "re-create with another config",
            409,
            "/v1/runs",
            {"json": {"run_id": run_id, "num_samples": n + 1, "num_outputs": c, "epochs": 5}},
        ),
        (
            "unknown method",
            422,
            "/v1/runs",
            {
                "json": {
                    "run_id": run_id,
                    "num_samples": n,
                    "num_outputs": c,
                    "epochs": 5,
                    "method": "magic",
                }
            },
        ),
        (
            "negative size",
            422,
            "/v1/runs",
            {"json": {"run_id": run_id, "num_samples": -n, "num_outputs": c, "epochs": 5}},
        ),
        (
            "unknown task",
            422,
            "/v1/runs",
            {
                "json": {
                    "run_id": run_id,
                    "num_samples": n,
                    "num_outputs": c,
                    "epochs": 5,
                    "task": "ranking",
                }
            },
        ),
        ("draw beyond the plan", 422, f"/v1/runs/{run_id}/epochs", {"json": {"epoch": 1000}}),
        ("draw out of order", 409, f"/v1/runs/{run_id}/epochs", {"json": {"epoch": 3}}),
        ("draw with a negative epoch", 422, f"/v1/runs/{run_id}/epochs", {"json": {"epoch": -1}}),
    ]


def test_every_bad_request_gets_a_4xx_problem_and_changes_nothing(
    http: httpx.Client, run_id: str, store_url: str, run_snapshot: Callable[..., dict[str, Any]]
) -> None:
    n, c = 48, 4
    create(http, run_id, num_samples=n, num_outputs=c)
    draw(http, run_id)
    idx = shard(http, run_id, 0)[:8]
    report(
        http,
        run_id,
        rid="seed",
        epoch=0,
        lr_sum=0.5,
        idx=idx,
        out=np.ones((8, c), np.float32),
        tgt=idx % c,
    )
    for what, status, path, kwargs in _bad_requests(run_id, n, c):
        before = run_snapshot(store_url, run_id)
        r = http.post(path, **kwargs)
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        assert r.headers["content-type"].startswith("application/problem+json"), what
        problem = r.json()
        assert problem["status"] == status and len(problem["detail"]) > 10, what
        assert run_snapshot(store_url, run_id) == before, f"{what} changed Redis"
    # GETs with bad parameters
    for path, params in (
        (f"/v1/runs/{run_id}/epochs/0/indices", {"rank": 2, "world": 2}),
        (f"/v1/runs/{run_id}/epochs/0/indices", {"world": 0}),
        (f"/v1/runs/{run_id}/epochs/0/indices", {"offset": -1}),
        (f"/v1/runs/{run_id}/scores", {"offset": n + 1}),
        (f"/v1/runs/{run_id}/scores", {"limit": -2}),
        (f"/v1/runs/{run_id}/epochs/-1", {}),
    ):
        r = http.get(path, params=params)
        assert r.status_code == 422, (path, params, r.text)


def test_unknown_run_is_404_and_creates_nothing(
    http: httpx.Client, run_id: str, store_url: str, run_snapshot: Callable[..., dict[str, Any]]
) -> None:
    ghost = run_id + "-ghost"
    body = wire.encode_report(
        report_id="r",
        epoch=0,
        lr_sum=0.0,
        indices=np.array([0]),
        outputs=np.ones((1, 2), np.float32),
        targets=np.array([0]),
    )
    for method, path, kwargs in (
        ("GET", f"/v1/runs/{ghost}", {}),
        ("GET", f"/v1/runs/{ghost}/plan", {}),
        ("POST", f"/v1/runs/{ghost}/epochs", {"json": {}}),
        ("GET", f"/v1/runs/{ghost}/epochs/0", {}),
        ("GET", f"/v1/runs/{ghost}/epochs/0/indices", {}),
        ("POST", f"/v1/runs/{ghost}/reports", {"content": body, "headers": BIN}),
        ("GET", f"/v1/runs/{ghost}/scores", {}),
        ("GET", f"/v1/runs/{ghost}/stats", {}),
        ("DELETE", f"/v1/runs/{ghost}", {}),
    ):
        r = http.request(method, path, **kwargs)
        assert r.status_code == 404, (method, path, r.text)
        assert "ghost" in r.json()["detail"]
    assert run_snapshot(store_url, ghost) == {"<in docl:runs>": False}
    assert http.get("/v1/nothing-here").json()["status"] == 404


def test_body_limit_413_by_header_and_by_stream(
    server_factory: Callable[..., ServerProcess], store_url: str, run_id: str,
    run_snapshot: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    server = server_factory(redis_url=store_url, env={"DOCL_MAX_BODY_BYTES": "4096"})
    with httpx.Client(base_url=server.url, timeout=30) as http:
        create(http, run_id, num_outputs=100)
        draw(http, run_id)
        before = run_snapshot(store_url, run_id)
        idx = np.arange(20)
        big = wire.encode_report(
            report_id="big",
            epoch=0,
            lr_sum=0.0,
            indices=idx,
            outputs=np.ones((20, 100), np.float32),
            targets=idx % 100,
        )
        assert len(big) > 4096
        r = http.post(f"/v1/runs/{run_id}/reports", content=big, headers=BIN)
        assert r.status_code == 413 and "4096" in r.json()["detail"]

        def chunks() -> Any:  # no Content-Length: the server must count what streams in
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        r = http.post(f"/v1/runs/{run_id}/reports", content=chunks(), headers=BIN)
        assert r.status_code == 413, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert run_snapshot(store_url, run_id) == before
        small = wire.encode_report(
            report_id="small",
            epoch=0,
            lr_sum=0.0,
            indices=idx[:2],
            outputs=np.ones((2, 100), np.float32),
            targets=idx[:2],
        )
        assert (
            http.post(f"/v1/runs/{run_id}/reports", content=small, headers=BIN).status_code == 200
        )


def test_token_auth(
    server_factory: Callable[..., ServerProcess], store_url: str, run_id: str
) -> None:
    server = server_factory(redis_url=store_url, env={"DOCL_API_TOKEN": "s3cret"})
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            r = http.get("/v1/runs", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert r.json()["status"] == 401
        r = http.post("/v1/runs", json={"bad": "body"})  # 401 before the body is even looked at
        assert r.status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert (
            http.post(
                "/v1/runs",
                json={"run_id": run_id, "num_samples": 5, "num_outputs": 2, "epochs": 1},
                headers=ok,
            ).status_code
            == 201
        )
        assert http.get(f"/v1/runs/{run_id}", headers=ok).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert http.get(open_path).status_code == 200, open_path


# -- durability ------------------------------------------------------------------------------
def _report_epoch(http: httpx.Client, run_id: str, e: int, prefix: str) -> int:
    ep = draw(http, run_id, e)
    idx = shard(http, run_id, e)
    lr = ep["lr_sum_start"]
    acked = 0
    for s, batch in enumerate(np.array_split(idx, ep["steps"])):
        out = (
            np.full((batch.size, 4), 0.1 * (e + 1) + 0.01 * s, np.float32)
            + batch[:, None].astype(np.float32) / 100
        )
        r = report(
            http,
            run_id,
            rid=f"{prefix}-{e}-{s}",
            epoch=e,
            lr_sum=lr,
            idx=batch,
            out=out,
            tgt=batch % 4,
        )
        assert r.status_code == 200, r.text
        acked += 1
        lr += ep["lr"][s]
    return acked


def test_server_restart_loses_nothing(
    server_factory: Callable[..., ServerProcess], store_url: str, run_id: str
) -> None:
    server = server_factory(redis_url=store_url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        create(http, run_id)
        _report_epoch(http, run_id, 0, "p")
        _report_epoch(http, run_id, 1, "p")
        before = get_scores(http, run_id)
        run_before = http.get(f"/v1/runs/{run_id}").json()
    server.restart(kill=True)  # a crash, not a goodbye
    with httpx.Client(base_url=server.url, timeout=30) as http:
        after = get_scores(http, run_id)
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
        assert http.get(f"/v1/runs/{run_id}").json() == run_before
        # a report acknowledged before the restart is still known
        idx = shard(http, run_id, 1)
        ep = http.get(f"/v1/runs/{run_id}/epochs/1").json()
        first = np.array_split(idx, ep["steps"])[0]
        r = report(http, run_id, rid="p-1-0", epoch=1, lr_sum=ep["lr_sum_start"], idx=first,
                   out=np.zeros((first.size, 4), np.float32), tgt=first % 4)  # fmt: skip
        assert r.json()["duplicate"] is True
        assert _report_epoch(http, run_id, 2, "p") > 0


def test_redis_killed_with_aof_loses_no_acknowledged_report(
    redis_factory: Callable[..., RedisProcess],
    server_factory: Callable[..., ServerProcess],
    run_id: str,
) -> None:
    # single Redis only: it SIGKILLs and restarts one Redis (the cluster's: the failover test)
    redis = redis_factory(appendonly=True, appendfsync="always")
    server = server_factory(redis_url=redis.url)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        create(http, run_id)
        _report_epoch(http, run_id, 0, "k")
        _report_epoch(http, run_id, 1, "k")
        before = get_scores(http, run_id)
        counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
        redis.kill()  # SIGKILL: no shutdown save, only what appendfsync=always put on disk
        r = http.get(f"/v1/runs/{run_id}")
        assert r.status_code == 503 and r.json()["status"] == 503  # a problem, not a hang or a 500
        ready = http.get("/readyz")
        assert ready.status_code == 503
        # what failed, for the client; where the store lives, for the server's log only
        for answer in (r, ready):
            assert "Retry-After" in answer.headers
            assert str(redis.port) not in answer.text and "127.0.0.1" not in answer.text
            assert "score store" in answer.json()["detail"], answer.text
        assert str(redis.port) in server.log_text()
        redis.start()
        after = get_scores(http, run_id)
        for a, b in zip(before, after, strict=True):
            np.testing.assert_array_equal(a, b)
        assert http.get(f"/v1/runs/{run_id}").json()["counters"] == counters
        assert http.get("/readyz").status_code == 200
        assert _report_epoch(http, run_id, 2, "k") > 0  # scripts reloaded, the run goes on


# -- concurrency -----------------------------------------------------------------------------
def test_concurrent_clients_each_sample_scored_exactly_once_per_report(
    server_url: str, run_id: str
) -> None:
    n, c, clients, rounds = 600, 4, 6, 4
    with httpx.Client(base_url=server_url, timeout=30) as http:
        create(http, run_id, num_samples=n, num_outputs=c)
        draw(http, run_id)
    parts = np.array_split(np.random.default_rng(1).permutation(n), clients)
    errors: list[str] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=server_url, timeout=30) as http:
            mine = parts[k]
            for rnd in range(rounds):
                for b, batch in enumerate(np.array_split(mine, 5)):
                    out = np.full((batch.size, c), rnd + 0.1 * k, np.float32)
                    r = report(
                        http,
                        run_id,
                        rid=f"c{k}-{rnd}-{b}",
                        epoch=0,
                        lr_sum=float(rnd),
                        idx=batch,
                        out=out,
                        tgt=batch % c,
                    )
                    if r.status_code != 200 or r.json()["duplicate"]:
                        errors.append(r.text)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with httpx.Client(base_url=server_url, timeout=30) as http:
        _, visits, lrs = get_scores(http, run_id)
        assert (visits == rounds).all()
        assert (lrs == rounds - 1).all()
        counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
    assert counters["reports"] == clients * rounds * 5
    assert counters["samples_reported"] == n * rounds
    assert counters["samples_scored"] == n * (rounds - 1)


def test_racing_reports_of_the_same_samples_lose_no_update(server_url: str, run_id: str) -> None:
    """Reports that touch the SAME samples concurrently: the compare-and-set keeps the
    visit counts exact (a lost update would leave Σ visits below the applied count)."""
    n, c, clients, per = 64, 4, 6, 10
    with httpx.Client(base_url=server_url, timeout=30) as http:
        create(http, run_id, num_samples=n, num_outputs=c)
        draw(http, run_id)
    idx = np.arange(n)

    def client(k: int) -> list[dict[str, Any]]:
        acks = []
        with httpx.Client(base_url=server_url, timeout=30) as http:
            for j in range(per):
                lr = float(1 + j * clients + k)  # distinct lr-sums, interleaved across clients
                out = np.full((n, c), lr, np.float32)
                r = report(
                    http,
                    run_id,
                    rid=f"race-{k}-{j}",
                    epoch=0,
                    lr_sum=lr,
                    idx=idx,
                    out=out,
                    tgt=idx % c,
                )
                assert r.status_code == 200, r.text
                acks.append(r.json())
        return acks

    with ThreadPoolExecutor(clients) as pool:
        acks = [a for part in pool.map(client, range(clients)) for a in part]
    with httpx.Client(base_url=server_url, timeout=30) as http:
        _, visits, lrs = get_scores(http, run_id)
        counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
    applied = counters["samples_reported"] - counters["samples_skipped"]
    assert int(visits.sum()) == applied
    assert (lrs == clients * per).all()  # the largest lr-sum always wins in the end
    assert counters["samples_scored"] == sum(a["scored"] for a in acks)


# -- every method through the server ---------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("docl", {"exp3": True}),
        ("docl-nr", {}),
        ("random", {}),
        ("random-subset", {}),
        ("spl", {}),
        ("mcl", {}),  # diversity pruning on by default: facility location on stored outputs
        ("top", {"diversity": True}),
        ("bottom", {"output_dtype": "float16"}),
        ("alternate", {}),
    ],
)
def test_every_method_draws_its_plan(
    http: httpx.Client, run_id: str, method: str, params: dict[str, Any]
) -> None:
    n = 40
    create(http, run_id, num_samples=n, method=method, epochs=6, params={"batch_size": 8, **params})
    plan = http.get(f"/v1/runs/{run_id}/plan").json()["epochs"]
    rng = np.random.default_rng(3)
    table = rng.normal(size=(n, 4)).astype(np.float32)
    for e, row in enumerate(plan):
        ep = draw(http, run_id)
        idx = shard(http, run_id, e)
        assert idx.shape[0] == row["size"] == ep["size"]
        assert np.unique(idx).shape[0] == idx.shape[0] and ((idx >= 0) & (idx < n)).all()
        lr = ep["lr_sum_start"]
        for s, batch in enumerate(np.array_split(idx, ep["steps"])):
            out = (
                table[batch]
                + 0.05 * e
                + rng.normal(scale=0.01, size=(batch.size, 4)).astype(np.float32)
            )
            r = report(
                http, run_id, rid=f"{e}-{s}", epoch=e, lr_sum=lr, idx=batch, out=out, tgt=batch % 4
            )
            assert r.status_code == 200, r.text
            lr += ep["lr"][s]
    stats = http.get(f"/v1/runs/{run_id}/stats").json()
    assert stats["epochs_drawn"] == len(plan)
    assert stats["visits_total"] == sum(row["size"] for row in plan)
    assert stats["scored"] > 0


# -- on a Redis Cluster (issue 13, phase 1) ---------------------------------------------------
def test_docl_serve_on_a_redis_cluster_spreads_runs_over_its_nodes(
    server_factory: Callable[..., ServerProcess],
    redis_cluster: RedisClusterProcess,
    run_id: str,
    run_snapshot: Callable[..., dict[str, Any]],
) -> None:
    """A real ``docl serve --redis-url redis+cluster://…``: runs whose hash tags fall on
    different nodes are created, drawn and reported; each lives on its node alone; the
    counters count every report once; a deleted run leaves no key on any node."""
    server = server_factory(redis_url=redis_cluster.url)
    ids = redis_cluster.run_ids_on_every_node(run_id, per_node=2)
    nodes = redis_cluster.nodes
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for rid in ids:
            create(http, rid)
            acked = _report_epoch(http, rid, 0, "c") + _report_epoch(http, rid, 1, "c")
            got = http.get(f"/v1/runs/{rid}").json()
            assert got["counters"]["reports"] == acked and got["last_epoch"] == 1
            _, visits, _ = get_scores(http, rid)
            sizes = [http.get(f"/v1/runs/{rid}/epochs/{e}").json()["size"] for e in (0, 1)]
            assert int(visits.sum()) == sum(sizes)  # each report applied exactly once
            owner = redis_cluster.node_of_key(f"{{run:{rid}}}:meta")
            held = [len(node.scan_keys(f"{{run:{rid}}}:*")) for node in nodes]
            assert held[owner] > 5 and sum(held) == held[owner], held
        owners = {redis_cluster.node_of_key(f"{{run:{rid}}}:meta") for rid in ids}
        assert owners == set(range(len(nodes)))  # the runs are spread over every node
        listed = {r["run_id"] for r in http.get("/v1/runs").json()["runs"]}
        assert set(ids) <= listed
        gone, kept = ids[0], ids[1:]
        assert http.delete(f"/v1/runs/{gone}").status_code == 204
        assert all(node.scan_keys(f"{{run:{gone}}}:*") == [] for node in nodes)
        assert run_snapshot(redis_cluster.url, gone) == {"<in docl:runs>": False}
        assert http.get(f"/v1/runs/{gone}").status_code == 404
        for rid in kept:  # the others are untouched
            assert http.get(f"/v1/runs/{rid}").json()["last_epoch"] == 1
        assert http.get("/readyz").status_code == 200


def _serve_refused(redis_url: str) -> subprocess.CompletedProcess[str]:
    """``docl serve --redis-url redis_url``, which must exit at start (not serve)."""
    out = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()", "serve",
         "--port", "0", "--redis-url", redis_url],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode != 0, out.stderr
    return out


def test_docl_serve_refuses_a_cluster_that_does_not_serve_every_slot() -> None:
    with RedisClusterProcess(primaries=2) as cluster:
        lo, _ = cluster.slot_ranges()[1]
        cluster.nodes[1].command("CLUSTER", "DELSLOTS", *range(lo, lo + 10))
        deadline = time.monotonic() + 10
        while cluster.info(1)["cluster_state"] != "fail" and time.monotonic() < deadline:
            time.sleep(0.02)
        out = _serve_refused(cluster.url)
    assert "ClusterStateError" in out.stderr and "cluster_state=fail" in out.stderr
    assert "slots assigned 16374/16384" in out.stderr


def test_docl_serve_refuses_a_plain_redis_url_on_a_cluster_node(
    redis_cluster: RedisClusterProcess,
) -> None:
    """``--redis-url redis://…`` of a Redis Cluster node: refused at start, naming the
    scheme to use (it used to start, say ready and answer every create with a 500)."""
    out = _serve_refused(redis_cluster.nodes[0].url)
    assert "Redis Cluster (cluster_enabled:1)" in out.stderr and "redis+cluster://" in out.stderr


def test_report_stream_survives_sigkill_of_the_runs_primary(
    server_factory: Callable[..., ServerProcess], run_id: str
) -> None:
    """Issue 13's failover requirement on a real cluster with one replica per primary
    (AOF, fsync always, node timeout 1 s): four senders stream the reports of one run into
    a real ``docl serve``; once 20 are acknowledged the primary owning the run's slot is
    SIGKILLed, with reports in flight; every sender re-sends its unacknowledged report
    with the same report id (as the SDK's Reporter does) until the replica is promoted.
    Then every sample of the epoch is visited exactly once and the run counts each report
    once: nothing acknowledged lost, nothing doubled."""
    with RedisClusterProcess(
        primaries=3, replicas=1, appendonly=True, appendfsync="always", node_timeout_ms=1000
    ) as cluster:
        server = server_factory(redis_url=cluster.url)
        owner = cluster.node_of_key(f"{{run:{run_id}}}:meta")
        replica = cluster.replicas[owner]  # replicates nodes[owner] (3 primaries, 1 each)
        rng = np.random.default_rng(13)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            create(http, run_id, num_samples=480, epochs=2)
            size = draw(http, run_id, 0)["size"]
            idx = shard(http, run_id, 0)
            assert size == 480 and sorted(idx.tolist()) == list(range(480))  # warm-up: all
            batches = np.array_split(idx, 60)
            outs = [rng.normal(size=(b.size, 4)).astype(np.float32) for b in batches]
            sent = stream_reports_through_a_kill(
                http, run_id, batches, outs, kill=cluster.nodes[owner].kill
            )
            assert cluster.info(replica, "replication")["role"] == "master"  # it took over
            got = http.get(f"/v1/runs/{run_id}").json()
            _, visits, _ = get_scores(http, run_id)
            assert draw(http, run_id, 1)["size"] > 0  # the run goes on, on the new primary
            assert cluster.info(replica)["cluster_state"] == "ok"
        assert (visits == 1).all(), np.flatnonzero(visits != 1)  # none lost, none doubled
        assert got["counters"]["reports"] == len(batches)
        assert sent.failed  # the kill did interrupt the stream
        print(f"failover: last failed attempt {max(sent.failed) - sent.killed_at:.2f} s after "
              f"the kill, {len(sent.failed)} attempts failed")  # fmt: skip


def stream_reports_through_a_kill(
    http: httpx.Client,
    run_id: str,
    batches: list[np.ndarray],
    outs: list[np.ndarray],
    *,
    kill: Callable[[], None],
    after: int = 20,
) -> Tally:
    """Four senders report ``batches`` of epoch 0 (report k has id ``r{k}``, lr_sum 0.1·k);
    once ``after`` are acknowledged ``kill()`` runs, with the others in flight. Every
    sender re-sends its report with the same id (as the SDK's Reporter does) until it is
    acknowledged, for at most 30 s (``docl.lab.crash.stream_reports``). Every failed
    attempt must be a 503 with Retry-After or a dropped connection (never a 4xx or a 500)
    and only a re-sent report may be a duplicate."""
    bodies = [
        (f"r{k}", wire.encode_report(report_id=f"r{k}", epoch=0, lr_sum=0.1 * k, indices=b,
                                     outputs=outs[k], targets=b % 4))
        for k, b in enumerate(batches)
    ]  # fmt: skip
    got = stream_reports(http, run_id, bodies, Tally("kill"), kill=kill, after=after, timeout=30)
    assert got.details == [], got.details[:5]
    assert got.acked == len(batches)
    return got


# -- durability: WAIT for replicas (DOCL_REDIS_WAIT_REPLICAS) --------------------------------
WAIT_MS = 500


@pytest.fixture(scope="module")
def replicated_cluster() -> Iterator[RedisClusterProcess]:
    """The failover test's shape: 3 primaries with one replica each, AOF fsync always."""
    with RedisClusterProcess(
        primaries=3, replicas=1, appendonly=True, appendfsync="always"
    ) as cluster:
        yield cluster


def _replica_reader(cluster: RedisClusterProcess, run_id: str) -> Any:
    """A connection to the replica of the run's primary that reads its own copy (READONLY)."""
    import redis

    replica = cluster.replicas[cluster.node_of_key(f"{{run:{run_id}}}:meta")]
    conn = redis.Redis(
        host=replica.host, port=replica.port, password=cluster.password,
        single_connection_client=True,
    )  # fmt: skip
    conn.execute_command("READONLY")
    return conn


def _waiting_server(
    server_factory: Callable[..., ServerProcess], cluster: RedisClusterProcess
) -> ServerProcess:
    env = {"DOCL_REDIS_WAIT_REPLICAS": "1", "DOCL_REDIS_WAIT_MS": str(WAIT_MS)}
    return server_factory(redis_url=cluster.url, env=env)


def test_with_wait_on_every_acknowledged_report_is_on_the_replica(
    replicated_cluster: RedisClusterProcess,
    server_factory: Callable[..., ServerProcess],
    run_id: str,
) -> None:
    """DOCL_REDIS_WAIT_REPLICAS=1: the moment a report is acknowledged, the replica of the
    run's primary already holds it (its dedup marker and the run's report count, read
    from the replica itself right after each 200, with no pause)."""
    server = _waiting_server(server_factory, replicated_cluster)
    replica = _replica_reader(replicated_cluster, run_id)
    rng = np.random.default_rng(1)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        create(http, run_id, num_samples=96)
        draw(http, run_id, 0)
        batches = np.array_split(shard(http, run_id, 0), 12)
        for k, b in enumerate(batches):
            out = rng.normal(size=(b.size, 4)).astype(np.float32)
            r = report(http, run_id, rid=f"r{k}", epoch=0, lr_sum=0.1, idx=b, out=out, tgt=b % 4)
            assert r.status_code == 200 and not r.json()["duplicate"], r.text
            assert replica.zscore(f"{{run:{run_id}}}:reports", f"r{k}") is not None
            assert int(replica.hget(f"{{run:{run_id}}}:counters", "reports")) == k + 1
    replica.close()


def test_with_wait_on_a_stopped_replica_gives_503_and_the_resend_is_applied_once(
    replicated_cluster: RedisClusterProcess,
    server_factory: Callable[..., ServerProcess],
    run_id: str,
) -> None:
    """SIGSTOP the replica of the run's primary: a report is applied on the primary but
    not acknowledged: 503 after ~DOCL_REDIS_WAIT_MS, naming the setting. After SIGCONT
    the same report id is re-sent: acknowledged (as a duplicate), counted once, every
    sample visited once, and the replica has it. Without WAIT the report would be a 200
    that a failover at that moment loses."""
    import os
    import signal

    server = _waiting_server(server_factory, replicated_cluster)
    owner = replicated_cluster.node_of_key(f"{{run:{run_id}}}:meta")
    replica_proc = replicated_cluster.replicas[owner]
    assert replica_proc.pid is not None
    rng = np.random.default_rng(2)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        create(http, run_id, num_samples=48)
        draw(http, run_id, 0)
        a, b = np.array_split(shard(http, run_id, 0), 2)
        out_a, out_b = (rng.normal(size=(x.size, 4)).astype(np.float32) for x in (a, b))
        first = report(http, run_id, rid="a", epoch=0, lr_sum=0.1, idx=a, out=out_a, tgt=a % 4)
        assert first.status_code == 200, first.text
        os.kill(replica_proc.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            r = report(http, run_id, rid="b", epoch=0, lr_sum=0.2, idx=b, out=out_b, tgt=b % 4)
            took = time.monotonic() - t0
            assert r.status_code == 503, r.text
            assert "DOCL_REDIS_WAIT_REPLICAS=1" in r.json()["detail"]
            assert r.headers["Retry-After"] == "1"
            assert WAIT_MS / 1000 * 0.9 <= took < WAIT_MS / 1000 + 3.0, took
            # applied on the primary all the same (acknowledging it is what was refused)
            assert http.get(f"/v1/runs/{run_id}").json()["counters"]["reports"] == 2
        finally:
            os.kill(replica_proc.pid, signal.SIGCONT)
        again = report(http, run_id, rid="b", epoch=0, lr_sum=0.2, idx=b, out=out_b, tgt=b % 4)
        assert again.status_code == 200 and again.json()["duplicate"], again.text
        counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
        _, visits, _ = get_scores(http, run_id)
    assert counters["reports"] == 2 and counters["duplicates"] == 1
    assert (visits == 1).all(), visits
    replica = _replica_reader(replicated_cluster, run_id)
    assert int(replica.hget(f"{{run:{run_id}}}:counters", "reports")) == 2
    replica.close()


@pytest.mark.parametrize("refusal", ["wait", "timeout"])
def test_a_report_refused_after_it_was_applied_leaves_no_stale_state(
    server_factory: Callable[..., ServerProcess], run_id: str, refusal: str
) -> None:
    """Issue 19's reproducer: one report per epoch of all 64 samples; epoch 1's report is
    applied by Redis but answered 503, its re-send is a duplicate, and epoch 2's report
    must be computed from the stored rows (the 503'd write included), not from the record
    cache's pre-report copy under a write lease that skips the compare: every sample ends
    with exactly 3 visits (2 before the fix).

    ``wait``: a primary + one replica (AOF always), WAIT 1 / 300 ms, the replica
    SIGSTOPped under epoch 1's report ("not yet durable"). ``timeout``: one Redis,
    DOCL_REDIS_TIMEOUT_S=1, Redis itself SIGSTOPped under the report: a 503 saying Redis
    did not answer in time (not re-sent by the fast client: it used to be taken for a lost
    connection); whether or not the command ran, the run ends with every visit once."""
    import os
    import signal

    from docl.lab.crash import replicated_pair

    with contextlib.ExitStack() as stack:
        if refusal == "wait":
            primary, stopped = stack.enter_context(
                replicated_pair(appendonly=True, appendfsync="always")
            )
            env = {"DOCL_REDIS_WAIT_REPLICAS": "1", "DOCL_REDIS_WAIT_MS": "300"}
        else:
            primary = stopped = stack.enter_context(
                RedisProcess(appendonly=True, appendfsync="always")
            )
            env = {"DOCL_REDIS_TIMEOUT_S": "1"}
        assert stopped.pid is not None
        server = server_factory(redis_url=primary.url, env=env)
        rng = np.random.default_rng(19)
        http = stack.enter_context(httpx.Client(base_url=server.url, timeout=30))
        create(http, run_id, num_samples=64, epochs=3, params={"warmup_epochs": 3})

        def send(e: int) -> httpx.Response:
            idx = shard(http, run_id, e)
            out = rng.normal(size=(idx.size, 4)).astype(np.float32)
            return report(http, run_id, rid=f"e{e}", epoch=e, lr_sum=0.5 * (e + 1),
                          idx=idx, out=out, tgt=idx % 4)  # fmt: skip

        draw(http, run_id, 0)
        assert send(0).status_code == 200
        draw(http, run_id, 1)
        idx1 = shard(http, run_id, 1)
        out1 = rng.normal(size=(idx1.size, 4)).astype(np.float32)
        body = {"rid": "e1", "epoch": 1, "lr_sum": 1.0, "idx": idx1, "out": out1,
                "tgt": idx1 % 4}  # fmt: skip
        os.kill(stopped.pid, signal.SIGSTOP)
        try:
            r = report(http, run_id, **body)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text
            why = "not yet durable" if refusal == "wait" else "did not answer in time"
            assert why in r.json()["detail"], r.text
        finally:
            os.kill(stopped.pid, signal.SIGCONT)
        again = report(http, run_id, **body)
        assert again.status_code == 200, again.text
        # WAIT: applied, so a duplicate. A timeout: here the command given up on did not
        # run (its connection was closed), and the re-send applied it: once either way.
        assert again.json()["duplicate"] is (refusal == "wait"), again.text
        draw(http, run_id, 2)
        assert send(2).status_code == 200
        _, visits, lrs = get_scores(http, run_id)
        counters = http.get(f"/v1/runs/{run_id}").json()["counters"]
    assert (visits == 3).all(), np.bincount(visits)  # none lost (2 before the fix)
    assert (lrs == 1.5).all()
    assert counters["reports"] == 3 and counters["duplicates"] == (refusal == "wait")


def test_outputs_whose_score_would_overflow_float32_are_refused_and_change_nothing(
    http: httpx.Client,
    server_url: str,
    store_url: str,
    run_id: str,
    run_snapshot: Callable[[str, str], dict[str, Any]],
) -> None:
    """±3.4e38 is finite float32 but its arithmetic is not: such outputs used to be
    accepted and leave visited samples with NaN scores (read as "never scored"). Now
    outputs beyond ±1e15 are a 422 naming the limit; a report whose score still comes out
    non-finite (a learning-rate sum that advanced by 1e-30) is a 422 naming the sample;
    neither writes anything; a visited sample's second visit is always scored."""
    create(http, run_id, num_samples=8, epochs=2, params={"warmup_epochs": 2})
    draw(http, run_id, 0)
    idx = np.arange(8)
    big = np.tile(np.array([3.4e38, -3.4e38, 0.0, 1.0], np.float32), (8, 1))
    before = run_snapshot(store_url, run_id)
    r = report(http, run_id, rid="huge", epoch=0, lr_sum=0.0, idx=idx, out=big, tgt=idx % 4)
    assert r.status_code == 422 and "beyond ±1e+15" in r.json()["detail"], r.text
    assert run_snapshot(store_url, run_id) == before
    edge = np.tile(np.array([1e15, -1e15, 0.0, 1.0], np.float32), (8, 1))
    ok = report(http, run_id, rid="a", epoch=0, lr_sum=0.0, idx=idx, out=edge, tgt=idx % 4)
    assert ok.status_code == 200, ok.text
    before = run_snapshot(store_url, run_id)
    r = report(http, run_id, rid="b", epoch=0, lr_sum=1e-30, idx=idx, out=-edge, tgt=idx % 4)
    assert r.status_code == 422 and "not finite in float32" in r.json()["detail"], r.text
    assert run_snapshot(store_url, run_id) == before
    r = report(http, run_id, rid="c", epoch=0, lr_sum=0.5, idx=idx, out=-edge, tgt=idx % 4)
    assert r.status_code == 200 and r.json()["scored"] == 8, r.text
    scores, visits, _ = get_scores(http, run_id)
    assert (visits == 2).all() and np.isfinite(scores).all()
