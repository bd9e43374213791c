"""The one module that talks to Redis: :class:`RedisStore`, the engine's
:class:`~docl.services.storage.Store` on Redis (with its RESP client, ``resp.py``).

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

On a Redis Cluster (a ``redis+cluster://`` URL, :meth:`RedisStore.from_url`) every
command, script and MULTI names the keys of one run, so it runs on the node that owns
the run's slot; see :class:`RedisStore` and docs/scaling.md.

A record is fixed-width; its format is in ``layout.py`` (:class:`RunLayout`).
Records are created lazily: a chunk grows as samples are first written, and a
record that was never written reads as zeros (visits = 0: never seen). The
score and loss columns are NaN-filled when the run is created.

Every write of a report happens in one Lua script (``lua/scatter.lua``) that
checks the report's dedup marker and compares each sample's stored (lr_sum,
visits) with what was read at gather time — a compare-and-set — before writing
anything; see docs/architecture.md for why this and not MULTI/EXEC.

Size: over the house's ~500 lines: one class, :class:`RedisStore`, one method per
store operation (each a Redis round trip or a Lua script call with its argument
packing). The pure layout (``layout.py``), the protocol and result types
(``storage.py``) and the RESP client (``resp.py``) are already out; what is left is
the one module that talks to Redis, kept whole so that rule stays checkable.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from docl.services import storage
from docl.services.layout import (
    CAS_BYTES,
    COUNTER_FIELDS,
    RUNS_INDEX,
    RunLayout,
    fold_log,
    run_prefix,
)

# Re-exported for callers written before layout.py (import them from there).
from docl.services.layout import DRAWN_MAX as DRAWN_MAX
from docl.services.layout import RECORD_HEAD as RECORD_HEAD
from docl.services.resp import RespClient
from docl.services.storage import (
    Applied,
    ClaimStatus,
    CommitStatus,
    CompactStatus,
    CreateStatus,
    DrawInputs,
    Gathered,
    GatherStatus,
    ScatterStatus,
)

__all__ = [
    "CLUSTER_SCHEMES",
    "ClusterStateError",
    "NotReplicated",
    "RedisStore",
    "ShardUnavailable",
    "Store",
    "cluster_url",
]

#: URL schemes of a Redis Cluster -> the scheme redis-py's client takes for one of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


class ClusterStateError(RuntimeError):
    """The Redis Cluster answers but is not serving (``cluster_state`` is not ``ok``:
    slots not covered, a primary down without a replica): a configuration error."""


class NotReplicated(RedisError):
    """A write was applied on the primary but fewer replicas than ``wait_replicas``
    acknowledged it within ``wait_ms`` (``WAIT``): it could still be lost in a failover.
    The server answers 503; the client re-sends with the same report id (deduplicated)."""

    def __init__(
        self, acked: int, wanted: int, wait_ms: int, why: str = "", where: str = ""
    ) -> None:
        what = why or f"only {acked} of {wanted} replica(s) acknowledged it within {wait_ms} ms"
        primary = f"the primary of {where}" if where else "the primary"
        super().__init__(
            f"the report was applied on {primary} but {what} (DOCL_REDIS_WAIT_REPLICAS="
            f"{wanted}, DOCL_REDIS_WAIT_MS={wait_ms}); re-send it with the same report_id"
        )
        self.acked, self.wanted, self.wait_ms, self.why = acked, wanted, wait_ms, why
        self.where = where

    def __reduce__(self) -> tuple[type[NotReplicated], tuple[int, int, int, str, str]]:
        # args holds the message, not the constructor's arguments: pickle (Ray, a
        # process pool) must rebuild it from the fields
        return type(self), (self.acked, self.wanted, self.wait_ms, self.why, self.where)


class ShardUnavailable(RedisError):
    """A shard of a sharded run could not be read or written: the Redis node serving its
    slot is unreachable, failing over or refusing the call. A sharded run takes a report
    (or draws) only while every shard it touches is served, so one down primary stalls
    it; the server answers 503 naming the shard (never its address) and counts it in
    ``docl_shard_unavailable_total{reason}``. ``reason``: ``unreachable``, ``failover``
    (the cluster is moving the slot), ``refused`` (Redis refuses writes) or ``error``."""

    def __init__(self, run_id: str, shard: int, shards: int, reason: str, kind: str) -> None:
        super().__init__(
            f"shard {shard} of {shards} of run {run_id!r} is unavailable ({reason}: {kind}): "
            "a sharded run waits for the Redis primary of every shard a request touches "
            '(docs/scaling.md, "Failover"); retry shortly'
        )
        self.run_id, self.shard, self.shards, self.reason, self.kind = (
            run_id,
            shard,
            shards,
            reason,
            kind,
        )

    def __reduce__(self) -> tuple[type[ShardUnavailable], tuple[str, int, int, str, str]]:
        return type(self), (self.run_id, self.shard, self.shards, self.reason, self.kind)


def _shard_error(layout: RunLayout, shard: int, e: BaseException) -> BaseException:
    """What a failed shard part of a sharded run raises: NotReplicated naming the shard,
    ShardUnavailable for a store failure, anything else (a bug, a cancellation) as it is."""
    from redis.exceptions import (
        ClusterDownError,
        ClusterError,
        OutOfMemoryError,
        ReadOnlyError,
        TryAgainError,
    )

    where = f"shard {shard} of {layout.shards}"
    if isinstance(e, NotReplicated):
        return NotReplicated(e.acked, e.wanted, e.wait_ms, e.why, e.where or where)
    if isinstance(e, ShardUnavailable) or not isinstance(e, RedisError | RedisClusterException):
        return e
    if isinstance(e, RedisConnectionError | RedisTimeoutError):
        reason = "unreachable"
    elif (
        isinstance(e, ClusterDownError | ClusterError | TryAgainError | RedisClusterException)
        or (isinstance(e, ResponseError) and _redirected(e))
        or str(e).startswith(("CLUSTERDOWN", "MASTERDOWN"))
    ):
        reason = "failover"
    elif isinstance(e, OutOfMemoryError | ReadOnlyError):
        reason = "refused"
    else:
        return e  # an error reply we did not expect: a bug (500), not a shard down
    return ShardUnavailable(layout.run_id, shard, layout.shards, reason, type(e).__name__)


async def _all_parts(layout: RunLayout, calls: Sequence[tuple[int, Any]]) -> list[Any]:
    """Await every shard part ``(shard, awaitable)`` to its end — none is left running
    behind an error (a part still in flight could land after the caller gave up and
    started over) — then raise the first failure as :func:`_shard_error` names it."""
    got = await asyncio.gather(*(c for _, c in calls), return_exceptions=True)
    for (j, _), g in zip(calls, got, strict=True):
        if isinstance(g, BaseException):
            raise _shard_error(layout, j, g) from g
    return list(got)


def cluster_url(url: str) -> str | None:
    """The redis-py URL of a node of a ``redis+cluster://`` (``rediss+cluster://``) URL,
    None for any other URL."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}://{rest}" if sep and plain else None


