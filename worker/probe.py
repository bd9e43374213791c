"""Does a score server answer at this address? Asked once before a run starts.

Light on purpose (httpx and the SDK, no torch, no Ray), so that ``docl train
--server URL`` can ask before it imports either: an address that never
answered is almost always a typo or a server that was not started, and the
answer should come in seconds, not after Ray's start-up. Once a run is going,
outages are waited out instead (``outage_tolerance``).
"""

from __future__ import annotations

import httpx

from docl.client import APIError, ScoreClient, ServerError, TransportError

__all__ = ["probe_server"]


def probe_server(url: str, token: str | None = None, *, timeout: float = 5.0) -> str | None:
    """``None`` when a docl score server answers ``GET /healthz`` at ``url`` (a 5xx
    counts: a server in a restart is an outage, waited out later), else one line
    saying what is wrong and what to do."""
    limits = httpx.Timeout(timeout, connect=min(timeout, 3.0))
    with ScoreClient(url, token=token, timeout=limits, retries=1) as client:
        try:
            client.health()
        except TransportError as e:
            cause = str(e).rsplit(": ", 1)[-1]  # the last reason, e.g. "Connection refused"
            return (
                f"no score server answers at {url} ({cause}); start one with `docl serve`, "
                "or leave out --server to have one started for this job"
            )
        except ServerError:
            return None
        except APIError as e:
            return f"{url} answers, but not as a docl score server (GET /healthz: HTTP {e.status})"
    return None
