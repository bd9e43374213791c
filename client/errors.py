"""The one error hierarchy of the docl SDK.

DoclError
├── TransportError          the server could not be reached (after retries)
├── WireError               a binary body does not follow its layout, or arrays
│                           that cannot be encoded (also a ValueError; docl.wire.encoding)
├── InvalidRequestError     the arguments of a call do not validate (e.g. a malformed
│                           ``method=``); nothing was sent (also a ValueError)
└── APIError                the server answered with an RFC 9457 problem
    ├── BadRequestError         400
    ├── AuthenticationError     401 (missing or wrong token), 403
    ├── NotFoundError           404 (unknown run or epoch)
    ├── ConflictError           409 (re-create with a different config, epoch out of order)
    ├── PayloadTooLargeError    413
    ├── ValidationError         422 (malformed body, wrong shapes, NaN, index out of range)
    └── ServerError             5xx (after retries)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# The two roots the wire codec raises live with it (docl.wire imports nothing of the SDK).
from docl.wire.errors import DoclError, WireError

if TYPE_CHECKING:
    from pydantic import ValidationError as PydanticValidationError

__all__ = [
    "RETRYABLE_STATUSES",
    "APIError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "DoclError",
    "InvalidRequestError",
    "NotFoundError",
    "PayloadTooLargeError",
    "ServerError",
    "TransportError",
    "ValidationError",
    "WireError",
    "error_for_status",
    "retryable",
]


class TransportError(DoclError):
    """The server could not be reached, or the connection broke, after all retries.

    ``retryable``: whether another try may fare better (no connection, a timeout, a
    connection that broke); False for a failure that repeats every time (an
    unsupported URL scheme, a proxy misconfiguration)."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_transport_error, (type(self), str(self), self.retryable))


def _rebuild_transport_error(
    cls: type[TransportError], message: str, retryable: bool
) -> TransportError:
    return cls(message, retryable=retryable)


class InvalidRequestError(DoclError, ValueError):
    """The arguments of an SDK call do not validate (an unknown ``method=``, a
    negative size…); the request was not sent. The message names each field."""

    @classmethod
    def from_pydantic(cls, e: PydanticValidationError, what: str) -> InvalidRequestError:
        parts = []
        for err in e.errors():
            loc = ".".join(str(p) for p in err["loc"]) or what
            parts.append(f"{loc}: {err['msg']}")
        return cls(f"invalid {what}: {'; '.join(parts)}")


class APIError(DoclError):
    """The server answered with an error status and a problem document.

    ``status``, ``detail``, ``title`` and ``type`` come from the problem document;
    ``method`` and ``url`` name the request (set by the SDK's clients).
    """

    method: str | None = None
    url: str | None = None

    def __init__(
        self, status: int, detail: str, *, title: str = "", type: str = "about:blank"
    ) -> None:
        self.status = status
        self.detail = detail
        self.title = title
        self.type = type
        super().__init__(f"{status} {title}: {detail}" if title else f"{status}: {detail}")

    def __reduce__(self) -> tuple[Any, ...]:
        # The default (``cls(*self.args)``) would call __init__ with the message alone.
        return (
            _rebuild_api_error,
            (type(self), self.status, self.detail, self.title, self.type),
            self.__dict__.copy(),
        )


def _rebuild_api_error(
    cls: type[APIError], status: int, detail: str, title: str, type: str
) -> APIError:
    return cls(status, detail, title=title, type=type)


class BadRequestError(APIError):
    pass


class AuthenticationError(APIError):
    pass


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class PayloadTooLargeError(APIError):
    pass


class ValidationError(APIError):
    pass


class ServerError(APIError):
    pass


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: ValidationError,
}


def error_for_status(
    status: int, detail: str, *, title: str = "", type: str = "about:blank"
) -> APIError:
    """The exception class for an HTTP status (5xx -> ServerError, other 4xx -> APIError)."""
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, detail, title=title, type=type)


#: HTTP statuses worth another try: too many requests (429), and a server, a proxy
#: or the server's Redis that is down, restarting or overloaded (500, 502, 503, 504).
#: Every other status repeats itself (501, 505…, and every other 4xx).
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def retryable(e: BaseException) -> bool:
    """The SDK's one definition of a failure worth another try: a
    :class:`TransportError` that may fare better next time (no connection, a timeout,
    a broken connection) or an answer whose status is in :data:`RETRYABLE_STATUSES`.
    The clients' request retries, the Reporter's sends and the samplers' outage
    ride-out all ask it; everything else (a 4xx, a bug) is raised at once."""
    if isinstance(e, APIError):
        return e.status in RETRYABLE_STATUSES
    return isinstance(e, TransportError) and e.retryable
