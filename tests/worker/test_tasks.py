"""Built-in tasks: they build, are deterministic in data_seed, and a tiny model learns them."""

from __future__ import annotations

import pytest
import torch

from docl.worker.tasks import TaskData, TaskError, get_task, list_tasks
from docl.worker.train import TrainSpec, train

# Small sizes keep every build under a second or two.
SMALL: dict[str, dict[str, object]] = {
    "digits": {},
    "mnist1d": {"num_samples": 1000},
    "synthetic": {"num_samples": 2000},
    "distill": {"num_samples": 2000},
}


def _same(a: TaskData, b: TaskData) -> bool:
    return all(
        torch.equal(getattr(a, f), getattr(b, f))
        for f in ("x_train", "y_train", "x_test", "y_test")
    )


def test_registry_lists_the_builtins() -> None:
    assert list_tasks() == ["digits", "distill", "mnist1d", "synthetic"]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_task_builds_and_is_deterministic_by_seed(name: str) -> None:
    a = get_task(name, data_seed=0, **SMALL[name])
    b = get_task(name, data_seed=0, **SMALL[name])
    c = get_task(name, data_seed=1, **SMALL[name])
    assert _same(a, b)
    assert not _same(a, c)
    assert a.x_train.dtype == torch.float32 and a.x_train.shape[0] == a.num_samples
    out = a.make_model(0)(a.x_train[:5])
    assert out.shape == (5, a.num_outputs)
    # The model factory is seeded: the same seed gives the same weights.
    w0 = [p.detach() for p in a.make_model(3).parameters()]
    w1 = [p.detach() for p in a.make_model(3).parameters()]
    assert all(torch.equal(p, q) for p, q in zip(w0, w1, strict=True))


def test_mnist1d_cache_returns_the_generated_arrays() -> None:
    fresh = get_task("mnist1d", num_samples=1000, data_seed=5, cache=False)
    first = get_task("mnist1d", num_samples=1000, data_seed=5)  # generates and writes the cache
    cached = get_task("mnist1d", num_samples=1000, data_seed=5)  # reads it
    assert _same(fresh, first) and _same(first, cached)
    assert fresh.x_train.shape == (800, 40) and fresh.x_test.shape == (200, 40)


def test_synthetic_flips_train_labels_only() -> None:
    clean = get_task("synthetic", num_samples=4000, noise=0.0)
    noisy = get_task("synthetic", num_samples=4000, noise=0.2)
    assert torch.equal(clean.x_train, noisy.x_train)
    assert torch.equal(clean.y_test, noisy.y_test)  # test labels stay clean
    flipped = (clean.y_train != noisy.y_train).float().mean().item()
    assert 0.17 < flipped < 0.23
    assert noisy.info["flipped"] == int((clean.y_train != noisy.y_train).sum())


def test_distill_targets_are_standardised_teacher_logits() -> None:
    d = get_task("distill", num_samples=4000, temperature=2.0)
    assert d.task == "regression" and d.y_train.shape == (d.num_samples, d.num_outputs)
    # Standardised per output on the training inputs, then scaled by the temperature.
    assert torch.allclose(d.y_train.mean(0), torch.zeros(d.num_outputs), atol=1e-4)
    assert torch.allclose(
        d.y_train.std(0, unbiased=False), torch.full((d.num_outputs,), 2.0), atol=1e-3
    )
    # No class dominates the teacher's argmax.
    share = torch.bincount(d.y_train.argmax(1), minlength=d.num_outputs).float() / d.num_samples
    assert share.max().item() < 0.3


def test_validation_split_is_carved_from_train() -> None:
    full = get_task("digits")
    v = get_task("digits", validation=0.2)
    assert v.x_val is not None and v.y_val is not None
    assert v.x_train.shape[0] + v.x_val.shape[0] == full.x_train.shape[0]
    assert torch.equal(v.x_test, full.x_test)


