"""The per-worker training loop: follow the score server's plan, train, report.

One function, :func:`train_loop`, serves every path: Ray Train workers (each
rank of a ``TorchTrainer``), the in-process single worker (``docl train
--workers 0``) and the plain local baseline (no server, no reports: the same
loop fed by :class:`LocalEpochs`). What differs between the paths — rank and
world size, DDP, barriers, checkpoints, progress — lives behind the small
:class:`Session` interface (``worker/session.py``); the loop reads top to bottom
like nanoGPT's, with the flow's stages as numbered banners:

    0. set up            model, optimizer, resume from the last checkpoint
    1. fetch the epoch   draw epoch e (idempotent: every rank asks for e by number)
                         and this rank's indices
    2. train             exactly ``epoch.steps`` mini-batches, step s at lr[s]
                         (a step-level method: pick the batch from a pool first)
    3. report            indices, outputs of the forward pass, targets, lr_sum
                         (background thread: never blocks the step)
    4. end of epoch      flush the reporter, barrier, evaluate
    5. checkpoint        model, optimizer, position; metrics to the session

See docs/training.md for the semantics (lr_sum, resume, outputs, reliability).

Outages. When the score server or its Redis goes down mid-run, the reporter
buffers the reports and retries them (same ``report_id``: applied once), the
end-of-epoch flush waits for them (up to ``flush_timeout``), and the epoch draw
and index fetch wait for the server to come back (up to ``outage_tolerance``
seconds, logging that they wait): training resumes where it was.

Size: a little over the house's ~500 lines: the loop is meant to be read top to
bottom in one file (the phases above); its epoch sources (:class:`ServerEpochs`,
:class:`LocalEpochs`) and losses are its own inputs and stay beside it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from docl.client._client import Shard
from docl.client.sampler import default_outage_tolerance, ride_out
from docl.services.methods import select_step
from docl.services.methods.pool import candidate_pools
from docl.services.seeds import step_rng
from docl.wire.models import Epoch, RunCreate, RunParams
from docl.worker.session import Session
from docl.worker.tasks import TaskData

__all__ = [
    "EpochSource",
    "InjectedFault",
    "LocalEpochs",
    "LoopConfig",
    "ServerEpochs",
    "evaluate",
    "l2_loss",
    "per_sample_loss",
    "report_id",
    "task_loss",
    "train_loop",
]

log = logging.getLogger("docl.worker")


@dataclass
class LoopConfig:
    """Everything a worker needs besides the task's data. Plain values: Ray pickles it.

    ``server`` None means no score server: the loop follows ``local_run``'s plan
    with uniform draws and sends no reports (the plain local baseline).
    ``outage_tolerance`` is how long (s) the epoch draw and index fetch wait for
    a score server that is down (default ``$DOCL_OUTAGE_TOLERANCE_S``, else 120);
    ``flush_timeout`` how long the end-of-epoch flush waits for its reports.
    ``fault`` is a test hook: ``{"epoch": e, "step": s, "rank": r, "marker": path}``
    SIGKILLs that rank's process once, mid-epoch, before step s (the marker file
    makes it once); with ``"action": "raise"`` it raises :class:`InjectedFault`.
    """

    run_id: str
    server: str | None = None
    token: str | None = None
    local_run: dict[str, Any] | None = None  # RunCreate as JSON, for the local baseline
    seed: int = 0
    momentum: float = 0.9
    weight_decay: float = 5e-4
    threads: int = 1
    eval_every: int = 1
    progress: bool = False
    metrics_path: str | None = None
    checkpoint: bool = True
    max_queue: int = 4096
    senders: int = 2
    flush_timeout: float = 300.0
    outage_tolerance: float = field(default_factory=default_outage_tolerance)
    fault: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------
# Where epochs come from: the score server, or a local plan (baseline)
# ---------------------------------------------------------------------------


class EpochSource(Protocol):
    """Where epochs come from. A source may also name the run's ``method`` and its
    ``method_params`` (``ServerEpochs`` and ``LocalEpochs`` do): a step-level method
    (``loss-topk``, ``pool-random``) then selects each step's batch from a pool."""

    num_epochs: int
    total_steps: int

    def epoch(self, e: int) -> Epoch: ...

    def indices(self, e: int, rank: int, world: int) -> Shard: ...


