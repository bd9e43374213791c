"""Methods through a real ``docl serve``: method/params validation (422, nothing created),
InfoBatch's weighted, variable-size epochs over HTTP (JSON and binary agree; stored once
per epoch; weight 1 in the annealing epochs), ``GET /v1/methods``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from docl.client import ScoreClient
from docl.client.models import RunCreate, RunParams


def _post(http: httpx.Client, body: dict[str, Any]) -> httpx.Response:
    return http.post("/v1/runs", json=body)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"method": "no-such-method"}, "unknown method 'no-such-method'; known: random"),
        ({"method": "infobatch", "method_params": {"prune_ratio": 1.5}}, "prune_ratio"),
        (
            {"method": "infobatch", "method_params": {"ratio": 0.3}},
            "its parameters: prune_ratio, delta",
        ),
        ({"method": "docl", "method_params": {"tau": 1}}, "method_params for method 'docl'"),
        ({"method": "Bad Name!"}, "method"),
    ],
)
def test_bad_method_or_params_is_a_clear_422_and_creates_nothing(
    http: httpx.Client,
    run_id: str,
    redis_url: str,
    run_snapshot: Callable[[str, str], dict[str, Any]],
    extra: dict[str, Any],
    needle: str,
) -> None:
    before = run_snapshot(redis_url, run_id)
    r = _post(http, {"run_id": run_id, "num_samples": 10, "num_outputs": 2, "epochs": 2, **extra})
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"], r.json()["detail"]
    assert run_snapshot(redis_url, run_id) == before


def test_methods_route_lists_the_registry(http: httpx.Client) -> None:
    r = http.get("/v1/methods")
    assert r.status_code == 200
    by_name = {m["name"]: m for m in r.json()["methods"]}
    assert {"random", "random-subset", "docl", "infobatch"} <= set(by_name)
    ib = by_name["infobatch"]
    assert ib["weights"] and ib["signal"] == "loss" and ib["size"] == "drawn"
    assert set(ib["params"]["properties"]) == {"prune_ratio", "delta"}
    assert not by_name["docl"]["weights"] and by_name["random"]["uniform"]


def test_methods_route_says_which_methods_select_per_step(http: httpx.Client) -> None:
    """``step_level``, the default ``pool_ratio`` and the ``signals`` each method's
    step rule reads, over HTTP, against the registry's own objects (a step rule, the
    pool_ratio field's default, the declared signals)."""
    from docl.services.methods import _BUILTIN, registry

    r = http.get("/v1/methods")
    assert r.status_code == 200
    by_name = {m["name"]: m for m in r.json()["methods"]}
    assert set(by_name) >= _BUILTIN
    for name in _BUILTIN:
        spec, m = registry()[name], by_name[name]
        assert m["step_level"] is (spec.step is not None), name
        assert m["signals"] == list(spec.signals), name
        if spec.step is None:
            assert m["pool_ratio"] is None, name
        else:
            assert m["pool_ratio"] == spec.params().pool_ratio == spec.pool_ratio({}), name
            assert "pool_ratio" in m["params"]["properties"], name
    step_level = {n for n, m in by_name.items() if m["step_level"]}
    assert step_level == {"loss-topk", "pool-random", "rho-loss"}
    assert by_name["rho-loss"]["signals"] == ["irreducible_loss"]
    assert by_name["loss-topk"]["pool_ratio"] == 4 and by_name["loss-topk"]["signals"] == []
    assert by_name["docl"]["pool_ratio"] is None and not by_name["docl"]["step_level"]
    assert by_name["rho-epoch"]["signals"] == ["irreducible_loss"]  # epoch-level, reads a signal
    assert not by_name["rho-epoch"]["step_level"]


def _report_losses(c: ScoreClient, run_id: str, epoch: int, idx: np.ndarray, a: np.ndarray) -> None:
    """Outputs [a_i, 0] with target 0: the server's cross-entropy is log(1 + e^{-a_i})."""
    out = np.stack([a[idx], np.zeros(idx.size)], axis=1).astype(np.float32)
    c.report(run_id, epoch=epoch, indices=idx, outputs=out, targets=np.zeros(idx.size, np.int64),
             lr_sum=float(epoch))  # fmt: skip


