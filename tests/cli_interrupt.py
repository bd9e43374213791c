"""Ctrl-C a real `docl` command: run it in its own session, read its output until a
line shows it is under way, then send SIGINT to its process group, as a terminal
does (Ray's and the experiment's worker processes get it too)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _default_sigint() -> None:
    # a terminal's foreground job: SIGINT at its default, whatever this process has
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_docl(
    *args: str, when: Callable[[str], bool], timeout: float = 300, ignore_sigint: bool = False
) -> tuple[int, str, list[str]]:
    """(exit status, all output, the lines read before the interrupt). Fails when no
    line satisfies ``when`` within ``timeout`` s. ``ignore_sigint``: the command starts
    with SIGINT ignored, as a job started in the background by a non-interactive shell
    does (its Python then installs no KeyboardInterrupt handler; the children that
    install their own handler, docl serve and redis-server, still stop)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from docl.client.cli import main; main()", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        preexec_fn=_ignore_sigint if ignore_sigint else _default_sigint,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines.append(proc.stdout.readline())
            if not lines[-1] or when(lines[-1]):
                break
        assert lines and when(lines[-1]), "".join(lines)[-3000:]
        os.killpg(proc.pid, signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, "".join(lines) + rest, lines
