"""The status enums of services/storage.py against the Lua scripts that return them:
each script's header names every member with its number, and every literal status
the script returns is a member (so a number cannot change on one side only)."""

from __future__ import annotations

import re
from enum import IntEnum
from pathlib import Path

import pytest

from docl.services.layout import COUNTER_FIELDS, ScatterCounts
from docl.services.storage import (
    ClaimStatus,
    CommitStatus,
    CompactStatus,
    CreateStatus,
    GatherStatus,
    ScatterStatus,
    SignalStatus,
)
from docl.wire.models import RunCounters

LUA = Path(__file__).resolve().parents[2] / "services" / "lua"
CONTRACTS: list[tuple[str, type[IntEnum]]] = [
    ("create", CreateStatus),
    ("gather", GatherStatus),
    ("scatter", ScatterStatus),
    ("commit_epoch", CommitStatus),
    ("compact", CompactStatus),
    ("claim", ClaimStatus),
    ("signal", SignalStatus),
]


def _statuses_returned(code: str) -> set[int]:
    """The literal statuses of `return n` and `return {n, ...}` in code lines."""
    found = set()
    for m in re.finditer(r"^\s*(?:local \w+ = )?.*?\breturn\s+\{?\s*(-?\d+)\b", code, re.M):
        found.add(int(m.group(1)))
    # tables built before being returned: `local dups = {0}` / `local bad = {2, ...}`
    for m in re.finditer(r"^\s*local (?:dups|bad) = \{\s*(-?\d+)", code, re.M):
        found.add(int(m.group(1)))
    return found


@pytest.mark.parametrize(("script", "enum"), CONTRACTS, ids=[s for s, _ in CONTRACTS])
def test_each_script_and_its_enum_agree(script: str, enum: type[IntEnum]) -> None:
    text = (LUA / f"{script}.lua").read_text()
    header = "\n".join(line for line in text.splitlines() if line.startswith("--"))
    code = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    assert enum.__name__ in header, f"{script}.lua does not name {enum.__name__}"
    for member in enum:
        assert re.search(rf"(?<![\d-]){member.value}\s+{member.name}\b", header), (
            f"{script}.lua's header does not list {member.value} {member.name}"
        )
    returned = _statuses_returned(code)
    assert returned, f"no status found in {script}.lua"
    assert returned <= {m.value for m in enum}, (script, returned)


def test_the_counters_have_one_order_the_wire_the_hash_and_the_scatter_script() -> None:
    """COUNTER_FIELDS is the wire's RunCounters then visited; what a scatter adds
    (ScatterCounts) is that order less duplicates, and scatter.lua names its counters
    argument's fields in the same order (header and code)."""
    assert (*RunCounters.model_fields, "visited") == COUNTER_FIELDS
    assert ScatterCounts._fields == tuple(f for f in COUNTER_FIELDS if f != "duplicates")
    text = (LUA / "scatter.lua").read_text()
    names = re.search(r"local names = \{([^}]*)\}", text)
    assert names is not None
    assert tuple(re.findall(r"'(\w+)'", names.group(1))) == ScatterCounts._fields
    header = re.search(r'counter increments "([^"]*)"', text)
    assert header is not None and tuple(header.group(1).split(",")) == ScatterCounts._fields
