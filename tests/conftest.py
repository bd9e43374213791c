"""Shared fixtures: REAL redis-server processes and REAL score servers over HTTP.

Nothing here is a mock. Every process is started on a free port (never 6379 or
8000: other people run tests on this machine at the same time) and stopped by
its PID at teardown; children also get a parent-death signal, so a killed test
run leaves nothing behind.

Session-scoped (shared by every test of the run; use a unique ``run_id``):

``redis_server``   a :class:`docl.services.embedded.RedisProcess` (no persistence).
                   Do NOT kill it: use ``redis_factory`` for a Redis you may kill.
``redis_url``      its ``redis://127.0.0.1:<port>/0``.
``redis_cluster``  a :class:`docl.services.embedded.RedisClusterProcess`: 3 primaries, one
                   password, slots split evenly (started on first use, ~2 s). Do NOT kill it.
``store_url``      parametrized: ``redis_url`` ("redis") and the cluster's ``redis+cluster://``
                   URL ("cluster"); a test taking it runs against both.
``score_server``   base URL (``http://127.0.0.1:<port>``) of a ``docl serve`` child
                   process (one uvicorn worker) using ``redis_server``. Do not
                   restart it: use ``server_factory``.

Function-scoped:

``run_id``         a fresh run id for this test (``t-<test name>-<8 hex>``, ≤ 64 chars).
``http``           an ``httpx.Client`` on ``score_server`` (30 s timeout).
``redis_factory``  ``redis_factory(appendonly=True, appendfsync="always", data_dir=...)``
                   -> a started RedisProcess you own (kill/restart it freely).
``server_factory`` ``server_factory(redis_url=..., env={"DOCL_API_TOKEN": "t"}, workers=1)``
                   -> a started ServerProcess (``.url``, ``.stop()``, ``.restart()``, ``.kill()``).
``sync_redis``     ``sync_redis(url)`` -> a synchronous redis-py client for a ``redis://``/``unix://``
                   or ``redis+cluster://`` URL (closed at teardown): to look at or poke keys.
``run_snapshot``   ``run_snapshot(redis_url, run_id)`` -> {key: DUMP bytes} of every key of
                   the run (plus whether it is in the run index): compare two snapshots
                   to prove that a request changed nothing.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from docl.services.embedded import RedisClusterProcess, RedisProcess, ServerProcess


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist's marker, declared here too so that `-p no:xdist` (--strict-markers)
    # accepts the modules that carry it.
    config.addinivalue_line(
        "markers", "xdist_group(name): under --dist loadgroup, a group's tests share one worker"
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2 --dist loadgroup``) every test that
    starts or joins Ray goes to one worker: they share one local Ray session there
    (``ray_cluster``), and two Ray instances on a 2-core machine would only slow
    each other down. A test is Ray's when it is marked ``ray`` or takes ``ray_cluster``.

    The group is given here, not left to xdist: xdist's own hook (which turns an
    ``xdist_group`` mark into a ``@group`` suffix of the node id, the scheduler's
    only input) runs before this one, and under pytest 9.2 its ``item._nodeid = ...``
    no longer changes the id at all (pytest-dev/pytest-xdist#1386): the group was
    silently ignored and the Ray tests were spread over both workers, each starting
    its own Ray. So the suffix is set here, on the structured id where pytest has one,
    and checked: a run whose ids did not change stops instead of going on ungrouped."""
    loadgroup = bool(getattr(config.option, "loadgroup", False))  # set on xdist workers
    for item in items:
        if item.get_closest_marker("ray") or "ray_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("ray"))
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})  # fmt: skip
        if loadgroup and groups and "@" not in item.nodeid.rpartition("]")[2]:
            _set_xdist_group(item, "_".join(groups))  # as xdist names a joined group


def _set_xdist_group(item: pytest.Item, group: str) -> None:
    new = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):  # pytest >= 9.2: a structured NodeId
        from _pytest.nodeid import NodeId

        item._id = NodeId.parse(new)
    else:
        item._nodeid = new
    if item.nodeid != new:
        raise pytest.UsageError(
            f"cannot put {item.nodeid} in xdist group {group!r}: this pytest keeps node "
            "ids elsewhere (tests/conftest.py, pytest-dev/pytest-xdist#1386)"
        )


