"""The signals a run's method declares, as the worker supplies them (worker/signals.py):
``rho-epoch`` (epoch-level: the server's draws read the IL) trained end to end, in-process
and through the real CLI, against a real server; a declared signal the worker cannot
compute is named with the route to upload it, and read back once it is uploaded."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from docl.client import ScoreClient
from docl.services.config import Settings
from docl.services.embedded import RedisProcess
from docl.services.engine import Engine
from docl.services.methods import SelectionMethod, register_method, registry
from docl.services.methods.rho import IL_SIGNAL, IL_SIGNALS
from docl.services.redis.store import RedisStore
from docl.services.sampling import Draw
from docl.wire.models import Epoch
from docl.worker.irreducible import irreducible_losses
from docl.worker.loop import LoopConfig, ServerEpochs, train_loop
from docl.worker.session import LocalSession
from docl.worker.signals import supply
from docl.worker.tasks import get_task
from docl.worker.train import TrainSpec, build_run

PARAMS = {"warmup_epochs": 1, "episode_epochs": 2, "batch_size": 64, "il_epochs": 1}
EPOCHS = 4  # warmup, select, select, refresh


def _loss_column(redis_url: str, run_id: str, n: int) -> np.ndarray:
    """The run's last losses as a draw reads them from the server's Redis (the stored
    column with the score log folded in; float32, NaN: never visited)."""

    async def read() -> np.ndarray:
        store = RedisStore.from_url(redis_url)
        try:
            eng = Engine(store, Settings(redis_url=redis_url))
            st = await eng.state(run_id)
            snap = await store.draw_inputs(st.layout, losses=True)
            assert snap.losses is not None and snap.losses.shape == (n,)
            return snap.losses
        finally:
            await store.close()

    return asyncio.run(read())


def _snapshot_draws(monkeypatch: pytest.MonkeyPatch, redis_url: str, n: int) -> dict[int, Any]:
    """Make the loop's epoch source read the loss column and the IL signal from the
    server just before it draws each epoch (what that draw reads): epoch -> (loss, IL)."""
    before: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    draw = ServerEpochs.epoch

    def epoch(self: ServerEpochs, e: int) -> Epoch:
        losses = _loss_column(redis_url, self.run_id, n)
        before[e] = (losses, self.client.get_signal(self.run_id, IL_SIGNAL))
        return draw(self, e)

    monkeypatch.setattr(ServerEpochs, "epoch", epoch)
    return before


def test_rho_epoch_in_process_draws_the_top_k_of_last_loss_minus_the_uploaded_il(
    redis_server: RedisProcess, worker_server: str, run_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker trains the IL before epoch 0 and uploads it (before: the first selection
    draw was a 409); each selection epoch's indices are the k highest (last loss − IL) of
    the columns as the server held them just before the draw, recomputed here with numpy;
    the IL equals an independent training of the same models, and its sample-passes count."""
    data = get_task("digits")
    n = data.num_samples
    spec = TrainSpec(task="digits", method="rho-epoch", epochs=EPOCHS, run_id=run_id,
                     params=PARAMS)  # fmt: skip
    with ScoreClient(worker_server) as client:
        run = client.create_run(build_run(spec, data))
        assert run.method_params == {"il": "halves", "il_epochs": 1, "il_lr": None}
        cfg = LoopConfig(run_id=run_id, server=worker_server, eval_every=0)
        before = _snapshot_draws(monkeypatch, redis_server.url, n)
        final = train_loop(cfg, data, LocalSession(checkpoint_dir=None))
        plan = client.plan(run_id)
        phases = [p.phase for p in plan.epochs]
        assert phases == ["warmup", "select", "select", "refresh"]
        want = irreducible_losses(
            data, il="halves", seed=cfg.seed, epochs=1, batch_size=64, lr=run.params.lr_peak,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        ).values  # fmt: skip
        for kind, name in IL_SIGNALS.items():
            np.testing.assert_array_equal(client.get_signal(run_id, name), want[kind].astype("<f4"))
        for e in (1, 2):
            losses, il = before[e]
            assert not np.isnan(losses).any() and not np.isnan(il).any()  # all visited
            red = losses.astype(np.float64) - il.astype(np.float64)
            got = np.sort(client.shard(run_id, e, rank=0, world=1).indices)
            k = got.size
            assert 0 < k < n
            order = np.argsort(-red, kind="stable")
            assert red[order[k - 1]] > red[order[k]]  # no tie at the cut: one right answer
            np.testing.assert_array_equal(got, np.sort(order[:k]))
            # ... and not what the loss alone would take (the IL changed the choice)
            by_loss = np.sort(np.argsort(-losses.astype(np.float64), kind="stable")[:k])
            assert not np.array_equal(got, by_loss)
    # the IL's cost (two halves, 1 epoch: n trained, n scored) counted once
    assert final["signal_compute_samples"] == 3 * n
    trained = sum(h["size"] for h in final["history"])
    assert final["backward_samples"] == trained + n
    assert final["forward_samples"] == trained + 2 * n


