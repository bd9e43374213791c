"""``distill``: regression / knowledge distillation, as in the paper's Figure 6.

A fixed teacher — a random two-layer tanh network, its logits standardised per
output on the training inputs and scaled by ``temperature`` so that no class
dominates — labels Gaussian-cluster inputs with ``num_outputs`` logits. The
student (a smaller MLP) regresses those logits with the L2 loss ½‖y − f‖².
Reported: ``test_mse`` (mean squared error per logit) and ``test_accuracy`` =
agreement, the fraction of test inputs where the student's argmax equals the
teacher's. Built with numpy only, deterministic in ``data_seed``.
"""

from __future__ import annotations

import numpy as np
import torch

from docl.worker.models import ModelSpec
from docl.worker.tasks import TaskData, TaskError, register_task, split_validation


def teacher_logits(x: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    """The teacher's raw logits ``(n, c)`` for inputs ``(n, d)``."""
    w1, b1, w2, b2, w3, b3 = weights
    h = np.tanh(x @ w1 + b1)  # (n, h)
    h = np.tanh(h @ w2 + b2)  # (n, h)
    return h @ w3 + b3  # (n, c)


@register_task("distill")
def distill(
    data_seed: int = 0,
    num_samples: int = 8000,
    num_features: int = 16,
    num_outputs: int = 10,
    teacher_width: int = 128,
    student_width: int = 64,
    temperature: float = 2.0,
    test_fraction: float = 0.25,
    validation: float = 0.0,
) -> TaskData:
    if num_samples < 10 or num_outputs < 2:
        raise TaskError("distill: need num_samples >= 10 and num_outputs >= 2")
    if not 0.0 < test_fraction < 1.0:
        raise TaskError(f"distill: test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(data_seed)
    # Inputs: a mixture of 2·c Gaussian clusters, so the teacher's decision
    # regions are populated unevenly (some samples easy, some on boundaries).
    centers = rng.normal(0.0, 1.5, size=(2 * num_outputs, num_features))
    which = rng.integers(0, centers.shape[0], size=num_samples)
    x = centers[which] + rng.normal(0.0, 1.0, size=(num_samples, num_features))  # (n, d)
    d, h = num_features, teacher_width
    weights = [
        rng.normal(0, 1 / np.sqrt(d), (d, h)),
        rng.normal(0, 0.1, h),
        rng.normal(0, 1 / np.sqrt(h), (h, h)),
        rng.normal(0, 0.1, h),
        rng.normal(0, 1 / np.sqrt(h), (h, num_outputs)),
        rng.normal(0, 0.1, num_outputs),
    ]
    logits = teacher_logits(x, weights)  # (n, c)
    n_test = round(test_fraction * num_samples)
    train = slice(n_test, None)
    mu, sd = logits[train].mean(0), logits[train].std(0) + 1e-6
    y = (temperature * (logits - mu) / sd).astype(np.float32)  # (n, c) standardised logits
    xm, xs = x[train].mean(0), x[train].std(0) + 1e-6
    x = ((x - xm) / xs).astype(np.float32)
    xt, yt, xv, yv = split_validation(
        torch.from_numpy(x[n_test:]), torch.from_numpy(y[n_test:]), validation, data_seed
    )
    return TaskData(
        name="distill",
        task="regression",
        num_outputs=num_outputs,
        x_train=xt,
        y_train=yt,
        x_test=torch.from_numpy(x[:n_test]),
        y_test=torch.from_numpy(y[:n_test]),
        x_val=xv,
        y_val=yv,
        make_model=ModelSpec(
            "mlp",
            {"in_features": num_features, "hidden": (student_width,), "out_features": num_outputs},
        ).build,
        defaults={
            "epochs": 30,
            "batch_size": 128,
            "lr_peak": 0.08,
            "lr_min": 0.0002,
            "weight_decay": 0.0,
        },
        info={"data_seed": data_seed, "teacher_width": teacher_width},
    )
