"""``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes).

Ships with scikit-learn, so it needs no download. Pixels are scaled to [0, 1];
the test split is a stratified quarter, chosen by ``data_seed``. A small MLP
(64 -> 128 -> 10) reaches ~97% in a few dozen epochs.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from docl.worker.models import ModelSpec
from docl.worker.tasks import TaskData, TaskError, register_task, split_validation


@functools.lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    # load_digits parses a compressed CSV (~1 s): once per process is enough.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float32) / 16.0).astype(np.float32)  # (1797, 64)
    y = np.asarray(bunch.target, dtype=np.int64)  # (1797,)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@register_task("digits")
def digits(data_seed: int = 0, test_fraction: float = 0.25, validation: float = 0.0) -> TaskData:
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_fraction < 1.0:
        raise TaskError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    x, y = _arrays()
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=data_seed, stratify=y
    )
    xt, yt, xv, yv = split_validation(
        torch.from_numpy(x_tr), torch.from_numpy(y_tr), validation, data_seed
    )
    return TaskData(
        name="digits",
        task="classification",
        num_outputs=10,
        x_train=xt,
        y_train=yt,
        x_test=torch.from_numpy(x_te),
        y_test=torch.from_numpy(y_te),
        x_val=xv,
        y_val=yv,
        make_model=ModelSpec(
            "mlp", {"in_features": 64, "hidden": (128,), "out_features": 10}
        ).build,
        defaults={"epochs": 30, "batch_size": 64, "lr_peak": 0.4, "weight_decay": 5e-4},
        info={"data_seed": data_seed},
    )
