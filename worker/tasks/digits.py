"""``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes).

Ships with scikit-learn, so it needs no download. Pixels are scaled to [0, 1];
the test split is a stratified quarter, chosen by ``data_seed``. A small MLP
(64 -> 128 -> 10) reaches ~97% in a few dozen epochs.

Two knobs make it a task where data selection is supposed to pay (issue 18):

- ``noise``: symmetric label noise (:mod:`.noise`, shared with ``mnist1d``). Each label of the training pool is flipped, with
  probability ``noise`` (seeded by ``data_seed``), to one of the 9 OTHER classes
  uniformly. It is applied before the validation split, so the validation labels
  are as noisy as a user's own held-out data would be; the test split stays clean.
  ``info["flipped"]`` counts the flipped labels (training + validation).
- ``duplicates``: redundancy. ``round(duplicates * n_train)`` extra training samples
  are near copies of a seeded random subset of the training rows (after the
  validation split, so never of a validation or test sample): each pixel moved by
  -1/16, 0 or +1/16 (one grey level of the original 17) and clipped to [0, 1], with
  the source's (possibly flipped) label. They are appended after the original
  training rows; ``info["duplicates"]`` counts them.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
from pathlib import Path

import numpy as np
import torch

from docl.worker.models import ModelSpec
from docl.worker.tasks import TaskData, TaskError, register_task, split_validation
from docl.worker.tasks.noise import MAX_NOISE, check_noise, flip_labels, noisy_labels

__all__ = [
    "JITTER",
    "MAX_DUPLICATES",
    "MAX_NOISE",
    "digits",
    "flip_labels",
    "near_duplicates",
    "stratified_split",
]


def _bundled_csv() -> Path | None:
    """scikit-learn's digits.csv.gz, found without importing scikit-learn (whose import
    costs ~1 s of CPU in every process that loads the task: each `docl train`, each Ray
    worker); None when the file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    # The bundled CSV: 1,797 rows of 64 pixels (0..16) and the label; what
    # sklearn.datasets.load_digits parses (tests/worker/test_tasks.py compares them).
    path = _bundled_csv()
    if path is not None:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",")
        data, target = table[:, :-1], table[:, -1].astype(np.int64)
    else:  # pragma: no cover - a scikit-learn that keeps it elsewhere
        from sklearn.datasets import load_digits

        bunch = load_digits()
        data, target = bunch.data, bunch.target
    x = (np.asarray(data, dtype=np.float32) / 16.0).astype(np.float32)  # (1797, 64)
    y = np.asarray(target, dtype=np.int64)  # (1797,)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of ``draws`` each class gets in proportion to ``counts``: the floors of
    the exact shares, the rest one each to the classes with the largest remainders
    (ties broken by ``rng``), as scikit-learn's stratified split allots them."""
    exact = counts / counts.sum() * draws
    taken = np.floor(exact)
    left = int(draws - taken.sum())
    if left > 0:
        remainder = exact - taken
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), left)
            taken[rng.choice(tied, size=now, replace=False)] += 1
            left -= now
            if left == 0:
                break
    return taken.astype(int)


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` row indices of a seeded stratified split: the split
    ``sklearn.model_selection.train_test_split(..., test_size=test_fraction,
    random_state=seed, stratify=y)`` makes (StratifiedShuffleSplit's draws, in its
    order), without importing scikit-learn; tests/worker/test_tasks.py holds them equal."""
    n = y.shape[0]
    n_test = math.ceil(test_fraction * n)
    n_train = n - n_test
    classes, inverse = np.unique(y, return_inverse=True)
    counts = np.bincount(inverse)
    # scikit-learn refuses these splits too (a class that cannot be on both sides)
    if counts.min() < 2:
        raise ValueError(
            f"stratified_split: classes {classes[counts < 2].tolist()} have one member"
        )
    if min(n_test, n_train) < classes.shape[0]:
        raise ValueError(
            f"stratified_split: {n_test} test and {n_train} training rows cannot hold "
            f"each of the {classes.shape[0]} classes"
        )
    members = np.split(np.argsort(inverse, kind="mergesort"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(counts, n_train, rng)
    t_i = _approximate_mode(counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for k in range(classes.shape[0]):
        rows = members[k].take(rng.permutation(counts[k]), mode="clip")
        train.extend(rows[: n_i[k]])
        test.extend(rows[n_i[k] : n_i[k] + t_i[k]])
    return rng.permutation(train), rng.permutation(test)


#: Largest redundancy: extra near copies up to 4x the training rows (bounds memory).
MAX_DUPLICATES = 4.0
#: The jitter of a near duplicate: one grey level of the original 0..16 pixels.
JITTER = 1.0 / 16.0


def near_duplicates(
    x: torch.Tensor, y: torch.Tensor, count: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` near copies of a random subset of the rows of ``x`` (without
    replacement while ``count <= len(x)``): each pixel moved by -1, 0 or +1 grey
    levels (``JITTER``) and clipped to [0, 1]; the label is the source's."""
    n = x.shape[0]
    src = rng.choice(n, size=count, replace=count > n)
    step = rng.integers(-1, 2, size=(count, x.shape[1])).astype(np.float32) * JITTER
    xd = np.clip(x.numpy()[src] + step, 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(xd), y[torch.from_numpy(src)]


@register_task("digits")
def digits(
    data_seed: int = 0,
    test_fraction: float = 0.25,
    validation: float = 0.0,
    noise: float = 0.0,
    duplicates: float = 0.0,
) -> TaskData:
    if not 0.0 < test_fraction < 1.0:
        raise TaskError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    check_noise("digits", noise)
    if not 0.0 <= duplicates <= MAX_DUPLICATES:
        raise TaskError(
            f"digits: duplicates (extra near copies per training sample) must be in "
            f"[0, {MAX_DUPLICATES}], got {duplicates}"
        )
    x, y = _arrays()
    train, test = stratified_split(y, test_fraction, data_seed)
    x_tr, x_te, y_tr, y_te = x[train], x[test], y[train], y[test]
    rng = np.random.default_rng(data_seed + 1)
    y_tr, flipped = noisy_labels(y_tr, noise, rng)
    xt, yt, xv, yv = split_validation(
        torch.from_numpy(x_tr), torch.from_numpy(y_tr), validation, data_seed
    )
    n_dup = round(duplicates * xt.shape[0])
    if n_dup > 0:
        xd, yd = near_duplicates(xt, yt, n_dup, rng)
        xt, yt = torch.cat([xt, xd]), torch.cat([yt, yd])
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
        info={
            "data_seed": data_seed,
            "noise": noise,
            "flipped": flipped,
            "duplicates": n_dup,
        },
    )
