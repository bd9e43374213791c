"""The embedded redis-server (RedisProcess) and `docl serve` as real processes."""

from __future__ import annotations

import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import redis

from docl.services.embedded import RedisProcess, RedisStartError, ServerProcess
from docl.wire import encoding as wire


def test_redis_process_kill_restart_keeps_port_and_aof_data(tmp_path: Path) -> None:
    proc = RedisProcess(data_dir=tmp_path / "data", appendonly=True, appendfsync="always")
    with proc:
        port, pid = proc.port, proc.pid
        assert proc.ping()
        r = redis.Redis.from_url(proc.url)
        r.set("k", "v")
        assert redis.Redis.from_url(proc.unix_url).get("k") == b"v"
        proc.kill()
        assert not proc.ping() and not proc.running()
        proc.start()
        assert proc.port == port and proc.pid != pid
        assert redis.Redis.from_url(proc.url).get("k") == b"v"  # from the AOF
        proc.restart()  # graceful this time
        assert redis.Redis.from_url(proc.url).get("k") == b"v"
    assert not proc.running()
    assert (tmp_path / "data").is_dir()  # a given data dir is kept


def test_redis_process_without_persistence_forgets_and_cleans_up() -> None:
    proc = RedisProcess().start()
    data_dir = proc.data_dir
    redis.Redis.from_url(proc.url).set("k", "v")
    proc.kill()
    proc.start()
    assert redis.Redis.from_url(proc.url).get("k") is None
    proc.stop()
    assert not data_dir.exists()  # the temporary directory is removed


def test_redis_process_reports_a_taken_port() -> None:
    first = RedisProcess().start()
    try:
        with pytest.raises(RedisStartError, match="exited"):
            RedisProcess(port=first.port).start(timeout=10)
    finally:
        first.stop()


def _report(http: httpx.Client, run_id: str, epoch: int, rid: str, lr: float) -> httpx.Response:
    idx = np.arange(4)
    body = wire.encode_report(report_id=rid, epoch=epoch, lr_sum=lr, indices=idx,
                              outputs=np.full((4, 2), lr, np.float32), targets=idx % 2)  # fmt: skip
    return http.post(
        f"/v1/runs/{run_id}/reports",
        content=body,
        headers={"Content-Type": wire.REPORT_CONTENT_TYPE},
    )


def test_docl_serve_embedded_redis_persists_in_a_data_dir(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, run_id: str
) -> None:
    server = server_factory(data_dir=tmp_path / "state", log_level="info")
    # docl serve says that its Redis is embedded, and where the data lives
    state = (tmp_path / "state").resolve()
    assert f"embedded redis-server at unix://{state}/redis.sock" in server.log_text()
    assert f"data in {tmp_path / 'state'} (AOF on" in server.log_text(), server.log_text()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert (
            http.post(
                "/v1/runs",
                json={"run_id": run_id, "num_samples": 10, "num_outputs": 2, "epochs": 2},
            ).status_code
            == 201
        )
        http.post(f"/v1/runs/{run_id}/epochs", json={})
        assert _report(http, run_id, 0, "a", 0.0).status_code == 200
        assert _report(http, run_id, 0, "b", 1.0).json()["scored"] == 4
        before = http.get(f"/v1/runs/{run_id}/scores").json()
    server.stop()  # docl serve stops its embedded Redis with it (AOF flushed)
    assert any((tmp_path / "state").iterdir())
    server.start()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get(f"/v1/runs/{run_id}/scores").json() == before
        assert _report(http, run_id, 0, "b", 1.0).json()["duplicate"] is True


