"""The binary encodings of the REST API, as the SDK's public import path.

They are defined once in :mod:`docl.wire.encoding` (shared with the server); this
module re-exports them so ``from docl.client import wire`` keeps working.
"""

from __future__ import annotations

from docl.wire.encoding import *  # noqa: F403
from docl.wire.encoding import __all__ as __all__
