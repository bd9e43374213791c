"""The per-worker training loop: follow the score server's plan, train, report.

One function, :func:`train_loop`, serves every path: Ray Train workers (each
rank of a ``TorchTrainer``), the in-process single worker (``docl train
--workers 0``) and the plain local baseline (no server, no reports: the same
loop fed by :class:`LocalEpochs`). What differs between the paths — rank and
world size, DDP, barriers, checkpoints, progress — lives behind the small
:class:`Session` interface (``worker/session.py``). :func:`train_loop` reads top
to bottom like nanoGPT's loop, one call per phase; the phases follow it in the
file, in the order they run:

    0. set up            model, optimizer, resume from the last checkpoint   _set_up
                         the method's declared signals (the IL: read back     (0a: _signals)
                         from the run, or trained and uploaded)
    1. fetch the epoch   draw epoch e (idempotent: every rank asks for e by   _fetch_epoch
                         number) and this rank's indices
    2. train             exactly ``epoch.steps`` mini-batches, step s at      _train_step
                         lr[s] (a step-level method: pick the batch from a    (2a: _select)
                         pool first)
    3. report            indices, outputs of the forward pass, targets,      _train_step
                         lr_sum (background thread: never blocks the step)
    4. end of epoch      flush the reporter, barrier, evaluate               _end_epoch
    5. checkpoint        model, optimizer, position; metrics to the session  _checkpoint

See docs/training.md for the semantics (lr_sum, resume, outputs, reliability).

Outages. When the score server or its Redis goes down mid-run, the reporter
buffers the reports and retries them (same ``report_id``: applied once), the
end-of-epoch flush waits for them (up to ``flush_timeout``), and the epoch draw
and index fetch wait for the server to come back (up to ``outage_tolerance``
seconds, logging that they wait): training resumes where it was.

The loop's inputs live beside it: its epoch sources in ``worker/epochs.py``
(:class:`ServerEpochs`, :class:`LocalEpochs`), its losses and evaluation in
``worker/losses.py``; both are re-exported here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from docl.client.sampler import default_outage_tolerance
from docl.client.step import StepLevel, choose
from docl.services.methods.pool import candidate_pools
from docl.wire.models import Epoch, RunCreate
from docl.worker.epochs import EpochSource, LocalEpochs, ServerEpochs
from docl.worker.losses import evaluate, l2_loss, per_sample_loss, task_loss
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
    *,
    gone: Callable[[], BaseException | None] | None = None,
) -> dict[str, Any]:
    """Train one worker (rank ``session.rank`` of ``session.world``) through the plan.

    ``gone``, when given, says whether the score server has gone for good (e.g. the
    job's own server process has exited, as it does on the Ctrl-C that the whole
    process group gets): the exception it returns ends the epoch draw's outage wait
    and the end-of-epoch flush at once, instead of after ``outage_tolerance`` and
    ``flush_timeout`` seconds.

    Returns rank 0's last metrics (every rank returns its view). The same code
    runs inside a Ray Train worker and in-process. Each phase is one function
    below, in the order it runs; the loop's state between them is one
    :class:`_Run` (the whole job) and one :class:`_Epoch` (the epoch in hand).
    """
    torch.set_num_threads(max(1, cfg.threads))
    run = _set_up(cfg, data, session, source, gone)  # ---- 0. set up
    try:
        for e in range(run.start_epoch, run.source.num_epochs):
            ep = _fetch_epoch(run, e)  # ---- 1. fetch the epoch and this rank's indices
            run.net.train()
            for s in range(ep.steps):  # ---- 2. train (2a select) and 3. report, step s
                _maybe_fault(cfg, e, s, run.rank)
                _train_step(run, ep, s)
            run.metrics = _end_epoch(run, ep)  # ---- 4. flush, barrier, evaluate
            _checkpoint(run, ep)  # ---- 5. model, optimizer, position
    finally:
        run.close()
    return {**run.metrics, "history": run.history}


@dataclass
class _Run:
    """The loop's state over the whole job: what set-up made, and the running counts a
    checkpoint carries (so a resumed run continues them)."""

    cfg: LoopConfig
    data: TaskData
    session: Session
    source: EpochSource
    client: Any  # the ScoreClient the loop made (None: a source was given, or no server)
    reporter: Any  # the background Reporter (None: no score server, nothing reported)
    step: StepLevel | None  # a step-level method (loss-topk, pool-random, rho-loss)
    model: nn.Module
    net: nn.Module  # the model, wrapped in DDP when world > 1
    opt: torch.optim.Optimizer
    x_train: torch.Tensor  # (n, *in) on the device
    y_train: torch.Tensor  # (n,) int64 or (n, c) float32 on the device
    y_report: np.ndarray  # the targets as reported, indexed on the host
    bar: Any  # the progress bar, or None
    t0: float  # perf_counter at the start of training (resumes: minus the wall time so far)
    start_epoch: int = 0
    batches: int = 0  # optimizer steps so far, this rank
    attempt: int = 1  # 1 + worker-group restarts
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch's
    # Sample-passes so far, over all ranks: forward (a step-level epoch's pools
    # included) and backward; compute = forward + backward (docs/training.md).
    forward_total: int = 0
    backward_total: int = 0
    # The method's declared signals (rho-loss, rho-epoch: the irreducible loss), per
    # loss kind, over every training sample; computed once, kept in the checkpoint.
    signals: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    signal_passes: int = 0  # the sample-passes the signals cost (counted once)
    # Says whether the score server has gone for good (train_loop's ``gone``).
    gone: Callable[[], BaseException | None] | None = None

    @property
    def rank(self) -> int:
        return self.session.rank

    @property
    def world(self) -> int:
        return self.session.world

    def close(self) -> None:
        """Close the bar, then the reporter (delivering what is queued), then the client."""
        if self.bar is not None:
            self.bar.close()
        if self.reporter is not None:
            # Nothing can deliver to a server that has gone: do not wait for it.
            gone = self.gone is not None and self.gone() is not None
            self.reporter.close(timeout=0.0 if gone else self.cfg.flush_timeout)
        if self.client is not None:
            self.client.close()


def _set_up(
    cfg: LoopConfig,
    data: TaskData,
    session: Session,
    source: EpochSource | None,
    gone: Callable[[], BaseException | None] | None = None,
) -> _Run:
    """Phase 0: the epoch source, reporter, model, optimizer; resume from the last
    checkpoint; the method's declared signals (phase 0a: read back, or computed once)."""
    device = session.device
    client = None
    if source is None:
        if cfg.server is not None:
            from docl.client import ScoreClient

            client = ScoreClient(cfg.server, token=cfg.token)
            source = ServerEpochs(
                client, cfg.run_id, outage_tolerance=cfg.outage_tolerance, gone=gone
            )
        elif cfg.local_run is not None:
            source = LocalEpochs(RunCreate.model_validate(cfg.local_run))
        else:
            raise ValueError("LoopConfig needs a server URL or a local_run")
    reporter = None
    if client is not None:
        from docl.client import Reporter

        reporter = Reporter(client, cfg.run_id, max_queue=cfg.max_queue, senders=cfg.senders)

    model = data.make_model(cfg.seed).to(device)  # the same seed: the same init on every rank
    net = session.wrap(model)  # DDP when world > 1
    opt = torch.optim.SGD(
        model.parameters(), lr=0.0, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    state = session.load_checkpoint()
    wall_offset = 0.0
    run = _Run(
        cfg=cfg,
        data=data,
        session=session,
        source=source,
        client=client,
        reporter=reporter,
        step=_step_level(source),
        model=model,
        net=net,
        opt=opt,
        x_train=data.x_train.to(device),
        y_train=data.y_train.to(device),
        y_report=data.y_train.numpy(),
        bar=None,
        t0=0.0,
        gone=gone,
    )
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        run.start_epoch = int(state["epoch"]) + 1
        run.batches = int(state["batches"])
        run.history = list(state["history"])
        wall_offset = float(state["wall_time"])
        run.attempt = int(state.get("attempt", 1)) + 1
        session.log(
            f"resumed from the checkpoint of epoch {state['epoch']} ({run.batches} batches)"
        )
    run.bar = session.progress(total=source.total_steps, initial=run.batches, desc=cfg.run_id)
    run.t0 = time.perf_counter() - wall_offset
    run.metrics = run.history[-1] if run.history else {}
    run.forward_total = int(run.metrics.get("forward_samples", 0))
    run.backward_total = int(run.metrics.get("backward_samples", 0))
    run.signal_passes = int(run.metrics.get("signal_compute_samples", 0))
    if state is not None and "signals" in state:
        run.signals = state["signals"]
    else:
        _signals(run)  # ---- 0a. the signals the method declares (rho-loss, rho-epoch)
    return run


@dataclass
class _Epoch:
    """One epoch in hand: the drawn :class:`Epoch`, this rank's indices split into the
    plan's steps, and what the epoch has counted so far."""

    e: int
    epoch: Epoch  # phase, loss, size, steps, lr[steps], lr_sum_start, seed
    parts: list[np.ndarray]  # steps × (≈ m / steps,) int64: part s is step s's batch
    parts_t: tuple[torch.Tensor, ...]  # the same split, as index tensors on the device
    w_parts: tuple[torch.Tensor, ...] | None  # a weighted epoch's (≈ m / steps,) weights
    pools: list[np.ndarray] | None  # a step-level selection epoch: the parts of each pool
    lr_sum: float  # Σ lr applied before the current step (float64)
    loss_sum: torch.Tensor  # () float32, the summed training loss: no sync per step
    forward: int = 0  # this rank's sample-passes in this epoch
    backward: int = 0

    @property
    def steps(self) -> int:
        return self.epoch.steps


def _fetch_epoch(run: _Run, e: int) -> _Epoch:
    """Phase 1: draw epoch ``e`` (idempotent: every rank asks for e by number) and fetch
    this rank's indices, split into exactly ``epoch.steps`` parts so that every rank
    takes the same number of steps (what DDP's all-reduce needs)."""
    epoch = run.source.epoch(e)
    got = run.source.indices(e, run.rank, run.world)  # (m,) int64, m ≈ size / world; weights
    steps = epoch.steps
    device = run.session.device
    # A copy: the client's arrays may be read-only views of the response body.
    shard_t = torch.tensor(got.indices, dtype=torch.int64, device=device)  # (m,)
    w_parts = None  # a weighted epoch (e.g. infobatch): loss = mean(w_i · ℓ_i)
    if got.weights is not None:
        w_t = torch.tensor(got.weights, dtype=torch.float32, device=device)  # (m,)
        w_parts = torch.tensor_split(w_t, steps)
    # A step-level method's selection epoch: step s trains on the part-s-sized
    # batch its rule picks from the pool of parts pools[s] (≈ m batches).
    pools = None
    if run.step is not None and epoch.phase == "select":
        pools = candidate_pools(steps, run.step.ratio)
    return _Epoch(
        e=e,
        epoch=epoch,
        parts=np.array_split(got.indices, steps),
        parts_t=torch.tensor_split(shard_t, steps),
        w_parts=w_parts,
        pools=pools,
        lr_sum=float(epoch.lr_sum_start),
        loss_sum=torch.zeros((), dtype=torch.float32, device=device),
    )


def _train_step(run: _Run, ep: _Epoch, s: int) -> None:
    """Phases 2 and 3 for step s: (select,) forward, report, backward, update at lr[s]."""
    task, epoch = run.data.task, ep.epoch
    idx_t = ep.parts_t[s]  # (b,)
    rep_idx, rep_out = ep.parts[s], None  # what step s reports (None: the step's `out`)
    if ep.pools is not None:
        idx_t, rep_idx, rep_out = _select(run, ep, s, idx_t)
    xb = run.x_train[idx_t]  # (b, *in)
    yb = run.y_train[idx_t]  # (b,) or (b, c)
    out = run.net(xb)  # (b, c) logits / predictions
    # A rank with fewer samples than steps still joins DDP's all-reduce.
    if idx_t.numel() == 0:
        loss = out.sum() * 0.0
    elif ep.w_parts is not None:
        per = per_sample_loss(out, yb, task, epoch.loss)  # (b,)
        loss = (ep.w_parts[s].to(per.dtype) * per).mean()
    else:
        loss_fn = l2_loss if epoch.loss == "l2" else task_loss
        loss = loss_fn(out, yb, task)

    # ---- 3. report: the forward pass's outputs, before this update ----------
    # (a selection step reports its whole pool: every candidate's output)
    if run.reporter is not None and rep_idx.size > 0:
        run.reporter.report(
            epoch=ep.e,
            indices=rep_idx,
            outputs=(out if rep_out is None else rep_out).detach(),
            targets=run.y_report[rep_idx],
            lr_sum=ep.lr_sum,
            report_id=report_id(run.cfg.run_id, ep.e, run.rank, s),
        )

    lr = float(epoch.lr[s])
    for group in run.opt.param_groups:
        group["lr"] = lr
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    ep.lr_sum += lr
    ep.loss_sum += loss.detach()
    run.batches += 1
    ep.forward += int(idx_t.numel())
    ep.backward += int(idx_t.numel())
    if run.bar is not None:
        run.bar.update(1)


def _select(
    run: _Run, ep: _Epoch, s: int, part_t: torch.Tensor
) -> tuple[torch.Tensor, np.ndarray, torch.Tensor | None]:
    """Phase 2a: step s's pool forwarded without gradients, and the b = |part s| samples
    the method's rule picks from the pool's fresh losses. Returns the chosen indices
    (b,), what the step reports (the pool's indices (p,) and outputs (p, c)); an empty
    pool changes nothing (its part is empty too)."""
    assert ep.pools is not None and run.step is not None
    cand = np.concatenate([ep.parts[j] for j in ep.pools[s]])  # (p,) ≈ m·b
    if not cand.size:
        return part_t, ep.parts[s], None
    cand_t = torch.cat([ep.parts_t[j] for j in ep.pools[s]])  # (p,)
    with torch.no_grad():
        pool_out = run.model(run.x_train[cand_t])  # (p, c); not DDP: no collective
        fresh = per_sample_loss(pool_out, run.y_train[cand_t], run.data.task, ep.epoch.loss)
    values = {"loss": fresh.float().cpu().numpy()}  # (p,) each
    for name, by_kind in run.signals.items():  # e.g. the irreducible loss
        values[name] = by_kind[ep.epoch.loss][cand]
    # (b,) positions into the pool: the rule, parameters and step Generator a plain
    # loop's CurriculumBatchSampler applies too (client/step.py)
    chosen = choose(
        run.step, epoch_seed=ep.epoch.seed, rank=run.rank, s=s, b=int(part_t.numel()), values=values
    )
    ep.forward += int(cand.size)
    return cand_t[torch.from_numpy(chosen).to(cand_t.device)], cand, pool_out


def _raise_if_gone(gone: Callable[[], BaseException | None] | None) -> Callable[[], None] | None:
    """``gone`` as a check that raises what it returns (the reporter's flush ``check``)."""
    if gone is None:
        return None

    def check() -> None:
        why = gone()
        if why is not None:
            raise why

    return check


def _end_epoch(run: _Run, ep: _Epoch) -> dict[str, Any]:
    """Phase 4: flush this rank's reports, meet the other ranks (every report of epoch e
    is in before anyone draws e + 1), sum the counts over ranks, evaluate; the epoch's
    metrics, logged and appended to ``metrics_path`` by rank 0."""
    cfg, session = run.cfg, run.session
    if run.reporter is not None:
        run.reporter.flush(cfg.flush_timeout, check=_raise_if_gone(run.gone))
    session.barrier()
    passes = session.all_reduce_sum(torch.tensor([ep.forward, ep.backward], dtype=torch.float64))
    run.forward_total += int(passes[0])
    run.backward_total += int(passes[1])
    epoch = ep.epoch
    loss_sum = session.all_reduce_sum(ep.loss_sum.double().cpu().reshape(1))  # (1,)
    metrics: dict[str, Any] = {
        "epoch": ep.e,
        "episode": epoch.episode,
        "phase": epoch.phase,
        "loss": epoch.loss,
        "size": epoch.size,
        "steps": ep.steps,
        "batches": run.batches,
        "lr_sum": ep.lr_sum,
        "attempt": run.attempt,  # 1 + worker-group restarts before this epoch
        "forward_samples": run.forward_total,  # sample-passes so far, all ranks
        "backward_samples": run.backward_total,
        "compute_samples": run.forward_total + run.backward_total,
        "train_loss": float(loss_sum[0]) / max(1, ep.steps * run.world),
    }
    if run.signals:  # of which the signals' (the IL model's) training and scoring
        metrics["signal_compute_samples"] = run.signal_passes
    last = ep.e == run.source.num_epochs - 1
    if last or (cfg.eval_every > 0 and (ep.e + 1) % cfg.eval_every == 0):
        data, task = run.data, run.data.task
        ev = evaluate(run.model, data.x_test, data.y_test, task, session)
        metrics["test_accuracy"] = ev["accuracy"]
        metrics["test_loss"] = ev["loss"]
        if "mse" in ev:
            metrics["test_mse"] = ev["mse"]
        if data.x_val is not None and data.y_val is not None:
            ev = evaluate(run.model, data.x_val, data.y_val, task, session)
            metrics["val_accuracy"] = ev["accuracy"]
            if "mse" in ev:
                metrics["val_mse"] = ev["mse"]
    if run.reporter is not None:
        metrics["reporter"] = _sum_counters(run.reporter, session)
    metrics["wall_time"] = time.perf_counter() - run.t0
    run.history.append(metrics)
    if run.rank == 0:
        session.log(_epoch_line(metrics))
        if cfg.metrics_path:
            _append_line(cfg.metrics_path, metrics)
    return metrics


def _checkpoint(run: _Run, ep: _Epoch) -> None:
    """Phase 5: rank 0's model, optimizer and position (every rank hands its metrics to
    the session; on Ray that report is the checkpoint a restarted group resumes from)."""
    ckpt = None
    if run.cfg.checkpoint and run.rank == 0:
        ckpt = {
            "model": run.model.state_dict(),
            "optimizer": run.opt.state_dict(),
            "epoch": ep.e,
            "lr_sum": ep.lr_sum,
            "batches": run.batches,
            "history": run.history,
            "wall_time": run.metrics["wall_time"],
            "attempt": run.attempt,
        }
        if run.signals:
            ckpt["signals"] = run.signals
    run.session.save(run.metrics, ckpt)


def _step_level(source: EpochSource) -> StepLevel | None:
    """The run's step-level method as its source names it (``method``,
    ``method_params``): the client's :class:`~docl.client.step.StepLevel`, the one
    definition a plain loop's sampler uses too; None for a source that names none."""
    name = getattr(source, "method", None)
    if name is None:
        return None
    return StepLevel.of(name, getattr(source, "method_params", None))


def _signals(run: _Run) -> None:
    """Phase 0a: every per-sample signal the run's method declares (``rho-loss``'s and
    ``rho-epoch``'s irreducible loss), on every rank, before the first epoch: read back
    from the run's signal columns, or computed with rank 0 uploading them
    (``worker/signals.py``). Their sample-passes count once, from the first epoch on (a
    run that resumes without its checkpoint's signals reads them back: 0 more)."""
    from docl.worker.signals import supply

    cfg = run.cfg
    got = supply(
        run.source,
        run.data,
        run.session,
        seed=cfg.seed,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    run.signals = got.values
    if not run.history:  # a fresh run: what computing them cost
        run.forward_total += got.forward_samples
        run.backward_total += got.backward_samples
        run.signal_passes = got.forward_samples + got.backward_samples


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