def test_docl_serve_with_workers_shares_one_embedded_redis(
    server_factory: Callable[..., ServerProcess], run_id: str, tmp_path: Path
) -> None:
    server = server_factory(workers=2, data_dir=tmp_path)
    sock = tmp_path / "redis.sock"
    assert sock.exists()  # the parent started one redis-server, on a Unix socket
    assert f"data in {tmp_path} (AOF on" in server.log_text(), server.log_text()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert (
            http.post(
                "/v1/runs",
                json={"run_id": run_id, "num_samples": 10, "num_outputs": 2, "epochs": 2},
            ).status_code
            == 201
        )
        http.post(f"/v1/runs/{run_id}/epochs", json={})
        # many connections: both workers serve, and all see the same run (one Redis)
        for k in range(12):
            with httpx.Client(base_url=server.url, timeout=30) as other:
                assert other.get(f"/v1/runs/{run_id}").status_code == 200
                assert _report(other, run_id, 0, f"r{k}", float(k)).status_code == 200
        visits = http.get(f"/v1/runs/{run_id}/scores").json()["visits"]
        assert visits[:4] == [12] * 4
        metrics = http.get("/metrics").text  # summed over the worker processes
        line = next(
            x for x in metrics.splitlines() if x.startswith('docl_reports_total{result="applied"}')
        )
        assert float(line.split()[-1]) == 12.0
    server.stop()  # SIGTERM to the parent: workers exit, then it stops its redis-server
    deadline = time.monotonic() + 15
    while sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not sock.exists()  # redis-server removes its socket on shutdown


def test_docl_serve_rejects_bad_settings() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from docl.client.cli import main; main()", "serve", "--port", "99999"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "port" in out.stderr


# -- issue 10: who can reach the embedded Redis -----------------------------------------------
def _redis_child(server: ServerProcess) -> psutil.Process:
    assert server.pid is not None
    for _ in range(100):
        kids = [
            p for p in psutil.Process(server.pid).children(recursive=True)
            if "redis-server" in p.name()
        ]  # fmt: skip
        if kids:
            return kids[0]
        time.sleep(0.05)
    raise AssertionError("docl serve has no redis-server child")


def _data_dir(redis_proc: psutil.Process) -> Path:
    """The directory of the Unix socket the embedded Redis listens on (its data dir)."""
    paths = {c.laddr for c in redis_proc.net_connections(kind="unix") if c.laddr}
    assert len(paths) == 1, paths
    return Path(paths.pop()).parent


