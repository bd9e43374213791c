"""Every `docl … --help` renders its texts whole: rich markup ate bracketed
parts such as "[default: …]" and left a stray " ." behind."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from docl.client.cli import _register, app

_register()


def _commands() -> list[list[str]]:
    """Every command path of the CLI, found by walking click's command tree."""
    root = typer.main.get_command(app)
    out: list[list[str]] = []

    def walk(cmd: Any, path: list[str]) -> None:  # typer's (vendored) click commands
        out.append(path)
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])

    walk(root, [])
    return out


COMMANDS = _commands()


def test_the_walk_finds_the_commands() -> None:
    assert (
        ["train"] in COMMANDS and ["runs", "list"] in COMMANDS and ["plot", "metrics"] in COMMANDS
    )


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "docl")
def test_help_has_no_stray_space_before_a_full_stop(path: list[str]) -> None:
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert r.exit_code == 0, r.output
    stray = [line for line in r.output.splitlines() if re.search(r"\w \.(\s|$|\[)", line)]
    assert not stray, "\n".join(stray)


def test_bracketed_examples_survive_in_help() -> None:
    r = CliRunner().invoke(
        app, ["experiment", "--help"], env={"COLUMNS": "200"}, terminal_width=200
    )
    assert "'docl[tau=1]'" in r.output
    r = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert "(default: the task's, 30)" in r.output


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "docl")
def test_help_fits_80_columns_without_cutting_anything(path: list[str]) -> None:
    """At 80 columns every flag, its default and its help are there whole (rich's
    table cut them with "…": `--outage-toleran…`), and no line is wider."""
    r = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert r.exit_code == 0, r.output
    wide = [line for line in r.output.splitlines() if len(line) > 80]
    assert not wide, "\n".join(wide)
    cmd: Any = typer.main.get_command(app)
    for name in path:
        cmd = cmd.commands[name]
    text = " ".join(r.output.split())  # wrapped lines joined
    for param in cmd.params:
        for opt in param.opts if param.param_type_name == "option" else []:
            assert re.search(rf"(^|[\s,/]){re.escape(opt)}([\s,/=]|$)", r.output, re.M), opt
        default = param.default
        if (
            isinstance(default, str | int | float)
            and not isinstance(default, bool)
            and default != ""
        ):
            assert str(default).replace(" ", "") in text.replace(" ", ""), (param.name, default)
