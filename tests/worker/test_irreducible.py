"""The irreducible-loss model of ``rho-loss`` (``worker/irreducible.py``): the two halves,
each sample scored by the model that did not train on it (checked by memorization: a
model that trained on a randomly labelled sample has a near-zero loss on it, the other
half's model has not), the split over ranks, and the ``val`` variant."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from docl.worker.irreducible import (
    compute_irreducible,
    halves,
    irreducible_losses,
    shared_irreducible,
    train_model,
)
from docl.worker.models import ModelSpec
from docl.worker.tasks import TaskData


def _random_labels(n: int = 64, val: int = 0) -> TaskData:
    """Random labels on random inputs: nothing generalizes, a model only memorizes."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n + val + 8, 8, generator=g)
    y = torch.randint(0, 2, (n + val + 8,), generator=g)
    return TaskData(
        name="memorize",
        task="classification",
        num_outputs=2,
        x_train=x[:n],
        y_train=y[:n],
        x_test=x[n : n + 8],
        y_test=y[n : n + 8],
        x_val=x[n + 8 :] if val else None,
        y_val=y[n + 8 :] if val else None,
        make_model=ModelSpec("mlp", {"in_features": 8, "hidden": (128,), "out_features": 2}).build,
    )


KW = {"seed": 5, "epochs": 150, "batch_size": 8, "lr": 0.2, "momentum": 0.9, "weight_decay": 0.0}


@pytest.mark.parametrize("n", [0, 1, 7, 64])
def test_halves_are_a_seeded_partition(n: int) -> None:
    a, b = halves(n, seed=5)
    assert (a.size, b.size) == (n // 2, n - n // 2)
    np.testing.assert_array_equal(np.sort(np.concatenate([a, b])), np.arange(n))
    np.testing.assert_array_equal(halves(n, seed=5)[0], a)
    if n > 8:
        assert not np.array_equal(halves(n, seed=6)[0], a)


def test_two_halves_score_each_sample_with_the_model_that_did_not_train_on_it() -> None:
    """Each half's model memorizes its own half (loss < 0.05 there) and knows nothing of
    the other (random labels): had a sample been scored by the model that trained on
    it, its IL would be near zero. The ILs of each half are far from zero on average,
    and equal the other half's model's losses."""
    data = _random_labels()
    il = irreducible_losses(data, il="halves", **KW)  # type: ignore[arg-type]
    ce = il.values["task"]
    a, b = halves(data.num_samples, seed=5)
    F = torch.nn.functional
    for j, (own, other) in enumerate(((a, b), (b, a))):
        model, _ = train_model(
            data.make_model,
            data.x_train[own],
            data.y_train[own],
            F.cross_entropy,
            seed=5 * 1000 + 17 + j,
            **{k: v for k, v in KW.items() if k != "seed"},  # type: ignore[arg-type]
        )
        with torch.no_grad():
            on_own = F.cross_entropy(model(data.x_train[own]), data.y_train[own], reduction="none")
            on_other = F.cross_entropy(
                model(data.x_train[other]), data.y_train[other], reduction="none"
            )
        assert float(on_own.max()) < 0.05  # memorized: what a self-score would give
        assert float(ce[own].mean()) > 0.3  # ... and what the IL of its own half is not
        np.testing.assert_allclose(ce[other], on_other.double().numpy(), rtol=1e-5, atol=1e-6)
    # the cost: each model trains epochs × its half and scores the other half
    n = data.num_samples
    assert (il.forward_samples, il.backward_samples) == (150 * n + n, 150 * n)
    # the L2 kind is the same models' ½‖onehot − softmax‖²
    assert np.all(il.values["l2"] > 0) and np.all(il.values["l2"] <= 1.0)


def test_the_ranks_share_the_training_and_agree_with_one_process() -> None:
    """Two ranks each train one half's model; the summed parts equal one process's."""
    data = _random_labels(n=32)
    kw = {**KW, "epochs": 3}
    whole = irreducible_losses(data, il="halves", **kw)  # type: ignore[arg-type]
    parts = [irreducible_losses(data, il="halves", parts=(r,), **kw) for r in (0, 1)]  # type: ignore[arg-type]
    for k in ("task", "l2"):
        np.testing.assert_allclose(parts[0].values[k] + parts[1].values[k], whole.values[k])
        assert np.count_nonzero(parts[0].values[k]) == 16
    assert parts[0].backward_samples + parts[1].backward_samples == whole.backward_samples
    one = shared_irreducible(data, rank=0, world=1, all_reduce_sum=lambda t: t, il="halves", **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(one.values["task"], whole.values["task"])
    assert (one.forward_samples, one.backward_samples) == (
        whole.forward_samples,
        whole.backward_samples,
    )


def test_val_trains_one_model_on_the_validation_split() -> None:
    data = _random_labels(n=32, val=40)
    il = irreducible_losses(data, il="val", **{**KW, "epochs": 2})  # type: ignore[arg-type]
    assert np.all(il.values["task"] > 0)
    assert (il.forward_samples, il.backward_samples) == (2 * 40 + 32, 2 * 40)
    with pytest.raises(ValueError, match="needs a validation split"):
        irreducible_losses(_random_labels(), il="val", **KW)  # type: ignore[arg-type]


def test_the_plain_pytorch_helper_gives_the_workers_values_from_tensors() -> None:
    """compute_irreducible (tensors and a model factory, no TaskData) gives what the
    worker's irreducible_losses gives on the same data, both variants; a factory that
    ignores its seed is reproducible all the same, and the caller's RNG is untouched."""
    data = _random_labels(n=32, val=24)
    kw = {**KW, "epochs": 3}
    for il in ("halves", "val"):
        want = irreducible_losses(data, il=il, **kw)  # type: ignore[arg-type]
        got = compute_irreducible(data.make_model, data.x_train, data.y_train, il=il,
                                  x_val=data.x_val, y_val=data.y_val, **kw)  # type: ignore[arg-type]  # fmt: skip
        for k in ("task", "l2"):
            np.testing.assert_array_equal(got.values[k], want.values[k])
        assert (got.forward_samples, got.backward_samples) == (
            want.forward_samples,
            want.backward_samples,
        )

    def unseeded(seed: int) -> torch.nn.Module:  # draws its init from the global RNG
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = compute_irreducible(unseeded, data.x_train, data.y_train, **kw)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), state)
    b = compute_irreducible(unseeded, data.x_train, data.y_train, **kw)  # type: ignore[arg-type]
    np.testing.assert_array_equal(a.values["task"], b.values["task"])
    with pytest.raises(ValueError, match="give x_val and y_val"):
        compute_irreducible(unseeded, data.x_train, data.y_train, il="val")
    with pytest.raises(ValueError, match="one row per sample"):
        compute_irreducible(unseeded, data.x_train, data.y_train[:-1])


