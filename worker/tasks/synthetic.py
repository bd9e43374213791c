"""``synthetic``: Gaussian-cluster classification with label noise.

scikit-learn's ``make_classification`` (clusters on the vertices of a
hypercube) with ``noise`` — the fraction of TRAINING labels flipped to another
class, uniformly at random. Test labels stay clean, so a curriculum that avoids
memorising the flipped labels shows up as higher test accuracy.
"""

from __future__ import annotations

import numpy as np
import torch

from docl.worker.models import ModelSpec
from docl.worker.tasks import TaskData, TaskError, register_task, split_validation


@register_task("synthetic")
def synthetic(
    data_seed: int = 0,
    num_samples: int = 8000,
    num_features: int = 20,
    num_classes: int = 5,
    noise: float = 0.2,
    class_sep: float = 1.0,
    test_fraction: float = 0.25,
    validation: float = 0.0,
) -> TaskData:
    from sklearn.datasets import make_classification

    if not 0.0 <= noise < 1.0:
        raise TaskError(f"synthetic: noise must be in [0, 1), got {noise}")
    if num_classes < 2 or num_samples < 4 * num_classes:
        raise TaskError("synthetic: need num_classes >= 2 and num_samples >= 4 * num_classes")
    if not 0.0 < test_fraction < 1.0:
        raise TaskError(f"synthetic: test_fraction must be in (0, 1), got {test_fraction}")
    x, y = make_classification(
        n_samples=num_samples,
        n_features=num_features,
        n_informative=min(num_features, 10),
        n_redundant=0,
        n_classes=num_classes,
        n_clusters_per_class=2,
        class_sep=class_sep,
        flip_y=0.0,
        random_state=data_seed,
    )
    x = x.astype(np.float32)  # (n, d)
    y = y.astype(np.int64)  # (n,)
    n_test = round(test_fraction * num_samples)
    x_tr, y_tr = x[n_test:], y[n_test:].copy()
    x_te, y_te = x[:n_test], y[:n_test]
    # Flip `noise` of the training labels to a different class (never the same one).
    rng = np.random.default_rng(data_seed + 1)
    flip = rng.random(y_tr.shape[0]) < noise
    shift = rng.integers(1, num_classes, size=y_tr.shape[0])
    y_noisy = np.where(flip, (y_tr + shift) % num_classes, y_tr)
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    xt, yt, xv, yv = split_validation(
        torch.from_numpy(x_tr), torch.from_numpy(y_noisy), validation, data_seed
    )
    return TaskData(
        name="synthetic",
        task="classification",
        num_outputs=num_classes,
        x_train=xt,
        y_train=yt,
        x_test=torch.from_numpy(x_te),
        y_test=torch.from_numpy(y_te),
        x_val=xv,
        y_val=yv,
        make_model=ModelSpec(
            "mlp", {"in_features": num_features, "hidden": (64, 64), "out_features": num_classes}
        ).build,
        defaults={"epochs": 30, "batch_size": 128, "lr_peak": 0.05, "weight_decay": 5e-4},
        info={"data_seed": data_seed, "noise": noise, "flipped": int(flip.sum())},
    )
