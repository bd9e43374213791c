"""A user's own task, as ``docl train --task tests.worker.user_task:make_task`` names it."""

from __future__ import annotations

import torch

from docl.worker.models import ModelSpec
from docl.worker.tasks import TaskData


def make_task(n: int = 400, data_seed: int = 0) -> TaskData:
    """Two Gaussian blobs in 2-D: class = which blob."""
    g = torch.Generator().manual_seed(data_seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 3.0 * y[:, None].float() - 1.5
    cut = n * 3 // 4
    return TaskData(
        name="blobs",
        task="classification",
        num_outputs=2,
        x_train=x[:cut],
        y_train=y[:cut],
        x_test=x[cut:],
        y_test=y[cut:],
        make_model=ModelSpec("mlp", {"in_features": 2, "hidden": (8,), "out_features": 2}).build,
        defaults={"epochs": 4, "batch_size": 32},
    )


def not_a_task() -> int:
    return 3


def make_noisy_task(n: int = 600, noise: float = 0.3, data_seed: int = 0) -> TaskData:
    """The two blobs with ``noise`` of the training and validation labels flipped, and a
    validation split (what early stopping reads); a short plan with selection epochs."""
    g = torch.Generator().manual_seed(data_seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None].float() - 1.0
    test, val = n // 4, n // 5
    noisy = torch.where(torch.rand(n, generator=g) < noise, 1 - y, y)
    return TaskData(
        name="noisy-blobs",
        task="classification",
        num_outputs=2,
        x_train=x[test + val :],
        y_train=noisy[test + val :],
        x_test=x[:test],
        y_test=y[:test],
        x_val=x[test : test + val],
        y_val=noisy[test : test + val],
        make_model=ModelSpec("mlp", {"in_features": 2, "hidden": (8,), "out_features": 2}).build,
        defaults={"epochs": 5, "batch_size": 32, "warmup_epochs": 1, "lr_peak": 0.1},
    )
