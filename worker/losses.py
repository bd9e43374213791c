"""The training losses and the evaluation the loop uses (``worker/loop.py``).

Kept out of the loop's file so that the loop reads top to bottom; the loop
re-exports them (``from docl.worker.loop import per_sample_loss`` keeps working).
``per_sample_loss`` is also what a plain-PyTorch loop computes over a step-level
pool (docs/training.md), and what the irreducible-loss model scores with.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from docl.worker.session import Session

__all__ = ["evaluate", "l2_loss", "per_sample_loss", "task_loss"]


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
