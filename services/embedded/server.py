"""A real score server in a child process (:class:`ServerProcess`): ``docl serve`` on a
free port, for the tests, the benchmarks and ``docl train``'s local server."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from docl.services.embedded.common import Started, die_with_parent, free_port

__all__ = ["ServerProcess"]


#: Tries of a start on ports chosen by ServerProcess itself, when another process took one.
PORT_ATTEMPTS = 3
#: How docl serve (its pre-flight check) and uvicorn say that the port is taken.
_PORT_IN_USE = ("cannot listen on", "address already in use")


class PortTaken(RuntimeError):
    """docl serve exited because another process holds its port."""


class ServerProcess(Started):
    """A real score server: ``docl serve`` in a child process on a free port.

    Used by the tests (``score_server`` fixtures), the service benchmark and
    anything else that needs a server over real HTTP:

        with ServerProcess(redis_url=redis.url) as server:
            httpx.get(server.url + "/readyz")

    Without ``redis_url`` the server starts its own embedded Redis. ``env`` adds
    ``DOCL_*`` settings (e.g. ``{"DOCL_API_TOKEN": "s3cret"}``). The port is kept
    across :meth:`restart`, so clients reconnect to the same URL.
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        port: int | None = None,
        host: str = "127.0.0.1",
        workers: int = 1,
        data_dir: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "warning",
    ) -> None:
        self.redis_url = redis_url
        self.host = host
        self.port = port or 0
        self.workers = workers
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="docl-server-", suffix=".log", delete=False)  # noqa: SIM115 - closed in close()
        self._log_from = 0  # where the current start attempt's text begins in log_text()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def log_text(self) -> str:
        try:
            return Path(self._log.name).read_text(errors="replace")
        except OSError:
            return ""

    def _argv(self) -> list[str]:
        import sys

        argv = [
            sys.executable,
            "-c",
            "from docl.client.cli import main; main()",
            "serve",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", str(self.workers),
            "--log-level", self.log_level,
        ]  # fmt: skip
        if self.redis_url:
            argv += ["--redis-url", self.redis_url]
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        return argv

    def start(self, timeout: float = 60.0) -> ServerProcess:
        """Start and wait until ``/readyz`` answers 200. On a port it chose itself, a start
        that lost the port to another process (taken between the probe and uvicorn's bind:
        Ray's workers and other test servers pick ports too) is tried again on another."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        chosen = not self.port
        for attempt in range(PORT_ATTEMPTS):
            if chosen:
                self.port = free_port(self.host)
            env = {**os.environ, **self.env}
            if self.redis_url is None and "DOCL_REDIS_URL" not in self.env:
                env.pop("DOCL_REDIS_URL", None)  # an inherited URL would defeat "embedded"
            self._log_from = len(self.log_text())  # this attempt's lines follow
            self.proc = subprocess.Popen(
                self._argv(),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=die_with_parent,
            )
            try:
                self._wait_ready(timeout)
                return self
            except PortTaken:
                if not chosen or attempt == PORT_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _wait_ready(self, timeout: float) -> None:
        import http.client

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                text = self.log_text()[-3000:]
                mine = self.log_text()[self._log_from :].lower()
                kind = PortTaken if any(m in mine for m in _PORT_IN_USE) else RuntimeError
                raise kind(f"score server exited with code {self.proc.returncode}:\n{text}")
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=1.0)
                conn.request("GET", "/readyz")
                ok = conn.getresponse().status == 200
                conn.close()
                if ok:
                    return
            except (OSError, http.client.HTTPException):
                # not up yet, or another process answers on the port (ours then exits)
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"score server not ready within {timeout} s:\n{self.log_text()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM (graceful: uvicorn finishes requests in flight), then SIGKILL if needed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def restart(self, *, kill: bool = False, timeout: float = 60.0) -> ServerProcess:
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout=timeout)

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(OSError):
            self._log.close()
            os.unlink(self._log.name)
