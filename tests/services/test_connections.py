"""Slow and many clients against a real ``docl serve`` (issue 19, item 4), with raw
sockets: a connection that never completes its headers is closed within
DOCL_HEADER_TIMEOUT_S, a stalled upload gets 408 within DOCL_BODY_IDLE_TIMEOUT_S (or
DOCL_BODY_TIMEOUT_S when it trickles), connections beyond DOCL_MAX_CONNECTIONS get a
fast 503, and SIGTERM ends within DOCL_SHUTDOWN_TIMEOUT_S while an upload is stalled.

Before the fix every socket here stayed open (the reads below timed out) and SIGTERM
waited for the stalled upload forever.
"""

from __future__ import annotations

import select
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from docl.services.embedded import ServerProcess

TOKEN = "slow-clients-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CAP = 8
HEADER_S = 2.0  # long enough for the cap test to look before it fires
IDLE_S = 1.0
BODY_S = 3.0
SLACK_S = 3.0  # a loaded 2-core machine: scheduling, not the bound, is the slack
ENV = {
    "DOCL_API_TOKEN": TOKEN,
    "DOCL_HEADER_TIMEOUT_S": str(HEADER_S),
    "DOCL_BODY_IDLE_TIMEOUT_S": str(IDLE_S),
    "DOCL_BODY_TIMEOUT_S": str(BODY_S),
    "DOCL_MAX_CONNECTIONS": str(CAP),
    "DOCL_SHUTDOWN_TIMEOUT_S": "2",
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(env=ENV) as srv:
        yield srv


def _connect(server: ServerProcess) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def _read_to_eof(sock: socket.socket, within: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took; fails
    the test when the connection is still open after ``within`` seconds."""
    t0 = time.monotonic()
    data = b""
    sock.settimeout(0.1)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if time.monotonic() - t0 > within:
                pytest.fail(f"the server kept the connection open for {within} s; got {data!r}")
            continue
        except ConnectionResetError:
            return data, time.monotonic() - t0
        if not chunk:
            return data, time.monotonic() - t0
        data += chunk


def _upload_head(length: int, path: str = "/v1/runs", ctype: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: {ctype}\r\nContent-Length: {length}\r\n\r\n"
    ).encode()


def test_half_a_header_is_closed_with_408_within_the_header_timeout(
    server: ServerProcess,
) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the blank line never comes
        data, took = _read_to_eof(s, HEADER_S + SLACK_S)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"DOCL_HEADER_TIMEOUT_S" in data
    assert HEADER_S * 0.8 <= took <= HEADER_S + SLACK_S, took


def test_a_silent_connection_is_closed_within_the_header_timeout(server: ServerProcess) -> None:
    with _connect(server) as s:
        data, took = _read_to_eof(s, HEADER_S + SLACK_S)
    assert data == b"" and took <= HEADER_S + SLACK_S


def test_headers_trickled_a_byte_at_a_time_do_not_reset_the_timeout(
    server: ServerProcess,
) -> None:
    """Slowloris: activity is not progress; the headers as a whole have the bound."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with _connect(server) as s:
        t0 = time.monotonic()
        for b in head:
            try:
                s.sendall(bytes([b]))
            except OSError:
                break
            time.sleep(0.05)
            if time.monotonic() - t0 > HEADER_S + SLACK_S:
                pytest.fail("still open while the header trickled")
        data, _ = _read_to_eof(s, HEADER_S + SLACK_S)
        assert time.monotonic() - t0 <= HEADER_S + SLACK_S
    assert data.startswith(b"HTTP/1.1 408"), data


def test_the_header_timeout_holds_again_after_a_response(server: ServerProcess) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        first = b""
        while not first.endswith(b"}"):  # the whole first answer (its JSON body ends in })
            first += s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        s.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # the second request stalls
        data, took = _read_to_eof(s, HEADER_S + SLACK_S)
    assert took >= HEADER_S * 0.8, took
    assert data.startswith(b"HTTP/1.1 408"), data


@pytest.mark.parametrize(
    ("path", "ctype"),
    [
        ("/v1/runs", "application/json"),
        # the reports route, served by the gateway's bare ASGI handler (fast_reports)
        ("/v1/runs/some-run/reports", "application/vnd.docl.report.v1"),
    ],
)
def test_a_stalled_upload_gets_408_within_the_idle_timeout(
    server: ServerProcess, path: str, ctype: str
) -> None:
    with _connect(server) as s:
        s.sendall(_upload_head(200, path, ctype) + b'{"num_samples": 10,')  # then nothing
        data, took = _read_to_eof(s, IDLE_S + SLACK_S)
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"DOCL_BODY_IDLE_TIMEOUT_S" in data and b"19 bytes received" in data
    assert took <= IDLE_S + SLACK_S


def test_a_trickled_upload_gets_408_at_the_body_timeout(server: ServerProcess) -> None:
    """A byte every 0.3 s never trips the idle timeout; the whole body's bound ends it."""
    with _connect(server) as s:
        s.sendall(_upload_head(1000))
        t0 = time.monotonic()
        s.settimeout(0.3)
        data = b""
        while time.monotonic() - t0 < BODY_S + SLACK_S:
            try:
                s.sendall(b" ")
                chunk = s.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        took = time.monotonic() - t0
    assert data.startswith(b"HTTP/1.1 408"), data
    assert b"DOCL_BODY_TIMEOUT_S" in data
    assert BODY_S * 0.8 <= took <= BODY_S + SLACK_S, took


def test_connections_over_the_cap_get_a_fast_503_and_the_server_recovers(
    server: ServerProcess,
) -> None:
    t_open = time.monotonic()
    held = [_connect(server) for _ in range(CAP + 2)]
    try:
        t0 = time.monotonic()
        r = httpx.get(server.url + "/v1/runs", headers=AUTH, timeout=5)  # a normal client
        assert r.status_code == 503 and time.monotonic() - t0 < 1.0, r
        assert "DOCL_MAX_CONNECTIONS" in r.json()["detail"] and r.headers["retry-after"] == "1"
        readable, _, _ = select.select(held, [], [], 0.3)
        refused = [s.recv(65536) for s in readable]
        # looked before the header timeout could close any of the CAP held ones
        assert time.monotonic() - t_open < HEADER_S, "too slow to tell the cap from the timeout"
        assert len(refused) == 2, refused
        assert all(r.startswith(b"HTTP/1.1 503") and b"DOCL_MAX_CONNECTIONS" in r for r in refused)
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    r = httpx.get(server.url + "/v1/runs", headers=AUTH, timeout=5)
    assert r.status_code == 200, r.text


def test_a_full_server_recovers_when_the_header_timeout_drops_silent_sockets(
    server: ServerProcess,
) -> None:
    held = [_connect(server) for _ in range(CAP)]
    try:
        time.sleep(HEADER_S + 1.0)  # they said nothing: dropped
        r = httpx.get(server.url + "/healthz", timeout=5)
        assert r.status_code == 200, r.text
    finally:
        for s in held:
            s.close()


def test_sigterm_with_a_stalled_upload_exits_within_the_shutdown_timeout() -> None:
    env = {**ENV, "DOCL_BODY_IDLE_TIMEOUT_S": "600", "DOCL_BODY_TIMEOUT_S": "600"}
    with ServerProcess(env=env) as srv:
        assert srv.proc is not None
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(_upload_head(1000) + b"{")
            time.sleep(0.5)  # the request is in the app, waiting for its body
            t0 = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            try:
                srv.proc.wait(timeout=2 + SLACK_S + 5)
            except Exception:
                pytest.fail(f"still running {time.monotonic() - t0:.1f} s after SIGTERM")
            took = time.monotonic() - t0
    assert took <= 2 + SLACK_S, took


def test_every_worker_of_docl_serve_workers_has_the_bounds() -> None:
    """``--workers 2``: uvicorn gets the protocol by name and each worker process reads
    its limits from the DOCL_* environment; a half header is closed there too, and a
    stalled upload gets its 408."""
    with ServerProcess(env=ENV, workers=2) as srv:
        for _ in range(4):  # the kernel spreads connections over both workers
            with socket.create_connection((srv.host, srv.port), timeout=10) as s:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                data, took = _read_to_eof(s, HEADER_S + SLACK_S)
            assert data.startswith(b"HTTP/1.1 408") and took <= HEADER_S + SLACK_S, data
        with socket.create_connection((srv.host, srv.port), timeout=10) as s:
            s.sendall(_upload_head(200) + b"{")
            data, took = _read_to_eof(s, IDLE_S + SLACK_S)
        assert data.startswith(b"HTTP/1.1 408") and b"DOCL_BODY_IDLE_TIMEOUT_S" in data, data


async def _hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
    )
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.mark.parametrize("base", ["httptools", "h11"])
def test_the_bounds_hold_on_both_of_uvicorns_http_protocols(base: str) -> None:
    """The protocol alone, on a real uvicorn in this process, over httptools (what
    ``auto`` picks) and h11 (uvicorn's fallback without httptools): a half header is
    closed at the header timeout, a connection over the cap gets 503 at once."""
    import threading

    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from docl.services.config import Settings
    from docl.services.connections import protocol_for
    from docl.services.embedded import free_port

    settings = Settings(header_timeout_s=1.0, max_connections=2)
    proto = protocol_for(settings, {"httptools": HttpToolsProtocol, "h11": H11Protocol}[base])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(_hello, host="127.0.0.1", port=port, http=proto, log_level="warning",
                       lifespan="off")
    )  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            first = b""
            while not first.endswith(b"hello"):
                first += s.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first
            s.sendall(b"GET / HTTP/1.1\r\nHo")
            data, took = _read_to_eof(s, 1.0 + SLACK_S)
        assert data.startswith(b"HTTP/1.1 408") and 0.8 <= took <= 1.0 + SLACK_S, (data, took)
        held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(3)]
        try:
            readable, _, _ = select.select(held, [], [], 0.5)
            assert len(readable) == 1 and readable[0].recv(65536).startswith(b"HTTP/1.1 503")
        finally:
            for s in held:
                s.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_websocket_upgrade_is_plain_http_under_the_same_bounds(server: ServerProcess) -> None:
    """docl has no WebSocket route: an Upgrade request is answered as HTTP (404 here),
    not handed to a WebSocket protocol outside the bounds."""
    with _connect(server) as s:
        s.sendall(
            b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
        )
        s.settimeout(5)
        first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 404"), first
