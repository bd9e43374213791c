"""The SDK's errors: every exception class docl defines survives pickling (so one
raised in a Ray worker reaches the driver as itself), and arguments that do not
validate raise a DoclError before anything is sent."""

from __future__ import annotations

import importlib
import inspect
import pickle
import pkgutil
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest

from docl.client import DoclError, InvalidRequestError, ScoreClient, TransportError
from docl.client.errors import APIError, error_for_status, retryable


def _docl_modules() -> list[str]:
    """Every module of every package pyproject.toml installs (``docl`` itself is a
    namespace the editable install cannot list, so its packages are read from there)."""
    with open(Path(__file__).parents[2] / "pyproject.toml", "rb") as f:
        packages = tomllib.load(f)["tool"]["setuptools"]["packages"]
    names = set(packages)
    for pkg in packages:
        path = importlib.import_module(pkg).__path__
        names |= {m.name for m in pkgutil.iter_modules(path, prefix=pkg + ".")}
    return sorted(names)


def _docl_exception_classes() -> list[type[BaseException]]:
    """Every exception class defined in a docl module, found by walking the package."""
    found: dict[str, type[BaseException]] = {}
    for name in _docl_modules():
        mod = importlib.import_module(name)  # an extra that is missing fails loudly
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == mod.__name__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


CLASSES = _docl_exception_classes()


def _sample_args(cls: type[BaseException]) -> tuple[list[Any], dict[str, Any]]:
    """Arguments for the constructor, read off its signature (ints for int, else text)."""
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    sig = inspect.signature(cls.__init__)
    for name, p in list(sig.parameters.items())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not p.empty and p.kind is not p.KEYWORD_ONLY:
            continue
        value: Any = 410 if "int" in str(p.annotation) else f"{name} of {cls.__name__}"
        if p.kind is p.KEYWORD_ONLY:
            kwargs[name] = value
        else:
            args.append(value)
    if not args and not kwargs:
        args = [f"what went wrong in {cls.__name__}"]
    return args, kwargs


def test_the_walk_finds_the_sdk_and_worker_errors() -> None:
    names = {c.__name__ for c in CLASSES}
    assert {"APIError", "NotFoundError", "TransportError", "InvalidRequestError"} <= names
    assert {"TrainError", "TaskError"} <= names  # raised by the worker side


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_class_round_trips_through_pickle(cls: type[BaseException]) -> None:
    args, kwargs = _sample_args(cls)
    err = cls(*args, **kwargs)
    if isinstance(err, APIError):  # the attributes the clients set on the way out
        err.method, err.url = "POST", "http://127.0.0.1:8000/v1/runs/r/epochs"
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == str(err)
    assert back.args == err.args
    assert vars(back) == vars(err)


def test_api_error_keeps_status_detail_title_after_pickling() -> None:
    err = error_for_status(410, "the indices of epoch 0 were dropped", title="Gone")
    err.method, err.url = "GET", "http://h/v1/runs/r/epochs/0/indices"
    back = pickle.loads(pickle.dumps(err))
    assert (back.status, back.detail, back.title, back.method, back.url) == (
        410,
        "the indices of epoch 0 were dropped",
        "Gone",
        "GET",
        "http://h/v1/runs/r/epochs/0/indices",
    )
    assert str(back) == "410 Gone: the indices of epoch 0 were dropped"


def test_an_invalid_method_is_a_docl_error_and_nothing_is_sent() -> None:
    """A method name no method can have (a well-formed unknown one is the server's
    to refuse: a 422, also a DoclError). Port 1 answers nothing: had a request
    been sent, this would be a TransportError."""
    with ScoreClient("http://127.0.0.1:1", retries=0) as c, pytest.raises(DoclError) as info:
        c.create_run(num_samples=10, num_outputs=2, epochs=3, method="Not a method!")
    assert type(info.value) is InvalidRequestError
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("invalid run: method:"), str(info.value)
    with ScoreClient("http://127.0.0.1:1", retries=0) as c, pytest.raises(InvalidRequestError):
        c.create_run(num_samples=-5, num_outputs=2, epochs=3)


def test_an_unknown_method_is_a_docl_error_whoever_refuses_it(score_server: str) -> None:
    """A well-formed method name no method has: refused by the SDK's model or by
    the server (422), a DoclError either way, and no run is created."""
    with ScoreClient(score_server) as c:
        with pytest.raises(DoclError) as info:
            c.create_run(run_id="t-unknown-method", num_samples=10, num_outputs=2, epochs=3,
                         method="nosuchmethod")  # fmt: skip
        assert "method" in str(info.value)
        assert all(r.run_id != "t-unknown-method" for r in c.list_runs())


@pytest.mark.parametrize(
    ("error", "worth_another_try"),
    [
        (TransportError("refused"), True),
        (TransportError("unsupported scheme", retryable=False), False),
        *[(error_for_status(s, "x"), True) for s in (429, 500, 502, 503, 504)],
        *[(error_for_status(s, "x"), False) for s in (400, 401, 404, 409, 413, 422, 501, 505)],
        (ValueError("a bug"), False),
    ],
)
def test_one_definition_of_retryable(error: BaseException, worth_another_try: bool) -> None:
    assert retryable(error) is worth_another_try
    if isinstance(error, TransportError):  # it crosses a Ray boundary as itself
        assert pickle.loads(pickle.dumps(error)).retryable is worth_another_try


def test_a_transport_failure_that_repeats_itself_is_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.UnsupportedProtocol("no such scheme")

    c = ScoreClient("http://docl.test", transport=httpx.MockTransport(handler))
    with c, pytest.raises(TransportError) as info:
        c.health()
    assert len(calls) == 1 and info.value.retryable is False
