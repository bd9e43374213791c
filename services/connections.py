"""``docl serve``'s HTTP protocol: uvicorn's own, plus what uvicorn lacks against slow
and many clients (issue 19, item 4).

* **A header timeout.** uvicorn closes an idle keep-alive connection, but a connection
  that sends half a request's headers (or trickles them a byte at a time) stays open
  forever. Here every connection must complete a request's headers within
  ``DOCL_HEADER_TIMEOUT_S`` of opening, and again within it of each response; else it
  gets ``408`` (if it sent anything) and is closed.
* **A cap on open connections.** A connection beyond ``DOCL_MAX_CONNECTIONS`` (per
  server process) is answered ``503`` with ``Retry-After: 1`` at once and closed, before
  its request is read, so sockets that never speak cannot take every file descriptor.

The body timeouts (``DOCL_BODY_TIMEOUT_S``, ``DOCL_BODY_IDLE_TIMEOUT_S``) are in the
app's gateway (:class:`docl.services.app.GatewayMiddleware`), so they hold under any
ASGI server; the shutdown bound is uvicorn's ``timeout_graceful_shutdown``
(``DOCL_SHUTDOWN_TIMEOUT_S``). Under a plain ``uvicorn --factory
docl.services.app:create_app``, add ``--http docl.services.connections:DoclHttpProtocol``
to get this protocol (it then reads its limits from ``DOCL_*`` variables).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from docl.services.config import Settings

if TYPE_CHECKING:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base

    _Mixin = _Base
else:
    _Mixin = object
    try:  # what uvicorn's "auto" picks
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
    except ImportError:  # pragma: no cover - httptools is part of uvicorn[standard]
        from uvicorn.protocols.http.h11_impl import H11Protocol as _Base

__all__ = ["Bounded", "ConnectionLimits", "DoclHttpProtocol", "protocol_for"]

log = logging.getLogger("docl.services")


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.header_timeout_s, settings.max_connections)


def _canned(status: int, reason: str, detail: str, *extra: str) -> bytes:
    body = json.dumps(
        {"type": "about:blank", "title": reason, "status": status, "detail": detail}
    ).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/problem+json",
        f"content-length: {len(body)}",
        "connection: close",
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class Bounded(_Mixin):
    """A header timeout and a connection cap (module doc) on top of one of uvicorn's HTTP
    protocols (httptools' or h11's: both keep ``cycle``, ``server_state``, ``transport``
    and call ``on_response_complete``).

    ``limits`` is set by :func:`protocol_for`; when it is None (uvicorn given the class
    by name, e.g. in each of ``docl serve --workers N``'s processes) it is read once
    from the ``DOCL_*`` environment."""

    limits: ClassVar[ConnectionLimits | None] = None
    _last_warning: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._refused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_since_arm = False  # any byte since the timer was armed

    @classmethod
    def _limits(cls) -> ConnectionLimits:
        if cls.limits is None:
            cls.limits = ConnectionLimits.from_settings(Settings())
        return cls.limits

    # -- the cap -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        limits = self._limits()
        if len(self.server_state.connections) >= limits.max_connections:
            self._refused = True
            transport.write(_REFUSED)
            transport.close()
            self._warn(
                f"refused a connection: {limits.max_connections} open, the limit "
                "(DOCL_MAX_CONNECTIONS)"
            )
            return
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return  # never counted, never parsed
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._waiting_since_arm = True
        super().data_received(data)

    # -- the header timeout --------------------------------------------------------------------
    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request's headers have the same time

    def _arm(self) -> None:
        self._disarm()
        self._waiting_since_arm = False
        self._header_timer = self.loop.call_later(
            self._limits().header_timeout_s, self._header_timeout
        )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport is None or self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # a request's headers are in: its body and answer have their own bounds
        if self._waiting_since_arm:  # part of a request came: say why it is dropped
            self.transport.write(_HEADER_TIMEOUT)
        self.transport.close()
        self._warn(
            f"closed a connection that sent no complete request headers within "
            f"{self._limits().header_timeout_s:g} s (DOCL_HEADER_TIMEOUT_S)"
        )

    @classmethod
    def _warn(cls, message: str) -> None:
        """Log at most one such line per 10 s (a flood must not flood the log too)."""
        now = time.monotonic()
        if now - cls._last_warning >= 10.0:
            cls._last_warning = now
            log.warning("%s", message)


class DoclHttpProtocol(Bounded, _Base):
    """:class:`Bounded` on the protocol uvicorn's ``auto`` picks (httptools when present)."""


_REFUSED = _canned(
    503,
    "Service Unavailable",
    "this server has as many open connections as it accepts (DOCL_MAX_CONNECTIONS); retry shortly",
    "retry-after: 1",
)
_HEADER_TIMEOUT = _canned(
    408,
    "Request Timeout",
    "the request's headers did not arrive in time (DOCL_HEADER_TIMEOUT_S); the connection "
    "is closed",
)


def protocol_for(settings: Settings, base: type | None = None) -> type[Bounded]:
    """:class:`DoclHttpProtocol` with ``settings``' limits (for ``uvicorn.run(http=...)``);
    ``base``: another of uvicorn's HTTP protocols to bound instead (h11's, say)."""
    bases = (DoclHttpProtocol,) if base is None else (Bounded, base)
    limits = ConnectionLimits.from_settings(settings)
    return type("DoclHttpProtocol", bases, {"limits": limits, "__module__": __name__})
