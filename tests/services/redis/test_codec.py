"""The Redis package's pure codecs (services/redis/codec.py): RESP framing both ways and
the chunked column codecs, without a server (the store suites run them against one)."""

from __future__ import annotations

import io

import numpy as np
import pytest

from docl.services.redis import codec


def test_pack_frames_every_argument_kind_and_passes_views_uncopied() -> None:
    view = memoryview(b"xyz")
    parts = codec.pack(["SET", b"k", 5, 1.5, view])
    assert b"".join(parts) == b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$3\r\n1.5\r\n$3\r\nxyz\r\n"
    assert any(isinstance(p, memoryview) for p in parts)  # the view itself, not a copy
    big = b"a" * (codec.BIG_ARGUMENT + 1)
    assert big in codec.pack([big])  # a big argument is its own buffer


def test_read_reply_reads_what_pack_writes_and_raises_on_errors() -> None:
    raw = b"+OK\r\n:42\r\n$3\r\nabc\r\n$-1\r\n*2\r\n:1\r\n$1\r\nz\r\n"
    f = io.BytesIO(raw)
    assert [codec.read_reply(f) for _ in range(5)] == [b"OK", 42, b"abc", None, [1, b"z"]]
    with pytest.raises(codec.RespReplyError, match="ERR wrong"):
        codec.read_reply(io.BytesIO(b"-ERR wrong number of arguments\r\n"))
    with pytest.raises(codec.RespReplyError, match="closed"):
        codec.read_reply(io.BytesIO(b""))


def test_columns_cut_into_chunks_and_read_back() -> None:
    values = np.arange(10, dtype="<f4")
    chunks = codec.chunk_views(values, "<f4", 4)
    assert [len(bytes(c)) for c in chunks] == [16, 16, 8]
    assert codec.ranges(3, 9, 4) == [(0, 3, 4), (1, 0, 4), (2, 0, 1)]
    back = codec.column([bytes(c) for c in chunks[:2]] + [None], 12, "<f4", np.nan)
    np.testing.assert_array_equal(back[:8], values[:8])
    assert np.isnan(back[8:]).all()  # a chunk never written reads as the fill
    assert codec.chunks_of(values.tobytes(), 4, 4) == [bytes(c) for c in chunks]
    assert codec.write_mask(np.array([True, False, True])) == b"101"
    assert codec.counters_of({b"reports": b"3"})["reports"] == 3
    assert codec.counters_of({})["visited"] == 0