# ---------------------------------------------------------------------------
# With a score server: the IL as the run's signal columns
# ---------------------------------------------------------------------------


def test_rho_loss_uploads_its_il_and_a_later_launch_reads_it_back(
    worker_server: str, run_id: str
) -> None:
    """A real in-process run on a real server: rank 0 uploads the IL it trained; the
    columns equal an independent training of the same IL models (float32, as kept);
    a later launch on the run reads them back and trains nothing; a column an upload did
    not complete (a NaN) makes it train and upload again."""
    from docl.client import ScoreClient
    from docl.services.methods.rho import IL_SIGNALS
    from docl.worker.loop import LoopConfig, ServerEpochs, train_loop
    from docl.worker.session import LocalSession
    from docl.worker.signals import supply
    from docl.worker.tasks import get_task
    from docl.worker.train import TrainSpec, build_run

    data = get_task("digits")
    params = {"warmup_epochs": 1, "pool_ratio": 2, "batch_size": 64, "il_epochs": 1}
    spec = TrainSpec(task="digits", method="rho-loss", epochs=2, run_id=run_id, params=params)
    with ScoreClient(worker_server) as client:
        run = client.create_run(build_run(spec, data))
        assert client.signals(run_id).signals == []
        cfg = LoopConfig(run_id=run_id, server=worker_server, eval_every=0)
        first = train_loop(cfg, data, LocalSession(checkpoint_dir=None))
        assert first["signal_compute_samples"] > 0
        want = irreducible_losses(
            data, il="halves", seed=cfg.seed, epochs=1, batch_size=64, lr=run.params.lr_peak,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        ).values  # fmt: skip
        assert client.signals(run_id).signals == sorted(IL_SIGNALS.values())
        for kind, name in IL_SIGNALS.items():
            col = client.get_signal(run_id, name)
            np.testing.assert_array_equal(col, want[kind].astype(np.float32))

        source = ServerEpochs(client, run_id)
        kw = {"seed": cfg.seed, "momentum": cfg.momentum, "weight_decay": cfg.weight_decay}
        logs: list[str] = []

        class _Logged(LocalSession):
            def log(self, line: str) -> None:
                logs.append(line)

        got = supply(source, data, _Logged(checkpoint_dir=None), **kw)
        spent = (got.forward_samples, got.backward_samples)
        assert spent == (0, 0) and any("read back" in x for x in logs)
        for kind in IL_SIGNALS:
            np.testing.assert_array_equal(
                got.values["irreducible_loss"][kind],
                want[kind].astype(np.float32).astype(np.float64),
            )
        # an incomplete column: trained and uploaded again
        client.put_signal(run_id, IL_SIGNALS["task"], [np.nan], start=3)
        got = supply(source, data, _Logged(checkpoint_dir=None), **kw)
        assert got.forward_samples > 0
        assert not np.isnan(client.get_signal(run_id, IL_SIGNALS["task"])).any()
