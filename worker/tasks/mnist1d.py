"""``mnist1d``: the MNIST-1D procedural dataset (Greydanus & Kobak), generated locally.

The ``mnist1d`` package's generator (``mnist1d.data.make_dataset``) builds
``num_samples`` 1D signals of length 40 from ten digit templates (80% train,
20% test); nothing is downloaded. Generating 12,000 samples takes ~5 s, so the
arrays are cached as ``.npz`` under ``$DOCL_CACHE_DIR`` (default
``~/.cache/docl``), keyed by every argument, and written atomically so that
parallel runs can share the cache. Set ``cache=False`` to always regenerate.

A small 1D CNN (~6k parameters) learns it to ~90%+ in a few dozen epochs; the
classic 4,000-sample set stays below that, which is why the default is larger.

``noise`` adds symmetric label noise with exactly ``digits``' semantics (one shared
function, :mod:`.noise`): each label of the training pool (train + validation) is
flipped with probability ``noise``, seeded by ``data_seed``, to one of the 9 OTHER
classes uniformly, before the validation split; the test split stays clean.
``info["flipped"]`` counts the flipped labels (training + validation).
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from docl.worker.models import ModelSpec
from docl.worker.tasks import TaskData, TaskError, register_task, split_validation
from docl.worker.tasks.noise import check_noise, noisy_labels


def cache_dir() -> Path:
    return Path(os.environ.get("DOCL_CACHE_DIR") or Path.home() / ".cache" / "docl")


def _generate(num_samples: int, data_seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    # make_dataset seeds the global `random` and `np.random` generators: restore them.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        ds = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {
        "x": np.asarray(ds["x"], dtype=np.float32),  # (0.8 n, 40)
        "y": np.asarray(ds["y"], dtype=np.int64),  # (0.8 n,)
        "x_test": np.asarray(ds["x_test"], dtype=np.float32),  # (0.2 n, 40)
        "y_test": np.asarray(ds["y_test"], dtype=np.int64),  # (0.2 n,)
    }


def load_arrays(num_samples: int, data_seed: int, *, cache: bool = True) -> dict[str, np.ndarray]:
    """The generated arrays, from the cache when present."""
    if not cache:
        return _generate(num_samples, data_seed)
    path = cache_dir() / f"mnist1d-n{num_samples}-seed{data_seed}-v1.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, KeyError, ValueError):
            pass  # a damaged cache file: regenerate and overwrite it
    arrays = _generate(num_samples, data_seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f, x=arrays["x"], y=arrays["y"], x_test=arrays["x_test"], y_test=arrays["y_test"]
            )
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError:
        pass  # caching is an optimisation; a read-only home still trains
    return arrays


@register_task("mnist1d")
def mnist1d(
    data_seed: int = 0,
    num_samples: int = 12000,
    validation: float = 0.0,
    channels: int = 25,
    cache: bool = True,
    noise: float = 0.0,
) -> TaskData:
    if num_samples < 100:
        raise TaskError(f"mnist1d: num_samples must be >= 100, got {num_samples}")
    check_noise("mnist1d", noise)
    a = load_arrays(num_samples, data_seed, cache=cache)
    # Label noise before the validation split (validation is as noisy as training), the
    # test split clean; a fresh array, so the cached clean labels are never changed.
    y_pool, flipped = noisy_labels(a["y"], noise, np.random.default_rng(data_seed + 1))
    xt, yt, xv, yv = split_validation(
        torch.from_numpy(a["x"]), torch.from_numpy(y_pool), validation, data_seed
    )
    length = int(a["x"].shape[1])
    return TaskData(
        name="mnist1d",
        task="classification",
        num_outputs=10,
        x_train=xt,
        y_train=yt,
        x_test=torch.from_numpy(a["x_test"]),
        y_test=torch.from_numpy(a["y_test"]),
        x_val=xv,
        y_val=yv,
        make_model=ModelSpec(
            "cnn1d", {"length": length, "out_features": 10, "channels": channels}
        ).build,
        defaults={"epochs": 30, "batch_size": 128, "lr_peak": 0.2, "weight_decay": 5e-4},
        info={
            "data_seed": data_seed,
            "num_samples": num_samples,
            "noise": noise,
            "flipped": flipped,
        },
    )
