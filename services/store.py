"""The one module that talks to Redis.

Layout of a run (every key shares the hash tag ``{run:<id>}``, so a Redis
Cluster keeps a run on one slot; see docs/architecture.md "The store"):

    {run:<id>}:meta          hash    config (canonical JSON), uid, created_at, layout, last_epoch
    {run:<id>}:counters      hash    reports, duplicates, samples_reported, samples_scored,
                                     samples_skipped, visited
    {run:<id>}:reports       zset    applied report_ids -> time applied (the dedup markers)
    {run:<id>}:epochs        hash    e -> JSON of the drawn epoch (seed, size, ...)
    {run:<id>}:epoch:<e>:<k> string  chunk k of epoch e's indices, int64 LE, training order
    {run:<id>}:weight:<e>:<k> string chunk k of epoch e's per-index loss weights, float32 LE,
                                     the same order (only methods with weights, e.g. infobatch)
    {run:<id>}:rec:<k>       string  chunk k of the per-sample records (fixed width, below)
    {run:<id>}:score:<k>     string  chunk k of the score column, float32 LE (NaN = unset)
    {run:<id>}:loss:<k>      string  chunk k of the last-loss column, float32 (methods whose
                                     signal is the loss: spl, mcl, infobatch)
    {run:<id>}:drawn:<k>     string  chunk k of the selection counts, uint16 (saturating)
    {run:<id>}:incl:<k>      string  chunk k of Exp3 inclusion probabilities, float32 (exp3 only)
    docl:runs                set     every run id (for GET /v1/runs)

A record is ``RECORD_HEAD`` bytes of state followed by the stored output g_i:

    offset  size  field
    0       8     lr_sum of the last visit, float64 (meaningless while visits = 0)
    8       4     visits, uint32 (0 = never seen)
    12      4     score, float32 (NaN = unset; the score column holds the same value)
    16      4     loss of the last visit, float32
    20      4     zero padding
    24      c·w   g_i, float32 (w = 4) or float16 (w = 2) per ``params.output_dtype``
    ...           zero padding up to a multiple of 8

Records are created lazily: a chunk grows as samples are first written, and a
record that was never written reads as zeros (visits = 0: never seen). The
score and loss columns are NaN-filled when the run is created.

Every write of a report happens in one Lua script (``lua/scatter.lua``) that
checks the report's dedup marker and compares each sample's stored (lr_sum,
visits) with what was read at gather time — a compare-and-set — before writing
anything; see docs/architecture.md for why this and not MULTI/EXEC.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import BusyLoadingError as RedisBusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = [
    "COUNTER_FIELDS",
    "RECORD_HEAD",
    "RUNS_INDEX",
    "Applied",
    "DrawInputs",
    "Gathered",
    "RunLayout",
    "Store",
]

#: Bytes of per-sample state before g_i in a record.
RECORD_HEAD = 24
#: Bytes of the record head that the compare-and-set compares (lr_sum + visits).
CAS_BYTES = 12
#: The fields of a run's counters hash (see the layout above).
COUNTER_FIELDS = (
    "reports",
    "duplicates",
    "samples_reported",
    "samples_scored",
    "samples_skipped",
    "visited",
)
#: The global set of run ids.
RUNS_INDEX = "docl:runs"
#: Selection counts saturate here (uint16).
DRAWN_MAX = 65535
_NAN32 = np.array([np.nan], dtype="<f4").tobytes()


def _script(name: str) -> str:
    return resources.files("docl.services").joinpath("lua", f"{name}.lua").read_text()


def run_prefix(run_id: str) -> str:
    """The hash-tagged prefix of every key of run ``run_id``."""
    return f"{{run:{run_id}}}"


def _counters(raw: dict[Any, Any]) -> dict[str, int]:
    """A counters hash as ints; a counter never incremented reads 0 (the scatter
    script skips ``HINCRBY`` by zero, so a field may be absent from the hash)."""
    out = dict.fromkeys(COUNTER_FIELDS, 0)
    out.update({_s(k): int(v) for k, v in raw.items()})
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _chunk_keys(prefix: str, name: str, total: int, per_chunk: int) -> tuple[str, ...]:
    count = max(1, math.ceil(total / per_chunk))
    return tuple(f"{prefix}:{name}:{k}" for k in range(count))


@dataclass(frozen=True)
class RunLayout:
    """Where and how a run's state is laid out in Redis: a pure function of its config.

    Stored in the run's meta at creation, so a later change of ``chunk_bytes``
    does not move an existing run's data.
    """

    run_id: str
    num_samples: int
    num_outputs: int
    output_dtype: str  # "float32" | "float16"
    chunk_bytes: int
    loss_column: bool
    exp3: bool

    # -- sizes ----------------------------------------------------------------------------
    @property
    def out_width(self) -> int:
        return 2 if self.output_dtype == "float16" else 4

    @cached_property
    def rec_size(self) -> int:
        raw = RECORD_HEAD + self.num_outputs * self.out_width
        return raw + (-raw) % 8

    def per_chunk(self, itemsize: int) -> int:
        return max(1, self.chunk_bytes // itemsize)

    @cached_property
    def rec_per_chunk(self) -> int:
        return self.per_chunk(self.rec_size)

    @cached_property
    def col_per_chunk(self) -> int:
        return self.per_chunk(4)

    @property
    def drawn_per_chunk(self) -> int:
        return self.per_chunk(2)

    @property
    def idx_per_chunk(self) -> int:
        return self.per_chunk(8)

    def memory_bytes(self, keep_epochs: int) -> int:
        """Redis bytes of the run's per-sample state when every sample has been reported."""
        n = self.num_samples
        # record + score column + one epoch of score-log entries + counts + indices
        per_sample = self.rec_size + 4 + 8 + 2 + 8 * keep_epochs
        per_sample += 4 if self.loss_column else 0
        per_sample += 4 if self.exp3 else 0
        return n * per_sample

    # -- numpy views ----------------------------------------------------------------------
    @cached_property
    def rec_dtype(self) -> np.dtype[Any]:
        out = "<f2" if self.output_dtype == "float16" else "<f4"
        return np.dtype(
            {
                "names": ["lr_sum", "visits", "score", "loss", "g"],
                "formats": ["<f8", "<u4", "<f4", "<f4", (out, (self.num_outputs,))],
                "offsets": [0, 8, 12, 16, RECORD_HEAD],
                "itemsize": self.rec_size,
            }
        )

    # -- keys -----------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return run_prefix(self.run_id)

    @property
    def meta_key(self) -> str:
        return f"{self.prefix}:meta"

    @property
    def counters_key(self) -> str:
        return f"{self.prefix}:counters"

    @property
    def reports_key(self) -> str:
        return f"{self.prefix}:reports"

    @property
    def epochs_key(self) -> str:
        return f"{self.prefix}:epochs"

    @property
    def scorelog_key(self) -> str:
        return f"{self.prefix}:scorelog"

    @cached_property
    def log_dtype(self) -> np.dtype[Any]:
        """One entry of the score log: (index uint32, score float32[, loss float32])."""
        fields = [("i", "<u4"), ("s", "<f4")]
        if self.loss_column:
            fields.append(("l", "<f4"))
        return np.dtype(fields)

    @cached_property
    def rec_keys(self) -> tuple[str, ...]:
        return _chunk_keys(self.prefix, "rec", self.num_samples, self.rec_per_chunk)

    @cached_property
    def score_keys(self) -> tuple[str, ...]:
        return _chunk_keys(self.prefix, "score", self.num_samples, self.col_per_chunk)

    @cached_property
    def loss_keys(self) -> tuple[str, ...]:
        if not self.loss_column:
            return ()
        return _chunk_keys(self.prefix, "loss", self.num_samples, self.col_per_chunk)

    @cached_property
    def drawn_keys(self) -> tuple[str, ...]:
        return _chunk_keys(self.prefix, "drawn", self.num_samples, self.drawn_per_chunk)

    @cached_property
    def incl_keys(self) -> tuple[str, ...]:
        if not self.exp3:
            return ()
        return _chunk_keys(self.prefix, "incl", self.num_samples, self.col_per_chunk)

    def epoch_keys(self, epoch: int, size: int) -> tuple[str, ...]:
        return _chunk_keys(self.prefix, f"epoch:{epoch}", size, self.idx_per_chunk)

    def weight_keys(self, epoch: int, size: int) -> tuple[str, ...]:
        """Chunks of epoch ``epoch``'s float32 weights (as many per chunk as its indices)."""
        return _chunk_keys(self.prefix, f"weight:{epoch}", size, self.idx_per_chunk)

    def static_keys(self) -> tuple[str, ...]:
        """Every key of the run except the per-epoch index chunks."""
        return (
            self.meta_key,
            self.counters_key,
            self.reports_key,
            self.epochs_key,
            self.scorelog_key,
            *self.rec_keys,
            *self.score_keys,
            *self.loss_keys,
            *self.drawn_keys,
            *self.incl_keys,
        )

    # -- (de)serialisation -----------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(
            {
                "num_samples": self.num_samples,
                "num_outputs": self.num_outputs,
                "output_dtype": self.output_dtype,
                "chunk_bytes": self.chunk_bytes,
                "loss_column": self.loss_column,
                "exp3": self.exp3,
                "rec_size": self.rec_size,
                "record_head": RECORD_HEAD,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, run_id: str, text: str | bytes) -> RunLayout:
        d = json.loads(text)
        return cls(
            run_id=run_id,
            num_samples=int(d["num_samples"]),
            num_outputs=int(d["num_outputs"]),
            output_dtype=str(d["output_dtype"]),
            chunk_bytes=int(d["chunk_bytes"]),
            loss_column=bool(d["loss_column"]),
            exp3=bool(d["exp3"]),
        )