#: what a fast-path call may raise that :meth:`RedisStore._hand_over` may pass to redis-py
_FAST_PATH_ERRORS = (ResponseError, RedisConnectionError, RedisTimeoutError)


def _redirected(e: ResponseError) -> bool:
    """A MOVED/ASK/TRYAGAIN reply: the slot is (being) served by another node."""
    return str(e).startswith(("MOVED", "ASK", "TRYAGAIN"))


_NAN32 = np.array([np.nan], dtype="<f4").tobytes()


def _script(name: str) -> str:
    return resources.files("docl.services").joinpath("lua", f"{name}.lua").read_text()


def _counters(raw: dict[Any, Any]) -> dict[str, int]:
    """A counters hash as ints; a counter never incremented reads 0 (the scatter
    script skips ``HINCRBY`` by zero, so a field may be absent from the hash)."""
    out = dict.fromkeys(COUNTER_FIELDS, 0)
    out.update({_s(k): int(v) for k, v in raw.items()})
    return out


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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


def _sweep_pattern(layout: RunLayout) -> str:
    """SCAN pattern of every key of the run: ``{run:<id>}:*``, and of a sharded run also
    its shards' ``{run:<id>:<j>.<salt>}:*`` (a run id has no ':' or '}', so no other run's
    keys match)."""
    if layout.shards > 1:
        return f"{{run:{layout.run_id}[:}}]*"
    return f"{layout.prefix}:*"


def _column(parts: Sequence[bytes | None], n: int, dtype: str, fill: float) -> np.ndarray:
    """A column of n values from its chunks' GET replies: a read-only view of the reply
    when it is one chunk; chunks never written (drawn/incl are lazy) read as ``fill``."""
    one = len(parts) == 1 and parts[0] is not None
    arr = np.frombuffer(parts[0] if one else b"".join(p or b"" for p in parts), dtype)  # type: ignore[arg-type]
    if arr.shape[0] < n:
        arr = np.concatenate([arr, np.full(n - arr.shape[0], fill, dtype=dtype)])
    return arr[:n]


def _sizes(ids: Sequence[str], indices: np.ndarray, sizes: Sequence[int] | None) -> list[int]:
    """Samples per report: ``sizes``, or all of them for one report."""
    if sizes is not None:
        return [int(z) for z in sizes]
    if len(ids) != 1:
        raise ValueError("a sharded run's gather/scatter of several reports needs their sizes")
    return [int(np.asarray(indices).shape[0])]


def _whole_duplicates(
    count: int, parts: Sequence[tuple[int, np.ndarray, list[int]]], applied: Sequence[set[int]]
) -> tuple[int, ...]:
    """Reports (of ``count``) whose marker every shard they touch has: ``applied[k]`` the
    reports found applied on the shard of ``parts[k]``."""
    touched: dict[int, int] = {}
    seen: dict[int, int] = {}
    for (_, _, reps), done in zip(parts, applied, strict=True):
        for r in reps:
            touched[r] = touched.get(r, 0) + 1
            seen[r] = seen.get(r, 0) + (r in done)
    return tuple(r for r in range(count) if touched.get(r, 0) and seen[r] == touched[r])


def _f64_indices(indices: np.ndarray) -> bytes:
    # Lua numbers are doubles; struct.unpack('<d') is the cheapest way to read them there.
    return np.ascontiguousarray(indices, dtype="<f8").tobytes()