@pytest.fixture(autouse=True)
def _sigint_restored(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves this process's SIGINT handler changed (ignored, say) would hand
    that to every command a later test starts: a child Python started with SIGINT
    ignored installs no KeyboardInterrupt, and the Ctrl-C tests then wait out an
    outage instead of seeing the interrupt (they failed that way in full xdist runs,
    never alone). Put it back and name the test in a warning."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        warnings.warn(f"{request.node.nodeid} left SIGINT's handler as {after!r}", stacklevel=1)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProcess]:
    proc = RedisProcess()
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisProcess) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcess]:
    cluster = RedisClusterProcess(primaries=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "cluster":
        return str(request.getfixturevalue("redis_cluster").url)
    return str(request.getfixturevalue("redis_url"))


def _sync_client(url: str) -> Any:
    """A synchronous redis-py client for a single-Redis or a ``redis+cluster://`` URL."""
    import redis
    from redis.cluster import RedisCluster

    from docl.services.redis.connection import cluster_url

    node_url = cluster_url(url)
    if node_url is not None:
        return RedisCluster.from_url(node_url)
    return redis.Redis.from_url(url)


@pytest.fixture
def sync_redis() -> Iterator[Callable[[str], Any]]:
    made: list[Any] = []

    def make(url: str) -> Any:
        made.append(_sync_client(url))
        return made[-1]

    try:
        yield make
    finally:
        for client in made:
            client.close()


@pytest.fixture(scope="session")
def score_server(redis_server: RedisProcess) -> Iterator[str]:
    server = ServerProcess(redis_url=redis_server.url)
    server.start()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def run_id(request: pytest.FixtureRequest) -> str:
    name = re.sub(r"[^A-Za-z0-9_.\-]", "-", request.node.name)[:40].strip("-") or "test"
    return f"t-{name}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def http(score_server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=score_server, timeout=30.0) as client:
        yield client


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisProcess]]:
    started: list[RedisProcess] = []

    def make(**kwargs: Any) -> RedisProcess:
        proc = RedisProcess(**kwargs)
        started.append(proc)
        return proc.start()

    try:
        yield make
    finally:
        for proc in started:
            proc.stop()


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(**kwargs: Any) -> ServerProcess:
        server = ServerProcess(**kwargs)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.close()


def _snapshot(url: str, run_id: str) -> dict[str, Any]:
    client = _sync_client(url)
    try:
        out: dict[str, Any] = {}
        for key in sorted(client.scan_iter(match=f"{{run:{run_id}}}:*", count=1000)):
            out[key.decode()] = client.dump(key)
        out["<in docl:runs>"] = bool(client.sismember("docl:runs", run_id))
        return out
    finally:
        client.close()


@pytest.fixture
def run_snapshot() -> Callable[[str, str], dict[str, Any]]:
    return _snapshot


class RestartLater(threading.Thread):
    """Start ``proc`` again ``delay`` s from now, from a thread that then stays alive
    until :meth:`done`: a child gets PR_SET_PDEATHSIG from the *thread* that forked
    it, so a thread that ended would take the restarted process with it."""

    def __init__(self, proc: RedisProcess | ServerProcess, delay: float) -> None:
        super().__init__(daemon=True)
        self.proc, self.delay = proc, delay
        self.error: BaseException | None = None
        self.down_at = time.monotonic()
        self.up_at: float | None = None
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        time.sleep(self.delay)
        try:
            self.proc.start()
            self.up_at = time.monotonic()
        except BaseException as e:
            self.error = e
        self._done.wait()

    def done(self) -> None:
        self._done.set()
        self.join()
        assert self.error is None, f"restart failed: {self.error}"


@pytest.fixture
def restart_later() -> Iterator[Callable[[RedisProcess | ServerProcess, float], RestartLater]]:
    """``restart_later(proc, delay)``; every restart thread is ended at teardown,
    after the test's checks (ending it ends the process it started)."""
    started: list[RestartLater] = []

    def make(proc: RedisProcess | ServerProcess, delay: float) -> RestartLater:
        started.append(RestartLater(proc, delay))
        return started[-1]

    try:
        yield make
    finally:
        for r in started:
            r.done()