class ServerEpochs:
    """Epochs as the score server draws them (``POST …/epochs {epoch: e}`` is idempotent).

    Every call waits out an outage of the server or its Redis for up to
    ``outage_tolerance`` seconds (:func:`~docl.client.sampler.ride_out`): the
    requests are idempotent, so repeating them is safe. ride_out is their one retry
    loop: they go through a copy of ``client`` that does not retry by itself.
    """

    def __init__(self, client: Any, run_id: str, *, outage_tolerance: float | None = None) -> None:
        self.client = client = client.with_options(retries=0)
        self.run_id = run_id
        self.outage_tolerance = (
            default_outage_tolerance() if outage_tolerance is None else float(outage_tolerance)
        )
        plan = ride_out(
            lambda: client.plan(run_id),
            tolerance=self.outage_tolerance,
            what="reading the plan",
            logger=log,
        )
        self.num_epochs = int(plan.num_epochs)
        self.total_steps = int(plan.total_steps)
        run = ride_out(
            lambda: client.get_run(run_id),
            tolerance=self.outage_tolerance,
            what="reading the run",
            logger=log,
        )
        self.method: str = run.method
        self.method_params: dict[str, Any] = dict(run.method_params)
        self.run_params: RunParams = run.params

    def epoch(self, e: int) -> Epoch:
        epoch: Epoch = ride_out(
            lambda: self.client.draw_epoch(self.run_id, e),
            tolerance=self.outage_tolerance,
            what=f"drawing epoch {e}",
            logger=log,
        )
        return epoch

    def indices(self, e: int, rank: int, world: int) -> Shard:
        shard: Shard = ride_out(
            lambda: self.client.shard(self.run_id, e, rank=rank, world=world),
            tolerance=self.outage_tolerance,
            what=f"fetching rank {rank}'s indices of epoch {e}",
            logger=log,
        )
        return shard