class RedisStore:
    """Async access to the state of every run, on Redis: the :class:`~docl.services.storage.Store`
    the engine uses. Stateless itself: safe to share per process.

    On a Redis Cluster (``redis`` a :class:`RedisCluster`, :meth:`from_url` with a
    ``redis+cluster://`` URL) every command and script touches the keys of one run, which
    share the slot of its hash tag, so each runs on the node owning that slot; the hot path
    (``RespClient``) keeps one client per node and sends a run's commands to the node the
    cluster client's slot table names. A MOVED/ASK reply (slots moving) sends that call
    through redis-py instead, which follows the redirection and refreshes the table.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        *,
        dedup_ttl_s: float = 7 * 86400.0,
        fast_url: str | None = None,
        timeout_s: float = 30.0,
        wait_replicas: int = 0,
        wait_ms: int = 1000,
    ) -> None:
        if wait_replicas < 0 or wait_ms < 1:
            raise ValueError("wait_replicas must be >= 0 and wait_ms >= 1 (WAIT 0 blocks forever)")
        if wait_replicas and wait_ms >= 1000 * timeout_s:
            raise ValueError(
                f"wait_ms ({wait_ms}, DOCL_REDIS_WAIT_MS) must be below the Redis command "
                f"timeout ({timeout_s} s, DOCL_REDIS_TIMEOUT_S): a WAIT would time out first"
            )
        self.redis = redis
        #: after each report's script: WAIT for this many replicas (0: do not wait), wait_ms
        self.wait_replicas = wait_replicas
        self.wait_ms = wait_ms
        self.cluster: RedisCluster | None = redis if isinstance(redis, RedisCluster) else None
        self._timeout_s = timeout_s
        self._fast_url = fast_url
        self._fast_nodes: dict[str, RespClient] = {}
        self.dedup_ttl_s = dedup_ttl_s
        self._create = redis.register_script(_script("create"))
        self._gather = redis.register_script(_script("gather"))
        self._scatter = redis.register_script(_script("scatter"))
        self._commit = redis.register_script(_script("commit_epoch"))
        self._compact = redis.register_script(_script("compact"))
        self._claim = redis.register_script(_script("claim"))
        self._fast: RespClient | None = None
        if fast_url is not None and self.cluster is None:
            try:
                self._fast = RespClient(fast_url, timeout_s=timeout_s)
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
        wait_replicas: int = 0,
        wait_ms: int = 1000,
    ) -> RedisStore:
        """A store on ``url``: ``redis://``, ``rediss://``, ``unix://`` (one Redis) or
        ``redis+cluster://`` / ``rediss+cluster://`` (a Redis Cluster: any node's
        address; the others are discovered from it; ``max_connections`` is per node).
        ``wait_replicas`` > 0: each report is acknowledged only once that many replicas
        have it (:meth:`_replicated`)."""
        # redis-py re-sends a command after a connection error or timeout; every
        # script here is safe to re-run (dedup marker, compare-and-set, first-wins).
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": min(timeout_s, 5.0),
            "max_connections": max_connections,
            "health_check_interval": 30,
            "retry": Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError],
        }
        node_url = cluster_url(url)
        client: aioredis.Redis | RedisCluster
        if node_url is not None and wait_replicas and not node_url.startswith("redis://"):
            raise ValueError(
                "DOCL_REDIS_WAIT_REPLICAS needs the hot path's per-node connections, which a "
                'TLS cluster (rediss+cluster://) does not have; see docs/scaling.md "Failover"'
            )
        if node_url is not None:
            # partial coverage loads: check_cluster then names the state (not redis-py's error)
            client = RedisCluster.from_url(node_url, require_full_coverage=False, **options)
            url = node_url  # the hot path's per-node clients take its credentials
        else:
            client = aioredis.Redis.from_url(url, **options)
        return cls(
            client,
            dedup_ttl_s=dedup_ttl_s,
            fast_url=url,
            timeout_s=timeout_s,
            wait_replicas=wait_replicas,
            wait_ms=wait_ms,
        )

    async def check_cluster(self) -> None:
        """On a cluster: raise :class:`ClusterStateError` unless it serves every slot
        (``cluster_state:ok``). On a single Redis URL: raise it when that Redis is a
        node of a cluster (``cluster_enabled:1``), naming the URL scheme to use: a plain
        client there would see every run outside the node's slots answered ``MOVED``."""
        if self.cluster is None:
            try:
                info = await self.redis.info("cluster")
            except ResponseError:  # INFO renamed or refused: nothing to check
                return
            if str(info.get("cluster_enabled", "0")) == "1":
                raise ClusterStateError(
                    "the Redis at this URL is a node of a Redis Cluster (cluster_enabled:1): "
                    "give DOCL_REDIS_URL / --redis-url as redis+cluster://[:password@]host:port "
                    "(rediss+cluster:// with TLS), not redis://; see docs/scaling.md"
                )
            return
        raw: dict[str, Any] = await self.cluster.cluster_info(target_nodes=RedisCluster.PRIMARIES)
        # one primary: its reply itself; several: {node name: reply}
        infos: dict[str, Any] = {"the primary": raw} if "cluster_state" in raw else raw
        for node, info in infos.items():
            state = _s(info.get("cluster_state", "?"))
            if state != "ok":
                raise ClusterStateError(
                    f"the Redis Cluster is not serving: {node} says cluster_state={state} "
                    f"(slots assigned {_s(info.get('cluster_slots_assigned', '?'))}/16384, "
                    f"ok {_s(info.get('cluster_slots_ok', '?'))}); see docs/scaling.md"
                )

    async def load_scripts(self) -> None:
        """Load every Lua script (EVALSHA later; redis-py reloads after a Redis restart).
        On a cluster, check its state first (:meth:`check_cluster`) and load on every
        primary."""
        await self.check_cluster()
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
        """Redis answers (on a cluster: and serves every slot)."""
        if self.cluster is not None:  # raises ClusterStateError: /readyz says why
            await self.check_cluster()
            return True
        return bool(await self.redis.ping())

    @property
    def resets(self) -> int:
        """How many times the hot path's connections to Redis failed (0 without it): a
        Redis restart moves this, and a record cache must not outlive one."""
        fast = [self._fast] if self._fast is not None else []
        return sum(c.resets for c in [*fast, *self._fast_nodes.values()])

    async def close(self) -> None:
        for c in [self._fast, *self._fast_nodes.values()]:
            if c is not None:
                await c.close()
        await self.redis.aclose()

    def _fast_for(self, key: str) -> RespClient | None:
        """The hot-path client for ``key``: the one client on a single Redis; on a
        cluster, the client of the node that owns the key's slot in redis-py's slot
        table (None before that table is loaded, or over TLS: redis-py then)."""
        if self.cluster is None:
            return self._fast
        if self._fast_url is None or not self._fast_url.startswith("redis://"):
            return None
        try:
            node = self.cluster.get_node_from_key(key)
        except (RedisClusterException, KeyError, IndexError):
            return None  # slot table not loaded yet: redis-py loads it on its first command
        if node is None:
            return None
        client = self._fast_nodes.get(node.name)
        if client is None:
            u = self._fast_url.split("://", 1)[1]
            auth = u.rsplit("@", 1)[0] + "@" if "@" in u else ""
            client = RespClient(
                f"redis://{auth}{node.host}:{node.port}/0", timeout_s=self._timeout_s
            )
            self._fast_nodes[node.name] = client
        return client

    def _hand_over(self, e: Exception) -> bool:
        """Whether a call the fast path failed goes through redis-py instead: after a
        MOVED/ASK/TRYAGAIN reply (slots moving: redis-py follows the redirection) and, on a
        cluster, after a lost connection or a timeout (a primary died: redis-py re-reads the
        topology, and once a replica is promoted the slot table, hence the fast path,
        names it). On a single Redis a connection error stays an error (the caller
        answers 503 and the client retries). The call is safe to send twice: every script
        is (dedup marker, compare-and-set, first-wins)."""
        if isinstance(e, ResponseError):
            return _redirected(e)
        return self.cluster is not None

    async def _run(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA a hot script through the fast client (redis-py's Script otherwise, and
        when :meth:`_hand_over` says so)."""
        fast = self._fast_for(keys[0])
        if fast is not None:
            cmd = ["EVALSHA", script.sha, len(keys), *keys, *args]
            try:
                try:
                    return await fast.call(cmd)
                except NoScriptError:  # Redis restarted (or SCRIPT FLUSH): load it again, once
                    await fast.call(["SCRIPT", "LOAD", script.script])
                    return await fast.call(cmd)
            except _FAST_PATH_ERRORS as e:
                if not self._hand_over(e):
                    raise
        return await script(keys=list(keys), args=list(args))

    async def _run_replicated(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """:meth:`_run`, then WAIT for the replicas (:meth:`_replicated`)."""
        return await self._replicated(["EVALSHA", script.sha, len(keys), *keys, *args], script)

    async def _replicated(self, cmd: list[Any], script: Any = None) -> Any:
        """Send ``cmd`` (a write whose first key is ``cmd[1]``, or ``EVALSHA`` of ``script``:
        ``[EVALSHA, sha, numkeys, *keys, *args]``), then, when :attr:`wait_replicas` > 0,
        ``WAIT wait_replicas wait_ms`` on the same connection, in one round trip: WAIT
        counts the replicas that have this connection's writes. Fewer than asked raises
        :class:`NotReplicated` (the write stays applied: re-sending it is deduplicated)."""
        keys: list[Any] = cmd[3 : 3 + int(cmd[2])] if script is not None else cmd[1:2]
        args: list[Any] = cmd[3 + len(keys) :]

        async def plain(client: Any = None) -> Any:
            if script is not None:
                if client is None:
                    return await self._run(script, keys, args)
                return await script(keys=keys, args=args, client=client)
            if client is None:
                return await self.redis.execute_command(*cmd)
            return client.execute_command(*cmd)

        if not self.wait_replicas:
            return await plain()
        wait: list[Any] = ["WAIT", self.wait_replicas, self.wait_ms]
        fast = self._fast_for(keys[0])
        reply: Any = None
        acked: Any = None
        if fast is not None:
            try:
                try:
                    reply, acked = await fast.call_many([cmd, wait])
                except NoScriptError:
                    await fast.call(["SCRIPT", "LOAD", script.script])
                    reply, acked = await fast.call_many([cmd, wait])
            except _FAST_PATH_ERRORS as e:
                if not self._hand_over(e):
                    raise
                fast = None
        if fast is None and self.cluster is not None:
            # redis-py sends a keyless WAIT to every primary, on other connections than
            # the write's: apply the write (redis-py follows a redirection) and let the
            # client re-send; the re-sent report is a duplicate whose count WAITs here.
            await plain()
            why = "its replication could not be checked (the call went through redis-py)"
            raise NotReplicated(0, self.wait_replicas, self.wait_ms, why)
        if fast is None:  # one Redis through redis-py (TLS): a pipeline is one connection
            pipe = self.redis.pipeline(transaction=False)
            await plain(pipe)
            pipe.execute_command(*wait)
            reply, acked = await pipe.execute()
        if int(acked) < self.wait_replicas:
            raise NotReplicated(int(acked), self.wait_replicas, self.wait_ms)
        return reply

    # -- runs -----------------------------------------------------------------------------
    async def create_run(
        self, layout: RunLayout, config_json: str, uid: str, created_at: float
    ) -> tuple[CreateStatus, str, str | None]:
        """Create the run once. Returns (CREATED | EXISTS with the same config | CONFLICT
        with another config, uid, stored config); see lua/create.lua."""
        status, stored_uid, stored = await self._create_one(layout, config_json, uid, created_at)
        if layout.shards > 1 and status != CreateStatus.CONFLICT:
            # after the run's meta (which decided the uid), every shard; again on a retry
            # (EXISTS), which so completes a create that died half-way
            await self._create_shards(layout, stored_uid, created_at)
        if status == CreateStatus.CREATED:
            await self.redis.sadd(RUNS_INDEX, layout.run_id)
        return status, stored_uid, stored

    async def _create_one(
        self, layout: RunLayout, config_json: str, uid: str, created_at: float
    ) -> tuple[CreateStatus, str, str | None]:
        """create.lua on one slot: an unsharded run, a sharded run's own keys (its columns
        live in the shards), or one shard."""
        n = layout.num_samples
        per = layout.col_per_chunk
        col_keys = (*layout.score_keys, *layout.loss_keys) if layout.shards == 1 else ()
        sizes = [hi - lo for _, lo, hi in _ranges(0, n, per)]
        counts = sizes * (len(col_keys) // len(sizes))
        res = await self._create(
            keys=[layout.meta_key, *col_keys],
            args=[config_json, uid, repr(created_at), layout.to_json(), _NAN32, *counts],
        )
        stored = _s(res[2]) if len(res) > 2 else None
        return CreateStatus(int(res[0])), _s(res[1]), stored

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
            if m is not None and '"shard_samples"' in m.get("layout", ""):  # a sharded run
                out.append((m, await self.counters(RunLayout.from_json(run_ids[j], m["layout"]))))
                continue
            out.append((m, _counters(counters)))
        return out

    async def count_duplicate(self, layout: RunLayout, count: int = 1) -> None:
        # a write, so its WAIT also covers the earlier write of the report it duplicates
        await self._replicated(["HINCRBY", layout.counters_key, "duplicates", count])

    async def counters(self, layout: RunLayout) -> dict[str, int]:
        """Every counter of the run (see ``_counters``); of a sharded run, the sums over
        its own counters hash and every shard's."""
        if layout.shards > 1:
            return await self._sharded_counters(layout)
        return _counters(await self.redis.hgetall(layout.counters_key))

    async def list_run_ids(self) -> list[str]:
        return sorted(_s(m) for m in await self.redis.smembers(RUNS_INDEX))

    async def forget_run_id(self, run_id: str) -> None:
        await self.redis.srem(RUNS_INDEX, run_id)

    async def delete_run(self, layout: RunLayout) -> int:
        """Drop every key of the run (known keys, then a SCAN sweep of its hash tag).
        A sharded run: its shards first, its meta last, so a delete that died half-way
        leaves a run that still exists (and a retry finishes it)."""
        deleted = 0
        for j in range(layout.shards if layout.shards > 1 else 0):
            deleted += int(await self.redis.unlink(*layout.shard(j).static_keys()))
        deleted += int(await self.redis.unlink(*layout.static_keys()))
        # Epoch index chunks and anything a future layout adds: sweep the prefix.
        # The run id alphabet [A-Za-z0-9_.-] has no glob characters.
        batch: list[bytes] = []
        async for key in self._scan(_sweep_pattern(layout)):
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
        return sorted([_s(k) async for k in self._scan(_sweep_pattern(layout))])

    def _scan(self, match: str) -> AsyncIterator[bytes]:
        """SCAN for ``match``; on a cluster, on every primary (a run's keys are on the node
        owning its slot, or on two while that slot migrates)."""
        if self.cluster is not None:
            return self.cluster.scan_iter(
                match=match, count=1000, target_nodes=RedisCluster.PRIMARIES
            )
        return self.redis.scan_iter(match=match, count=1000)

    # -- epochs ---------------------------------------------------------------------------
    async def _transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of ``commands`` run in one MULTI/EXEC: a consistent snapshot. Through
        the fast client when there is one (it reads big replies 1 MB at a time; redis-py
        64 KB), else a redis-py transaction."""
        fast = self._fast_for(str(commands[0][1]))  # every command here names a key
        if fast is not None:
            try:
                replies = await fast.call_many([["MULTI"], *commands, ["EXEC"]])
                return list(replies[-1])
            except _FAST_PATH_ERRORS as e:  # e.g. a queued command was MOVED: EXEC aborted
                if not self._hand_over(e):
                    raise
        pipe = self.redis.pipeline(transaction=True)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(await pipe.execute())

    async def draw_inputs(self, layout: RunLayout, *, losses: bool) -> DrawInputs:
        """One MULTI/EXEC snapshot of last_epoch and the columns a draw reads, with the
        score log folded into the score (and loss) column (see :meth:`scatter`).

        The columns are read-only views of the replies (no copy) unless the log had to
        be folded into them. A sharded run: one snapshot per shard (and one of the run's
        meta and drawn/incl columns), read concurrently; see :meth:`_sharded_draw_inputs`."""
        if layout.shards > 1:
            return await self._sharded_draw_inputs(layout, losses=losses)
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
            arr = _column(raw[pos : pos + len(keys)], n, dtype, fill)
            pos += len(keys)
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

    async def compact(self, layout: RunLayout, uid: str, snap: DrawInputs) -> CompactStatus:
        """Write the score (and loss) column of a snapshot back and drop the log entries
        it folded in. Returns INSTALLED, or MOVED when another process compacted meanwhile (nothing
        changes then: its columns already hold these entries); see lua/compact.lua."""
        if snap.log_count == 0 or snap.scores is None:
            return CompactStatus.INSTALLED
        if layout.shards > 1:
            return await self._sharded_compact(layout, uid, snap)
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
        return CompactStatus(int(await self._run(self._compact, keys, args)))

    async def _set_many(self, keys: Sequence[str], values: Sequence[bytes | memoryview]) -> None:
        """SET each key (expiring in 10 min: temporary keys a crash would leave behind)."""
        writes: list[list[Any]] = [
            ["SET", k, v, "PX", 600_000] for k, v in zip(keys, values, strict=True)
        ]
        fast = self._fast_for(keys[0])
        if fast is not None:
            try:
                await fast.call_many(writes)
                return
            except _FAST_PATH_ERRORS as e:
                if not self._hand_over(e):
                    raise
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
    ) -> CommitStatus:
        """Store epoch ``epoch`` if nobody did yet; see lua/commit_epoch.lua.
        ``weights`` (float32 per index) are stored beside the indices, chunked alike.

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
        return CommitStatus(int(await self._run(self._commit, keys, args)))

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
        keys = layout.epoch_keys(epoch, size)
        return await self._read_slice(keys, layout.idx_per_chunk, 8, start, stop)

    async def read_weights(
        self, layout: RunLayout, epoch: int, size: int, start: int, stop: int
    ) -> bytes | None:
        """float32 bytes of epoch ``epoch``'s weights [start, stop); None when they were dropped."""
        keys = layout.weight_keys(epoch, size)
        return await self._read_slice(keys, layout.idx_per_chunk, 4, start, stop)

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
        if layout.shards > 1:
            parts = await self._per_shard_range(layout, start, stop, self.read_records)
            return np.concatenate(parts) if parts else np.empty(0, dtype=layout.rec_dtype)
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
        if layout.shards > 1:
            n = layout.num_samples
            return np.concatenate(await self._per_shard_range(layout, 0, n, self._shard_scores))
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
        if layout.shards > 1 and name != "drawn":  # the selection counts stay with the run

            async def part(sub: RunLayout, lo: int, hi: int) -> np.ndarray:
                return await self.read_column(sub, name, lo, hi)

            parts = await self._per_shard_range(layout, start, stop, part)
            return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
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
        if layout.shards > 1:
            for j in range(layout.shards):
                lo, hi = layout.shard_bounds(j)
                await self.write_column(layout.shard(j), name, data[lo:hi])
            return
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
        *,
        sizes: Sequence[int] | None = None,
    ) -> Gathered:
        """Read the records (and Exp3 inclusion) of these samples, unless one of the
        reports was already applied; see lua/gather.lua. ``sizes``: samples per report
        (needed for a sharded run with several reports; see :meth:`_sharded_gather`)."""
        ids = [report_ids] if isinstance(report_ids, str) else list(report_ids)
        if layout.shards > 1:
            return await self._sharded_gather(layout, uid, ids, indices, sizes)
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
        status = GatherStatus(int(res[0]))
        if status != GatherStatus.OK:
            last = int(res[1]) if len(res) > 1 else -1
            dups = tuple(int(j) - 1 for j in res[2:])
            return Gathered(status, last, None, None, dups)
        records = np.frombuffer(bytearray(res[2]), dtype=layout.rec_dtype)
        incl = np.frombuffer(res[3], dtype="<f4") if incl_keys else None
        return Gathered(status, int(res[1]), records, incl)

    async def claim(self, layout: RunLayout, uid: str, token: str) -> ClaimStatus:
        """Take the run's write lease for ``token`` (CLAIMED), or GONE: the run is gone or
        was re-created. See lua/claim.lua and lua/scatter.lua. A sharded run: every shard
        (each holds its own lease; a write without it revokes that shard's only)."""
        if layout.shards > 1:
            subs = [layout.shard(j) for j in range(layout.shards)]
            got = await _all_parts(
                layout, [(j, self.claim(sub, uid, token)) for j, sub in enumerate(subs)]
            )
            ok = all(c == ClaimStatus.CLAIMED for c in got)
            return ClaimStatus.CLAIMED if ok else ClaimStatus.GONE
        return ClaimStatus(int(await self._run(self._claim, [layout.meta_key], [uid, token])))

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
        sizes: Sequence[int] | None = None,
        scored: np.ndarray | None = None,
        count_duplicates: bool = True,
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

        A sharded run is applied per shard, atomically on each: see :meth:`_sharded_scatter`
        (``sizes``: samples per report; ``scored``: the (S,) mask of scored samples, for
        the per-shard counters). ``count_duplicates=False``: a duplicate adds nothing to the duplicates
        counter (a shard's part: the sharded caller counts whole duplicates).
        """
        ids = [report_id] if isinstance(report_id, str) else list(report_id)
        if layout.shards > 1:
            arrays = (indices, expected, write, records, scores, losses)
            return await self._sharded_scatter(layout, uid, ids, now, token, arrays, sizes, scored)
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
        res = await self._run_replicated(
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
                ",".join(str(int(v)) for v in counters) + ("" if count_duplicates else ",0"),
                *ids,
            ],
        )
        if isinstance(res, list):
            if ScatterStatus(int(res[0])) == ScatterStatus.DUPLICATE:
                dups = tuple(int(j) - 1 for j in res[1:])
                return Applied(ScatterStatus.DUPLICATE, duplicates=dups)
            current = np.frombuffer(bytearray(res[1]), dtype=layout.rec_dtype)
            return Applied(ScatterStatus.CONFLICT, tuple(int(j) - 1 for j in res[2:]), current)
        return Applied(ScatterStatus(int(res)))

    # -- sharded runs (layout.shards > 1; docs/architecture.md "Sharded runs") -------------
    async def _create_shards(self, layout: RunLayout, uid: str, created_at: float) -> None:
        """Initialise every shard of a sharded run (create.lua on its meta, its columns
        NaN-filled), with the run's uid as the shard's "config": a no-op on a shard already
        made for this incarnation. A shard left by an earlier incarnation (a delete that
        died half-way cannot leave one: it drops the run's meta last) is dropped and made
        again."""

        async def one(j: int) -> None:
            sub = layout.shard(j)
            mark = f'{{"shard_of":"{uid}"}}'
            status, _, _ = await self._create_one(sub, mark, uid, created_at)
            if status == CreateStatus.CONFLICT:
                await self.redis.unlink(*sub.static_keys())
                await self._create_one(sub, mark, uid, created_at)

        await asyncio.gather(*(one(j) for j in range(layout.shards)))

    async def _sharded_counters(self, layout: RunLayout) -> dict[str, int]:
        keys = [layout.counters_key, *(layout.shard(j).counters_key for j in range(layout.shards))]
        pipe = self.redis.pipeline(transaction=False)
        for k in keys:
            pipe.hgetall(k)
        total = dict.fromkeys(COUNTER_FIELDS, 0)
        for raw in await pipe.execute():
            for k, v in _counters(raw).items():
                total[k] += v
        return total

    async def _per_shard_range(
        self, layout: RunLayout, start: int, stop: int, read: Any
    ) -> list[Any]:
        """``await read(shard layout, lo, hi)`` for the shard-local pieces of [start, stop),
        concurrently, in order."""
        calls = []
        for j in range(layout.shards):
            lo, hi = layout.shard_bounds(j)
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                calls.append((j, read(layout.shard(j), a - lo, b - lo)))
        return await _all_parts(layout, calls)

    async def _shard_scores(self, sub: RunLayout, lo: int, hi: int) -> np.ndarray:
        return (await self.current_scores(sub))[lo:hi]

    async def _sharded_draw_inputs(self, layout: RunLayout, *, losses: bool) -> DrawInputs:
        """The run's meta and drawn/incl columns in one MULTI, each shard's meta, score log
        and columns in one MULTI per shard, all concurrently; the shards' columns
        concatenated, each shard's log folded into its slice. The snapshot is consistent
        per shard, not across shards: a report spanning shards may be seen on one and not
        yet on another (as if it had arrived a moment later there)."""
        n = layout.num_samples
        run_cmds: list[list[Any]] = [["HMGET", layout.meta_key, "uid", "last_epoch"]]
        run_cmds += [["GET", k] for k in layout.drawn_keys]
        run_cmds += [["GET", k] for k in layout.incl_keys]
        want_loss = losses and layout.loss_column
        subs = [layout.shard(j) for j in range(layout.shards)]
        shard_cmds = []
        for sub in subs:
            cmds: list[list[Any]] = [
                ["HMGET", sub.meta_key, "uid", "log_base"],
                ["LRANGE", sub.scorelog_key, 0, -1],
            ]
            cmds += [["GET", k] for k in sub.score_keys]
            cmds += [["GET", k] for k in (sub.loss_keys if want_loss else ())]
            shard_cmds.append(cmds)
        run_raw, shard_raw = await asyncio.gather(
            self._transaction(run_cmds),
            _all_parts(layout, [(j, self._transaction(c)) for j, c in enumerate(shard_cmds)]),
        )
        uid_b, last_b = run_raw[0]
        nd = len(layout.drawn_keys)
        drawn = _column(run_raw[1 : 1 + nd], n, "<u2", 0)
        incl = _column(run_raw[1 + nd :], n, "<f4", 0.0) if layout.exp3 else None
        sc = np.empty(n, dtype="<f4")
        ls = np.empty(n, dtype="<f4") if want_loss else None
        logs: list[tuple[int, int]] = []
        uid = _s(uid_b) if uid_b is not None else None
        for j, (sub, raw) in enumerate(zip(subs, shard_raw, strict=True)):
            lo, hi = layout.shard_bounds(j)
            s_uid, s_base = raw[0]
            if s_uid is None or _s(s_uid) != uid:  # a shard missing or of another incarnation
                uid = None
            ns = len(sub.score_keys)
            sc[lo:hi] = _column(raw[2 : 2 + ns], hi - lo, "<f4", np.nan)
            if ls is not None:
                ls[lo:hi] = _column(raw[2 + ns :], hi - lo, "<f4", np.nan)
            fold_log(sub, raw[1], sc[lo:hi], None if ls is None else ls[lo:hi])
            logs.append((int(s_base) if s_base is not None else 0, len(raw[1])))
        return DrawInputs(
            uid=uid,
            last_epoch=int(last_b) if last_b is not None else -1,
            scores=sc,
            losses=ls,
            drawn=drawn,
            inclusion=incl,
            log_count=sum(c for _, c in logs),
            shard_logs=tuple(logs),
        )

    async def _sharded_compact(
        self, layout: RunLayout, uid: str, snap: DrawInputs
    ) -> CompactStatus:
        """compact.lua on every shard whose log had entries in the snapshot, concurrently."""
        assert snap.scores is not None
        calls = []
        for j, (base, count) in enumerate(snap.shard_logs):
            if count == 0:
                continue
            lo, hi = layout.shard_bounds(j)
            part = DrawInputs(
                uid=snap.uid,
                last_epoch=snap.last_epoch,
                scores=snap.scores[lo:hi],
                losses=None if snap.losses is None else snap.losses[lo:hi],
                drawn=snap.drawn[lo:hi],
                inclusion=None,
                log_base=base,
                log_count=count,
            )
            calls.append((j, self.compact(layout.shard(j), uid, part)))
        got = await _all_parts(layout, calls)
        ok = all(c == CompactStatus.INSTALLED for c in got)
        return CompactStatus.INSTALLED if ok else CompactStatus.MOVED

    async def _read_inclusion(self, layout: RunLayout, idx: np.ndarray) -> np.ndarray:
        """The run's Exp3 inclusion of samples ``idx`` (float32; 0 = never drawn)."""
        per = layout.col_per_chunk
        pipe = self.redis.pipeline(transaction=False)
        for i in idx.tolist():
            k = i // per
            pipe.getrange(layout.incl_keys[k], 4 * (i - k * per), 4 * (i - k * per) + 3)
        raw = await pipe.execute() if idx.shape[0] else []
        return np.frombuffer(b"".join(r if len(r) == 4 else b"\0" * 4 for r in raw), "<f4")

    async def _sharded_gather(
        self,
        layout: RunLayout,
        uid: str,
        ids: list[str],
        indices: np.ndarray,
        sizes: Sequence[int] | None,
    ) -> Gathered:
        """Gather each shard's part (its samples, the ids of the reports with samples
        there) concurrently. A report is a DUPLICATE only when every shard it touches has
        its marker; a report applied on some of its shards only (a partial apply: the
        process died between shard parts) is read whole, and the scatter applies the
        parts still missing."""
        sizes = _sizes(ids, indices, sizes)
        idx = np.asarray(indices, dtype=np.int64)
        parts, _homes = layout.split(idx, sizes)

        async def one(j: int, pos: np.ndarray, reps: list[int]) -> tuple[Gathered, set[int]]:
            sub = layout.shard(j)
            local = idx[pos] - layout.shard_bounds(j)[0]
            g = await self.gather(sub, uid, [ids[r] for r in reps], local)
            if g.status != GatherStatus.DUPLICATE:
                return g, set()
            applied = {reps[d] for d in g.duplicates}
            return await self.gather(sub, uid, [], local), applied

        meta, got = await asyncio.gather(
            self.redis.hmget(layout.meta_key, ["uid", "last_epoch"]),
            _all_parts(layout, [(j, one(j, pos, reps)) for j, pos, reps in parts]),
        )
        last = int(meta[1]) if meta[1] is not None else -1
        if (
            meta[0] is None
            or _s(meta[0]) != uid
            or any(g.status == GatherStatus.GONE for g, _ in got)
        ):
            return Gathered(GatherStatus.GONE, last, None, None)
        dups = _whole_duplicates(len(ids), parts, [a for _, a in got])
        if dups:
            if self.wait_replicas:  # what count_duplicate's WAIT does on one slot, per shard
                hit = {
                    j for (j, _, reps), _ in zip(parts, got, strict=True) if set(reps) & set(dups)
                }
                cmds = [
                    (
                        j,
                        self._replicated(
                            ["HINCRBY", layout.shard(j).counters_key, "duplicates", 0]
                        ),
                    )
                    for j in sorted(hit)
                ]
                await _all_parts(layout, cmds)
            return Gathered(GatherStatus.DUPLICATE, last, None, None, dups)
        rec = np.zeros(idx.shape[0], dtype=layout.rec_dtype)
        for (_, pos, _), (g, _) in zip(parts, got, strict=True):
            assert g.records is not None
            rec[pos] = g.records
        incl = await self._read_inclusion(layout, idx) if layout.exp3 else None
        return Gathered(GatherStatus.OK, last, rec, incl)

    async def _sharded_scatter(
        self,
        layout: RunLayout,
        uid: str,
        ids: list[str],
        now: float,
        token: str,
        arrays: tuple[np.ndarray, ...],
        sizes: Sequence[int] | None,
        scored: np.ndarray | None,
    ) -> Applied:
        """Apply a group of reports on a sharded run: one scatter.lua per shard touched
        (concurrently), each atomic on its shard, with the SAME report ids as dedup markers
        on each. A shard that finds some of its reports' markers (their part there was
        applied before: a retry after a partial apply) drops their samples and applies the
        rest. Counters go to the shard of the samples; ``reports`` (and a whole duplicate's
        ``duplicates``) once per report, on its home shard (that of its first sample).

        Returns: GONE if any shard is gone; CONFLICT (positions over all the samples,
        their current records) if any shard conflicted: the other shards' parts may be
        applied, and the caller's re-send finds them applied there; otherwise applied
        (LEASED only if every part written was), with ``duplicates`` the reports found
        applied on every shard they touch (all of them: DUPLICATE) and ``skipped`` the
        samples left unwritten as parts applied before. ``arrays``: :meth:`scatter`'s
        (indices, expected, write, records, scores, losses)."""
        indices, expected, write, records, scores, losses = arrays
        sizes = _sizes(ids, indices, sizes)
        idx = np.asarray(indices, dtype=np.int64)
        write = np.asarray(write, dtype=bool)
        sc_mask = np.zeros(idx.shape[0], bool) if scored is None else np.asarray(scored, bool)
        parts, homes = layout.split(idx, sizes)
        rep_of = np.repeat(np.arange(len(ids)), np.asarray(sizes, dtype=np.int64))
        wpos = np.cumsum(write) - 1  # row of each written sample in records/scores/losses
        first = write & (expected["visits"] == 0)

        async def one(j: int, pos: np.ndarray, reps: list[int]) -> tuple[Applied, set[int]]:
            sub = layout.shard(j)
            lo = layout.shard_bounds(j)[0]
            live, done = list(reps), set[int]()
            while live:
                p = pos if len(live) == len(reps) else pos[np.isin(rep_of[pos], live)]
                w = write[p]
                rows = wpos[p[w]]
                res = await self.scatter(
                    sub,
                    uid,
                    [ids[r] for r in live],
                    now=now,
                    indices=idx[p] - lo,
                    expected=expected[p],
                    write=w,
                    records=records[rows],
                    scores=scores[rows],
                    losses=losses[rows],
                    counters=(
                        int(np.count_nonzero(homes[live] == j)),
                        int(p.shape[0]),
                        int(np.count_nonzero(sc_mask[p])),
                        int(np.count_nonzero(~w)),
                        int(np.count_nonzero(first[p])),
                    ),
                    token=token,
                    count_duplicates=False,
                )
                if res.status != ScatterStatus.DUPLICATE:
                    if res.status == ScatterStatus.CONFLICT:  # positions over all the samples
                        res = Applied(
                            res.status, tuple(int(p[c]) for c in res.conflicts), res.current
                        )
                    return res, done
                done |= {live[d] for d in res.duplicates}
                live = [r for r in live if r not in done]
            return Applied(ScatterStatus.DUPLICATE), done

        got = await _all_parts(layout, [(j, one(j, pos, reps)) for j, pos, reps in parts])
        if any(a.status == ScatterStatus.GONE for a, _ in got):
            return Applied(ScatterStatus.GONE)
        bad = [a for a, _ in got if a.status == ScatterStatus.CONFLICT]
        if bad:
            current = np.concatenate([a.current for a in bad if a.current is not None])
            return Applied(
                ScatterStatus.CONFLICT, tuple(c for a in bad for c in a.conflicts), current
            )
        dups = _whole_duplicates(len(ids), parts, [d for _, d in got])
        if dups:
            await self.count_duplicate(layout, len(dups))
        if len(dups) == len(ids):
            return Applied(ScatterStatus.DUPLICATE, duplicates=dups)
        # a sample is skipped when its report's part on ITS shard was found applied
        skip = np.zeros(idx.shape[0], dtype=bool)
        for (_, pos, _), (_, d) in zip(parts, got, strict=True):
            if d:
                skip[pos[np.isin(rep_of[pos], sorted(d))]] = True
        leased = all(a.status == ScatterStatus.LEASED for a, _ in got if a.status.applied)
        status = ScatterStatus.LEASED if leased and token else ScatterStatus.COMPARED
        return Applied(status, duplicates=dups, skipped=skip if skip.any() else None)


#: The name before the :class:`~docl.services.storage.Store` protocol existed.
Store = RedisStore


def _satisfies_the_protocol(store: RedisStore) -> storage.Store:
    return store  # mypy checks RedisStore against the engine's Store protocol here
