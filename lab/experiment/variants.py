"""Variants: ``method`` or ``method[key=value,...]``, the rows of the results table."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from docl.lab.experiment.tasks import ExperimentError
from docl.services import methods
from docl.wire.models import RunParams

__all__ = ["Variant", "parse_variant", "parse_variants"]

_VARIANT = re.compile(r"^\s*([a-z][a-z0-9\-]*)\s*(?:\[(.*)\])?\s*$")


@dataclass(frozen=True)
class Variant:
    """A named configuration in the results table: a method plus overrides of run
    parameters and of the method's own parameters (``docl train`` tells them apart)."""

    label: str
    method: str
    params: dict[str, Any] = field(default_factory=dict)


def _candidates(text: str) -> list[Any]:
    """The values ``text`` may stand for, most specific first."""
    t = text.strip()
    low = t.lower()
    out: list[Any] = []
    if low in ("true", "false"):
        out.append(low == "true")
    if low in ("none", "null"):
        out.append(None)
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            out.append(conv(t))
    out.append(t)
    return out


def _param_value(key: str, text: str, model: type[BaseModel] = RunParams) -> Any:
    """The first reading of ``text`` that ``model`` (RunParams, or the method's own
    parameters) accepts for ``key`` (so 'none' is None for l2_phases but the string
    'none' for normalize)."""
    errors: list[str] = []
    for value in _candidates(text):
        try:
            model.model_validate({key: value})
            return value
        except ValidationError as e:
            errors.append("; ".join(err["msg"] for err in e.errors()))
    raise ExperimentError(f"{key}={text.strip()}: {errors[-1]}")


def parse_variant(label: str) -> Variant:
    """``docl[tau=1,normalize=none]`` -> Variant("docl[tau=1,normalize=none]", "docl", {...}).

    Keys are :class:`~docl.wire.models.RunParams` fields or the method's own
    parameters (``infobatch[prune_ratio=0.3]``); each value is read as the first of
    bool / None / int / float / string that the field accepts; a value it accepts
    in no form is an :class:`ExperimentError`. Methods are those of the registry
    (``docl.services.methods``, plugins included).
    """
    m = _VARIANT.match(label)
    if not m:
        raise ExperimentError(
            f"cannot parse variant {label!r}: write method or method[key=value,...]"
        )
    method, body = m.group(1), m.group(2)
    methods.load_plugins()
    if method not in methods.method_names():
        raise ExperimentError(
            f"unknown method {method!r} in {label!r}; known: {', '.join(methods.method_names())}"
        )
    own = methods.get_method(method).params
    params: dict[str, Any] = {}
    for part in (body or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise ExperimentError(f"variant {label!r}: {part.strip()!r} is not key=value")
        key, value = (x.strip() for x in part.split("=", 1))
        if key not in RunParams.model_fields and key not in own.model_fields:
            raise ExperimentError(
                f"variant {label!r}: unknown run parameter {key!r}; known: "
                f"{', '.join([*RunParams.model_fields, *own.model_fields])}"
            )
        if key in ("seed", "budget_batches"):
            raise ExperimentError(
                f"variant {label!r}: {key} is set by the experiment (--seeds, --budget-batches)"
            )
        try:
            model = RunParams if key in RunParams.model_fields else own
            params[key] = _param_value(key, value, model)
        except ExperimentError as e:
            raise ExperimentError(f"variant {label!r}: {e}") from None
    return Variant(label=label.strip(), method=method, params=params)


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets: 'a,b[x=1,y=2]' -> ['a', 'b[x=1,y=2]']."""
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def parse_variants(text: str | Sequence[str]) -> list[Variant]:
    """Parse a comma-separated list (or a list) of variants; duplicates are an error."""
    items = (
        _split_top_level(text)
        if isinstance(text, str)
        else [s for t in text for s in _split_top_level(t)]
    )
    out = [parse_variant(s) for s in items]
    labels = [v.label for v in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ExperimentError(f"variant(s) given twice: {', '.join(dup)}")
    return out
