"""The ``docl`` command line.

Each command group lives in its own module and registers itself on ``app``;
commands that need the ``server`` or ``worker`` extras import them lazily and
say kindly which extra to install when they are missing (see ``need_extra``).
"""

from __future__ import annotations

import typer

from docl.client.cli._common import need_extra

__all__ = ["app", "main", "need_extra"]

app = typer.Typer(
    name="docl",
    help=(
        "docl: dynamics-optimized curriculum learning as a service.\n\n"
        "Start a score server (docl serve), train with a curriculum (docl train), "
        "inspect runs (docl runs), measure (docl bench, docl experiment) and plot (docl plot)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """docl: dynamics-optimized curriculum learning as a service."""


@app.command()
def version() -> None:
    """Print the installed docl version."""
    from importlib.metadata import version as _v

    typer.echo(_v("docl"))


def _register() -> None:
    # Imported here so each module can `from docl.client.cli import app` safely.
    from docl.client.cli import bench, experiment, plot, runs, serve, train  # noqa: F401


def main() -> None:
    _register()
    app()
