"""`docl serve` on a port that is taken says so in one line before anything starts
(uvicorn logged "Application startup complete" and then "address already in use")."""

from __future__ import annotations

import socket

from typer.testing import CliRunner

from docl.client.cli import _register, app

_register()


def test_a_port_in_use_is_one_line_naming_port() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--port", str(port)])
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert lines[0].startswith(f"docl serve: cannot listen on 127.0.0.1:{port}: ")
    assert "in use" in lines[0] and "--port" in lines[0]
    assert "startup complete" not in r.output
