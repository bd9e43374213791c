"""The minimal RESP2 client of the store's hot path (part of the Redis package: only
modules of ``services/redis/`` import it, ``connection.py`` to route calls through it;
``tests/test_imports.py`` checks that). Commands are framed by ``codec.pack``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from redis.exceptions import BusyLoadingError as RedisBusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from docl.services.redis.codec import Arg, pack

__all__ = ["RespClient"]

#: Bytes read from the socket per call: 1 MiB (a draw's snapshot is tens of MB).
_READ_BYTES = 1 << 20
#: asyncio's stream buffer limit (4 MiB).
_STREAM_LIMIT = 1 << 22


class RespClient:
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

    #: RESP2 framing of a command (``codec.pack``).
    pack = staticmethod(pack)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Any]:
        import hiredis

        if self.path is not None:
            reader, writer = await asyncio.open_unix_connection(self.path, limit=_STREAM_LIMIT)
        else:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, limit=_STREAM_LIMIT
            )
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
            data = await reader.read(_READ_BYTES)
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
            except TimeoutError as e:  # before OSError, of which it is a subclass
                # Not re-sent: Redis is slow or stuck, and the command may still run (it
                # is in Redis' socket buffer); the engine forgets what it may have changed.
                if conn is not None:
                    conn[1].close()
                raise RedisTimeoutError(f"Redis did not answer within {self.timeout_s} s") from e
            except (OSError, asyncio.IncompleteReadError, ConnectionError) as e:
                if conn is not None:
                    conn[1].close()
                while self._idle:
                    self._idle.pop()[1].close()
                self.resets += 1  # Redis may have restarted (and lost writes): see Engine
                if attempt == 0:
                    continue
                raise RedisConnectionError(f"Redis connection failed: {e}") from e
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

    async def call(self, args: Sequence[Arg]) -> Any:
        """Send one command, return its reply (an error reply raises)."""
        (reply,) = await self._exchange(self.pack(args), 1)
        self._raise_for(reply)
        return reply

    async def call_many(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
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
