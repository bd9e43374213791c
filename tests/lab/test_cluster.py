"""``python -m docl.lab.cluster``: a real local Redis Cluster, in a child process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import pytest
import redis
from redis.cluster import RedisCluster

from docl.services.redis.connection import cluster_url


def _start(*args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start it; its output up to the URL (the last line)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "docl.lab.cluster", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, (
            f"exited with {proc.wait()}: {lines} {proc.stderr.read() if proc.stderr else ''}"
        )
        lines.append(line.rstrip("\n"))
        if line.startswith("redis+cluster://"):
            return proc, lines
    proc.kill()
    raise AssertionError(f"no URL within 60 s: {lines}")


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def _aof_enabled(url: str, node: str) -> int:
    host, port = node.rsplit(":", 1)  # a lone node may not know its own address: ":port"
    with redis.Redis(
        host=host or "127.0.0.1", port=int(port), password=urlsplit(url).password
    ) as r:
        return int(r.info("persistence")["aof_enabled"])


def test_replicas_one_per_primary_with_aof_and_sigterm_stops_every_node() -> None:
    proc, lines = _start("--primaries", "2", "--replicas", "1", "--node-timeout-ms", "1000")
    try:
        url = lines[-1]
        assert lines[0].startswith("Redis Cluster up: 2 primaries"), lines
        assert sum(": replicas " in line for line in lines) == 2, lines  # one line per primary
        client = RedisCluster.from_url(cluster_url(url) or "")
        nodes = client.cluster_nodes()
        primaries = {n["node_id"] for n in nodes.values() if "master" in n["flags"]}
        followed = [n["master_id"] for n in nodes.values() if "slave" in n["flags"]]
        assert len(primaries) == 2 and sorted(followed) == sorted(primaries), nodes
        client.set("{x}k", "v")
        assert client.get("{x}k") == b"v"
        assert all(_aof_enabled(url, node) == 1 for node in nodes)
        client.close()
    finally:
        _stop(proc)
    for node in nodes:  # every node stopped with it
        host, port = node.rsplit(":", 1)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=1).close()


def test_without_replicas_one_primary_and_no_aof() -> None:
    proc, lines = _start("--primaries", "1")
    try:
        client = RedisCluster.from_url(cluster_url(lines[-1]) or "")
        nodes = client.cluster_nodes()
        assert len(nodes) == 1 and not any(": replicas " in line for line in lines)
        assert _aof_enabled(lines[-1], next(iter(nodes))) == 0
        client.close()
    finally:
        _stop(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--replicas", "-1"], "must be >= 0"), (["--primaries", "0"], "must be >= 1")],
)
def test_bad_counts_are_refused_with_a_message(args: list[str], message: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "docl.lab.cluster", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and message in out.stderr, out.stderr
