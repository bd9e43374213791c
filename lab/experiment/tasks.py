"""The benchmark's tasks: the built-in ones (data, batch budget, shared schedule) and
a user's own ``package.module:factory`` task, set up the same way."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_METHODS",
    "DEFAULT_TASKS",
    "STUDY_METHODS",
    "STUDY_PARAMS",
    "TASKS",
    "ExperimentError",
    "TaskSetup",
    "is_user_task",
    "task_setup",
]

#: The methods compared by default (the paper's Table 1 plus the random-subset control).
DEFAULT_METHODS = ("random", "random-subset", "spl", "mcl", "docl-nr", "docl")
#: The primitive curricula of the paper's §3 score-dynamics study.
STUDY_METHODS = ("top", "bottom", "alternate")
#: Run parameters of the study runs: k = 0.2·n from the first selection epoch on
#: (gamma_k·n <= k_min·n after one decay), like the paper's fixed k = 10,000 of 50,000.
STUDY_PARAMS: dict[str, Any] = {"gamma_k": 0.2, "k_min": 0.2}


class ExperimentError(ValueError):
    """The experiment cannot start as specified; the message says what to change."""


@dataclass(frozen=True)
class TaskSetup:
    """How the benchmark runs one built-in task.

    ``task_params`` go to the task factory (sizes, the validation split, label
    noise); ``params`` are run parameters shared by EVERY method on this task
    (the cyclical learning-rate schedule, tuned on random SGD's validation
    accuracy — the paper's protocol); a variant's own parameters override them.
    ``budget`` is the shared number of training batches. ``quick_*`` shrink the
    task and budget for ``--quick`` (a smoke test of the pipeline, not a result).
    """

    name: str
    task_params: dict[str, Any]
    budget: int
    params: dict[str, Any] = field(default_factory=dict)
    quick_task_params: dict[str, Any] = field(default_factory=dict)
    quick_budget: int = 60
    #: --quick also shortens the plan so that a tiny budget still reaches selection epochs.
    quick_params: dict[str, Any] = field(
        default_factory=lambda: {"warmup_epochs": 1, "episode_epochs": 1}
    )
    note: str = ""
    #: the registered task (``docl train --task``) it builds, when not ``name``:
    #: ``digits-noise40`` is ``digits`` with ``noise=0.4``
    factory: str | None = None

    @property
    def train_task(self) -> str:
        """What ``docl train --task`` is given for this setup."""
        return self.factory or self.name


TASKS: dict[str, TaskSetup] = {
    t.name: t
    for t in (
        TaskSetup(
            "mnist1d",
            {"num_samples": 15000, "validation": 0.1},  # 10,800 train / 1,200 val / 3,000 test
            budget=3000,
            params={"lr_peak": 0.2},
            quick_task_params={"num_samples": 2000, "validation": 0.1},
            quick_budget=80,
            note="MNIST-1D, 1D CNN",
        ),
        TaskSetup(
            "digits",
            {"validation": 0.15},  # 1,145 train / 202 val / 450 test
            budget=900,
            params={"lr_peak": 0.4},
            quick_task_params={"validation": 0.15},
            quick_budget=40,
            note="sklearn 8x8 digits, MLP",
        ),
        # Issue 18's tasks where selection is supposed to pay: the same data, model,
        # learning rate and batch-budget rule as `digits` (50 epochs of ⌈n / 64⌉
        # batches); data_seed 0, so every seed trains on the same noisy pool.
        TaskSetup(
            "digits-noise20",
            {"validation": 0.15, "noise": 0.2},  # 20% of train+val labels flipped
            budget=900,
            params={"lr_peak": 0.4},
            quick_task_params={"validation": 0.15, "noise": 0.2},
            quick_budget=40,
            factory="digits",
            note="sklearn 8x8 digits, 20% symmetric label noise (train + val), MLP",
        ),
        TaskSetup(
            "digits-noise40",
            {"validation": 0.15, "noise": 0.4},  # 40% of train+val labels flipped
            budget=900,
            params={"lr_peak": 0.4},
            quick_task_params={"validation": 0.15, "noise": 0.4},
            quick_budget=40,
            factory="digits",
            note="sklearn 8x8 digits, 40% symmetric label noise (train + val), MLP",
        ),
        # The larger noisy task (issue 18, round 4): `mnist1d`'s data, model, lr and
        # budget with 40% of the training pool's labels flipped (data_seed 0).
        TaskSetup(
            "mnist1d-noise40",
            # 10,800 train / 1,200 val (both 40% flipped) / 3,000 clean test
            {"num_samples": 15000, "validation": 0.1, "noise": 0.4},
            budget=3000,
            params={"lr_peak": 0.2},
            quick_task_params={"num_samples": 2000, "validation": 0.1, "noise": 0.4},
            quick_budget=80,
            factory="mnist1d",
            note="MNIST-1D, 40% symmetric label noise (train + val), 1D CNN",
        ),
        TaskSetup(
            "digits-dup",
            # 1,145 train + 572 near copies = 1,717 / 202 val / 450 test: 27 batches an epoch
            {"validation": 0.15, "duplicates": 0.5},
            budget=1350,
            params={"lr_peak": 0.4},
            quick_task_params={"validation": 0.15, "duplicates": 0.5},
            quick_budget=40,
            factory="digits",
            note="sklearn 8x8 digits + 50% near duplicates (±1/16 pixel jitter), MLP",
        ),
        TaskSetup(
            "synthetic",
            {
                "noise": 0.2,
                "validation": 0.1,
            },  # 5,400 train (20% labels flipped) / 600 val / 2,000 test
            budget=2000,
            params={"lr_peak": 0.05},
            quick_task_params={"num_samples": 1000, "noise": 0.2, "validation": 0.1},
            quick_budget=40,
            note="Gaussian clusters, 20% of training labels flipped, MLP",
        ),
        TaskSetup(
            "distill",
            {"validation": 0.1},  # 5,400 train / 600 val / 2,000 test
            budget=2000,
            # Tuned on random SGD when the loop's regression loss was the MSE over
            # the 10 outputs; the loss is now ½‖y − f‖² (c/2 = 5x the gradient),
            # so the same schedule is lr / 5. For regression the task loss IS the
            # L2 loss, so the L2 phases change nothing.
            params={"lr_peak": 0.08, "lr_min": 0.0002},
            quick_task_params={"num_samples": 1000, "validation": 0.1},
            quick_budget=40,
            note="regression on a teacher's logits (L2), MLP student",
        ),
    )
}


#: The tasks run by default (rounds 1-3); the digits-noise* / digits-dup / mnist1d-noise40
#: tasks are asked for.
DEFAULT_TASKS = ("mnist1d", "digits", "synthetic", "distill")


def is_user_task(name: str) -> bool:
    """``package.module:factory`` (a task of the user's own, as in ``docl train --task``)."""
    return name not in TASKS and ":" in name


def task_setup(name: str) -> TaskSetup:
    """The setup of task ``name``: a built-in one, or for ``package.module:factory`` one
    built from the task's own defaults (the factory is called once here, in the parent):
    budget = ``defaults["budget_batches"]``, else ``defaults["epochs"]`` (30) epochs of
    ⌈n / batch_size⌉ batches; no shared parameters beyond the task's defaults, which
    ``docl train`` applies to every run. ``--quick`` caps the budget at 60 batches."""
    if name in TASKS:
        return TASKS[name]
    if not is_user_task(name):
        raise ExperimentError(
            f"unknown task {name!r}; built-in tasks are {', '.join(TASKS)}; "
            "a task of your own is named 'package.module:factory' (importable from here)"
        )
    from docl.worker.tasks import TaskError, get_task

    try:
        data = get_task(name)
    except TaskError as e:
        raise ExperimentError(str(e)) from None
    d = data.defaults
    if d.get("budget_batches"):
        budget = int(d["budget_batches"])
    else:
        epochs = int(d.get("epochs", 30))
        budget = epochs * math.ceil(data.num_samples / int(d.get("batch_size", 128)))
    return TaskSetup(
        name,
        {},
        budget=budget,
        quick_budget=min(60, budget),
        quick_params={},
        note=f"user task ({data.name}, n = {data.num_samples}, {data.task})",
    )