class LocalEpochs:
    """The same plan computed locally (``services.plan.build_plan``), drawn uniformly.

    Only for methods whose epochs read nothing the server keeps (the registry's
    ``local_ok``: the uniform controls ``random``, ``random-subset``, ``pool-random``,
    and the step-level ``loss-topk`` and ``rho-loss``, whose epochs are random SGD's
    and whose step rule, pools and irreducible-loss model run in the worker anyway):
    this is the baseline that measures what the service costs, not a curriculum.
    Each epoch's seed and draw are the server's
    (``services.seeds.epoch_rng`` and ``sampling.uniform_epoch``), so a local run
    trains on exactly the indices the score server would have sent.
    """

    def __init__(self, run: RunCreate) -> None:
        from docl.services.methods import get_method
        from docl.services.plan import build_plan

        if not get_method(run.method).local_ok:
            raise ValueError(
                f"a local (server-less) run draws uniformly; method {run.method!r} needs the score server"
            )
        self.run = run
        self.method = run.method
        self.method_params = dict(run.method_params)
        self.run_params = run.params
        self.plan = build_plan(run)
        self.num_epochs = len(self.plan)
        self.total_steps = int(sum(p.steps for p in self.plan))

    def epoch(self, e: int) -> Epoch:
        from docl.services.plan import plan_epoch
        from docl.services.seeds import epoch_seed

        p = self.plan[e]
        return Epoch(
            **plan_epoch(p).model_dump(),  # the same row the server's plan and epochs carry
            batch_size=self.run.params.batch_size,
            lr=[float(v) for v in p.lr],
            seed=epoch_seed(self.run.params.seed, e),
        )

    def indices(self, e: int, rank: int, world: int) -> Shard:
        from docl.services.sampling import uniform_epoch
        from docl.services.seeds import epoch_rng

        size = int(self.plan[e].size)
        chosen = uniform_epoch(self.run.num_samples, epoch_rng(self.run.params.seed, e), size=size)
        return Shard(chosen[rank * size // world : (rank + 1) * size // world], None)


# ---------------------------------------------------------------------------
# Losses and evaluation
# ---------------------------------------------------------------------------


def l2_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """½‖onehot(y) − softmax(f)‖² (classification) or ½‖y − f‖² (regression), batch mean."""
    if task == "classification":
        resid = torch.softmax(out, dim=1)  # (B, c)
        resid = resid - F.one_hot(y, out.shape[1]).to(out.dtype)  # (B, c)
    else:
        resid = out - y  # (B, c)
    return 0.5 * resid.pow(2).sum(dim=1).mean()


def per_sample_loss(out: torch.Tensor, y: torch.Tensor, task: str, kind: str) -> torch.Tensor:
    """The (B,) per-sample loss ``kind`` ("l2" or "task") whose batch mean is
    :func:`l2_loss` / :func:`task_loss` (for weighted epochs: mean(w_i · ℓ_i))."""
    if kind == "task" and task == "classification":
        return F.cross_entropy(out, y, reduction="none")
    if task == "classification":
        resid = torch.softmax(out, dim=1) - F.one_hot(y, out.shape[1]).to(out.dtype)
    else:
        resid = out - y
    return 0.5 * resid.pow(2).sum(dim=1)


def task_loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    """Cross-entropy (classification) or ½‖y − f‖² (regression), batch mean.

    For regression the task loss IS the L2 loss (Eq. 2), the same per-sample
    loss the server stores; a mean over outputs instead would train the L2
    phases at c/2 times the selection epochs' effective learning rate.
    """
    if task == "classification":
        return F.cross_entropy(out, y)
    return l2_loss(out, y, task)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    session: Session,
    *,
    chunk: int = 8192,
) -> dict[str, float]:
    """Accuracy (and MSE for regression) on a split; ranks share it and all-reduce.

    Classification: ``accuracy`` and mean cross-entropy ``loss``. Regression:
    ``mse`` (mean over samples and outputs), ``loss`` = ½‖y − f‖² per sample,
    and ``accuracy`` = agreement of argmaxes (the teacher's class).
    """
    was_training = model.training
    model.eval()
    rank, world = session.rank, session.world
    xs, ys = x[rank::world], y[rank::world]  # this rank's share (n/world, ...)
    sums = torch.zeros(4, dtype=torch.float64)  # correct, count, loss_sum, sq_err_sum
    for i in range(0, xs.shape[0], chunk):
        xb = xs[i : i + chunk].to(session.device)
        yb = ys[i : i + chunk].to(session.device)
        out = model(xb).float()  # (b, c)
        if task == "classification":
            sums[0] += (out.argmax(1) == yb).sum().item()
            sums[2] += F.cross_entropy(out, yb, reduction="sum").item()
        else:
            sums[0] += (out.argmax(1) == yb.argmax(1)).sum().item()
            sq = (out - yb).pow(2).sum().item()
            sums[2] += 0.5 * sq
            sums[3] += sq
        sums[1] += xb.shape[0]
    sums = session.all_reduce_sum(sums)
    model.train(was_training)
    count = max(1.0, float(sums[1]))
    res = {"accuracy": float(sums[0]) / count, "loss": float(sums[2]) / count}
    if task == "regression":
        res["mse"] = float(sums[3]) / (count * y.shape[1])
    return res


def report_id(run_id: str, epoch: int, rank: int, step: int) -> str:
    """Deterministic per (run, epoch, rank, step): a replayed step after a restart
    sends the same id, so the server recognises it as a duplicate."""
    return f"{run_id}-e{epoch}-r{rank}-s{step}"[-128:]


class InjectedFault(RuntimeError):
    """Raised by the ``fault`` test hook with ``action: "raise"``."""


def _maybe_fault(cfg: LoopConfig, epoch: int, step: int, rank: int) -> None:
    f = cfg.fault
    if not f or (epoch, step, rank) != (f["epoch"], f["step"], f["rank"]):
        return
    marker = Path(f["marker"])
    if marker.exists():
        return  # already fired once: the restarted worker group runs through
    marker.write_text(str(os.getpid()))
    if f.get("action", "kill") == "raise":
        raise InjectedFault(f"injected fault at epoch {epoch}, step {step}, rank {rank}")
    # Give Ray's controller time to register the last reported checkpoint (it
    # polls workers every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S) before dying.
    time.sleep(float(f.get("delay", 1.0)))
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------


def train_loop(
    cfg: LoopConfig,
    data: TaskData,
    session: Session,
    source: EpochSource | None = None,
) -> dict[str, Any]:
    """Train one worker (rank ``session.rank`` of ``session.world``) through the plan.

    Returns rank 0's last metrics (every rank returns its view). The same code
    runs inside a Ray Train worker and in-process.
    """
    # ---- 0. set up: threads, the plan, model, optimizer, resume ----------------
    torch.set_num_threads(max(1, cfg.threads))
    rank, world, device = session.rank, session.world, session.device
    client = None
    if source is None:
        if cfg.server is not None:
            from docl.client import ScoreClient

            client = ScoreClient(cfg.server, token=cfg.token)
            source = ServerEpochs(client, cfg.run_id, outage_tolerance=cfg.outage_tolerance)
        elif cfg.local_run is not None:
            source = LocalEpochs(RunCreate.model_validate(cfg.local_run))
        else:
            raise ValueError("LoopConfig needs a server URL or a local_run")
    step = _StepLevel.of(source)  # a step-level method (loss-topk, pool-random), or None
    reporter = None
    if client is not None:
        from docl.client import Reporter

        reporter = Reporter(client, cfg.run_id, max_queue=cfg.max_queue, senders=cfg.senders)

    model = data.make_model(cfg.seed).to(device)  # the same seed: the same init on every rank
    net = session.wrap(model)  # DDP when world > 1
    opt = torch.optim.SGD(
        model.parameters(), lr=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    start_epoch, batches, history, wall_offset, attempt = 0, 0, [], 0.0, 1
    state = session.load_checkpoint()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"]) + 1
        batches = int(state["batches"])
        history = list(state["history"])
        wall_offset = float(state["wall_time"])
        attempt = int(state.get("attempt", 1)) + 1
        session.log(f"resumed from the checkpoint of epoch {state['epoch']} ({batches} batches)")

    x_train = data.x_train.to(device)  # (n, *in)
    y_train = data.y_train.to(device)  # (n,) int64 or (n, c) float32
    y_report = data.y_train.numpy()  # targets as reported, indexed on the host
    task = data.task
    bar = session.progress(total=source.total_steps, initial=batches, desc=cfg.run_id)
    t0 = time.perf_counter() - wall_offset
    metrics: dict[str, Any] = history[-1] if history else {}
    # Sample-passes so far, over all ranks: forward (a step-level epoch's pools
    # included) and backward; compute = forward + backward (docs/training.md).
    forward_total = int(metrics.get("forward_samples", 0))
    backward_total = int(metrics.get("backward_samples", 0))
    # A step rule's signals besides the fresh loss (rho-loss: the irreducible loss),
    # per loss kind, over every training sample; trained once, kept in the checkpoint.
    signals: dict[str, dict[str, np.ndarray]] = {}
    signal_passes = int(metrics.get("signal_compute_samples", 0))
    if step is not None and step.signals:
        if state is not None and "signals" in state:
            signals = state["signals"]
        else:
            signals, spent = _step_signals(cfg, data, session, source, step)
            if state is None:  # sample-passes of the IL training: counted once
                forward_total += spent[0]
                backward_total += spent[1]
                signal_passes = spent[0] + spent[1]

    try:
        for e in range(start_epoch, source.num_epochs):
            # ---- 1. fetch the epoch and this rank's indices --------------------
            epoch = source.epoch(e)  # phase, loss, size, steps, lr[steps], lr_sum_start
            got = source.indices(e, rank, world)  # (m,) int64, m ≈ size / world; weights
            shard = got.indices
            steps = epoch.steps
            parts = np.array_split(shard, steps)  # steps × (≈ m / steps,): equal step counts
            # A copy: the client's arrays may be read-only views of the response body.
            shard_t = torch.tensor(shard, dtype=torch.int64, device=device)
            parts_t = torch.tensor_split(shard_t, steps)  # the same split, as index tensors
            w_parts = None  # a weighted epoch (e.g. infobatch): loss = mean(w_i · ℓ_i)
            if got.weights is not None:
                w_t = torch.tensor(got.weights, dtype=torch.float32, device=device)
                w_parts = torch.tensor_split(w_t, steps)
            loss_fn = l2_loss if epoch.loss == "l2" else task_loss
            lr_sum = float(epoch.lr_sum_start)  # Σ lr applied before the current step (float64)
            loss_sum = torch.zeros((), dtype=torch.float32, device=device)  # no sync per step
            forward = backward = 0  # this rank's sample-passes in this epoch
            # A step-level method's selection epoch: step s trains on the part-s-sized
            # batch its rule picks from the pool of parts pools[s] (≈ m batches).
            pools = None
            if step is not None and epoch.phase == "select":
                pools = candidate_pools(steps, step.ratio)

            # ---- 2. train: step s at the plan's learning rate lr[s] -------------
            net.train()
            for s in range(steps):
                _maybe_fault(cfg, e, s, rank)
                idx_t = parts_t[s]  # (b,)
                rep_idx, rep_out = parts[s], None  # what step s reports (None: `out`)
                if pools is not None and step is not None:
                    # ---- 2a. select: the pool's fresh losses, without gradients ------
                    cand = np.concatenate([parts[j] for j in pools[s]])  # (p,) ≈ m·b
                    if cand.size:
                        cand_t = torch.cat([parts_t[j] for j in pools[s]])
                        with torch.no_grad():
                            rep_out = model(x_train[cand_t])  # (p, c); not DDP: no collective
                            fresh = per_sample_loss(rep_out, y_train[cand_t], task, epoch.loss)
                        values = {"loss": fresh.float().cpu().numpy()}
                        for name, by_kind in signals.items():  # e.g. the irreducible loss
                            values[name] = by_kind[epoch.loss][cand]
                        chosen = select_step(
                            step.method,
                            b=int(idx_t.numel()),
                            values=values,
                            rng=step_rng(epoch.seed, rank, s),
                            method_params=step.params,
                        )
                        idx_t = cand_t[torch.from_numpy(chosen).to(device)]  # (b,)
                        rep_idx = cand
                        forward += int(cand.size)
                xb = x_train[idx_t]  # (b, *in)
                yb = y_train[idx_t]  # (b,) or (b, c)
                out = net(xb)  # (b, c) logits / predictions
                # A rank with fewer samples than steps still joins DDP's all-reduce.
                if idx_t.numel() == 0:
                    loss = out.sum() * 0.0
                elif w_parts is not None:
                    per = per_sample_loss(out, yb, task, epoch.loss)  # (b,)
                    loss = (w_parts[s].to(per.dtype) * per).mean()
                else:
                    loss = loss_fn(out, yb, task)

                # ---- 3. report: the forward pass's outputs, before this update --
                # (a selection step reports its whole pool: every candidate's output)
                if reporter is not None and rep_idx.size > 0:
                    reporter.report(
                        epoch=e,
                        indices=rep_idx,
                        outputs=(out if rep_out is None else rep_out).detach(),
                        targets=y_report[rep_idx],
                        lr_sum=lr_sum,
                        report_id=report_id(cfg.run_id, e, rank, s),
                    )

                lr = float(epoch.lr[s])
                for group in opt.param_groups:
                    group["lr"] = lr
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                lr_sum += lr
                loss_sum += loss.detach()
                batches += 1
                forward += int(idx_t.numel())
                backward += int(idx_t.numel())
                if bar is not None:
                    bar.update(1)

            # ---- 4. end of epoch: flush, barrier, evaluate ----------------------
            if reporter is not None:
                reporter.flush(cfg.flush_timeout)
            session.barrier()  # every rank's reports are in before anyone draws e + 1
            last = e == source.num_epochs - 1
            passes = session.all_reduce_sum(torch.tensor([forward, backward], dtype=torch.float64))
            forward_total += int(passes[0])
            backward_total += int(passes[1])
            metrics = {
                "epoch": e,
                "episode": epoch.episode,
                "phase": epoch.phase,
                "loss": epoch.loss,
                "size": epoch.size,
                "steps": steps,
                "batches": batches,
                "lr_sum": lr_sum,
                "attempt": attempt,  # 1 + worker-group restarts before this epoch
                "forward_samples": forward_total,  # sample-passes so far, all ranks
                "backward_samples": backward_total,
                "compute_samples": forward_total + backward_total,
                "train_loss": float(session.all_reduce_sum(loss_sum.double().cpu().reshape(1))[0])
                / max(1, steps * world),
            }
            if signals:  # of which the signals' (the IL model's) training and scoring
                metrics["signal_compute_samples"] = signal_passes
            if last or (cfg.eval_every > 0 and (e + 1) % cfg.eval_every == 0):
                ev = evaluate(model, data.x_test, data.y_test, task, session)
                metrics["test_accuracy"] = ev["accuracy"]
                metrics["test_loss"] = ev["loss"]
                if "mse" in ev:
                    metrics["test_mse"] = ev["mse"]
                if data.x_val is not None and data.y_val is not None:
                    ev = evaluate(model, data.x_val, data.y_val, task, session)
                    metrics["val_accuracy"] = ev["accuracy"]
                    if "mse" in ev:
                        metrics["val_mse"] = ev["mse"]
            if reporter is not None:
                metrics["reporter"] = _sum_counters(reporter, session)
            metrics["wall_time"] = time.perf_counter() - t0
            history.append(metrics)
            if rank == 0:
                session.log(_epoch_line(metrics))
                if cfg.metrics_path:
                    _append_line(cfg.metrics_path, metrics)

            # ---- 5. checkpoint: model, optimizer, position ----------------------
            ckpt = None
            if cfg.checkpoint and rank == 0:
                ckpt = {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "epoch": e,
                    "lr_sum": lr_sum,
                    "batches": batches,
                    "history": history,
                    "wall_time": metrics["wall_time"],
                    "attempt": attempt,
                }
                if signals:
                    ckpt["signals"] = signals
            session.save(metrics, ckpt)
    finally:
        if bar is not None:
            bar.close()
        if reporter is not None:
            reporter.close(timeout=cfg.flush_timeout)
        if client is not None:
            client.close()
    return {**metrics, "history": history}


@dataclass(frozen=True)
class _StepLevel:
    """The run's step-level method: its name, its parameters, its pool ratio m and the
    per-sample signals its rule reads besides the fresh loss."""

    method: str
    params: dict[str, Any]
    ratio: int
    signals: tuple[str, ...] = ()

    @staticmethod
    def of(source: EpochSource) -> _StepLevel | None:
        from docl.services import methods

        name = getattr(source, "method", None)
        if name is None:
            return None
        spec = methods.registry().get(name)
        if spec is None:  # a plugin's method: its entry point or $DOCL_METHODS
            methods.load_plugins()
            spec = methods.registry().get(name)
        params = dict(getattr(source, "method_params", None) or {})
        ratio = None if spec is None else spec.pool_ratio(params)
        if spec is None or ratio is None:
            return None
        return _StepLevel(name, params, ratio, tuple(spec.step_signals))


def _step_signals(
    cfg: LoopConfig, data: TaskData, session: Session, source: EpochSource, step: _StepLevel
) -> tuple[dict[str, dict[str, np.ndarray]], tuple[int, int]]:
    """The signals ``step``'s rule reads besides the fresh loss, each per loss kind over
    every training sample, and the (forward, backward) sample-passes they cost, all
    ranks. The worker computes the irreducible loss itself (``worker/irreducible.py``);
    a signal column uploaded to the score server will replace this (issue 18, item 2)."""
    from docl.services import methods
    from docl.services.methods.rho import IL_SIGNAL
    from docl.worker.irreducible import shared_irreducible

    unknown = [s for s in step.signals if s != IL_SIGNAL]
    if unknown:
        raise ValueError(
            f"method {step.method!r} reads the per-sample signals {unknown}, which the "
            f"worker cannot compute (it computes only {IL_SIGNAL!r})"
        )
    params: Any = methods.get_method(step.method).params.model_validate(step.params)
    run_params: RunParams | None = getattr(source, "run_params", None)
    if run_params is None:
        raise ValueError(f"method {step.method!r} needs the run's parameters from its source")
    t0 = time.perf_counter()
    il = shared_irreducible(
        data,
        rank=session.rank,
        world=session.world,
        all_reduce_sum=session.all_reduce_sum,
        il=params.il,
        seed=cfg.seed,
        epochs=params.il_epochs,
        batch_size=run_params.batch_size,
        lr=params.il_lr if params.il_lr is not None else run_params.lr_peak,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        device=session.device,
    )
    if session.rank == 0:
        session.log(
            f"irreducible loss ({params.il}, {params.il_epochs} epochs): "
            f"{il.forward_samples + il.backward_samples} sample-passes, "
            f"{time.perf_counter() - t0:.1f}s"
        )
    return {IL_SIGNAL: il.values}, (il.forward_samples, il.backward_samples)


def _sum_counters(reporter: Any, session: Session) -> dict[str, int]:
    """Every rank's reporter counters, summed (one small all-reduce)."""
    c = reporter.counters().as_dict()
    keys = sorted(c)
    total = session.all_reduce_sum(torch.tensor([c[k] for k in keys], dtype=torch.float64))
    return {k: int(v) for k, v in zip(keys, total.tolist(), strict=True)}


def _append_line(path: str, metrics: dict[str, Any]) -> None:
    # Live progress for whoever tails the file. On a multi-node cluster rank 0
    # may not see the driver's disk: the driver rewrites the file at the end.
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(metrics) + "\n")
    except OSError:
        pass


def _epoch_line(m: dict[str, Any]) -> str:
    acc = m.get("test_accuracy")
    acc_s = f"{acc:.4f}" if acc is not None and not math.isnan(acc) else "-"
    mse = f" test_mse {m['test_mse']:.4f}" if "test_mse" in m else ""
    return (
        f"epoch {m['epoch']:>3} {m['phase']:<7} loss={m['loss']:<4} size {m['size']:>6} "
        f"train_loss {m['train_loss']:.4f} test_acc {acc_s}{mse} "
        f"batches {m['batches']:>6} wall {m['wall_time']:.1f}s"
    )
