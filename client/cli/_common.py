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


def method_names(*, local_only: bool = False) -> str:
    """The selection methods of this machine's registry (built-ins, then plugins), for
    help strings. The client does not import the server's modules on import: this one
    is light (numpy + pydantic) and only read when the CLI builds its help."""
    try:
        from docl.services import methods

        methods.load_plugins()
        ms = methods.registry().values()
        return ", ".join(m.name for m in ms if m.local_ok or not local_only)
    except Exception:  # a broken plugin must not break `docl --help`
        return "see GET /v1/methods"