def _ranges(start: int, stop: int, per_chunk: int) -> list[tuple[int, int, int]]:
    """Split the item range [start, stop) into (chunk, first, last_exclusive) pieces."""
    out: list[tuple[int, int, int]] = []
    i = start
    while i < stop:
        k = i // per_chunk
        end = min(stop, (k + 1) * per_chunk)
        out.append((k, i - k * per_chunk, end - k * per_chunk))
        i = end
    return out


def _chunk_views(arr: np.ndarray, dtype: str, per_chunk: int) -> list[bytes | memoryview]:
    """``arr`` as ``dtype`` cut into chunks of ``per_chunk`` items: views, not copies (the
    fast client writes them to the socket as they are); one empty chunk for no items."""
    a = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    if a.shape[0] == 0:
        return [b""]
    return [a[i : i + per_chunk].data.cast("B") for i in range(0, a.shape[0], per_chunk)]


def _chunks_of(data: bytes, itemsize: int, per_chunk: int) -> list[bytes]:
    step = itemsize * per_chunk
    if not data:
        return [b""]
    return [data[i : i + step] for i in range(0, len(data), step)]


@dataclass(frozen=True)
class Gathered:
    """What ``gather`` read for one request."""

    status: int  # -1 gone/re-created, 0 duplicate(s), 1 ok
    last_epoch: int
    records: np.ndarray | None  # (B,) rec_dtype, a writable copy
    inclusion: np.ndarray | None  # (B,) float32 or None
    duplicates: tuple[int, ...] = ()  # status 0: 0-based positions of the applied report_ids


