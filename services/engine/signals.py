"""Per-sample signal columns (:class:`SignalColumns`): named float32 columns of n values
a client uploads to a run (e.g. ``rho-loss``'s irreducible loss) and draws read.

Every bound is checked before anything is written: the name (``^[a-z][a-z0-9_]{0,31}$``,
422), the slice ([start, stop) within [0, n), 422), the values (finite or NaN = unknown;
±inf 422), the count of signals a run keeps (``DOCL_MAX_SIGNALS``, 409 for a new name
past it) and the memory they take (4 bytes per sample each, counted in
``DOCL_MAX_RUN_BYTES`` (422) and ``DOCL_MAX_TOTAL_BYTES`` (403) like the run's other
columns). The store's script checks the uid and the count again, atomically.
"""

from __future__ import annotations

import re

import numpy as np

from docl.services.config import Settings
from docl.services.engine.runs import RunRegistry, RunState
from docl.services.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from docl.services.storage import SignalStatus, Store, meta_signals
from docl.wire.models import SIGNAL_NAME_PATTERN, SignalAck, SignalList

__all__ = ["SignalColumns", "check_signal_name", "check_slice"]

_NAME = re.compile(SIGNAL_NAME_PATTERN)
#: Tries of a write that found the run re-created under it (each on a fresh state).
_ATTEMPTS = 2


def check_signal_name(name: str) -> None:
    """422 unless ``name`` is a valid signal name."""
    if not _NAME.fullmatch(name):
        raise Unprocessable(
            f"signal name {name[:40]!r} is not valid: 1-32 characters of [a-z0-9_], "
            "starting with a letter"
        )


def check_slice(st: RunState, start: int, stop: int | None) -> tuple[int, int]:
    """[start, stop) within the run's samples (stop None: to the end); 422 otherwise."""
    n = st.config.num_samples
    end = n if stop is None else stop
    if not 0 <= start <= end <= n:
        raise Unprocessable(
            f"the slice [start, stop) = [{start}, {end}) is not within the run's "
            f"{n} samples: need 0 <= start <= stop <= {n}"
        )
    return start, end


class SignalColumns:
    """The signal routes: upload a slice, read a slice, list the names."""

    def __init__(self, store: Store, settings: Settings, runs: RunRegistry) -> None:
        self.store = store
        self.settings = settings
        self.runs = runs

    async def put(self, run_id: str, name: str, start: int, values: np.ndarray) -> SignalAck:
        """Write ``values`` (float32) as samples [start, start + len) of signal ``name``,
        registering the name first when the run does not keep it yet."""
        check_signal_name(name)
        vals = np.asarray(values, dtype="<f4").reshape(-1)
        bad = np.flatnonzero(np.isinf(vals))
        if bad.size:
            i = int(bad[0])
            raise Unprocessable(
                f"signal {name!r}: value {i} (sample {start + i}) is {float(vals[i])}; values "
                f"must be finite or NaN (unknown); {bad.size} infinite value(s) in all"
            )
        most = self.settings.max_signals
        for _ in range(_ATTEMPTS):
            st = await self.runs.state(run_id)
            start, stop = check_slice(st, start, start + int(vals.shape[0]))
            names = await self.store.signal_names(st.layout)
            new = name not in names
            if new and len(names) >= most:
                raise self._too_many(st, names)
            need = None
            if new:
                need = await self.runs.check_signal_quota(st, len(names) + 1)
            status, count = await self.store.write_signal(
                st.layout, st.uid, name, start, vals, max_signals=most
            )
            if status == SignalStatus.TOO_MANY:  # another writer registered one meanwhile
                raise self._too_many(st, await self.store.signal_names(st.layout))
            if status == SignalStatus.WRITTEN:
                if need is not None:
                    self.runs.set_footprint(run_id, need)
                return SignalAck(run_id=run_id, name=name, start=start, stop=stop, signals=count)
            self.runs.forget(run_id)  # GONE: deleted or re-created under us; look again
        raise ServiceUnavailable(
            f"could not write signal {name!r} of run {run_id!r}: it kept changing"
        )

    def _too_many(self, st: RunState, names: list[str]) -> Conflict:
        return Conflict(
            f"run {st.run_id!r} keeps {len(names)} signals ({', '.join(names)}), the most a run "
            f"may keep (DOCL_MAX_SIGNALS = {self.settings.max_signals}); rewrite one of them "
            "or raise the limit"
        )

    async def get(
        self, run_id: str, name: str, start: int, stop: int | None
    ) -> tuple[np.ndarray, int, int, int]:
        """(values float32, start, stop, num_samples) of signal ``name``: at most one page
        (``DOCL_MAX_PAGE_BYTES`` / 4 values) from ``start``; 404 for a name the run
        does not keep."""
        check_signal_name(name)
        st, meta = await self.runs.checked_state(run_id)  # 404 for a run gone
        start, stop = check_slice(st, start, stop)
        stop = min(stop, start + max(1, self.settings.max_page_bytes // 4))
        if name not in meta_signals(meta):
            raise NotFound(
                f"run {run_id!r} has no signal {name!r} (upload it with "
                f"PUT /v1/runs/{run_id}/signals/{name})"
            )
        values = await self.store.read_signal(st.layout, st.uid, name, start, stop)
        return values, start, stop, st.config.num_samples

    async def list(self, run_id: str) -> SignalList:
        st, meta = await self.runs.checked_state(run_id)
        names = meta_signals(meta)
        return SignalList(
            run_id=run_id,
            length=st.config.num_samples,
            signals=names,
            max_signals=self.settings.max_signals,
        )
