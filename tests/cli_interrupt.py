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


def interrupt_docl(
    *args: str, when: Callable[[str], bool], timeout: float = 300
) -> tuple[int, str, list[str]]:
    """(exit status, all output, the lines read before the interrupt). Fails when no
    line satisfies ``when`` within ``timeout`` s."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from docl.client.cli import main; main()", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
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