@dataclass(frozen=True)
class Applied:
    """Result of ``scatter``: -1 gone, 0 duplicate(s), 1 applied, 2 conflict.

    On a conflict, ``conflicts`` are the 0-based positions (over all the samples
    sent) whose stored state differs from what the caller computed from, and
    ``current`` their records as stored now (nothing was written). On status 0,
    ``duplicates`` are the 0-based positions of the reports already applied
    (nothing was written but the duplicates counter). ``leased``: applied under
    the caller's write lease, without the per-sample compare.
    """

    status: int
    conflicts: tuple[int, ...] = ()
    current: np.ndarray | None = None
    duplicates: tuple[int, ...] = ()
    leased: bool = False


@dataclass(frozen=True)
class DrawInputs:
    """A consistent snapshot of what an epoch draw reads."""

    uid: str | None
    last_epoch: int
    scores: np.ndarray | None  # (n,) float32
    losses: np.ndarray | None  # (n,) float32
    drawn: np.ndarray  # (n,) uint16
    inclusion: np.ndarray | None  # (n,) float32
    log_base: int = 0  # score-log entries trimmed before this snapshot
    log_count: int = 0  # score-log entries folded into `scores`/`losses` here


def _f64_indices(indices: np.ndarray) -> bytes:
    # Lua numbers are doubles; struct.unpack('<d') is the cheapest way to read them there.
    return np.ascontiguousarray(indices, dtype="<f8").tobytes()


def fold_log(
    layout: RunLayout, entries: Sequence[bytes], scores: np.ndarray, losses: np.ndarray | None
) -> None:
    """Apply score-log entries, oldest first, to full (n,) score/loss columns in place.

    Later entries win: NumPy's assignment through an index array that repeats a
    position keeps the last value (documented behaviour for 1-D arrays)."""
    if not entries:
        return
    log = np.frombuffer(b"".join(entries), dtype=layout.log_dtype)
    idx = log["i"].astype(np.intp)
    scores[idx] = log["s"]
    if losses is not None and layout.loss_column:
        losses[idx] = log["l"]


