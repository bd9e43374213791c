"""The wire schemas of the REST API v1, as the SDK's public import path.

They are defined once in :mod:`docl.wire.models` (shared with the server); this
module re-exports them so ``from docl.client.models import RunCreate`` keeps working.
"""

from __future__ import annotations

from docl.wire.models import *  # noqa: F403
from docl.wire.models import __all__ as __all__
