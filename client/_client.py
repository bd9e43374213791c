"""Typed HTTP clients for the score server: :class:`ScoreClient` and :class:`AsyncScoreClient`.

Both clients speak REST API v1 (docs/api.md) and return the wire schemas of
:mod:`docl.client.models`. The request of every method is built once, by a pure
function (``_Call``, in ``_requests.py``), and executed by a sync or an async
retry loop (here), so the two clients cannot drift apart.

Retries. Connection errors, timeouts, 5xx and 429 answers are retried with
exponential backoff and jitter. Every request the clients send is safe to
repeat:

* a report carries a ``report_id`` (a uuid4 unless the caller gives one), and
  the server applies each ``report_id`` once;
* an epoch is drawn by number (``POST …/epochs {"epoch": e}``), which the server
  makes idempotent; ``draw_epoch(run)`` without a number first resolves "the next
  epoch" to a number with ``get_run`` and then draws that number;
* ``create_run`` sends a ``run_id`` (generated here when the caller gives none),
  and re-creating a run with the same id and config is a no-op on the server;
* everything else is a read, or a delete (a repeated delete answers 404, which
  ``delete_run(..., missing_ok=True)`` accepts).

The sync and async clients stay in one module, as httpx keeps its pair: they
change together, method by method.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx
import numpy as np

from docl.client._arrays import to_numpy
from docl.client._requests import (
    DEFAULT_SERVER,
    ScoreArrays,
    Shard,
    T,
    _api_error,
    _Base,
    _Call,
    _next_page,
    _oldest_first,
)
from docl.client.errors import TransportError
from docl.wire.models import (
    Epoch,
    Plan,
    ReportAck,
    ReportsAck,
    Run,
    RunCreate,
    RunList,
    SignalAck,
    SignalList,
    Stats,
)
from docl.wire.retry import Retry

__all__ = [
    "DEFAULT_SERVER",
    "AsyncScoreClient",
    "ScoreArrays",
    "ScoreClient",
    "Shard",
    "to_numpy",
]

# ---------------------------------------------------------------------------
# The sync client
# ---------------------------------------------------------------------------


class ScoreClient(_Base):
    """Blocking client of the score server.

    >>> with ScoreClient("http://127.0.0.1:8000") as client:        # doctest: +SKIP
    ...     run = client.create_run(num_samples=60000, num_outputs=10, epochs=40)
    ...     epoch = client.draw_epoch(run.run_id, 0)
    ...     shard = client.indices(run.run_id, 0, rank=0, world=1)

    ``base_url`` defaults to ``$DOCL_SERVER`` (else http://127.0.0.1:8000) and
    ``token`` to ``$DOCL_API_TOKEN``. ``retries`` is how many times a request is
    repeated after a connection error, a timeout, a 5xx or a 429, waiting
    ``backoff·2^attempt`` seconds (jittered to between half and all of it, at
    most ``max_backoff``); ``retry`` replaces the three with a policy of one's
    own (:class:`docl.wire.retry.Retry`, e.g. with a ``deadline``). ``binary``
    picks the binary encodings (reports, indices, scores) over JSON; each call can override it. ``transport`` is
    handed to httpx (tests inject ``httpx.MockTransport``). The client is
    thread-safe (one httpx connection pool) and should be closed, or used as a
    context manager.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        retry: Retry | None = None,
        transport: httpx.BaseTransport | None = None,
        binary: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token=token,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            retry=retry,
            binary=binary,
            headers=headers,
        )
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )
        #: A caller-supplied httpx transport (tests, proxies): the Reporter then posts
        #: through httpx too, not through its lean keep-alive connection.
        self._custom_transport = transport is not None
        self._owns_http = True
        self._sleep: Callable[[float], None] = time.sleep

    def with_options(
        self,
        *,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        retry: Retry | None = None,
        binary: bool | None = None,
    ) -> ScoreClient:
        """A client with other retry or encoding options that shares this one's connections.

        ``retry`` replaces the policy; ``retries``, ``backoff`` and ``max_backoff``
        then change it (the last two need an exponential backoff). Closing the copy
        leaves the shared connection pool open; close the original.
        """
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._owns_http = False
        clone.retry_count = 0
        if retry is not None:
            clone.retry = retry
        if retries is not None:
            if retries < 0:
                raise ValueError("retries must be >= 0")
            clone.retries = retries
        # a fresh random source for the jitter: copies do not retry in step
        clone.retry = clone._retry_with(backoff, max_backoff)
        if binary is not None:
            clone.binary = binary
        return clone

    # -- plumbing --------------------------------------------------------------------

    def _send(self, call: _Call[T]) -> T:
        tries = self.retry.start()
        while True:
            try:
                resp = self._http.request(call.method, call.path, **self._request_kwargs(call))
            except httpx.HTTPError as e:
                failure = self._transport_error(call, e, tries.failures + 1)
                delay = self._next_try(call, tries, failure, None)
                if delay is None:
                    raise failure from e
            else:
                status = resp.status_code
                if status < 400 or status in call.ok_statuses:
                    return call.parse(resp)
                error = _api_error(call, resp)
                delay = self._next_try(call, tries, error, resp.headers.get("retry-after"))
                if delay is None:
                    raise error
            self._sleep(delay)

    def close(self) -> None:
        """Close the connection pool (not when this client is a ``with_options`` copy)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> ScoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs --------------------------------------------------------------------------

    def create_run(self, run: RunCreate | None = None, /, **fields: Any) -> Run:
        """Create a run (``POST /v1/runs``) from a :class:`RunCreate` or its fields.

        ``params`` may be a :class:`RunParams` or a dict. Creating a run again with
        the same id and config returns it; a different config raises
        :class:`ConflictError`. Without a ``run_id`` one is generated here.
        """
        return self._send(self._c_create_run(run, fields))

    def get_run(self, run_id: str) -> Run:
        """Config, plan position (``last_epoch``, ``epochs_drawn``) and counters of a run."""
        return self._send(self._c_get_run(run_id))

    def list_runs(self, *, page_size: int | None = None) -> list[Run]:
        """Every run on the server, oldest first: follows ``GET /v1/runs`` page by page
        (``page_size`` runs per request; default: the server's, 100)."""
        pages: list[RunList] = []
        after: str | None = None
        while True:
            pages.append(self._send(self._c_list_runs(after, page_size)))
            after = _next_page(pages[-1], after)
            if after is None:
                return _oldest_first(pages)

    def list_runs_page(self, *, after: str | None = None, limit: int | None = None) -> RunList:
        """One page of runs in run-id order; ``.next`` is the ``after`` of the next page."""
        return self._send(self._c_list_runs(after, limit))

    def delete_run(self, run_id: str, *, missing_ok: bool = False) -> bool:
        """Drop a run and all its data. Returns False when it did not exist and
        ``missing_ok`` (else :class:`NotFoundError`)."""
        return self._send(self._c_delete_run(run_id, missing_ok))

    def plan(self, run_id: str) -> Plan:
        """Every epoch of the run's plan: phase, loss, size, steps, learning rates."""
        return self._send(self._c_plan(run_id))

    # -- epochs and indices -------------------------------------------------------------

    def draw_epoch(self, run_id: str, epoch: int | None = None) -> Epoch:
        """Draw epoch ``epoch`` (idempotent: a drawn epoch is returned as stored).

        Without ``epoch`` the next epoch is drawn: the client reads the run's
        ``last_epoch`` and draws ``last_epoch + 1`` by number, so that the request
        can be retried safely. Two processes calling ``draw_epoch(run)`` at once
        may therefore draw the same epoch; distributed jobs should pass ``epoch``.
        """
        if epoch is None:
            epoch = self._next_epoch(self.get_run(run_id))
        return self._send(self._c_draw_epoch(run_id, epoch))

    def get_epoch(self, run_id: str, epoch: int) -> Epoch:
        """Re-read an epoch that was drawn (404 if it was not)."""
        return self._send(self._c_get_epoch(run_id, epoch))

    def indices(
        self,
        run_id: str,
        epoch: int,
        *,
        rank: int = 0,
        world: int = 1,
        offset: int = 0,
        limit: int | None = None,
        binary: bool | None = None,
    ) -> np.ndarray:
        """Rank ``rank`` of ``world``'s shard of a drawn epoch, in training order (int64).

        The shard is the contiguous slice ``[rank·size//world, (rank+1)·size//world)``
        of the epoch; ``offset``/``limit`` page within it. :meth:`shard` returns the
        same indices with their loss weights (for ``weighted`` epochs).
        """
        return self._send(self._c_indices(run_id, epoch, rank, world, offset, limit, binary))

    def shard(
        self,
        run_id: str,
        epoch: int,
        *,
        rank: int = 0,
        world: int = 1,
        offset: int = 0,
        limit: int | None = None,
        binary: bool | None = None,
    ) -> Shard:
        """:meth:`indices` plus each index's loss weight (``Shard.weights``; None when
        the epoch has none, i.e. every weight is 1)."""
        return self._send(self._c_shard(run_id, epoch, rank, world, offset, limit, binary))

    # -- reports and scores -------------------------------------------------------------

    def report(
        self,
        run_id: str,
        *,
        epoch: int,
        indices: Any,
        outputs: Any,
        targets: Any,
        lr_sum: float,
        features: Any = None,
        report_id: str | None = None,
        binary: bool | None = None,
    ) -> ReportAck:
        """Report one mini-batch: ``indices`` (B,), ``outputs`` (B, c) logits, ``targets``
        (B,) class ids or (B, c) floats, ``lr_sum`` = the sum of every learning rate
        applied before the parameters that produced ``outputs``; optional ``features`` (B, d).

        numpy arrays, torch tensors (any device, detached here) and lists are
        accepted. ``report_id`` defaults to a fresh uuid4; a retried request keeps
        it, so the server applies the report once. Pass a deterministic id when
        a restarted worker may report the same batch again.
        """
        return self._send(
            self._c_report(
                run_id,
                epoch=epoch,
                indices=indices,
                outputs=outputs,
                targets=targets,
                lr_sum=lr_sum,
                features=features,
                report_id=report_id,
                binary=binary,
            )
        )

    def report_many(self, run_id: str, reports: Sequence[Mapping[str, Any]]) -> ReportsAck:
        """Report several mini-batches in one request (binary, ``application/vnd.docl.reports.v1``).

        Each mapping holds :meth:`report`'s keyword arguments (``epoch``, ``indices``,
        ``outputs``, ``targets``, ``lr_sum``, optional ``features`` and ``report_id``).
        The server applies each report exactly as if it had come alone (its own
        ``report_id``: a retry finds the ones already applied as duplicates) and
        validates them all first: one invalid report is a 422 for the request, and
        nothing is written. The answer holds one :class:`ReportAck` per report, in order.
        """
        return self._send(self._c_report_many(run_id, reports))

    def scores(
        self, run_id: str, *, offset: int = 0, limit: int | None = None, binary: bool | None = None
    ) -> ScoreArrays:
        """The score table (scores, visits, lr_sums) of samples ``offset …`` (``limit`` rows)."""
        return self._send(self._c_scores(run_id, offset, limit, binary))

    def stats(self, run_id: str) -> Stats:
        """Score quantiles, histogram, selection counts and counters of a run."""
        return self._send(self._c_stats(run_id))

    # -- signals -------------------------------------------------------------------------

    def put_signal(self, run_id: str, name: str, values: Any, *, start: int = 0) -> SignalAck:
        """Upload ``values`` (a vector, sent as little-endian float32; NaN = unknown) as
        samples [start, start + len(values)) of the run's signal column ``name``
        (registered on its first upload). A DDP rank may upload its own contiguous
        slice. Errors (:mod:`docl.client.errors`): ``ValidationError`` (422) for a bad
        name, slice or an infinite value, ``ConflictError`` (409) for a new name past
        ``DOCL_MAX_SIGNALS``, ``APIError`` 403 past ``DOCL_MAX_TOTAL_BYTES``,
        ``NotFoundError`` (404) for an unknown run."""
        return self._send(self._c_put_signal(run_id, name, values, start))

    def get_signal(
        self, run_id: str, name: str, *, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """Samples [start, stop) (default: to the end) of signal ``name`` as float32
        (NaN where nothing was uploaded), read page by page. ``NotFoundError`` for a
        name the run does not keep."""
        parts = []
        pos: int | None = start
        while pos is not None:
            values, pos = self._send(self._c_get_signal(run_id, name, pos, stop))
            parts.append(values)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def signals(self, run_id: str) -> SignalList:
        """The run's signal column names, their length (n) and the server's limit."""
        return self._send(self._c_signals(run_id))

    # -- service -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /healthz``: the server process is alive (raises when it is not)."""
        return self._send(self._c_health())

    def ready(self) -> bool:
        """``GET /readyz``: True when the server can reach Redis. Not retried;
        False when the server answers 503 or cannot be reached."""
        try:
            return self._send(self._c_ready())
        except TransportError:
            return False

    def wait_ready(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        """Poll :meth:`ready` until it is True; :class:`TransportError` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline:
                raise TransportError(f"{self.base_url} not ready after {timeout} s")
            self._sleep(interval)

    def metrics(self) -> str:
        """``GET /metrics``: the Prometheus exposition text."""
        return self._send(self._c_metrics())


# ---------------------------------------------------------------------------
# The async client
# ---------------------------------------------------------------------------


class AsyncScoreClient(_Base):
    """The asyncio twin of :class:`ScoreClient`: the same methods, awaited.

    >>> async with AsyncScoreClient() as client:                    # doctest: +SKIP
    ...     epoch = await client.draw_epoch("my-run", 3)
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retries: int = 5,
        backoff: float = 0.2,
        max_backoff: float = 10.0,
        retry: Retry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        binary: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            base_url,
            token=token,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            max_backoff=max_backoff,
            retry=retry,
            binary=binary,
            headers=headers,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def _send(self, call: _Call[T]) -> T:
        tries = self.retry.start()
        while True:
            try:
                resp = await self._http.request(
                    call.method, call.path, **self._request_kwargs(call)
                )
            except httpx.HTTPError as e:
                failure = self._transport_error(call, e, tries.failures + 1)
                delay = self._next_try(call, tries, failure, None)
                if delay is None:
                    raise failure from e
            else:
                status = resp.status_code
                if status < 400 or status in call.ok_statuses:
                    return call.parse(resp)
                error = _api_error(call, resp)
                delay = self._next_try(call, tries, error, resp.headers.get("retry-after"))
                if delay is None:
                    raise error
            await asyncio.sleep(delay)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def close(self) -> None:
        """Close the connection pool (an alias of :meth:`aclose`)."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncScoreClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def create_run(self, run: RunCreate | None = None, /, **fields: Any) -> Run:
        """See :meth:`ScoreClient.create_run`."""
        return await self._send(self._c_create_run(run, fields))

    async def get_run(self, run_id: str) -> Run:
        return await self._send(self._c_get_run(run_id))

    async def list_runs(self, *, page_size: int | None = None) -> list[Run]:
        """See :meth:`ScoreClient.list_runs`."""
        pages: list[RunList] = []
        after: str | None = None
        while True:
            pages.append(await self._send(self._c_list_runs(after, page_size)))
            after = _next_page(pages[-1], after)
            if after is None:
                return _oldest_first(pages)

    async def list_runs_page(
        self, *, after: str | None = None, limit: int | None = None
    ) -> RunList:
        """See :meth:`ScoreClient.list_runs_page`."""
        return await self._send(self._c_list_runs(after, limit))

    async def delete_run(self, run_id: str, *, missing_ok: bool = False) -> bool:
        return await self._send(self._c_delete_run(run_id, missing_ok))

    async def plan(self, run_id: str) -> Plan:
        return await self._send(self._c_plan(run_id))

    async def draw_epoch(self, run_id: str, epoch: int | None = None) -> Epoch:
        """See :meth:`ScoreClient.draw_epoch` (the same resolution of "next")."""
        if epoch is None:
            epoch = self._next_epoch(await self.get_run(run_id))
        return await self._send(self._c_draw_epoch(run_id, epoch))

    async def get_epoch(self, run_id: str, epoch: int) -> Epoch:
        return await self._send(self._c_get_epoch(run_id, epoch))

    async def indices(
        self,
        run_id: str,
        epoch: int,
        *,
        rank: int = 0,
        world: int = 1,
        offset: int = 0,
        limit: int | None = None,
        binary: bool | None = None,
    ) -> np.ndarray:
        return await self._send(self._c_indices(run_id, epoch, rank, world, offset, limit, binary))

    async def shard(
        self,
        run_id: str,
        epoch: int,
        *,
        rank: int = 0,
        world: int = 1,
        offset: int = 0,
        limit: int | None = None,
        binary: bool | None = None,
    ) -> Shard:
        """See :meth:`ScoreClient.shard`."""
        return await self._send(self._c_shard(run_id, epoch, rank, world, offset, limit, binary))

    async def report(
        self,
        run_id: str,
        *,
        epoch: int,
        indices: Any,
        outputs: Any,
        targets: Any,
        lr_sum: float,
        features: Any = None,
        report_id: str | None = None,
        binary: bool | None = None,
    ) -> ReportAck:
        """See :meth:`ScoreClient.report`."""
        return await self._send(
            self._c_report(
                run_id,
                epoch=epoch,
                indices=indices,
                outputs=outputs,
                targets=targets,
                lr_sum=lr_sum,
                features=features,
                report_id=report_id,
                binary=binary,
            )
        )

    async def report_many(self, run_id: str, reports: Sequence[Mapping[str, Any]]) -> ReportsAck:
        """See :meth:`ScoreClient.report_many`."""
        return await self._send(self._c_report_many(run_id, reports))

    async def scores(
        self, run_id: str, *, offset: int = 0, limit: int | None = None, binary: bool | None = None
    ) -> ScoreArrays:
        return await self._send(self._c_scores(run_id, offset, limit, binary))

    async def stats(self, run_id: str) -> Stats:
        return await self._send(self._c_stats(run_id))

    async def put_signal(self, run_id: str, name: str, values: Any, *, start: int = 0) -> SignalAck:
        """See :meth:`ScoreClient.put_signal`."""
        return await self._send(self._c_put_signal(run_id, name, values, start))

    async def get_signal(
        self, run_id: str, name: str, *, start: int = 0, stop: int | None = None
    ) -> np.ndarray:
        """See :meth:`ScoreClient.get_signal`."""
        parts = []
        pos: int | None = start
        while pos is not None:
            values, pos = await self._send(self._c_get_signal(run_id, name, pos, stop))
            parts.append(values)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    async def signals(self, run_id: str) -> SignalList:
        """See :meth:`ScoreClient.signals`."""
        return await self._send(self._c_signals(run_id))

    async def health(self) -> dict[str, Any]:
        return await self._send(self._c_health())

    async def ready(self) -> bool:
        try:
            return await self._send(self._c_ready())
        except TransportError:
            return False

    async def wait_ready(self, timeout: float = 30.0, interval: float = 0.1) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() >= deadline:
                raise TransportError(f"{self.base_url} not ready after {timeout} s")
            await asyncio.sleep(interval)

    async def metrics(self) -> str:
        return await self._send(self._c_metrics())
