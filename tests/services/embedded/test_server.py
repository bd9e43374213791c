"""``ServerProcess``: a real ``docl serve`` child that lost its port is started again.

The port a ServerProcess picks is free when probed, but another process (a Ray
worker, another test's server) can bind it before uvicorn does; under pytest-xdist
that happened in the full suite (``BadStatusLine``: the readiness probe talked to
another process). The race is made certain here by handing the first attempt a
port this test holds.
"""

from __future__ import annotations

import socket

import httpx
import pytest

from docl.services.embedded import server as server_mod
from docl.services.embedded.redis_process import RedisProcess


def test_a_server_whose_chosen_port_is_taken_starts_on_another(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(8)  # accepts, never answers HTTP
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real = server_mod.free_port
        monkeypatch.setattr(
            server_mod, "free_port", lambda host="127.0.0.1": next(ports, None) or real(host)
        )
        srv = server_mod.ServerProcess(redis_url=redis_server.url)
        try:
            srv.start(timeout=60)
            assert srv.port != taken
            assert httpx.get(f"{srv.url}/readyz", timeout=10).status_code == 200
            assert "cannot listen on" in srv.log_text()  # the first attempt said why
        finally:
            srv.close()


def test_a_server_given_a_taken_port_fails_with_the_reason(redis_server: RedisProcess) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen(8)
        taken = squatter.getsockname()[1]
        srv = server_mod.ServerProcess(redis_url=redis_server.url, port=taken)
        try:
            with pytest.raises(server_mod.PortTaken, match="cannot listen on"):
                srv.start(timeout=60)
        finally:
            srv.close()