def test_docl_train_rho_epoch_end_to_end(tmp_path: Path) -> None:
    """The real command with its own server: it reaches its selection epochs (before,
    it stopped at the first with the server's 409 for the missing IL)."""
    out = tmp_path / "out"
    r = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()",
         "train", "--task", "digits", "--method", "rho-epoch", "--workers", "0",
         "--epochs", str(EPOCHS), *[f"-p{k}={v}" for k, v in PARAMS.items()],
         "--out", str(out), "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in lines] == ["warmup", "select", "select", "refresh"]
    n = json.loads((out / "result.json").read_text())["num_samples"]
    assert lines[1]["size"] < n
    assert all(m["signal_compute_samples"] == 3 * n for m in lines)
    assert "irreducible loss (halves, 1 epochs)" in r.stdout + r.stderr


# ---------------------------------------------------------------------------
# A declared signal the worker cannot compute
# ---------------------------------------------------------------------------


@pytest.fixture
def reads_difficulty() -> Iterator[str]:
    """An epoch-level method, registered in this process only, that reads ``difficulty``."""
    name = "t-reads-difficulty"
    register_method(
        SelectionMethod(
            name=name,
            draw=lambda ctx: Draw(np.arange(ctx.k), None),
            signal="none",
            signals=("difficulty",),
        ),
        replace=True,
    )
    try:
        yield name
    finally:
        from docl.services import methods

        methods._REGISTRY.pop(name, None)
        assert name not in registry()


class _Named:
    """A server run's epochs, naming another method (one the server does not know)."""

    def __init__(self, inner: ServerEpochs, method: str) -> None:
        self.inner, self.method = inner, method
        self.method_params: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_an_unknown_declared_signal_is_named_with_its_route_then_read_back(
    worker_server: str, run_id: str, reads_difficulty: str
) -> None:
    data = get_task("tests.worker.user_task:make_task", n=50)
    kw: Any = {"seed": 0, "momentum": 0.9, "weight_decay": 0.0}
    session = LocalSession(checkpoint_dir=None)
    spec = TrainSpec(task="x", method="random", epochs=2, run_id=run_id, params={"batch_size": 8})
    with ScoreClient(worker_server) as client:
        client.create_run(build_run(spec, data))
        source = _Named(ServerEpochs(client, run_id), reads_difficulty)
        with pytest.raises(ValueError, match=r"\['difficulty'\].*cannot compute") as err:
            supply(source, data, session, **kw)
        said = str(err.value)
        assert f"PUT /v1/runs/{run_id}/signals/<name>" in said and "put_signal" in said
        assert client.signals(run_id).signals == []  # nothing uploaded for it
        # half uploaded: still missing (a NaN is an unfinished upload)
        values = np.linspace(0.0, 1.0, data.num_samples, dtype=np.float32)
        client.put_signal(run_id, "difficulty", values[:20])
        with pytest.raises(ValueError, match="does not keep them complete"):
            supply(source, data, session, **kw)
        client.put_signal(run_id, "difficulty", values[20:], start=20)
        got = supply(source, data, session, **kw)
    assert (got.forward_samples, got.backward_samples) == (0, 0)
    for kind in ("task", "l2"):
        np.testing.assert_array_equal(got.values["difficulty"][kind], values.astype(np.float64))
    # without a server (a source with no client) there is nowhere to read it from
    local = _Named(source.inner, reads_difficulty)
    local.inner = None  # type: ignore[assignment]
    with pytest.raises(ValueError, match="no score server to read them from"):
        supply(local, data, session, **kw)


def test_without_a_server_the_il_is_computed_and_kept_per_loss_kind() -> None:
    """A method declaring both IL columns, no score server (nothing read, nothing
    uploaded): ``irreducible_loss`` follows the epoch's loss kind, an explicitly named
    ``irreducible_loss_l2`` is the l2 column in both; the values are an independent
    call's, and the cost is counted."""
    from docl.services.methods.rho import ILParams
    from docl.wire.models import RunParams

    name = "t-reads-both-il"
    register_method(
        SelectionMethod(
            name=name,
            draw=lambda ctx: Draw(np.arange(ctx.k), None),
            params=ILParams,
            signals=(IL_SIGNAL, IL_SIGNALS["l2"]),
        ),
        replace=True,
    )

    class Source:
        method, method_params = name, {"il_epochs": 2}
        run_params = RunParams(batch_size=8, lr_peak=0.1)

    try:
        data = get_task("tests.worker.user_task:make_task", n=40)
        got = supply(Source(), data, LocalSession(checkpoint_dir=None), seed=4, momentum=0.9,
                     weight_decay=0.0)  # fmt: skip
    finally:
        from docl.services import methods

        methods._REGISTRY.pop(name, None)
    want = irreducible_losses(data, il="halves", seed=4, epochs=2, batch_size=8, lr=0.1,
                              momentum=0.9, weight_decay=0.0)  # fmt: skip
    assert not np.array_equal(want.values["task"], want.values["l2"])
    for kind in ("task", "l2"):
        np.testing.assert_array_equal(got.values[IL_SIGNAL][kind], want.values[kind])
        np.testing.assert_array_equal(got.values[IL_SIGNALS["l2"]][kind], want.values["l2"])
    n = data.num_samples
    assert (got.forward_samples, got.backward_samples) == (2 * n + n, 2 * n)
