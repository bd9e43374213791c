"""Built-in training tasks and the task registry.

A task is a function ``factory(**params) -> TaskData``: in-memory tensors for
the train / test (and optionally validation) splits, the output width, the
task type and a model factory. Built-in tasks are registered by name::

    from docl.worker.tasks import get_task
    data = get_task("mnist1d", data_seed=0, num_samples=12000)

A user's own task is named ``package.module:factory`` (anything importable
that returns a :class:`TaskData`), so users plug in their data without
forking docl::

    docl train --task my_pkg.my_data:make_task --method docl

Every built-in task is deterministic in ``data_seed`` and takes seconds to
build (MNIST-1D is generated once and cached, see :mod:`.mnist1d`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from docl.services.methods import import_module_here

__all__ = [
    "TaskData",
    "TaskError",
    "get_task",
    "list_tasks",
    "register_task",
]

TaskKind = Literal["classification", "regression"]


class TaskError(ValueError):
    """A task name or its parameters are not usable; the message says why."""


@dataclass
class TaskData:
    """What a training run needs from a task.

    ``x_*`` are float32 tensors ``(n, *input_shape)``. For classification ``y_*``
    are int64 class ids ``(n,)``; for regression float32 targets ``(n, c)``.
    ``make_model(seed)`` returns a fresh model mapping ``(B, *input_shape)`` to
    ``(B, num_outputs)``; it must be picklable (a module-level function, a
    :class:`~docl.worker.models.ModelSpec`'s ``build``) because Ray ships it to
    the workers. ``defaults`` are the task's suggested training settings
    (``epochs``, ``weight_decay`` and any ``RunParams`` field such as
    ``batch_size``, ``lr_peak``, ``lr_min``), used when the user does not give
    them. The built-in tasks' learning rates are those tuned on random SGD's
    validation accuracy by the learning benchmark (docs/results.md).
    """

    name: str
    task: TaskKind
    num_outputs: int
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    make_model: Callable[[int], nn.Module]
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        return int(self.x_train.shape[0])

    def validate(self) -> TaskData:
        """Check shapes and dtypes; raise :class:`TaskError` naming what is wrong."""
        if self.task not in ("classification", "regression"):
            raise TaskError(f"task {self.name!r}: task must be classification or regression")
        if self.num_outputs < 1:
            raise TaskError(f"task {self.name!r}: num_outputs must be >= 1")
        splits = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if self.x_val is not None or self.y_val is not None:
            if self.x_val is None or self.y_val is None:
                raise TaskError(f"task {self.name!r}: give both x_val and y_val, or neither")
            splits.append(("val", self.x_val, self.y_val))
        for split, x, y in splits:
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TaskError(
                    f"task {self.name!r}: x_{split} and y_{split} must be torch tensors"
                )
            if x.dtype != torch.float32:
                raise TaskError(f"task {self.name!r}: x_{split} must be float32, got {x.dtype}")
            if x.shape[0] != y.shape[0] or x.shape[0] == 0:
                raise TaskError(
                    f"task {self.name!r}: x_{split} and y_{split} need the same, non-zero "
                    f"number of rows, got {x.shape[0]} and {y.shape[0]}"
                )
            if self.task == "classification":
                if y.dtype != torch.int64 or y.ndim != 1:
                    raise TaskError(
                        f"task {self.name!r}: classification y_{split} must be int64 (n,), "
                        f"got {y.dtype} {tuple(y.shape)}"
                    )
                if int(y.min()) < 0 or int(y.max()) >= self.num_outputs:
                    raise TaskError(
                        f"task {self.name!r}: y_{split} class ids must be in [0, {self.num_outputs})"
                    )
            elif y.dtype != torch.float32 or tuple(y.shape[1:]) != (self.num_outputs,):
                raise TaskError(
                    f"task {self.name!r}: regression y_{split} must be float32 (n, {self.num_outputs}), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
        return self


TaskFactory = Callable[..., TaskData]
_REGISTRY: dict[str, TaskFactory] = {}


def register_task(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator: register ``factory`` as the built-in task ``name``."""

    def deco(factory: TaskFactory) -> TaskFactory:
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtins() -> None:
    # Imported for their @register_task side effect.
    from docl.worker.tasks import digits, distill, mnist1d, synthetic  # noqa: F401


def list_tasks() -> list[str]:
    """Names of the built-in tasks."""
    _load_builtins()
    return sorted(_REGISTRY)


def _resolve(name: str) -> TaskFactory:
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" not in name:
        raise TaskError(
            f"unknown task {name!r}: built-in tasks are {', '.join(sorted(_REGISTRY))}; "
            "a task of your own is named 'package.module:factory'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = import_module_here(module_name)
    except ImportError as e:
        raise TaskError(f"task {name!r}: cannot import module {module_name!r}: {e}") from e
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise TaskError(f"task {name!r}: module {module_name!r} has no callable {attr!r}")
    return factory


def get_task(name: str, **params: Any) -> TaskData:
    """Build the task ``name`` (built-in, or ``package.module:factory``) with ``params``.

    Unknown parameters raise :class:`TaskError` listing the ones the task takes.
    """
    factory = _resolve(name)
    sig = inspect.signature(factory)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    if not takes_any:
        unknown = sorted(set(params) - set(sig.parameters))
        if unknown:
            raise TaskError(
                f"task {name!r} has no parameter(s) {', '.join(unknown)}; "
                f"it takes: {', '.join(sig.parameters) or 'none'}"
            )
    data = factory(**params)
    if not isinstance(data, TaskData):
        raise TaskError(f"task {name!r}: the factory returned {type(data).__name__}, not TaskData")
    return data.validate()


def split_validation(
    x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Carve a seeded validation split of ``fraction`` off a training split.

    Returns ``(x_train, y_train, x_val, y_val)``; with ``fraction == 0`` the
    validation parts are None and the training split is returned unchanged.
    """
    if not 0.0 <= fraction < 1.0:
        raise TaskError(f"validation fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return x, y, None, None
    g = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(x.shape[0], generator=g)
    n_val = max(1, round(fraction * x.shape[0]))
    val, train = perm[:n_val], perm[n_val:]
    return x[train], y[train], x[val], y[val]