def test_docl_serve_embedded_redis_listens_on_an_owner_only_unix_socket_alone() -> None:
    with ServerProcess() as server:
        child = _redis_child(server)
        tcp = [c for c in child.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert tcp == [], f"the embedded Redis listens on TCP: {tcp}"
        data_dir = _data_dir(child)
        sock = data_dir / "redis.sock"
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0, oct(sock.stat().st_mode)
        assert stat.S_IMODE(data_dir.stat().st_mode) & 0o077 == 0, oct(data_dir.stat().st_mode)
        assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200


def test_a_tcp_redis_process_needs_its_password_and_has_no_config_or_debug() -> None:
    with RedisProcess() as proc:
        assert proc.password and proc.password in proc.url
        anonymous = redis.Redis(host="127.0.0.1", port=proc.port, socket_timeout=5)
        with pytest.raises(redis.exceptions.AuthenticationError):
            anonymous.get("k")
        anonymous.close()
        r = redis.Redis.from_url(proc.url)
        r.set("k", "v")
        for cmd in (("CONFIG", "SET", "dir", "/tmp"), ("DEBUG", "SLEEP", "0")):
            with pytest.raises(redis.exceptions.ResponseError, match="unknown command"):
                r.execute_command(*cmd)
        r.close()


def test_a_sigkilled_servers_data_dir_is_removed_by_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own temporary directory: under xdist another test's start (any embedded Redis)
    # sweeps the dead server's directory too, as it should, before this test looks.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    server = ServerProcess(env={"TMPDIR": str(tmp_path)})
    try:
        server.start()
        child = _redis_child(server)
        data_dir = _data_dir(child)
        assert data_dir.name.startswith("docl-redis-") and data_dir.is_dir()
        assert data_dir.parent == tmp_path
        server.kill()  # SIGKILL: no lifespan shutdown, no cleanup
        child.wait(timeout=15)  # its Redis follows (parent-death signal)
        assert data_dir.is_dir(), "left behind, as a crash leaves it"
        with RedisProcess(tcp=False) as fresh:  # what the next `docl serve` starts
            assert not data_dir.exists(), f"{data_dir} of a dead server is still there"
            assert fresh.data_dir.is_dir() and fresh.ping()
    finally:
        server.close()


# -- issue 19: the embedded Redis has a maxmemory and refuses writes past it -----------------
def test_docl_serve_embedded_redis_has_a_maxmemory_of_half_the_ram_and_noeviction() -> None:
    with ServerProcess() as server:
        sock = _data_dir(_redis_child(server)) / "redis.sock"
        client = redis.Redis(unix_socket_path=str(sock))
        try:
            config = client.config_get("maxmemory*")
        finally:
            client.close()
    assert config["maxmemory-policy"] == "noeviction", config
    half = psutil.virtual_memory().total // 2
    assert abs(int(config["maxmemory"]) - half) < half // 100, config


def test_past_the_embedded_maxmemory_writes_get_503_and_reads_still_work() -> None:
    """DOCL_EMBEDDED_MAXMEMORY_BYTES = 8 MiB; runs of n = 100,000 NaN-fill a 400 kB score
    column each at create. Before the fix all 60 creates were 201 (no maxmemory)."""
    env = {"DOCL_EMBEDDED_MAXMEMORY_BYTES": str(8 << 20)}
    with ServerProcess(env=env) as server, httpx.Client(base_url=server.url, timeout=30) as api:
        made: list[str] = []
        refused = None
        for i in range(60):
            body = {"run_id": f"oom-{i}", "num_samples": 100_000, "num_outputs": 3, "epochs": 2}
            r = api.post("/v1/runs", json=body)
            if r.status_code != 201:
                refused = r
                break
            made.append(body["run_id"])
        assert refused is not None, "60 runs of 400 kB each fit in 8 MiB: no maxmemory"
        assert refused.status_code == 503, refused.text
        detail = refused.json()["detail"]
        assert "refuses writes" in detail and "maxmemory" in detail, detail
        assert refused.headers["retry-after"] == "5"
        assert 5 <= len(made) < 60, len(made)
        assert api.get(f"/v1/runs/{made[0]}").status_code == 200  # reads still served
        assert api.get("/readyz").status_code == 200
        for rid in made[:5]:  # freeing memory makes writes work again
            assert api.delete(f"/v1/runs/{rid}").status_code == 204
        r = api.post("/v1/runs", json={"run_id": "oom-again", "num_samples": 1000,
                                       "num_outputs": 3, "epochs": 2})  # fmt: skip
        assert r.status_code == 201, r.text


def test_a_cluster_bus_port_taken_after_it_was_chosen_is_replaced_by_a_new_pair() -> None:
    """The CI failure of stop 18: a node's port pair is chosen when the cluster is built,
    and another process bound the bus port (port + 10000) before redis-server did, which
    then exited "address in use". The start draws a new pair and the cluster comes up."""
    import socket

    from docl.services.embedded import RedisClusterProcess
    from docl.services.embedded.cluster import CLUSTER_BUS_OFFSET, _ephemeral_low

    cluster = RedisClusterProcess(primaries=2)
    chosen = cluster.nodes[1].port
    # both ports of a pair come from below the ephemeral range, where no outgoing
    # connection of another process can take them
    assert all(n.port + CLUSTER_BUS_OFFSET < _ephemeral_low() for n in cluster.nodes)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind(("127.0.0.1", chosen + CLUSTER_BUS_OFFSET))
        squatter.listen()
        with cluster:
            assert cluster.nodes[1].port != chosen
            assert cluster.info(1)["cluster_state"] == "ok"
            assert cluster.info(1)["cluster_known_nodes"] == "2"
