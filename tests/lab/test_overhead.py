"""``docl bench overhead`` (lab/overhead.py) with step-level methods: the plain local
loop does the same pools (and for rho-loss the same irreducible-loss model) as the
served run, so the two sides do equal work and train the same model."""

from __future__ import annotations

import pytest

from docl.lab.overhead import format_overhead, measure_overhead
from docl.worker.train import TrainError, TrainSpec


def _spec(method: str) -> TrainSpec:
    # 3 epochs of digits, one warmup epoch: 2 selection epochs with pools of 2 batches.
    return TrainSpec(
        task="digits",
        method=method,
        epochs=3,
        params={"warmup_epochs": 1, "pool_ratio": 2},
        checkpoint=False,
        progress=False,
    )


def test_plain_loop_forwards_the_same_pools_as_the_service() -> None:
    forward: dict[str, int] = {}
    for method in ("loss-topk", "rho-loss"):
        res = measure_overhead(_spec(method), repeats=1)
        plain, service = res.plain[0], res.service[0]
        assert plain["local"] is True and service["local"] is False
        assert plain["reporter"] == {} and service["reporter"]["sent"] > 0
        # The pools' forward passes are counted on the plain side too: more forward
        # sample-passes than backward ones (random SGD's would be equal), and the same
        # numbers as the served run's, which counts its pools on its own.
        assert plain["forward_samples"] > plain["backward_samples"] > 0
        assert plain["forward_samples"] == service["forward_samples"]
        assert plain["compute_samples"] == service["compute_samples"]
        # Same draws, same pools, same rule, one thread: the same model.
        assert plain["test_accuracy"] == pytest.approx(service["test_accuracy"], abs=1e-9)
        d = res.as_dict()
        assert d["method"] == method and d["forward_samples"] == plain["forward_samples"]
        assert f"{plain['forward_samples']:,} forward sample-passes" in format_overhead(res)
        forward[method] = plain["forward_samples"]
    # The same plan and pools; rho-loss's plain side also trained and scored the
    # irreducible-loss models (counted in its sample-passes), as the served side did.
    assert forward["rho-loss"] > forward["loss-topk"]


def test_a_method_whose_epochs_need_the_server_is_refused() -> None:
    with pytest.raises(TrainError, match=r"epochs are uniform \(.*loss-topk.*rho-loss"):
        measure_overhead(_spec("docl"), repeats=1)
