"""Report mini-batches without waiting on the network: :class:`Reporter`, and the
learning-rate sum a report needs: :class:`LrSum` / :func:`track_lr`.

A training step hands its batch to :meth:`Reporter.report`, which copies the
arrays (detached, on the caller's thread), puts them in a bounded queue and
returns: a few microseconds, nothing else happens on the caller's thread.
Sender threads encode and post the queued reports to the score server.

Coalescing. A sender takes every report waiting in the queue (up to
``max_batch_samples`` samples and ``max_batch_reports`` reports) and posts them
in ONE request (``application/vnd.docl.reports.v1``); each keeps its own
``report_id``, so the server applies each exactly once. Before sending, it
lingers up to ``linger`` seconds from the oldest waiting report for the batch
to fill (not while :meth:`Reporter.flush` or ``close`` waits). A request costs
the training process ~0.5 ms of CPU (taken from the training thread through
the GIL) and the server ~2 ms whatever it carries, so with short steps a few
reports per request halve the service's cost per step; a report is at most
``linger`` late, and the sample limit bounds what the epoch-end flush waits
for (~2k samples per request balanced the two on MNIST-1D: docs/training.md,
"Overhead"). A batch the server rejects with a 4xx is re-sent report by
report, so only the bad ones are rejected.

Delivery. A report is sent until the server acknowledges it. What the SDK
retries (:func:`docl.client.errors.retryable`: connection errors, timeouts, 429,
500, 502, 503, 504) is retried forever under :attr:`Reporter.retry` (jittered
exponential backoff; while the server is down the queue simply fills up); each
retry keeps the report's ``report_id``, so a report that reached the server
before a connection broke is recognised as a duplicate and applied once. Any
other answer (e.g. a 422, a malformed report) is final: the report is counted
in ``rejected``, logged, and not sent again.

Overflow. When ``max_queue`` reports are waiting, a new report pushes out the
OLDEST waiting one (counted in ``dropped``, with a warning). Why the oldest: the
queue only overflows when the server is down or slower than training, and
then the freshest outputs are the ones that matter to the next draw; an old
report of a sample is superseded by a newer one anyway, and one with a
smaller ``lr_sum`` than the stored one would be skipped by the server.
``report`` therefore never blocks the training step.

At the end of an epoch, :meth:`Reporter.flush` waits until every queued report
has been acknowledged (or rejected), so the next draw sees them all.

Size: a little over the house's ~500 lines: :class:`Reporter` is one class (queue,
sender threads, coalescing, retries, flush/close) whose parts share its lock and
counters; :class:`LrSum` is the ~50 lines a report's ``lr_sum`` needs beside it.
"""

from __future__ import annotations

import atexit
import collections
import functools
import itertools
import logging
import math
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from docl.client._arrays import check_report_arrays
from docl.client._client import ScoreClient
from docl.client._poster import ReportPoster
from docl.client.errors import APIError, ServerError, retryable
from docl.wire import encoding as wire
from docl.wire.models import ReportAck, ReportsAck
from docl.wire.retry import EqualJitterBackoff, Retry

__all__ = ["LrSum", "Reporter", "ReporterCounters", "track_lr"]

log = logging.getLogger("docl.reporter")


@dataclass(frozen=True)
class ReporterCounters:
    """A snapshot of a :class:`Reporter`'s counters (reports, not samples, unless named)."""

    queued: int  # reports accepted by report()
    sent: int  # acknowledged by the server (duplicates included)
    requests: int  # HTTP requests that carried them (fewer than sent when coalesced)
    scored: int  # samples whose score the server updated (sum of ReportAck.scored)
    duplicates: int  # acknowledged as already applied (a retry that had got through)
    retried: int  # send attempts repeated after a connection error, timeout, 5xx or 429
    dropped: int  # pushed out of a full queue, or abandoned at close()
    rejected: int  # answered with a 4xx: not retried
    pending: int  # waiting or in flight

    def as_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}


