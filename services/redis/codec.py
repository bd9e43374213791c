"""Pure codecs of the Redis side: RESP2 framing and the byte forms of a run's columns.

No I/O and no Redis client: the store (``store.py``, ``partitioned.py``), its RESP
client (``resp.py``) and the embedded process supervisors (``services/embedded/``,
which the worker imports without the server extra) share these.

- :func:`pack` frames a command (big arguments are passed on as views, not copied);
  :func:`read_reply` reads one reply from a blocking socket file (the supervisors'
  set-up commands; the store's hot path parses with hiredis instead).
- The column codecs cut a column into ``DOCL_CHUNK_BYTES`` chunks and back
  (:func:`ranges`, :func:`chunk_views`, :func:`chunks_of`, :func:`column`), and pack
  what the Lua scripts read (:func:`f64_indices`, :func:`write_mask`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from docl.services.layout import COUNTER_FIELDS

__all__ = [
    "BIG_ARGUMENT",
    "NAN32",
    "TEMP_KEY_TTL_MS",
    "Arg",
    "RespReplyError",
    "chunk_views",
    "chunks_of",
    "column",
    "counters_of",
    "f64_indices",
    "pack",
    "ranges",
    "read_reply",
    "text",
    "write_mask",
]

#: Arguments longer than this are framed as their own buffer (not copied into the header).
BIG_ARGUMENT = 4096
#: One float32 NaN, little-endian: what create.lua fills a new score (loss) column with.
NAN32 = np.array([np.nan], dtype="<f4").tobytes()
#: Temporary keys (a draw's columns and indices before their script renames them into
#: place) expire after this long, so a process that dies between the SET and the script
#: leaves nothing behind for good (10 minutes).
TEMP_KEY_TTL_MS = 600_000
#: scatter.lua reads its per-sample write mask as the characters '1' (write) and '0'.
_WRITE, _KEEP = ord("1"), ord("0")

#: An argument of a command.
Arg = bytes | str | int | float | memoryview


class RespReplyError(Exception):
    """An error reply (``-ERR ...``), or a connection closed mid-reply, read by
    :func:`read_reply`."""


def pack(args: Sequence[Arg]) -> list[bytes]:
    """A RESP2 command as buffers to write one after the other: ``bytes``/``str`` as they
    are, numbers as ``repr``, ``memoryview``/``bytearray`` (big values: draws) as views,
    written out without a copy."""
    parts: list[bytes] = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, bytes):
            b = a
        elif isinstance(a, str):
            b = a.encode()
        elif isinstance(a, memoryview | bytearray):
            v = memoryview(a).cast("B")
            parts += (b"$%d\r\n" % v.nbytes, v, b"\r\n")  # type: ignore[arg-type]
            continue
        else:
            b = repr(a).encode()
        if len(b) > BIG_ARGUMENT:
            parts.append(b"$%d\r\n" % len(b))
            parts.append(b)
            parts.append(b"\r\n")
        else:
            parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
    return parts


def read_reply(f: BinaryIO) -> Any:
    """One RESP2 reply from a buffered (blocking) socket file: bytes, int, None or a
    list; an error reply or a closed connection raises :class:`RespReplyError`."""
    line = f.readline()
    if not line.endswith(b"\r\n"):
        raise RespReplyError("redis-server closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RespReplyError(rest.decode(errors="replace"))
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise RespReplyError(f"unexpected reply {line[:40]!r}")


def text(value: Any) -> str:
    """A reply (bytes) or value as str."""
    return value.decode() if isinstance(value, bytes) else str(value)


def counters_of(raw: dict[Any, Any]) -> dict[str, int]:
    """A counters hash as ints; a counter never incremented reads 0 (the scatter
    script skips ``HINCRBY`` by zero, so a field may be absent from the hash)."""
    out = dict.fromkeys(COUNTER_FIELDS, 0)
    out.update({text(k): int(v) for k, v in raw.items()})
    return out


def ranges(start: int, stop: int, per_chunk: int) -> list[tuple[int, int, int]]:
    """Split the item range [start, stop) into (chunk, first, last_exclusive) pieces."""
    out: list[tuple[int, int, int]] = []
    i = start
    while i < stop:
        k = i // per_chunk
        end = min(stop, (k + 1) * per_chunk)
        out.append((k, i - k * per_chunk, end - k * per_chunk))
        i = end
    return out


def chunk_views(arr: np.ndarray, dtype: str, per_chunk: int) -> list[bytes | memoryview]:
    """``arr`` as ``dtype`` cut into chunks of ``per_chunk`` items: views, not copies (the
    fast client writes them to the socket as they are); one empty chunk for no items."""
    a = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    if a.shape[0] == 0:
        return [b""]
    return [a[i : i + per_chunk].data.cast("B") for i in range(0, a.shape[0], per_chunk)]


def chunks_of(data: bytes, itemsize: int, per_chunk: int) -> list[bytes]:
    """``data`` (items of ``itemsize`` bytes) cut into chunks of ``per_chunk`` items."""
    step = itemsize * per_chunk
    if not data:
        return [b""]
    return [data[i : i + step] for i in range(0, len(data), step)]


def column(parts: Sequence[bytes | None], n: int, dtype: str, fill: float) -> np.ndarray:
    """A column of n values from its chunks' GET replies: a read-only view of the reply
    when it is one chunk; chunks never written (drawn/incl are lazy) read as ``fill``."""
    one = len(parts) == 1 and parts[0] is not None
    arr = np.frombuffer(parts[0] if one else b"".join(p or b"" for p in parts), dtype)  # type: ignore[arg-type]
    if arr.shape[0] < n:
        arr = np.concatenate([arr, np.full(n - arr.shape[0], fill, dtype=dtype)])
    return arr[:n]


def f64_indices(indices: np.ndarray) -> bytes:
    """Sample indices as little-endian float64: Lua numbers are doubles, and
    ``struct.unpack('<d')`` is the cheapest way to read them there."""
    return np.ascontiguousarray(indices, dtype="<f8").tobytes()


def write_mask(write: np.ndarray) -> bytes:
    """scatter.lua's per-sample write mask: one byte per sample, '1' write, '0' keep."""
    return np.where(write, np.uint8(_WRITE), np.uint8(_KEEP)).astype(np.uint8).tobytes()
