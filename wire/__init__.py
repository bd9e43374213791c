"""The wire contract of the REST API v1: what crosses the network, defined once.

- :mod:`docl.wire.models` — the pydantic models of every JSON body;
- :mod:`docl.wire.encoding` — the binary encodings (reports, scores, indices);
- :mod:`docl.wire.errors` — :class:`~docl.wire.errors.WireError` (and its base).

The score server (``docl.services``), the SDK (``docl.client``) and the workers
import it; it imports none of them (``tests/test_imports.py`` checks the
direction), so importing it costs pydantic and numpy only. ``docl.client.models``
and ``docl.client.wire`` re-export these modules for SDK users.
"""