class _RespClient:
    """A minimal async RESP2 client for the two hot scripts (gather, scatter).

    Commands are packed by hand (big arguments are written without copying) and
    replies parsed by ``hiredis.Reader``: redis-py's generic command path costs
    more per call than the whole read-modify-write of a small report. Every
    other command goes through redis-py. Errors map to redis-py's exception
    classes, so callers see one error vocabulary. A connection error is retried
    once on a fresh connection: both scripts are safe to run twice.
    """

    def __init__(self, url: str, *, timeout_s: float, max_idle: int = 64) -> None:
        from urllib.parse import parse_qs, unquote, urlsplit

        u = urlsplit(url)
        if u.scheme not in ("redis", "unix"):
            raise ValueError(f"fast path supports redis:// and unix:// URLs, not {u.scheme}://")
        self.path = unquote(u.path) if u.scheme == "unix" else None
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.password = unquote(u.password) if u.password else None
        self.username = unquote(u.username) if u.username else None
        db = parse_qs(u.query).get("db", [None])[0]
        if db is None and u.scheme == "redis" and u.path.strip("/"):
            db = u.path.strip("/")
        self.db = int(db) if db else 0
        self.timeout_s = timeout_s
        self.max_idle = max_idle
        #: Connection failures seen: a Redis restart shows up here (the record caches
        #: of the engine start over when it moves).
        self.resets = 0
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]] = []

    @staticmethod
    def pack(args: Sequence[bytes | str | int | float | memoryview]) -> list[bytes]:
        parts: list[bytes] = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, bytes):
                b = a
            elif isinstance(a, str):
                b = a.encode()
            elif isinstance(a, memoryview | bytearray):
                # big values (draws) are passed as views: written out without a copy
                v = memoryview(a).cast("B")
                parts += (b"$%d\r\n" % v.nbytes, v, b"\r\n")  # type: ignore[arg-type]
                continue
            else:
                b = repr(a).encode()
            if len(b) > 4096:
                parts.append(b"$%d\r\n" % len(b))
                parts.append(b)
                parts.append(b"\r\n")
            else:
                parts.append(b"$%d\r\n%b\r\n" % (len(b), b))
        return parts

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
        import hiredis

        if self.path is not None:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=1 << 22)
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        conn = (reader, writer, hiredis.Reader())
        setup: list[list[bytes | str | int | float]] = []
        if self.password:
            setup.append(
                ["AUTH", self.username, self.password] if self.username else ["AUTH", self.password]
            )
        if self.db:
            setup.append(["SELECT", self.db])
        for cmd in setup:
            (reply,) = await self._roundtrip(conn, self.pack(cmd))
            if isinstance(reply, Exception):
                writer.close()
                raise RedisConnectionError(f"Redis refused {cmd[0]!r}: {reply}")
        return conn

    @staticmethod
    async def _roundtrip(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter, Any],
        parts: list[bytes],
        count: int = 1,
    ) -> list[Any]:
        reader, writer, parser = conn
        writer.writelines(parts)
        await writer.drain()
        replies: list[Any] = []
        while len(replies) < count:
            reply = parser.gets()
            if reply is not False:
                replies.append(reply)
                continue
            data = await reader.read(1 << 20)
            if not data:
                raise ConnectionResetError("Redis closed the connection")
            parser.feed(data)
        return replies

    async def _exchange(self, parts: list[bytes], count: int) -> list[Any]:
        """Send packed commands, read ``count`` replies. A broken connection is retried
        once on a fresh one (after a Redis restart every pooled connection is dead:
        they are all dropped)."""
        for attempt in (0, 1):
            conn = self._idle.pop() if self._idle else None
            try:
                if conn is None:
                    conn = await asyncio.wait_for(self._open(), self.timeout_s)
                async with asyncio.timeout(self.timeout_s):
                    replies = await self._roundtrip(conn, parts, count)
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
                if conn is not None:
                    conn[1].close()
                while self._idle:
                    self._idle.pop()[1].close()
                self.resets += 1  # Redis may have restarted (and lost writes): see Engine
                if attempt == 0:
                    continue
                raise RedisConnectionError(f"Redis connection failed: {e}") from e
            except TimeoutError as e:
                if conn is not None:
                    conn[1].close()
                raise RedisTimeoutError(f"Redis did not answer within {self.timeout_s} s") from e
            except BaseException:
                if conn is not None:  # cancelled mid-reply: the connection is out of sync
                    conn[1].close()
                raise
            if len(self._idle) < self.max_idle:
                self._idle.append(conn)
            else:
                conn[1].close()
            return replies
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_for(reply: Any) -> None:
        import hiredis

        if isinstance(reply, hiredis.ReplyError):
            text = str(reply)
            if text.startswith(("LOADING", "BUSY", "MASTERDOWN")):
                raise RedisBusyLoadingError(text)
            if text.startswith("NOSCRIPT"):
                raise NoScriptError(text)
            raise ResponseError(text)

    async def call(self, args: Sequence[bytes | str | int | float | memoryview]) -> Any:
        """Send one command, return its reply (an error reply raises)."""
        (reply,) = await self._exchange(self.pack(args), 1)
        self._raise_for(reply)
        return reply

    async def call_many(
        self, commands: Sequence[Sequence[bytes | str | int | float | memoryview]]
    ) -> list[Any]:
        """Pipeline several commands on one connection; an error reply raises."""
        replies = await self._exchange(
            [p for cmd in commands for p in self.pack(cmd)], len(commands)
        )
        for reply in replies:
            self._raise_for(reply)
        return replies

    async def close(self) -> None:
        while self._idle:
            self._idle.pop()[1].close()


