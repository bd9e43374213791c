"""A run's Redis key names (services/redis/keys.py), without a server: the names stored
runs were written under (byte for byte), the hash slot against redis-py's own, the
partition tags' slot ranges against a brute-force search, the sweep pattern."""

from __future__ import annotations

import hashlib
from fnmatch import fnmatchcase

from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from docl.services.layout import RunLayout
from docl.services.redis.keys import (
    RUNS_INDEX,
    SLOTS,
    hash_slot,
    keys_of,
    partition_prefix,
    run_pattern,
    run_prefix,
    sweep_pattern,
)

RUN_IDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-",
                  min_size=1, max_size=24)  # fmt: skip


def _layout(run_id: str = "r1", partition_samples: int = 70) -> RunLayout:
    return RunLayout(run_id, 480, 4, "float32", 256, True, True, partition_samples)


def _every_key(lay: RunLayout) -> list[str]:
    names = keys_of(lay)
    out = [*names.static(), *names.epoch(2, 480), *names.weight(2, 480)]
    for j in range(lay.partitions if lay.partitions > 1 else 0):
        out += names.partition(j).static()
    return out


def test_the_key_names_are_those_runs_were_stored_under() -> None:
    # golden values from services/layout.py at 170d9f8, before the names moved here
    lay = _layout()
    names = keys_of(lay)
    assert RUNS_INDEX == "docl:runs"
    assert names.static()[:6] == (
        "{run:r1}:meta",
        "{run:r1}:counters",
        "{run:r1}:reports",
        "{run:r1}:epochs",
        "{run:r1}:scorelog",
        "{run:r1}:rec:0",
    )
    assert names.epoch(3, 100) == tuple(f"{{run:r1}}:epoch:3:{k}" for k in range(4))
    assert names.weight(3, 100) == tuple(f"{{run:r1}}:weight:3:{k}" for k in range(4))
    assert [names.partition(j).prefix for j in range(7)] == [
        "{run:r1:0.38}",
        "{run:r1:1.2}",
        "{run:r1:2.11}",
        "{run:r1:3.15}",
        "{run:r1:4.10}",
        "{run:r1:5.0}",
        "{run:r1:6.1}",
    ]
    last = names.partition(6)
    assert last.rec[-1] == "{run:r1:6.1}:rec:9" and last.incl == ()  # Exp3 stays with the run
    assert last.score == ("{run:r1:6.1}:score:0",) and last.loss == ("{run:r1:6.1}:loss:0",)
    every = _every_key(lay)
    assert len(every) == 293 == len(set(every))
    digest = hashlib.sha256("\n".join(every).encode()).hexdigest()
    assert digest == "002aeee8f33f0720c20304ec668788576c6039ab03524bce20d3a68a27fba7e2"
    assert partition_prefix("run-x", 5, 1000) == "{run:run-x:5.62}"


def test_equal_layouts_share_their_key_names() -> None:
    a, b = _layout("same"), _layout("same")
    assert a is not b and keys_of(a) is keys_of(b)
    assert keys_of(a).partition(2) is keys_of(a.partition(2))
    assert keys_of(_layout("other")).meta == "{run:other}:meta" != keys_of(a).meta


@given(
    st.text(st.characters(codec="utf-8", exclude_characters="{"), max_size=40)
)  # "{": a hash tag
def test_the_hash_slot_is_redis_pys(tag: str) -> None:
    assert hash_slot(tag) == key_slot(tag.encode()) and 0 <= hash_slot(tag) < SLOTS


def test_the_hash_slot_of_the_specs_crc16_check_value() -> None:
    # the Redis Cluster spec's CRC16 (XMODEM) of "123456789" is 0x31C3
    assert hash_slot("123456789") == 0x31C3 % SLOTS


@given(RUN_IDS, st.integers(1, 300), st.data())
def test_a_partition_tag_is_the_first_salt_whose_slot_is_in_its_range(
    run_id: str, partitions: int, data: st.DataObject
) -> None:
    j = data.draw(st.integers(0, partitions - 1))
    prefix = partition_prefix(run_id, j, partitions)
    buckets = min(partitions, 64)
    lo, hi = (j % buckets) * SLOTS // buckets, (j % buckets + 1) * SLOTS // buckets

    def slot_of(salt: int) -> int:  # redis-py's slot of a key under that tag
        return key_slot(f"{{run:{run_id}:{j}.{salt}}}:meta".encode())

    salt = next(s for s in range(100_000) if lo <= slot_of(s) < hi)  # brute force
    assert prefix == f"{{run:{run_id}:{j}.{salt}}}"
    assert key_slot(f"{prefix}:rec:3".encode()) == slot_of(salt)  # every key: the tag's slot


@given(RUN_IDS)
def test_the_sweep_pattern_matches_every_key_of_the_run_and_no_other_runs(run_id: str) -> None:
    for partition_samples in (0, 70):
        lay = _layout(run_id, partition_samples)
        pattern = sweep_pattern(lay)
        assert all(fnmatchcase(k, pattern) for k in _every_key(lay))
        assert all(fnmatchcase(k, run_pattern(run_id)) for k in _every_key(lay))
        for other in (f"{run_id}0", f"{run_id}.x", f"x{run_id}"):
            theirs = _every_key(_layout(other, 70))
            assert not any(fnmatchcase(k, pattern) for k in theirs)
            assert not any(fnmatchcase(k, run_pattern(run_id)) for k in theirs)
    assert run_prefix(run_id) == f"{{run:{run_id}}}"