def test_infobatch_epochs_over_http(
    score_server: str, http: httpx.Client, run_id: str, redis_url: str
) -> None:
    n, bs, epochs = 60, 8, 8  # annealing from ⌈0.875·8⌉ = 7
    a = np.linspace(-3, 3, n)  # loss decreasing in a: the high-a samples are below the mean
    loss = np.log1p(np.exp(-a))
    below = loss < loss.mean()
    with ScoreClient(score_server) as c:
        run = c.create_run(RunCreate(
            run_id=run_id, num_samples=n, num_outputs=2, method="infobatch", epochs=epochs,
            method_params={"prune_ratio": 0.5},
            params=RunParams(batch_size=bs, warmup_epochs=1, refresh=False)))  # fmt: skip
        assert run.method_params == {"prune_ratio": 0.5, "delta": 0.875}  # defaults stored
        e0 = c.draw_epoch(run_id, 0)
        assert e0.phase == "warmup" and not e0.weighted and e0.size == n
        assert c.shard(run_id, 0).weights is None
        assert "weights" not in http.get(f"/v1/runs/{run_id}/epochs/0/indices").json()
        _report_losses(c, run_id, 0, c.indices(run_id, 0), a)
        sizes = []
        for e in range(1, epochs):
            ep = c.draw_epoch(run_id, e)
            assert ep.weighted and ep.phase == "select"
            sh = c.shard(run_id, e, binary=False)
            shb = c.shard(run_id, e, binary=True)
            np.testing.assert_array_equal(sh.indices, shb.indices)
            assert sh.weights is not None and shb.weights is not None
            np.testing.assert_array_equal(sh.weights, shb.weights)
            assert ep.size == len(sh) and ep.steps == -(-len(sh) // bs) and len(ep.lr) == ep.steps
            np.testing.assert_array_equal(c.indices(run_id, e), sh.indices)  # old call: indices
            if e >= 7:  # annealing: every sample, weight exactly 1
                assert len(sh) == n and np.all(sh.weights == 1.0)
            else:
                want = np.where(below[sh.indices], np.float32(2.0), np.float32(1.0))
                np.testing.assert_array_equal(sh.weights, want)
                assert np.all(np.isin(np.flatnonzero(~below), sh.indices))  # never pruned
                assert len(sh) < n
            # drawn once: drawing/reading again (another rank, a re-iterated sampler) is the same
            again = c.draw_epoch(run_id, e)
            assert again.size == ep.size and again.lr == ep.lr
            sh2 = c.shard(run_id, e)
            np.testing.assert_array_equal(sh2.indices, sh.indices)
            assert sh2.weights is not None
            np.testing.assert_array_equal(sh2.weights, sh.weights)
            # two ranks' shards are the halves of the epoch, weights alongside
            r0, r1 = c.shard(run_id, e, rank=0, world=2), c.shard(run_id, e, rank=1, world=2)
            np.testing.assert_array_equal(np.concatenate([r0.indices, r1.indices]), sh.indices)
            assert r0.weights is not None and r1.weights is not None
            np.testing.assert_array_equal(np.concatenate([r0.weights, r1.weights]), sh.weights)
            sizes.append(ep.size)
            _report_losses(c, run_id, e, sh.indices, a)
        assert len(set(sizes[:-1])) > 1  # the pruning is random per epoch
        # the server keeps the last DOCL_KEEP_EPOCHS (4) epochs: an old epoch's indices AND
        # weights are gone (its drawn size, not the plan's, names its chunks)
        import redis

        r = redis.Redis.from_url(redis_url)
        try:
            keys = {k.decode() for k in r.scan_iter(match=f"{{run:{run_id}}}:*")}
        finally:
            r.close()
        assert not any(":weight:1:" in k or ":epoch:1:" in k for k in keys), keys
        assert any(":weight:6:" in k for k in keys) and any(":epoch:6:" in k for k in keys)
        assert http.get(f"/v1/runs/{run_id}/epochs/1/indices").status_code == 410
        c.delete_run(run_id)


def test_docl_epochs_carry_no_weights(score_server: str, run_id: str) -> None:
    with ScoreClient(score_server) as c:
        c.create_run(RunCreate(run_id=run_id, num_samples=20, num_outputs=2, method="docl",
                               epochs=3, params=RunParams(warmup_epochs=1, batch_size=4)))  # fmt: skip
        for e in range(3):
            assert not c.draw_epoch(run_id, e).weighted
            assert c.shard(run_id, e, binary=True).weights is None
        c.delete_run(run_id)
