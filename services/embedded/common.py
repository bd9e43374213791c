"""What every supervisor of ``services/embedded/`` shares: the start/stop context
manager, the parent-death signal, free ports and the start error."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import socket
from types import TracebackType
from typing import Literal, Self

__all__ = ["AppendFsync", "RedisStartError", "Started", "die_with_parent", "free_port"]

#: Redis' ``appendfsync`` policies.
AppendFsync = Literal["always", "everysec", "no"]


class RedisStartError(RuntimeError):
    """redis-server did not start (binary missing, port taken, bad config)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind port 0 and let the kernel choose)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGTERM this process when the thread that started it dies (call it in the child)."""
    # Linux: ask the kernel to SIGTERM redis-server when the process that started it
    # dies, so a SIGKILLed `docl serve` (or test run) leaves no orphan Redis behind.
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Started:
    """``with X(...) as x:`` starts ``x`` and closes it at the end (every process here)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop, and drop whatever else the object holds (default: just stop)."""
        self.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
