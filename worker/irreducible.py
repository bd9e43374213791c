"""The irreducible-loss (IL) model of ``rho-loss``, trained by the worker.

:func:`irreducible_losses` trains the IL model(s) the run's ``il`` parameter names and
returns every training sample's IL, in both loss kinds the loop may train with
(``"task"`` and ``"l2"``), and the sample-passes it cost:

* ``halves`` — the training set split into two halves by a seeded permutation
  (:func:`halves`); model A trains on half A and scores half B, model B trains on
  half B and scores half A: every sample is scored by the model that did not see it;
* ``val`` — one model trains on the validation split and scores every sample.

Each model is the task's own (``make_model``) with its own seed, trained by plain
mini-batch SGD (the loop's momentum and weight decay, the run's batch size, a cosine
learning rate from ``lr`` to 0 over ``epochs``), on one process, without DDP. So the
values depend only on the data, the parameters and the seed, never on the world size.

How IL reaches each rank (:func:`shared_irreducible`): the models are split over the
ranks (``halves``: rank 0 trains model A, rank 1 model B when there are two or more
ranks; ``val``: rank 0), each rank fills the entries its model scored and leaves the
others at 0, and one all-reduce sums them: every rank ends with every sample's IL, the
IL training is paid once (not once per rank), and it costs one (2n + 2,) float64
all-reduce.

With a score server (:func:`upload`; ``worker/signals.py`` decides when): rank 0
uploads the IL as the run's signal columns (``IL_SIGNALS``: ``irreducible_loss`` for the
task loss, ``irreducible_loss_l2`` for the l2 kind; float32, what the server keeps), and
a run that finds both complete there (a restart without its checkpoint, another launch
on the same run) reads them back instead of training the IL model again. Every rank
then uses the float32 values, read back or rounded, so a run behaves the same either
way. This holds for every method that declares the IL signal: ``rho-loss`` (its step
rule reads it) and ``rho-epoch`` (the server's epoch draws read it).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from docl.worker.tasks import TaskData

__all__ = [
    "ILResult",
    "compute_irreducible",
    "halves",
    "irreducible_losses",
    "shared_irreducible",
    "train_model",
    "upload",
]

#: Loss kinds the loop trains with; IL is kept in each (the rule subtracts like from like).
KINDS = ("task", "l2")


@dataclass(frozen=True)
class ILResult:
    """Every training sample's irreducible loss per loss kind, and its training cost."""

    values: dict[str, np.ndarray]  # kind -> (n,) float64
    forward_samples: int  # sample-passes: training forwards + scoring forwards
    backward_samples: int


def halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into two halves (sorted index arrays, sizes ⌊n/2⌋, ⌈n/2⌉)."""
    perm = np.random.default_rng([int(seed), 0x4C48]).permutation(int(n))
    cut = int(n) // 2
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def train_model(
    make_model: Callable[[int], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> tuple[nn.Module, int]:
    """A fresh ``make_model(seed)`` trained on (x, y); returns it and the samples trained
    (each forwarded and backwarded once per epoch)."""
    model = make_model(seed).to(x.device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    g = torch.Generator().manual_seed(int(seed))
    n = int(x.shape[0])
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    step = 0
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g).to(x.device)
        for idx in torch.split(order, batch_size):
            for group in opt.param_groups:  # cosine from lr to 0
                group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            step += 1
    model.eval()
    return model, epochs * n


@torch.no_grad()
def _score(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str, chunk: int = 8192
) -> dict[str, np.ndarray]:
    from docl.worker.loop import per_sample_loss

    outs = torch.cat([model(x[i : i + chunk]) for i in range(0, int(x.shape[0]), chunk)])
    return {k: per_sample_loss(outs, y, task, k).double().cpu().numpy() for k in KINDS}


def irreducible_losses(
    data: TaskData,
    *,
    il: str,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    parts: tuple[int, ...] | None = None,
    device: torch.device | str = "cpu",
) -> ILResult:
    """Train the IL model(s) and score the training set (see the module docs).

    ``parts`` selects which models this call trains (``halves``: 0 = model A, 1 = model
    B; ``val``: 0), default all; entries no selected model scores stay 0 (the ranks' sum
    fills them)."""
    from docl.worker.loop import task_loss

    n = data.num_samples
    x = data.x_train.to(device)
    y = data.y_train.to(device)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return task_loss(out, target, data.task)

    jobs: list[tuple[np.ndarray | None, np.ndarray]]  # (trained on: None = val, scores)
    if il == "halves":
        a, b = halves(n, seed)
        jobs = [(a, b), (b, a)]
    elif il == "val":
        if data.x_val is None or data.y_val is None:
            raise ValueError(
                f"the irreducible loss with il=val needs a validation split, and task "
                f"{data.name!r} has none (give the task a validation split, or use -p il=halves)"
            )
        jobs = [(None, np.arange(n))]
    else:
        raise ValueError(f"il must be 'halves' or 'val', got {il!r}")
    values = {k: np.zeros(n, dtype=np.float64) for k in KINDS}
    forward = backward = 0
    for j, (train_idx, score_idx) in enumerate(jobs):
        if parts is not None and j not in parts:
            continue
        if train_idx is None:
            assert data.x_val is not None and data.y_val is not None
            xt, yt = data.x_val.to(device), data.y_val.to(device)
        else:
            ti = torch.from_numpy(train_idx).to(device)
            xt, yt = x[ti], y[ti]
        model, trained = train_model(
            data.make_model,
            xt,
            yt,
            loss_fn,
            seed=int(seed) * 1000 + 17 + j,  # not the run's own model seed
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
        )
        si = torch.from_numpy(score_idx).to(device)
        scored = _score(model, x[si], y[si], data.task)
        for k in KINDS:
            values[k][score_idx] = scored[k]
        forward += trained + int(score_idx.size)
        backward += trained
    return ILResult(values, forward, backward)


def compute_irreducible(
    make_model: Callable[[int], nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    task: str = "classification",
    il: str = "halves",
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    seed: int = 0,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: torch.device | str = "cpu",
) -> ILResult:
    """The irreducible loss of every training sample, for your own model and data (a
    plain PyTorch loop of ``rho-loss`` or ``rho-epoch``): what docl's worker computes.

    ``make_model(seed)`` returns a fresh model (B, *in) -> (B, c); ``x`` (n, *in)
    float32 and ``y`` — (n,) int64 class ids for ``task="classification"``, (n, c)
    float32 for ``"regression"`` — are the training set in the run's sample order.
    ``il="halves"`` trains two models, each on one half (a seeded split) and scoring
    the other; ``il="val"`` trains one on ``x_val``/``y_val`` and scores every sample.
    Plain SGD at ``batch_size`` with a cosine learning rate from ``lr`` to 0 over
    ``epochs``. The global torch RNG is left as it was (each model is built under
    ``torch.manual_seed`` of its own seed, so a factory that ignores ``seed`` is
    reproducible too).

    Returns :class:`ILResult`: ``values["task"]`` (n,) float64 is the column
    ``irreducible_loss`` (``values["l2"]``: ``irreducible_loss_l2``). Upload it once,
    before the first selection epoch::

        il = compute_irreducible(make_model, x, y).values["task"]
        client.put_signal(run_id, "irreducible_loss", il)   # rank 0 of a DDP job

    (``CurriculumBatchSampler`` reads it from the run; ``sampler.set_signal`` gives it
    to one process instead.)"""
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have one row per sample, got {x.shape[0]} and {y.shape[0]}")
    if il == "val" and (x_val is None or y_val is None):
        raise ValueError(
            "il='val' trains on a validation split: give x_val and y_val, or use il='halves'"
        )

    def seeded(model_seed: int) -> nn.Module:
        torch.manual_seed(model_seed)
        return make_model(model_seed)

    data = TaskData(
        name="compute_irreducible",
        task=task,  # type: ignore[arg-type]
        num_outputs=int(y.shape[1]) if y.ndim > 1 else int(y.max()) + 1 if y.numel() else 1,
        x_train=x,
        y_train=y,
        x_test=x[:0],
        y_test=y[:0],
        make_model=seeded,
        x_val=x_val,
        y_val=y_val,
    )
    with torch.random.fork_rng(devices=[]):
        return irreducible_losses(
            data,
            il=il,
            seed=seed,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            device=device,
        )


def shared_irreducible(
    data: TaskData,
    *,
    rank: int,
    world: int,
    all_reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    il: str,
    seed: int,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    device: torch.device | str = "cpu",
) -> ILResult:
    """Every sample's IL on every rank, each model trained once over all ranks (module docs)."""
    models = 2 if il == "halves" else 1
    mine = tuple(j for j in range(models) if j % max(1, world) == rank)
    part = irreducible_losses(
        data,
        il=il,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        momentum=momentum,
        weight_decay=weight_decay,
        parts=mine,
        device=device,
    )
    n = data.num_samples
    flat = torch.zeros(len(KINDS) * n + 2, dtype=torch.float64)
    for i, k in enumerate(KINDS):
        flat[i * n : (i + 1) * n] = torch.from_numpy(part.values[k])
    flat[-2], flat[-1] = part.forward_samples, part.backward_samples
    total = all_reduce_sum(flat).cpu()
    values = {k: total[i * n : (i + 1) * n].numpy().copy() for i, k in enumerate(KINDS)}
    return ILResult(values, int(total[-2]), int(total[-1]))


def upload(client: Any, run_id: str, values: dict[str, np.ndarray], *, tolerance: float) -> None:
    """Upload the IL per loss kind as the run's signal columns (``IL_SIGNALS``)."""
    from docl.client.sampler import ride_out
    from docl.services.methods.rho import IL_SIGNALS

    for k in KINDS:
        name, col = IL_SIGNALS[k], np.asarray(values[k], dtype=np.float32)
        ride_out(
            functools.partial(client.put_signal, run_id, name, col),
            tolerance=tolerance,
            what=f"uploading the signal {name!r}",
        )