class Store:
    """Async access to the state of every run. Stateless itself: safe to share per process."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        dedup_ttl_s: float = 7 * 86400.0,
        fast_url: str | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.redis = redis
        self.dedup_ttl_s = dedup_ttl_s
        self._create = redis.register_script(_script("create"))
        self._gather = redis.register_script(_script("gather"))
        self._scatter = redis.register_script(_script("scatter"))
        self._commit = redis.register_script(_script("commit_epoch"))
        self._compact = redis.register_script(_script("compact"))
        self._claim = redis.register_script(_script("claim"))
        self._fast: _RespClient | None = None
        if fast_url is not None:
            try:
                self._fast = _RespClient(fast_url, timeout_s=timeout_s)
            except ValueError:  # e.g. rediss://: the hot path uses redis-py too
                self._fast = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = 30.0,
        max_connections: int = 64,
        dedup_ttl_s: float = 7 * 86400.0,
    ) -> Store:
        # redis-py re-sends a command after a connection error or timeout; every
        # script here is safe to re-run (dedup marker, compare-and-set, first-wins).
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=min(timeout_s, 5.0),
            max_connections=max_connections,
            health_check_interval=30,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        return cls(client, dedup_ttl_s=dedup_ttl_s, fast_url=url, timeout_s=timeout_s)

    async def load_scripts(self) -> None:
        """Load every Lua script (EVALSHA later; redis-py reloads after a Redis restart)."""
        for s in (
            self._create,
            self._gather,
            self._scatter,
            self._commit,
            self._compact,
            self._claim,
        ):
            s.sha = await self.redis.script_load(s.script)

    async def ping(self) -> bool:
        return bool(await self.redis.ping())

    @property
    def resets(self) -> int:
        """How many times the hot path's connections to Redis failed (0 without it): a
        Redis restart moves this, and a record cache must not outlive one."""
        return self._fast.resets if self._fast is not None else 0

    async def close(self) -> None:
        if self._fast is not None:
            await self._fast.close()
        await self.redis.aclose()

    async def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA a hot script through the fast client (redis-py's Script otherwise)."""
        if self._fast is None:
            return await script(keys=list(keys), args=list(args))
        cmd = ["EVALSHA", script.sha, len(keys), *keys, *args]
        try:
            return await self._fast.call(cmd)
        except NoScriptError:  # Redis restarted (or SCRIPT FLUSH): load it again, once
            await self._fast.call(["SCRIPT", "LOAD", script.script])
            return await self._fast.call(cmd)

    # -- runs -----------------------------------------------------------------------------
    async def create_run(
        self, layout: RunLayout, config_json: str, uid: str, created_at: float
    ) -> tuple[int, str, str | None]:
        """Create the run once. Returns (0 created | 1 same config | 2 other config, uid, stored config)."""
        n = layout.num_samples
        per = layout.col_per_chunk
        col_keys = (*layout.score_keys, *layout.loss_keys)
        sizes = [hi - lo for _, lo, hi in _ranges(0, n, per)]
        counts = sizes * (len(col_keys) // len(sizes))
        res = await self._create(
            keys=[layout.meta_key, *col_keys],
            args=[config_json, uid, repr(created_at), layout.to_json(), _NAN32, *counts],
        )
        status = int(res[0])
        stored_uid = _s(res[1])
        stored = _s(res[2]) if len(res) > 2 else None
        if status == 0:
            await self.redis.sadd(RUNS_INDEX, layout.run_id)
        return status, stored_uid, stored

    async def run_meta(self, run_id: str) -> dict[str, str] | None:
        """The run's meta hash (decoded), or None when the run does not exist."""
        raw = await self.redis.hgetall(f"{run_prefix(run_id)}:meta")
        if not raw or b"config" not in raw:
            return None
        return {_s(k): _s(v) for k, v in raw.items()}

    async def run_metas(
        self, run_ids: list[str]
    ) -> list[tuple[dict[str, str] | None, dict[str, int]]]:
        """Meta and counters of several runs in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hgetall(f"{run_prefix(rid)}:meta")
            pipe.hgetall(f"{run_prefix(rid)}:counters")
        raw = await pipe.execute()
        out: list[tuple[dict[str, str] | None, dict[str, int]]] = []
        for j in range(len(run_ids)):
            meta, counters = raw[2 * j], raw[2 * j + 1]
            m = {_s(k): _s(v) for k, v in meta.items()} if meta and b"config" in meta else None
            out.append((m, _counters(counters)))
        return out

    async def count_duplicate(self, layout: RunLayout, count: int = 1) -> None:
        await self.redis.hincrby(layout.counters_key, "duplicates", count)

    async def counters(self, layout: RunLayout) -> dict[str, int]:
        """Every counter of the run (see ``_counters``)."""
        return _counters(await self.redis.hgetall(layout.counters_key))

    async def list_run_ids(self) -> list[str]:
        return sorted(_s(m) for m in await self.redis.smembers(RUNS_INDEX))

    async def forget_run_id(self, run_id: str) -> None:
        await self.redis.srem(RUNS_INDEX, run_id)

    async def delete_run(self, layout: RunLayout) -> int:
        """Drop every key of the run (known keys, then a SCAN sweep of its hash tag)."""
        deleted = int(await self.redis.unlink(*layout.static_keys()))
        # Epoch index chunks and anything a future layout adds: sweep the prefix.
        # The run id alphabet [A-Za-z0-9_.-] has no glob characters.
        batch: list[bytes] = []
        async for key in self.redis.scan_iter(match=f"{layout.prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += int(await self.redis.unlink(*batch))
                batch = []
        if batch:
            deleted += int(await self.redis.unlink(*batch))
        await self.redis.srem(RUNS_INDEX, layout.run_id)
        return deleted

    async def run_keys(self, layout: RunLayout) -> list[str]:
        """Every key of the run that exists (tests and tools use this)."""
        return sorted(
            [_s(k) async for k in self.redis.scan_iter(match=f"{layout.prefix}:*", count=1000)]
        )

    # -- epochs ---------------------------------------------------------------------------
    async def _transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of ``commands`` run in one MULTI/EXEC: a consistent snapshot. Through
        the fast client when there is one (it reads big replies 1 MB at a time; redis-py
        64 KB), else a redis-py transaction."""
        if self._fast is not None:
            replies = await self._fast.call_many([["MULTI"], *commands, ["EXEC"]])
            return list(replies[-1])
        pipe = self.redis.pipeline(transaction=True)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(await pipe.execute())

    async def draw_inputs(self, layout: RunLayout, *, losses: bool) -> DrawInputs:
        """One MULTI/EXEC snapshot of last_epoch and the columns a draw reads, with the
        score log folded into the score (and loss) column (see :meth:`scatter`).

        The columns are read-only views of the replies (no copy) unless the log had to
        be folded into them."""
        cmds: list[list[Any]] = [
            ["HMGET", layout.meta_key, "uid", "last_epoch", "log_base"],
            ["LRANGE", layout.scorelog_key, 0, -1],
        ]
        cmds += [["GET", k] for k in layout.score_keys]
        cmds += [["GET", k] for k in (layout.loss_keys if losses else ())]
        cmds += [["GET", k] for k in layout.drawn_keys]
        cmds += [["GET", k] for k in layout.incl_keys]
        raw = await self._transaction(cmds)
        uid_b, last_b, base_b = raw[0]
        log: list[bytes] = raw[1]
        pos = 2
        n = layout.num_samples

        def column(keys: tuple[str, ...], dtype: str, fill: float, writable: bool) -> np.ndarray:
            nonlocal pos
            parts = raw[pos : pos + len(keys)]
            pos += len(keys)
            one = len(parts) == 1 and parts[0] is not None
            arr = np.frombuffer(parts[0] if one else b"".join(p or b"" for p in parts), dtype)
            if arr.shape[0] < n:  # a column chunk never written (drawn/incl are lazy)
                arr = np.concatenate([arr, np.full(n - arr.shape[0], fill, dtype=dtype)])
            arr = arr[:n]
            return arr.copy() if writable and not arr.flags.writeable else arr

        sc = column(layout.score_keys, "<f4", np.nan, bool(log))
        ls = None
        if losses and layout.loss_column:
            ls = column(layout.loss_keys, "<f4", np.nan, bool(log))
        dr = column(layout.drawn_keys, "<u2", 0, False)
        inc = column(layout.incl_keys, "<f4", 0.0, False) if layout.exp3 else None
        fold_log(layout, log, sc, ls)
        return DrawInputs(
            uid=_s(uid_b) if uid_b is not None else None,
            last_epoch=int(last_b) if last_b is not None else -1,
            scores=sc,
            losses=ls,
            drawn=dr,
            inclusion=inc,
            log_base=int(base_b) if base_b is not None else 0,
            log_count=len(log),
        )

    async def compact(self, layout: RunLayout, uid: str, snap: DrawInputs) -> int:
        """Write the score (and loss) column of a snapshot back and drop the log entries
        it folded in. Returns 1, or 0 when another process compacted meanwhile (nothing
        changes then: its columns already hold these entries); see lua/compact.lua."""
        if snap.log_count == 0 or snap.scores is None:
            return 1
        nonce = uuid.uuid4().hex[:12]
        finals = list(layout.score_keys)
        values = _chunk_views(snap.scores, "<f4", layout.col_per_chunk)
        if layout.loss_column and snap.losses is not None:
            finals += layout.loss_keys
            values += _chunk_views(snap.losses, "<f4", layout.col_per_chunk)
        temps = [f"{k}:tmp:{nonce}" for k in finals]
        await self._set_many(temps, values)
        keys = [layout.meta_key, layout.scorelog_key, *finals, *temps]
        args = [uid, snap.log_base, snap.log_count, len(finals)]
        return int(await self._run(self._compact, keys, args))

    async def _set_many(self, keys: Sequence[str], values: Sequence[bytes | memoryview]) -> None:
        """SET each key (expiring in 10 min: temporary keys a crash would leave behind)."""
        writes: list[list[Any]] = [
            ["SET", k, v, "PX", 600_000] for k, v in zip(keys, values, strict=True)
        ]
        if self._fast is not None:
            await self._fast.call_many(writes)
            return
        pipe = self.redis.pipeline(transaction=False)
        for k, v in zip(keys, values, strict=True):
            pipe.set(k, v, px=600_000)
        await pipe.execute()

    async def commit_epoch(
        self,
        layout: RunLayout,
        uid: str,
        epoch: int,
        epoch_json: str,
        indices: np.ndarray,
        drawn: np.ndarray,
        inclusion: np.ndarray | None,
        drop_epoch: tuple[int, int] | None,
        *,
        weights: np.ndarray | None = None,
    ) -> int:
        """Store epoch ``epoch`` if nobody did yet. Returns the script's status (see commit_epoch.lua).

        The big values (indices: 8 bytes per sample; selection counts; Exp3 inclusion)
        are first written with plain SETs to temporary keys (expiring, in case this
        process dies here), then one small script checks that the epoch is still
        free and next in order and RENAMEs them into place, or deletes them. Passing
        100 MB through a script's ARGV would copy it three times inside Redis.
        """
        nonce = uuid.uuid4().hex[:12]
        idx_parts = _chunk_views(indices, "<i8", layout.idx_per_chunk)
        idx_keys = layout.epoch_keys(epoch, int(indices.shape[0]))
        drawn_parts = _chunk_views(drawn, "<u2", layout.drawn_per_chunk)
        incl_parts: list[bytes | memoryview] = []
        if layout.exp3 and inclusion is not None:
            incl_parts = _chunk_views(inclusion, "<f4", layout.col_per_chunk)
        finals = [*idx_keys, *layout.drawn_keys, *layout.incl_keys[: len(incl_parts)]]
        values = [*idx_parts, *drawn_parts, *incl_parts]
        if weights is not None:  # beside the indices, chunked the same way
            if weights.shape != indices.shape:
                raise ValueError(f"weights {weights.shape} must match indices {indices.shape}")
            finals += layout.weight_keys(epoch, int(indices.shape[0]))
            values += _chunk_views(weights, "<f4", layout.idx_per_chunk)
        temps = [f"{k}:tmp:{nonce}" for k in finals]
        drop: tuple[str, ...] = ()
        if drop_epoch is not None:  # an old epoch's indices, and its weights if it had any
            drop = (*layout.epoch_keys(*drop_epoch), *layout.weight_keys(*drop_epoch))
        await self._set_many(temps, values)
        keys = [layout.meta_key, layout.epochs_key, *finals, *temps, *drop]
        args: list[Any] = [uid, epoch, epoch_json, len(finals), len(drop)]
        return int(await self._run(self._commit, keys, args))

    async def epoch_json(self, layout: RunLayout, epoch: int) -> str | None:
        raw = await self.redis.hget(layout.epochs_key, str(epoch))
        return _s(raw) if raw is not None else None

    async def epochs_json(self, layout: RunLayout) -> dict[int, str]:
        raw = await self.redis.hgetall(layout.epochs_key)
        return {int(k): _s(v) for k, v in raw.items()}

    async def read_indices(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None:
        """int64 bytes of epoch ``epoch``'s indices [start, stop); None when they were dropped."""
        return await self._read_slice(
            layout.epoch_keys(epoch, size), layout.idx_per_chunk, 8, start, stop
        )

    async def read_weights(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None:
        """float32 bytes of epoch ``epoch``'s weights [start, stop); None when they were dropped."""
        return await self._read_slice(
            layout.weight_keys(epoch, size), layout.idx_per_chunk, 4, start, stop
        )

    async def _read_slice(
        self, keys: tuple[str, ...], per_chunk: int, itemsize: int, start: int, stop: int
    ) -> bytes | None:
        if stop <= start:
            return b"" if await self.redis.exists(keys[0]) else None
        pipe = self.redis.pipeline(transaction=False)
        for k, lo, hi in _ranges(start, stop, per_chunk):
            pipe.getrange(keys[k], itemsize * lo, itemsize * hi - 1)
        data = b"".join(await pipe.execute())
        return data if len(data) == itemsize * (stop - start) else None

    async def read_records(self, layout: RunLayout, start: int, stop: int) -> np.ndarray:
        """Records [start, stop) as a structured array (never-written ones are zeros)."""
        rs = layout.rec_size
        pipe = self.redis.pipeline(transaction=False)
        pieces = _ranges(start, stop, layout.rec_per_chunk)
        keys = layout.rec_keys
        for k, lo, hi in pieces:
            pipe.getrange(keys[k], rs * lo, rs * hi - 1)
        raw = await pipe.execute()
        parts = []
        for (_, lo, hi), data in zip(pieces, raw, strict=True):
            want = rs * (hi - lo)
            parts.append(data + b"\0" * (want - len(data)) if len(data) < want else data)
        return np.frombuffer(b"".join(parts), dtype=layout.rec_dtype)

    async def current_scores(self, layout: RunLayout) -> np.ndarray:
        """The whole score column with the score log folded in (what a draw would see)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.lrange(layout.scorelog_key, 0, -1)
        for k in layout.score_keys:
            pipe.get(k)
        raw = await pipe.execute()
        n = layout.num_samples
        sc = np.frombuffer(b"".join(p or b"" for p in raw[1:]), dtype="<f4")[:n].copy()
        if sc.shape[0] < n:
            sc = np.concatenate([sc, np.full(n - sc.shape[0], np.nan, "<f4")])
        fold_log(layout, raw[0], sc, None)
        return sc

    async def read_column(self, layout: RunLayout, name: str, start: int, stop: int) -> np.ndarray:
        """Values [start, stop) of a stored column: 'score', 'loss' (float32, WITHOUT the
        score log: see :meth:`current_scores`) or 'drawn' (uint16)."""
        if name == "drawn":
            keys, dtype, per, fill = layout.drawn_keys, "<u2", layout.drawn_per_chunk, 0.0
        elif name == "score":
            keys, dtype, per, fill = layout.score_keys, "<f4", layout.col_per_chunk, np.nan
        elif name == "loss" and layout.loss_column:
            keys, dtype, per, fill = layout.loss_keys, "<f4", layout.col_per_chunk, np.nan
        else:
            raise KeyError(f"no column {name!r} in this run")
        w = np.dtype(dtype).itemsize
        pipe = self.redis.pipeline(transaction=False)
        pieces = _ranges(start, stop, per)
        for k, lo, hi in pieces:
            pipe.getrange(keys[k], w * lo, w * hi - 1)
        raw = await pipe.execute()
        parts = []
        for (_, lo, hi), data in zip(pieces, raw, strict=True):
            got = np.frombuffer(data, dtype=dtype)
            if got.shape[0] < hi - lo:
                got = np.concatenate([got, np.full(hi - lo - got.shape[0], fill, dtype=dtype)])
            parts.append(got)
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    async def write_column(self, layout: RunLayout, name: str, values: np.ndarray) -> None:
        """Overwrite a whole float32 column ('score' or 'loss'). For tools and the benchmark
        (e.g. to time a draw over realistic scores without reporting n samples first);
        records are not touched, so the column and the records disagree afterwards."""
        keys = {"score": layout.score_keys, "loss": layout.loss_keys}.get(name)
        if not keys:
            raise KeyError(f"no float32 column {name!r} in this run")
        data = np.ascontiguousarray(values, dtype="<f4")
        if data.shape != (layout.num_samples,):
            raise ValueError(f"{name} must have shape ({layout.num_samples},), got {data.shape}")
        parts = _chunks_of(data.tobytes(), 4, layout.col_per_chunk)
        pipe = self.redis.pipeline(transaction=True)
        for key, part in zip(keys, parts, strict=True):
            pipe.set(key, part)
        pipe.delete(layout.scorelog_key)  # older log entries would override the new column
        await pipe.execute()

    # -- reports --------------------------------------------------------------------------
    async def gather(
        self,
        layout: RunLayout,
        uid: str,
        report_ids: str | Sequence[str],
        indices: np.ndarray,
    ) -> Gathered:
        """Read the records (and Exp3 inclusion) of these samples, unless one of the
        reports was already applied; see lua/gather.lua."""
        ids = [report_ids] if isinstance(report_ids, str) else list(report_ids)
        incl_keys = layout.incl_keys
        res = await self._run(
            self._gather,
            [layout.meta_key, layout.reports_key, *layout.rec_keys, *incl_keys],
            [
                uid,
                _f64_indices(indices),
                layout.rec_size,
                layout.rec_per_chunk,
                len(layout.rec_keys),
                len(incl_keys),
                layout.col_per_chunk,
                *ids,
            ],
        )
        status = int(res[0])
        if status != 1:
            last = int(res[1]) if len(res) > 1 else -1
            dups = tuple(int(j) - 1 for j in res[2:])
            return Gathered(status, last, None, None, dups)
        records = np.frombuffer(bytearray(res[2]), dtype=layout.rec_dtype)
        incl = np.frombuffer(res[3], dtype="<f4") if incl_keys else None
        return Gathered(status, int(res[1]), records, incl)

    async def claim(self, layout: RunLayout, uid: str, token: str) -> int:
        """Take the run's write lease for ``token`` (1), or -1: the run is gone or was
        re-created. See lua/claim.lua and lua/scatter.lua."""
        return int(await self._run(self._claim, [layout.meta_key], [uid, token]))

    async def last_epoch(self, layout: RunLayout) -> int:
        raw = await self.redis.hget(layout.meta_key, "last_epoch")
        return int(raw) if raw is not None else -1

    async def scatter(
        self,
        layout: RunLayout,
        uid: str,
        report_id: str | Sequence[str],
        *,
        now: float,
        indices: np.ndarray,
        expected: np.ndarray,
        write: np.ndarray,
        records: np.ndarray,
        scores: np.ndarray,
        losses: np.ndarray,
        counters: tuple[int, int, int, int, int],
        token: str = "",
    ) -> Applied:
        """Apply one or more reports' writes atomically; see lua/scatter.lua for the contract.

        ``report_id`` is one id, or the ids of several reports whose samples follow
        each other in ``indices`` (no index twice). ``expected`` are the (S,) records
        the new state was computed from (their lr-sum and visits are compared, unless
        ``token`` is the run's current write lease), ``write`` the (S,) mask of samples
        to write, ``records``/``scores``/``losses`` the new values of those samples, in
        order; ``counters`` the sums over the reports.

        The records are written in place; the new scores (and losses) go to the
        run's score log as ONE entry appended per call, not S writes into the
        score column: a ``redis.call`` costs microseconds, and the column is only
        read by draws and stats, which fold the log in (:func:`fold_log`) and
        compact it (:meth:`compact`).
        """
        ids = [report_id] if isinstance(report_id, str) else list(report_id)
        rs = layout.rec_size
        idx = np.asarray(indices)
        exp = np.ascontiguousarray(expected)
        # the heads travel even with a lease: the script compares them when it was revoked
        heads = exp.view(np.uint8).reshape(-1, rs)[:, :CAS_BYTES]
        log = np.empty(int(np.count_nonzero(write)), dtype=layout.log_dtype)
        log["i"] = idx[write]
        log["s"] = scores
        if layout.loss_column:
            log["l"] = losses
        res = await self._run(
            self._scatter,
            [
                layout.meta_key,
                layout.reports_key,
                layout.counters_key,
                layout.scorelog_key,
                *layout.rec_keys,
            ],
            [
                uid,
                token,
                repr(now),
                repr(now - self.dedup_ttl_s),
                _f64_indices(idx),
                rs,
                layout.rec_per_chunk,
                np.ascontiguousarray(heads).tobytes(),
                CAS_BYTES,
                np.where(write, np.uint8(49), np.uint8(48)).astype(np.uint8).tobytes(),
                np.ascontiguousarray(records).tobytes(),
                log.tobytes(),
                ",".join(str(int(v)) for v in counters),
                *ids,
            ],
        )
        if isinstance(res, list):
            if int(res[0]) == 0:
                return Applied(0, duplicates=tuple(int(j) - 1 for j in res[1:]))
            current = np.frombuffer(bytearray(res[1]), dtype=layout.rec_dtype)
            return Applied(2, tuple(int(j) - 1 for j in res[2:]), current)
        status = int(res)
        if status == 3:
            return Applied(1)
        return Applied(status, leased=status == 1)
