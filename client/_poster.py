"""The Reporter's transport: :class:`ReportPoster`, one per sender thread."""

from __future__ import annotations

from typing import Any

import httpx

from docl.client._client import ScoreClient
from docl.client._requests import _api_error, _Call, _parse_none
from docl.client.errors import TransportError

__all__ = ["ReportPoster"]


class ReportPoster:
    """POST report bodies for one sender thread of a :class:`~docl.client.Reporter`.

    httpx costs ~1.2 ms of CPU per request on the machines we measured (a sender
    thread's CPU is taken from the training thread through the GIL); one
    keep-alive ``http.client`` connection costs ~0.4 ms. So plain ``http://``
    servers are posted to over ``http.client``; ``https://`` and clients given
    their own httpx transport go through the client's httpx pool. No retries
    here (the Reporter retries, counting them); errors are the client's:
    :class:`TransportError` or the :class:`APIError` of the status. Not
    thread-safe: one per thread.
    """

    def __init__(self, client: ScoreClient) -> None:
        from urllib.parse import urlsplit

        self.client = client
        u = urlsplit(client.base_url)
        self.lean = u.scheme == "http" and not getattr(client, "_custom_transport", False)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        t = client.timeout
        self.timeout = float(t) if isinstance(t, int | float) else float(t.read or 30.0)
        self.headers = dict(client._headers)
        self._conn: Any = None

    def post(self, path: str, body: bytes, content_type: str) -> bytes:
        """POST ``body``; the answer's body when the status is < 400."""
        if not self.lean:
            call = _Call("POST", path, lambda r: r.content, content=body,
                         headers={"Content-Type": content_type}, retry=False)  # fmt: skip
            return self.client._send(call)
        import http.client

        headers = {**self.headers, "Content-Type": content_type}
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._conn or http.client.HTTPConnection(
                self.host, self.port, timeout=self.timeout
            )
            self._conn = None
            try:
                conn.request("POST", self.prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # The server closed an idle keep-alive connection: one fresh attempt (a
                # report is safe to send twice: its report_id). Timeouts are not repeated.
                if attempt == 0 and reused and not isinstance(e, TimeoutError):
                    continue
                raise TransportError(
                    f"POST {self.client.base_url}{path} failed: {type(e).__name__}: {e}"
                ) from e
            if resp.will_close:
                conn.close()
            else:
                self._conn = conn
            if resp.status >= 400:
                url = f"{self.client.base_url}{path}"
                answer = httpx.Response(
                    resp.status, headers=resp.getheaders(), content=data,
                    request=httpx.Request("POST", url),
                )  # fmt: skip
                raise _api_error(_Call("POST", path, _parse_none), answer)
            return data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