def test_user_task_by_module_path() -> None:
    d = get_task("tests.worker.user_task:make_task", n=200)
    assert d.name == "blobs" and d.num_samples == 150


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("nope", {}, "unknown task 'nope'"),
        ("digits", {"bogus": 1}, "no parameter"),
        ("no.such.module:f", {}, "cannot import"),
        ("tests.worker.user_task:missing", {}, "no callable"),
        ("tests.worker.user_task:not_a_task", {}, "not TaskData"),
        ("synthetic", {"noise": 1.5}, "noise"),
    ],
)
def test_bad_task_names_and_params_are_clear_errors(
    name: str, params: dict[str, object], match: str
) -> None:
    with pytest.raises(TaskError, match=match):
        get_task(name, **params)


LEARN = {  # (threshold, chance): accuracy (agreement for distill) after 5 epochs
    "digits": (0.6, 0.1),
    "mnist1d": (0.2, 0.1),
    "synthetic": (0.35, 0.2),
    "distill": (0.3, 0.1),
}


LEARN_PARAMS: dict[str, dict[str, object]] = {"mnist1d": {"num_samples": 3000}}


@pytest.mark.parametrize("name", sorted(LEARN))
def test_a_tiny_model_learns_each_task(name: str, tmp_path: object) -> None:
    # The plain local path (uniform epochs, no server) isolates the task and model.
    r = train(
        TrainSpec(
            task=name,
            method="random",
            epochs=5,
            local=True,
            progress=False,
            checkpoint=False,
            out=str(tmp_path),
            task_params={**SMALL[name], **LEARN_PARAMS.get(name, {})},
        )
    )
    threshold, chance = LEARN[name]
    assert r["test_accuracy"] > threshold > chance
    if name == "distill":
        d = get_task(name, **SMALL[name], **LEARN_PARAMS.get(name, {}))
        zero_mse = d.y_test.pow(2).mean().item()  # the MSE of predicting 0 everywhere
        assert r["test_mse"] < 0.5 * zero_mse


def test_digits_reads_the_bundled_csv_as_sklearn_loads_it() -> None:
    """The task parses scikit-learn's digits.csv.gz itself (importing scikit-learn cost
    ~1 s of CPU in every training process): the same pixels and labels as load_digits."""
    import numpy as np
    from sklearn.datasets import load_digits

    from docl.worker.tasks import digits as module

    x, y = module._arrays()
    bunch = load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x, (bunch.data / 16.0).astype(np.float32))
    np.testing.assert_array_equal(y, bunch.target)


@pytest.mark.parametrize("fraction", [0.25, 0.1, 0.33, 0.5, 0.9])
def test_the_stratified_split_is_sklearns_train_test_split(fraction: float) -> None:
    """Against the independent computation: scikit-learn's own stratified split, the
    same rows in the same order, on the digits labels and on skewed random labels
    (classes of 1-2 members, remainders tied) over many seeds."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from docl.worker.tasks.digits import _arrays, stratified_split

    labels = [_arrays()[1]]
    gen = np.random.default_rng(0)
    for _ in range(6):
        k = int(gen.integers(2, 12))
        p = gen.dirichlet(np.full(k, 0.7))
        y = gen.choice(k, size=int(gen.integers(40, 300)), p=p)
        labels.append(np.concatenate([y, np.arange(k), np.arange(k)]))  # each class >= 2
    for y in labels:
        rows = np.arange(y.shape[0])
        for seed in range(12):
            want_train, want_test = train_test_split(
                rows, test_size=fraction, random_state=seed, stratify=y
            )
            train, test = stratified_split(y, fraction, seed)
            np.testing.assert_array_equal(train, want_train)
            np.testing.assert_array_equal(test, want_test)


@pytest.mark.parametrize(
    ("labels", "fraction", "message"),
    [([0, 0, 0, 1, 1, 1, 2], 0.3, r"classes \[2\] have one member"),
     ([0, 0, 1, 1, 2, 2, 3, 3], 0.25, "cannot hold each of the 4 classes")],
)  # fmt: skip
def test_a_stratified_split_scikit_learn_refuses_is_refused(
    labels: list[int], fraction: float, message: str
) -> None:
    import numpy as np
    from sklearn.model_selection import train_test_split

    from docl.worker.tasks.digits import stratified_split

    y = np.array(labels)
    with pytest.raises(ValueError):  # the reference refuses it as well
        train_test_split(np.arange(y.size), test_size=fraction, random_state=0, stratify=y)
    with pytest.raises(ValueError, match=message):
        stratified_split(y, fraction, 0)
