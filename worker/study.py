"""Moved to :mod:`docl.lab.study` (harnesses live outside the worker package).

A re-export for ``worker/experiment.py`` until it moves to ``lab/`` too; nothing
else imports this module (``tests/test_imports.py`` lists it as pending).
"""

from __future__ import annotations

from docl.lab.study import *  # noqa: F403
from docl.lab.study import __all__ as __all__
