"""How the store reaches Redis: :class:`Connection`, the routing of every command.

redis-py's client (``redis.asyncio.Redis``, or ``RedisCluster`` for a
``redis+cluster://`` URL) carries every command but the hot ones; the hot scripts,
the draw's MULTI/EXEC snapshot and its big SETs go through the hand-packed RESP
client (``resp.py``), one per node on a cluster, routed by redis-py's slot table.
A call the fast path cannot finish — a MOVED/ASK/TRYAGAIN reply (slots moving) and,
on a cluster, a lost connection or a timeout (a primary died) — is handed over to
redis-py, which follows the redirection and re-reads the topology. Every call sent
twice this way is safe: every script is (dedup marker, compare-and-set, first-wins).

``WAIT`` (``DOCL_REDIS_WAIT_REPLICAS``) rides on the write's own connection, in one
round trip with it (:meth:`Connection.replicated`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from docl.services.redis.codec import TEMP_KEY_TTL_MS, text
from docl.services.redis.errors import redirected
from docl.services.redis.resp import RespClient
from docl.services.storage import ClusterStateError, NotReplicated

__all__ = [
    "CLUSTER_SCHEMES",
    "MAX_CONNECTIONS",
    "SCRIPTS",
    "TIMEOUT_S",
    "WAIT_MS",
    "Connection",
    "cluster_url",
]

#: URL schemes of a Redis Cluster -> the scheme redis-py's client takes for one of its nodes.
CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
#: The Lua scripts (``services/lua/<name>.lua``), one per atomic store operation.
SCRIPTS = ("create", "gather", "scatter", "commit_epoch", "compact", "claim", "signal")
#: What a fast-path call may raise that :meth:`Connection.hand_over` may pass to redis-py.
_FAST_PATH_ERRORS = (ResponseError, RedisConnectionError, RedisTimeoutError)
#: redis-py's retry of a command after a connection error or timeout: 3 tries, backoff
#: from 50 ms doubling up to 1 s (every script here is safe to re-run).
_RETRY_BASE_S, _RETRY_CAP_S, _RETRIES = 0.05, 1.0, 3
#: redis-py checks an idle pooled connection before reusing it after this long.
_HEALTH_CHECK_S = 30
#: A connection attempt gives up after this long (or the command timeout, if shorter).
_CONNECT_TIMEOUT_S = 5.0
#: Defaults of a store built without settings (tools, tests; the server passes
#: DOCL_REDIS_TIMEOUT_S, DOCL_REDIS_MAX_CONNECTIONS and DOCL_REDIS_WAIT_MS): a command's
#: timeout, pooled connections per node, how long a WAIT waits for its replicas.
TIMEOUT_S = 30.0
MAX_CONNECTIONS = 64
WAIT_MS = 1000


def cluster_url(url: str) -> str | None:
    """The redis-py URL of a node of a ``redis+cluster://`` (``rediss+cluster://``) URL,
    None for any other URL."""
    scheme, sep, rest = url.partition("://")
    plain = CLUSTER_SCHEMES.get(scheme.lower())
    return f"{plain}://{rest}" if sep and plain else None


def _script(name: str) -> str:
    return resources.files("docl.services").joinpath("lua", f"{name}.lua").read_text()


class Connection:
    """redis-py's client plus the fast path, and the Lua scripts registered on it.

    On a Redis Cluster (``redis`` a :class:`RedisCluster`) every command and script names
    the keys of one hash tag, so each runs on the node owning that slot; the fast path
    keeps one client per node and sends a call to the node redis-py's slot table names.
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        *,
        fast_url: str | None = None,
        timeout_s: float = TIMEOUT_S,
        wait_replicas: int = 0,
        wait_ms: int = WAIT_MS,
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
        self.timeout_s = timeout_s
        self.fast_url = fast_url
        #: on a cluster: the fast client of each node, by redis-py's node name (host:port)
        self.fast_nodes: dict[str, RespClient] = {}
        self.scripts: dict[str, AsyncScript] = {
            name: redis.register_script(_script(name)) for name in SCRIPTS
        }
        #: on a single Redis: the one fast client (None over TLS: redis-py carries all)
        self.fast: RespClient | None = None
        if fast_url is not None and self.cluster is None:
            try:
                self.fast = RespClient(fast_url, timeout_s=timeout_s)
            except ValueError:  # e.g. rediss://: the hot path uses redis-py too
                self.fast = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        wait_replicas: int = 0,
        wait_ms: int = WAIT_MS,
    ) -> Connection:
        """A connection to ``url``: ``redis://``, ``rediss://``, ``unix://`` (one Redis) or
        ``redis+cluster://`` / ``rediss+cluster://`` (a Redis Cluster: any node's
        address; the others are discovered from it; ``max_connections`` is per node)."""
        # redis-py re-sends a command after a connection error or timeout; every
        # script here is safe to re-run (dedup marker, compare-and-set, first-wins).
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": min(timeout_s, _CONNECT_TIMEOUT_S),
            "max_connections": max_connections,
            "health_check_interval": _HEALTH_CHECK_S,
            "retry": Retry(
                ExponentialBackoff(cap=_RETRY_CAP_S, base=_RETRY_BASE_S), retries=_RETRIES
            ),
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
            state = text(info.get("cluster_state", "?"))
            if state != "ok":
                raise ClusterStateError(
                    f"the Redis Cluster is not serving: {node} says cluster_state={state} "
                    f"(slots assigned {text(info.get('cluster_slots_assigned', '?'))}/16384, "
                    f"ok {text(info.get('cluster_slots_ok', '?'))}); see docs/scaling.md"
                )

    async def load_scripts(self) -> None:
        """Load every Lua script (EVALSHA later; redis-py reloads after a Redis restart).
        On a cluster, check its state first (:meth:`check_cluster`) and load on every
        primary."""
        await self.check_cluster()
        for s in self.scripts.values():
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
        fast = [self.fast] if self.fast is not None else []
        return sum(c.resets for c in [*fast, *self.fast_nodes.values()])

    async def close(self) -> None:
        for c in [self.fast, *self.fast_nodes.values()]:
            if c is not None:
                await c.close()
        await self.redis.aclose()

    def fast_for(self, key: str) -> RespClient | None:
        """The hot-path client for ``key``: the one client on a single Redis; on a
        cluster, the client of the node that owns the key's slot in redis-py's slot
        table (None before that table is loaded, or over TLS: redis-py then)."""
        if self.cluster is None:
            return self.fast
        if self.fast_url is None or not self.fast_url.startswith("redis://"):
            return None
        try:
            node = self.cluster.get_node_from_key(key)
        except (RedisClusterException, KeyError, IndexError):
            return None  # slot table not loaded yet: redis-py loads it on its first command
        if node is None:
            return None
        client = self.fast_nodes.get(node.name)
        if client is None:
            u = self.fast_url.split("://", 1)[1]
            auth = u.rsplit("@", 1)[0] + "@" if "@" in u else ""
            client = RespClient(
                f"redis://{auth}{node.host}:{node.port}/0", timeout_s=self.timeout_s
            )
            self.fast_nodes[node.name] = client
        return client

    def hand_over(self, e: Exception) -> bool:
        """Whether a call the fast path failed goes through redis-py instead: after a
        MOVED/ASK/TRYAGAIN reply (slots moving: redis-py follows the redirection) and, on a
        cluster, after a lost connection or a timeout (a primary died: redis-py re-reads the
        topology, and once a replica is promoted the slot table, hence the fast path,
        names it). On a single Redis a connection error stays an error (the caller
        answers 503 and the client retries). The call is safe to send twice: every script
        is (dedup marker, compare-and-set, first-wins)."""
        if isinstance(e, ResponseError):
            return redirected(e)
        return self.cluster is not None

    async def run(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA the script ``name`` through the fast client (redis-py's Script otherwise,
        and when :meth:`hand_over` says so)."""
        return await self._evalsha(self.scripts[name], keys, args)

    async def _evalsha(self, script: AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> Any:
        fast = self.fast_for(keys[0])
        if fast is not None:
            cmd = ["EVALSHA", script.sha, len(keys), *keys, *args]
            try:
                try:
                    return await fast.call(cmd)
                except NoScriptError:  # Redis restarted (or SCRIPT FLUSH): load it again, once
                    await fast.call(["SCRIPT", "LOAD", script.script])
                    return await fast.call(cmd)
            except _FAST_PATH_ERRORS as e:
                if not self.hand_over(e):
                    raise
        return await script(keys=list(keys), args=list(args))

    async def run_replicated(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """:meth:`run`, then WAIT for the replicas (:meth:`replicated`)."""
        script = self.scripts[name]
        return await self.replicated(["EVALSHA", script.sha, len(keys), *keys, *args], script)

    async def replicated(self, cmd: list[Any], script: AsyncScript | None = None) -> Any:
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
                    return await self._evalsha(script, keys, args)
                return await script(keys=keys, args=args, client=client)
            if client is None:
                return await self.redis.execute_command(*cmd)
            return client.execute_command(*cmd)

        if not self.wait_replicas:
            return await plain()
        wait: list[Any] = ["WAIT", self.wait_replicas, self.wait_ms]
        fast = self.fast_for(keys[0])
        reply: Any = None
        acked: Any = None
        if fast is not None:
            try:
                try:
                    reply, acked = await fast.call_many([cmd, wait])
                except NoScriptError:
                    assert script is not None  # only a script is answered NOSCRIPT
                    await fast.call(["SCRIPT", "LOAD", script.script])
                    reply, acked = await fast.call_many([cmd, wait])
            except _FAST_PATH_ERRORS as e:
                if not self.hand_over(e):
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

    async def transaction(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies of ``commands`` run in one MULTI/EXEC: a consistent snapshot. Through
        the fast client when there is one (it reads big replies 1 MB at a time; redis-py
        64 KB), else a redis-py transaction."""
        fast = self.fast_for(str(commands[0][1]))  # every command here names a key
        if fast is not None:
            try:
                replies = await fast.call_many([["MULTI"], *commands, ["EXEC"]])
                return list(replies[-1])
            except _FAST_PATH_ERRORS as e:  # e.g. a queued command was MOVED: EXEC aborted
                if not self.hand_over(e):
                    raise
        pipe = self.redis.pipeline(transaction=True)
        for cmd in commands:
            pipe.execute_command(*cmd)
        return list(await pipe.execute())

    async def set_temporary(
        self, keys: Sequence[str], values: Sequence[bytes | memoryview]
    ) -> None:
        """SET each key, expiring after ``TEMP_KEY_TTL_MS``: temporary keys (a draw's
        columns before their script renames them into place) a crash would leave behind."""
        writes: list[list[Any]] = [
            ["SET", k, v, "PX", TEMP_KEY_TTL_MS] for k, v in zip(keys, values, strict=True)
        ]
        fast = self.fast_for(keys[0])
        if fast is not None:
            try:
                await fast.call_many(writes)
                return
            except _FAST_PATH_ERRORS as e:
                if not self.hand_over(e):
                    raise
        pipe = self.redis.pipeline(transaction=False)
        for k, v in zip(keys, values, strict=True):
            pipe.set(k, v, px=TEMP_KEY_TTL_MS)
        await pipe.execute()

    def scan(self, match: str) -> AsyncIterator[bytes]:
        """SCAN for ``match``; on a cluster, on every primary (a run's keys are on the node
        owning its slot, or on two while that slot migrates)."""
        if self.cluster is not None:
            return self.cluster.scan_iter(
                match=match, count=1000, target_nodes=RedisCluster.PRIMARIES
            )
        return self.redis.scan_iter(match=match, count=1000)
