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
