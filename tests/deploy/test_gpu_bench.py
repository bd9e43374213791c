"""deploy/bench/gpu_overhead.sh, the prepared GPU benchmark: it refuses to run
without a GPU, and every `docl` command in it parses with the real CLI."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "bench" / "gpu_overhead.sh"


def _docl_commands() -> list[list[str]]:
    """The script's `"$docl" …` invocations, continuation lines joined, shell
    variables of the loop replaced by a value the loop takes."""
    text = SCRIPT.read_text().replace("\\\n", " ")
    cmds = []
    for line in text.splitlines():
        m = re.match(r'\s*"\$docl"\s+(.*?)(\s*\|.*)?$', line)
        if m:
            cmds.append(shlex.split(m.group(1).replace("${bs}", "128")))
    return cmds


def test_the_script_stops_with_a_clear_message_without_a_gpu(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU even where there is one
    r = subprocess.run(
        [str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode != 0
    assert "no CUDA device visible" in r.stderr, r.stderr[-2000:]
    assert not list((tmp_path / "out").glob("overhead-*"))  # nothing measured


def test_every_docl_command_in_the_script_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from typer.testing import CliRunner

    from docl.client.cli import _register, app

    cmds = _docl_commands()
    assert len(cmds) >= 1 and all(c[:2] == ["bench", "overhead"] for c in cmds)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _register()
    for args in cmds:
        r = CliRunner().invoke(app, args)
        # Parsed, validated, and refused only for the missing GPU (a usage error
        # would say "No such option" / "Invalid value" instead).
        assert r.exit_code == 2 and "sees no CUDA device" in r.output, (args, r.output)
