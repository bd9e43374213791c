"""Helpers shared by the CLI modules."""

from __future__ import annotations

import importlib
from types import ModuleType

import typer


def need_extra(module: str, extra: str) -> ModuleType:
    """Import ``module`` or exit with a message naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        typer.echo(
            f"This command needs the '{extra}' extra ({e.name or module} is not installed).\n"
            f"Install it with:  pip install 'docl[{extra}]'",
            err=True,
        )
        raise typer.Exit(code=3) from e
