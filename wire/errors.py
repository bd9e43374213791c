"""The roots of the SDK's error hierarchy that the wire contract itself raises.

:class:`DoclError` is the base of every error the SDK raises and :class:`WireError`
the one the codec raises; they are defined here so that ``docl.wire`` imports
nothing from ``docl.client``. The whole hierarchy is documented (and re-exported)
in :mod:`docl.client.errors`.
"""

from __future__ import annotations

__all__ = ["DoclError", "WireError"]


class DoclError(Exception):
    """Base of every error the SDK raises."""


class WireError(DoclError, ValueError):
    """A binary body does not follow its documented layout (see docl.wire.encoding),
    or arrays given to the SDK cannot be encoded (wrong shapes or dtypes)."""
