"""`docl bench`: placeholder until its owner fills it in."""

from __future__ import annotations

from docl.client.cli import app as _app  # noqa: F401