@dataclass
class _Item:
    report_id: str
    epoch: int
    lr_sum: float
    indices: np.ndarray
    outputs: np.ndarray
    targets: np.ndarray
    features: np.ndarray | None
    at: float = 0.0  # time.monotonic() when queued

    @property
    def rows(self) -> int:
        return int(self.indices.shape[0])

    def encode(self) -> bytes:
        return wire.encode_report(
            report_id=self.report_id,
            epoch=self.epoch,
            lr_sum=self.lr_sum,
            indices=self.indices,
            outputs=self.outputs,
            targets=self.targets,
            features=self.features,
        )


class Reporter:
    """Send reports of one run from background threads; ``report`` never blocks.

    ``client`` is a :class:`ScoreClient` (the reporter sends with a copy of it
    that does not retry by itself: the reporter's own loop retries forever and
    counts every retry). ``max_queue`` bounds the reports waiting to be sent
    (overflow drops the oldest, see the module docs). ``senders`` threads post
    concurrently, which hides the round-trip time when steps are faster than
    it; reports of different samples are independent, and the epoch-end
    :meth:`flush` keeps epochs in order. A sender posts what is queued, up to
    ``max_batch_samples`` samples and ``max_batch_reports`` reports, in one
    request, after lingering up to ``linger`` seconds for the batch to fill
    (see the module docs; ``max_batch_reports=1``: one request per report,
    ``linger=0``: no waiting). ``backoff``/``max_backoff`` shape the waits while
    the server is unreachable.

    Use it as a context manager, or call :meth:`close`. A reporter still open
    when the program exits is closed then (flushing for up to ``exit_timeout``
    seconds), so the last epoch's reports are not lost.
    """

    def __init__(
        self,
        client: ScoreClient,
        run_id: str,
        *,
        max_queue: int = 1024,
        senders: int = 2,
        max_batch_samples: int = 2048,
        max_batch_reports: int = 256,
        linger: float = 0.2,
        backoff: float = 0.2,
        max_backoff: float = 5.0,
        warn_interval: float = 30.0,
        exit_timeout: float = 30.0,
    ) -> None:
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        if senders < 1:
            raise ValueError("senders must be >= 1")
        if max_batch_samples < 1 or not 1 <= max_batch_reports <= wire.MAX_REPORTS_PER_BODY:
            raise ValueError(
                f"max_batch_samples must be >= 1 and max_batch_reports in "
                f"[1, {wire.MAX_REPORTS_PER_BODY}]"
            )
        self.run_id = run_id
        self.max_batch_samples = max_batch_samples
        self.max_batch_reports = max_batch_reports
        if linger < 0:
            raise ValueError("linger must be >= 0")
        self.linger = linger
        self._rows = 0  # samples waiting in the queue
        self._urgent = 0  # flush() calls waiting: senders do not linger
        self.max_queue = max_queue
        self.backoff = backoff
        self.max_backoff = max_backoff
        #: The policy of every send: no limit, it is retried until close() gives up.
        self.retry = Retry(EqualJitterBackoff(backoff, max_backoff))
        self.warn_interval = warn_interval
        self.exit_timeout = exit_timeout
        self._client = client.with_options(retries=0)
        self._path = f"/v1/runs/{run_id}/reports"
        # report_ids: a random prefix per reporter and a counter (uuid4 per report costs
        # a system call on the caller's thread)
        self._id_prefix = uuid.uuid4().hex
        self._seq = itertools.count()
        self._queue: collections.deque[_Item] = collections.deque()
        # One lock; senders wait on _cond for work, flush() on _done for the end of work,
        # and a backoff on _stop: report() wakes a sender only when the queue was empty
        # (a thread woken per report costs the training thread its GIL, tens of µs).
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._inflight = 0
        self._closed = False
        self._c = dict.fromkeys(
            (
                "queued",
                "sent",
                "requests",
                "scored",
                "duplicates",
                "retried",
                "dropped",
                "rejected",
            ),
            0,
        )
        self._failing_since: float | None = None
        self._last_drop_warning = -math.inf
        self._drops_since_warning = 0
        #: The last error a send ended with (a rejection, or the latest failure of an outage).
        self.last_error: BaseException | None = None
        self._threads = [
            threading.Thread(target=self._run, name=f"docl-reporter-{run_id}-{i}", daemon=True)
            for i in range(senders)
        ]
        for t in self._threads:
            t.start()
        # Sender threads are daemons: without this, reports still queued when the
        # program ends (the last epoch's) would vanish silently.
        self._atexit = functools.partial(_close_at_exit, weakref.ref(self))
        atexit.register(self._atexit)

    # -- the caller's side ------------------------------------------------------------

    def report(
        self,
        *,
        epoch: int,
        indices: Any,
        outputs: Any,
        targets: Any,
        lr_sum: float,
        features: Any = None,
        report_id: str | None = None,
    ) -> str:
        """Queue one mini-batch's report and return its ``report_id`` at once.

        Arrays (numpy, torch tensors on any device, lists) are copied here, so
        the caller may reuse its buffers. Shapes are checked here too (a
        :class:`~docl.client.errors.WireError` names the argument); values are
        the server's to judge. Pass a deterministic ``report_id`` when a
        restarted worker may report the same batch again.
        """
        idx, out, tgt, feat = check_report_arrays(
            epoch, indices, outputs, targets, lr_sum, features, copy=True
        )
        item = _Item(
            report_id=report_id or f"{self._id_prefix}-{next(self._seq)}",
            at=time.monotonic(),
            epoch=int(epoch),
            lr_sum=float(lr_sum),
            indices=idx,
            outputs=out,
            targets=tgt,
            features=feat,
        )
        dropped = None
        with self._lock:
            if self._closed:
                raise RuntimeError("this Reporter is closed")
            if len(self._queue) >= self.max_queue:
                dropped = self._queue.popleft()
                self._rows -= dropped.rows
                self._c["dropped"] += 1
            wake = not self._queue  # else a sender was woken already, or is busy
            self._queue.append(item)
            self._rows += item.rows
            self._c["queued"] += 1
            if wake or self._full():
                self._cond.notify()
        if dropped is not None:
            self._warn_drop()
        return item.report_id

    def flush(
        self,
        timeout: float | None = None,
        *,
        check: Callable[[], None] | None = None,
        check_every: float = 0.5,
    ) -> bool:
        """Wait until every queued report was acknowledged (or rejected).

        Returns True when nothing is pending, False when ``timeout`` seconds
        passed first (the reports stay queued and keep being retried).
        ``check``, when given, is called every ``check_every`` s while the wait
        lasts (with the reporter's lock held: keep it cheap); what it raises ends
        the wait, e.g. because the server the reports go to has exited for good.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._urgent += 1
            self._cond.notify_all()  # lingering senders: send now
            try:
                while self._queue or self._inflight:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        log.warning(
                            "docl reporter: flush timed out after %.1f s with %d report(s) pending",
                            timeout,
                            len(self._queue) + self._inflight,
                        )
                        return False
                    if check is not None:
                        check()
                        remaining = (
                            check_every if remaining is None else min(remaining, check_every)
                        )
                    self._done.wait(remaining)
            finally:
                self._urgent -= 1
        return True

    def close(self, timeout: float | None = 30.0) -> bool:
        """Flush (up to ``timeout`` s), then stop the sender threads.

        Reports still pending after the timeout are abandoned, counted in
        ``dropped`` and warned about. Returns True when everything was delivered.
        """
        with self._lock:
            if self._closed:
                return not self._queue
        atexit.unregister(self._atexit)
        delivered = self.flush(timeout)
        with self._lock:
            self._closed = True
            abandoned = len(self._queue)
            self._queue.clear()
            self._rows = 0
            self._c["dropped"] += abandoned
            self._cond.notify_all()
            self._done.notify_all()
        self._stop.set()
        if abandoned:
            log.warning(
                "docl reporter: closed with %d report(s) undelivered (counted as dropped)",
                abandoned,
            )
        for t in self._threads:
            t.join(timeout=max(1.0, self._client_timeout()))
        return delivered

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- counters ----------------------------------------------------------------------

    def counters(self) -> ReporterCounters:
        with self._lock:
            return ReporterCounters(**self._c, pending=len(self._queue) + self._inflight)

    @property
    def sent(self) -> int:
        return self._c["sent"]

    @property
    def scored(self) -> int:
        return self._c["scored"]

    @property
    def duplicates(self) -> int:
        return self._c["duplicates"]

    @property
    def retried(self) -> int:
        return self._c["retried"]

    @property
    def dropped(self) -> int:
        return self._c["dropped"]

    @property
    def rejected(self) -> int:
        return self._c["rejected"]

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue) + self._inflight

    # -- the sender threads ------------------------------------------------------------

    def _client_timeout(self) -> float:
        t = self._client.timeout
        if isinstance(t, int | float):
            return float(t)
        return float(t.read or 30.0)

    def _run(self) -> None:
        poster = ReportPoster(self._client)
        try:
            while True:
                with self._lock:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:  # closed and drained
                        return
                    self._linger()
                    if not self._queue:  # another sender took them meanwhile
                        continue
                    batch = self._take()
                    self._inflight += len(batch)
                    if self._queue:  # more than one batch waiting: another sender may help
                        self._cond.notify()
                try:
                    self._deliver(poster, batch)
                finally:
                    with self._lock:
                        self._inflight -= len(batch)
                        if not self._inflight and not self._queue:
                            self._done.notify_all()
        finally:
            poster.close()

    def _full(self) -> bool:
        return self._rows >= self.max_batch_samples or len(self._queue) >= self.max_batch_reports

    def _linger(self) -> None:
        """Wait (lock held, released while waiting) up to ``linger`` from the oldest
        queued report for a full batch, unless flush() or close() is waiting."""
        if self.linger <= 0:
            return
        deadline = self._queue[0].at + self.linger
        while self._queue and not (self._closed or self._urgent or self._full()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._cond.wait(remaining)

    def _take(self) -> list[_Item]:
        """Everything queued, oldest first, up to the batch limits (the lock is held)."""
        first = self._queue.popleft()
        batch = [first]
        rows = first.rows
        q = self._queue
        while q and len(batch) < self.max_batch_reports:
            if rows + q[0].rows > self.max_batch_samples:
                break
            item = q.popleft()
            batch.append(item)
            rows += item.rows
        self._rows -= rows
        return batch

    def _post(self, poster: ReportPoster, batch: list[_Item]) -> list[ReportAck]:
        if len(batch) == 1:
            data = poster.post(self._path, batch[0].encode(), wire.REPORT_CONTENT_TYPE)
            return [ReportAck.model_validate_json(data)]
        body = wire.encode_reports([item.encode() for item in batch])
        data = poster.post(self._path, body, wire.REPORTS_CONTENT_TYPE)
        acks = ReportsAck.model_validate_json(data).reports
        if len(acks) != len(batch):
            raise ServerError(500, f"the server acknowledged {len(acks)} of {len(batch)} reports")
        return acks

    def _deliver(self, poster: ReportPoster, batch: list[_Item]) -> None:
        tries = self.retry.start()
        while True:
            try:
                acks = self._post(poster, batch)
            except Exception as e:
                if not retryable(e):
                    self._refuse(poster, batch, e)
                    return
                failure: BaseException = e
            else:
                with self._lock:
                    self._c["sent"] += len(acks)
                    self._c["requests"] += 1
                    self._c["scored"] += sum(a.scored for a in acks)
                    self._c["duplicates"] += sum(a.duplicate for a in acks)
                    outage = self._failing_since
                    self._failing_since = None
                if outage is not None:
                    log.warning(
                        "docl reporter: score server reachable again after %.1f s; "
                        "delivering %d buffered report(s)",
                        time.monotonic() - outage,
                        self.pending,
                    )
                return
            # Retryable: the server is down, overloaded or restarting. Keep the
            # reports (and their report_ids) and try again after a backoff.
            self.last_error = failure
            with self._lock:
                self._c["retried"] += 1
                first = self._failing_since is None
                if first:
                    self._failing_since = time.monotonic()
                closed = self._closed
            if first:
                log.warning(
                    "docl reporter: cannot deliver reports to %s (%s); buffering up to %d and retrying",
                    self._client.base_url,
                    failure,
                    self.max_queue,
                )
            delay = tries.next_delay()
            if closed or delay is None:
                # close() gave up waiting: count these as abandoned.
                with self._lock:
                    self._c["dropped"] += len(batch)
                return
            # Wake early only when close() is called.
            self._stop.wait(timeout=delay)

    def _refuse(self, poster: ReportPoster, batch: list[_Item], e: Exception) -> None:
        """A failure that another try would not mend: a 4xx rejects the reports, a bug
        is logged (it must not kill the sender thread silently)."""
        if isinstance(e, APIError):
            if len(batch) > 1:
                # One bad report fails the whole request (nothing was written):
                # send them one by one, so only the bad ones are rejected.
                for item in batch:
                    self._deliver(poster, [item])
                return
            item = batch[0]
            with self._lock:
                self._c["rejected"] += 1
            self.last_error = e
            log.error(
                "docl reporter: report %s (epoch %d, %d samples) rejected: %s",
                item.report_id,
                item.epoch,
                item.rows,
                e,
            )
            return
        with self._lock:
            self._c["rejected"] += len(batch)
        self.last_error = e
        log.error(
            "docl reporter: %d report(s) from %s failed unexpectedly",
            len(batch),
            batch[0].report_id,
            exc_info=e,
        )

    def _warn_drop(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._drops_since_warning += 1
            if now - self._last_drop_warning < self.warn_interval:
                return
            n = self._drops_since_warning
            self._drops_since_warning = 0
            self._last_drop_warning = now
            total = self._c["dropped"]
        log.warning(
            "docl reporter: queue full (max_queue=%d): dropped %d oldest report(s) (%d in total); "
            "the score server is down or slower than training",
            self.max_queue,
            n,
            total,
        )


def _close_at_exit(ref: weakref.ReferenceType[Reporter]) -> None:
    rep = ref()
    if rep is not None:
        rep.close(timeout=rep.exit_timeout)


# ---------------------------------------------------------------------------
# The learning-rate sum
# ---------------------------------------------------------------------------


class LrSum:
    """The sum of every learning rate a torch optimizer has applied, in float64.

    A post-step hook adds ``optimizer.param_groups[group]['lr']`` after each
    ``optimizer.step()`` — the rate that step used, whatever a scheduler or
    the user does to it afterwards. Read :attr:`value` BEFORE ``step()`` to get
    the ``lr_sum`` of the outputs computed by the current parameters::

        lrs = track_lr(optimizer)
        out = model(x); loss = ...; loss.backward()
        reporter.report(..., outputs=out, lr_sum=lrs.value)
        optimizer.step()

    ``start`` resumes a sum (e.g. from a checkpoint, see :meth:`state_dict`).
    torch is not imported: any object with ``param_groups`` and
    ``register_step_post_hook`` (torch >= 2.0 optimizers) works.
    """

    def __init__(self, optimizer: Any, *, start: float = 0.0, group: int = 0) -> None:
        self.optimizer = optimizer
        self.group = group
        self.value = float(start)
        self.steps = 0
        self._handle = optimizer.register_step_post_hook(self._hook)

    def _hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.value += float(optimizer.param_groups[self.group]["lr"])
        self.steps += 1

    def __float__(self) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"LrSum(value={self.value!r}, steps={self.steps})"

    def remove(self) -> None:
        """Stop tracking (remove the optimizer hook)."""
        self._handle.remove()

    def state_dict(self) -> dict[str, float | int]:
        return {"value": self.value, "steps": self.steps}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.value = float(state["value"])
        self.steps = int(state["steps"])


def track_lr(optimizer: Any, *, start: float = 0.0, group: int = 0) -> LrSum:
    """Start summing the learning rates ``optimizer`` applies; see :class:`LrSum`."""
    return LrSum(optimizer, start=start, group=group)
