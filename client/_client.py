"""Typed HTTP clients for the score server: :class:`ScoreClient` and :class:`AsyncScoreClient`.

Both clients speak REST API v1 (docs/api.md) and return the wire schemas of
:mod:`docl.client.models`. The request of every method is built once, by a pure
function (``_Call``), and executed by a sync or an async retry loop, so the two
clients cannot drift apart.

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

Size: over the house's ~500 lines on purpose. The sync and async clients share
every request builder (``_Call``), parser and error mapping here, so that they
cannot drift apart; one file per client would split a pair that must change together.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import numpy as np
import pydantic

from docl.client.errors import APIError, InvalidRequestError, TransportError, error_for_status
from docl.wire import encoding as wire
from docl.wire.models import (
    Epoch,
    Plan,
    ReportAck,
    ReportsAck,
    Run,
    RunCreate,
    RunList,
    Scores,
    Stats,
)

__all__ = [
    "DEFAULT_SERVER",
    "AsyncScoreClient",
    "ScoreArrays",
    "ScoreClient",
    "Shard",
    "to_numpy",
]

#: Where the clients connect when neither ``base_url`` nor ``DOCL_SERVER`` is given
#: (the default of ``docl serve``).
DEFAULT_SERVER = "http://127.0.0.1:8000"
ENV_SERVER = "DOCL_SERVER"
ENV_TOKEN = "DOCL_API_TOKEN"

T = TypeVar("T")

# Transport failures worth another try. Other httpx.TransportErrors (an
# unsupported scheme, a proxy misconfiguration, a protocol error of our own)
# will fail the same way every time, so they are raised at once.
_RETRYABLE_EXC: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)
_RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: The keys of one report in :meth:`ScoreClient.report_many`.
_REPORT_KEYS = frozenset(
    {"epoch", "indices", "outputs", "targets", "lr_sum", "features", "report_id"}
)


@dataclass(frozen=True)
class Shard:
    """A rank's shard of a drawn epoch: indices in training order and, when the epoch
    is ``weighted`` (e.g. method infobatch), each index's loss weight (float32; None:
    every weight is 1). Train on mean(w_i · loss_i)."""

    indices: np.ndarray  # (m,) int64
    weights: np.ndarray | None  # (m,) float32 or None

    def __len__(self) -> int:
        return int(self.indices.shape[0])


@dataclass(frozen=True)
class ScoreArrays:
    """The per-sample score table of a run (or a page of it), as numpy arrays.

    ``scores[i]`` belongs to sample ``offset + i``. Unset values are NaN: a score
    is unset until a sample has been reported twice, an lr-sum until it has been
    reported once.
    """

    offset: int
    scores: np.ndarray  # (m,) float32, NaN = unset
    visits: np.ndarray  # (m,) int64
    lr_sums: np.ndarray  # (m,) float64, NaN = never seen

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def sample_ids(self) -> np.ndarray:
        """The sample index of each row: ``offset, offset + 1, …``."""
        return np.arange(self.offset, self.offset + len(self), dtype=np.int64)

    @property
    def scored(self) -> np.ndarray:
        """Boolean mask of rows that have a score."""
        return ~np.isnan(self.scores)


# ---------------------------------------------------------------------------
# Array conversion (numpy or torch, without importing torch)
# ---------------------------------------------------------------------------


def to_numpy(x: Any, *, copy: bool = False) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device), a list or a scalar.

    torch is never imported: a tensor is recognised by its ``detach`` and ``cpu``
    methods. bfloat16 tensors, which numpy cannot hold, are widened to float32.
    With ``copy=True`` the result never shares memory with ``x`` (what a
    background sender needs: the caller may overwrite its tensors right after).
    """
    if type(x) is np.ndarray or isinstance(x, np.ndarray):
        return x.copy() if copy else x
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        try:
            arr = t.numpy()
        except TypeError:  # bfloat16 and other dtypes numpy lacks
            arr = t.float().numpy()
        # .cpu() of a CPU tensor is the tensor itself: numpy() shares its memory.
        return arr.copy() if copy else arr
    return np.array(x) if copy else np.asarray(x)


def _check_report_arrays(
    epoch: int,
    indices: Any,
    outputs: Any,
    targets: Any,
    lr_sum: float,
    features: Any,
    *,
    copy: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Convert and shape-check one report on the caller's side.

    Shapes are checked here, with messages that name the argument, because a
    binary body cannot even be built from wrong shapes. Values (NaN, indices out
    of range, class ids >= c) are the server's to judge: it answers 422. With
    ``copy`` every array returned is a fresh copy, made once. This runs on the
    training thread for every step (``Reporter.report``): plain dtype-kind tests,
    no ``np.issubdtype``.
    """
    if type(epoch) is not int and (
        isinstance(epoch, bool) or not isinstance(epoch, int | np.integer)
    ):
        raise wire.WireError(f"epoch must be an integer in [0, 2**32), got {epoch!r}")
    if not 0 <= epoch < 2**32:
        raise wire.WireError(f"epoch must be an integer in [0, 2**32), got {epoch!r}")
    try:
        float(lr_sum)
    except (TypeError, ValueError) as e:
        raise wire.WireError(f"lr_sum must be a number, got {lr_sum!r}") from e
    idx = to_numpy(indices, copy=copy)
    if idx.ndim != 1 or idx.shape[0] < 1:
        raise wire.WireError(f"indices must be a non-empty 1-D array, got shape {idx.shape}")
    if idx.dtype.kind not in "iu":
        raise wire.WireError(f"indices must be integers, got dtype {idx.dtype}")
    b = idx.shape[0]
    out = to_numpy(outputs)
    if out.ndim != 2 or out.shape[0] != b:
        raise wire.WireError(f"outputs must be (B, c) = ({b}, c), got shape {out.shape}")
    if out.dtype != np.float32:
        out = out.astype(np.float32)  # a new array: the one copy
    elif copy:
        out = out.copy()
    tgt = to_numpy(targets, copy=copy)
    if tgt.ndim == 1:
        if tgt.shape[0] != b:
            raise wire.WireError(
                f"targets (class ids) must have B = {b} entries, got {tgt.shape[0]}"
            )
        if tgt.dtype.kind not in "iu":
            raise wire.WireError(
                f"1-D targets are class ids and must be integers, got dtype {tgt.dtype} "
                "(regression targets are (B, c) floats)"
            )
    elif tgt.ndim == 2:
        if tgt.shape != out.shape:
            raise wire.WireError(
                f"regression targets must have the outputs' shape {out.shape}, got {tgt.shape}"
            )
    else:
        raise wire.WireError(
            f"targets must be (B,) class ids or (B, c) floats, got shape {tgt.shape}"
        )
    feat = None
    if features is not None:
        feat = to_numpy(features, copy=copy)
        if feat.ndim != 2 or feat.shape[0] != b:
            raise wire.WireError(f"features must be (B, d) = ({b}, d), got shape {feat.shape}")
    return idx, out, tgt, feat


# ---------------------------------------------------------------------------
# Requests as data
# ---------------------------------------------------------------------------


def _next_page(page: RunList, after: str | None) -> str | None:
    """The cursor after ``page`` (None: it was the last); a server that hands back a cursor
    that does not move forward would loop forever, so that is an error."""
    if page.next is None:
        return None
    if after is not None and page.next <= after:
        raise APIError(
            200,
            f"GET /v1/runs answered next={page.next!r} after {after!r}: the cursor must move "
            "forward",
            title="bad cursor",
        )
    return page.next


def _oldest_first(pages: list[RunList]) -> list[Run]:
    return sorted((r for p in pages for r in p.runs), key=lambda r: r.created_at)


@dataclass
class _Call(Generic[T]):
    """One request and how to read its answer; executed by either client's retry loop."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json_body: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None
    retry: bool = True
    ok_statuses: frozenset[int] = frozenset()  # error statuses parse() handles itself


def _problem_detail(resp: httpx.Response) -> tuple[str, str, str]:
    """(detail, title, type) of an error answer: an RFC 9457 problem document,
    FastAPI's default ``{"detail": [...]}``, or plain text."""
    title = resp.reason_phrase or ""
    detail = ""
    type_ = "about:blank"
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        d = body.get("detail")
        if isinstance(d, str):
            detail = d
        elif isinstance(d, list):  # FastAPI's validation error list
            parts = []
            for item in d:
                if isinstance(item, dict):
                    loc = ".".join(str(p) for p in item.get("loc", []))
                    parts.append(
                        f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg", item))
                    )
                else:
                    parts.append(str(item))
            detail = "; ".join(parts)
        elif d is not None:
            detail = json.dumps(d)
        title = str(body.get("title") or title)
        type_ = str(body.get("type") or type_)
    if not detail:
        text = resp.text.strip()
        detail = text[:1000] if text else title or f"HTTP {resp.status_code}"
    return detail, title, type_


def _api_error(call: _Call[Any], resp: httpx.Response) -> APIError:
    detail, title, type_ = _problem_detail(resp)
    err = error_for_status(resp.status_code, detail, title=title, type=type_)
    err.method = call.method
    err.url = str(resp.request.url)
    return err


def _is_json(resp: httpx.Response) -> bool:
    ctype = resp.headers.get("content-type", "")
    return "json" in ctype.split(";")[0]


def _model(cls: type[Any]) -> Callable[[httpx.Response], Any]:
    return lambda resp: cls.model_validate_json(resp.content)


def _parse_indices(resp: httpx.Response) -> np.ndarray:
    if _is_json(resp):
        body = resp.json()
        if isinstance(body, dict):
            body = body["indices"]
        return np.asarray(body, dtype=np.int64).reshape(-1)
    # A writable copy: users may sort or shuffle what they get.
    return wire.decode_indices(resp.content).astype(np.int64, copy=True)


def _parse_shard(resp: httpx.Response) -> Shard:
    if _is_json(resp):
        body = resp.json()
        w = body.get("weights")
        return Shard(
            np.asarray(body["indices"], dtype=np.int64).reshape(-1),
            None if w is None else np.asarray(w, dtype=np.float32).reshape(-1),
        )
    if resp.headers.get(wire.WEIGHTS_HEADER) == "float32":
        idx, w = wire.decode_weighted_indices(resp.content)
        return Shard(idx.astype(np.int64, copy=True), w.astype(np.float32, copy=True))
    return Shard(wire.decode_indices(resp.content).astype(np.int64, copy=True), None)


def _parse_scores(resp: httpx.Response) -> ScoreArrays:
    if _is_json(resp):
        s = Scores.model_validate_json(resp.content)
        return ScoreArrays(
            offset=s.offset,
            scores=np.array([np.nan if v is None else v for v in s.scores], dtype=np.float32),
            visits=np.asarray(s.visits, dtype=np.int64),
            lr_sums=np.array([np.nan if v is None else v for v in s.lr_sums], dtype=np.float64),
        )
    offset, scores, visits, lr_sums = wire.decode_scores(resp.content)
    return ScoreArrays(
        offset=offset,
        scores=scores.astype(np.float32, copy=True),
        visits=visits.astype(np.int64),
        lr_sums=lr_sums.astype(np.float64, copy=True),
    )


def _parse_json(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    return body if isinstance(body, dict) else {"body": body}


def _parse_none(resp: httpx.Response) -> None:
    return None


def _run_path(run_id: str) -> str:
    if not isinstance(run_id, str) or not run_id or "/" in run_id:
        raise ValueError(f"run_id must be a non-empty string without '/', got {run_id!r}")
    return f"/v1/runs/{run_id}"


class _Base:
    """Configuration and the request builders shared by both clients."""

    def __init__(
        self,
        base_url: str | None,
        *,
        token: str | None,
        timeout: float | httpx.Timeout,
        retries: int,
        backoff: float,
        max_backoff: float,
        binary: bool,
        headers: Mapping[str, str] | None,
    ) -> None:
        url = base_url or os.environ.get(ENV_SERVER) or DEFAULT_SERVER
        if "://" not in url:
            url = "http://" + url
        self.base_url = url.rstrip("/")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.binary = binary
        self.timeout = timeout
        self._token = token if token is not None else os.environ.get(ENV_TOKEN) or None
        self._headers: dict[str, str] = {"User-Agent": f"docl-client/{_version()}"}
        if self._token:
            self._headers["Authorization"] = f"Bearer {self._token}"
        if headers:
            self._headers.update(headers)
        self._rng = random.Random()
        #: Requests repeated after a retryable failure, since this client was made.
        self.retry_count = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- the retry schedule ------------------------------------------------------

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with jitter: uniform in [½, 1]·min(max, backoff·2^attempt),
        and at least the server's Retry-After (capped by max_backoff)."""
        base = min(self.max_backoff, self.backoff * (2.0**attempt))
        delay = base * (0.5 + 0.5 * self._rng.random())
        if retry_after:
            # An HTTP date (rare for 429/503) is ignored: our own delay stands.
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), self.max_backoff))
        return delay

    def _retryable(self, call: _Call[Any], attempt: int) -> bool:
        return call.retry and attempt < self.retries

    def _transport_error(self, call: _Call[Any], exc: Exception, attempts: int) -> TransportError:
        return TransportError(
            f"{call.method} {self.base_url}{call.path} failed after {attempts} attempt(s): "
            f"{type(exc).__name__}: {exc}"
        )

    def _request_kwargs(self, call: _Call[Any]) -> dict[str, Any]:
        kw: dict[str, Any] = {"params": call.params, "headers": call.headers}
        if call.content is not None:
            kw["content"] = call.content
        elif call.json_body is not None:
            kw["content"] = json.dumps(call.json_body).encode()
            kw["headers"] = {"Content-Type": "application/json", **(call.headers or {})}
        return kw

    # -- request builders (one per route) -----------------------------------------

    def _c_create_run(self, run: RunCreate | None, fields: dict[str, Any]) -> _Call[Run]:
        if run is not None and fields:
            raise TypeError("give a RunCreate or keyword fields, not both")
        try:
            body = run if run is not None else RunCreate.model_validate(fields)
        except pydantic.ValidationError as e:
            raise InvalidRequestError.from_pydantic(e, "run") from None
        if body.run_id is None:
            # Chosen here, not by the server, so that a retried create is the same create.
            body = body.model_copy(update={"run_id": f"run-{uuid.uuid4().hex[:16]}"})
        return _Call(
            "POST",
            "/v1/runs",
            _model(Run),
            json_body=body.model_dump(mode="json", exclude_none=True),
        )

    def _c_get_run(self, run_id: str) -> _Call[Run]:
        return _Call("GET", _run_path(run_id), _model(Run))

    def _c_list_runs(self, after: str | None, limit: int | None) -> _Call[RunList]:
        if limit is not None and (isinstance(limit, bool) or not 1 <= limit <= 1000):
            raise InvalidRequestError(f"page_size must be in [1, 1000], got {limit!r}")

        def parse(resp: httpx.Response) -> RunList:
            body = resp.json()
            if isinstance(body, list):  # tolerate a bare list
                body = {"runs": body}
            return RunList.model_validate(body)

        params: dict[str, Any] = {}
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = limit
        return _Call("GET", "/v1/runs", parse, params=params or None)

    def _c_delete_run(self, run_id: str, missing_ok: bool) -> _Call[bool]:
        def parse(resp: httpx.Response) -> bool:
            return resp.status_code < 400

        ok = frozenset({404}) if missing_ok else frozenset()
        return _Call("DELETE", _run_path(run_id), parse, ok_statuses=ok)

    def _c_plan(self, run_id: str) -> _Call[Plan]:
        return _Call("GET", _run_path(run_id) + "/plan", _model(Plan))

    def _c_draw_epoch(self, run_id: str, epoch: int) -> _Call[Epoch]:
        if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative integer, got {epoch!r}")
        return _Call(
            "POST", _run_path(run_id) + "/epochs", _model(Epoch), json_body={"epoch": int(epoch)}
        )

    def _c_get_epoch(self, run_id: str, epoch: int) -> _Call[Epoch]:
        return _Call("GET", f"{_run_path(run_id)}/epochs/{int(epoch)}", _model(Epoch))

    def _c_indices(
        self,
        run_id: str,
        epoch: int,
        rank: int,
        world: int,
        offset: int,
        limit: int | None,
        binary: bool | None,
    ) -> _Call[np.ndarray]:
        call = self._c_shard(run_id, epoch, rank, world, offset, limit, binary)
        params = {k: v for k, v in (call.params or {}).items() if k != "weights"}
        return _Call(call.method, call.path, _parse_indices, params=params, headers=call.headers)

    def _c_shard(
        self,
        run_id: str,
        epoch: int,
        rank: int,
        world: int,
        offset: int,
        limit: int | None,
        binary: bool | None,
    ) -> _Call[Shard]:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        params: dict[str, Any] = {"rank": rank, "world": world, "weights": True}
        if offset:
            params["offset"] = offset
        if limit is not None:
            params["limit"] = limit
        accept = wire.INDICES_CONTENT_TYPE if self._binary(binary) else "application/json"
        return _Call(
            "GET",
            f"{_run_path(run_id)}/epochs/{int(epoch)}/indices",
            _parse_shard,
            params=params,
            headers={"Accept": accept},
        )

    def _c_report(
        self,
        run_id: str,
        *,
        epoch: int,
        indices: Any,
        outputs: Any,
        targets: Any,
        lr_sum: float,
        features: Any,
        report_id: str | None,
        binary: bool | None,
    ) -> _Call[ReportAck]:
        idx, out, tgt, feat = _check_report_arrays(
            epoch, indices, outputs, targets, lr_sum, features, copy=False
        )
        rid = report_id or uuid.uuid4().hex
        path = _run_path(run_id) + "/reports"
        if self._binary(binary):
            body = wire.encode_report(
                report_id=rid,
                epoch=int(epoch),
                lr_sum=float(lr_sum),
                indices=idx,
                outputs=out,
                targets=tgt,
                features=feat,
            )
            return _Call(
                "POST",
                path,
                _model(ReportAck),
                content=body,
                headers={"Content-Type": wire.REPORT_CONTENT_TYPE},
            )
        doc: dict[str, Any] = {
            "report_id": rid,
            "epoch": int(epoch),
            "indices": idx.tolist(),
            "outputs": out.tolist(),
            "targets": tgt.tolist(),
            "lr_sum": float(lr_sum),
        }
        if feat is not None:
            doc["features"] = feat.tolist()
        # NaN/Inf are written as JSON's non-standard NaN/Infinity tokens on purpose:
        # the server rejects them with a 422, exactly as it rejects them in binary.
        return _Call(
            "POST",
            path,
            _model(ReportAck),
            content=json.dumps(doc).encode(),
            headers={"Content-Type": "application/json"},
        )

    def _c_report_many(
        self, run_id: str, reports: Sequence[Mapping[str, Any]]
    ) -> _Call[ReportsAck]:
        if not reports:
            raise wire.WireError("report_many needs at least one report")
        frames = []
        for j, r in enumerate(reports):
            unknown = set(r) - _REPORT_KEYS
            if unknown:
                raise wire.WireError(f"report {j}: unknown field(s) {sorted(unknown)}")
            try:
                idx, out, tgt, feat = _check_report_arrays(
                    r["epoch"], r["indices"], r["outputs"], r["targets"], r["lr_sum"],
                    r.get("features"), copy=False,
                )  # fmt: skip
            except KeyError as e:
                raise wire.WireError(f"report {j}: missing field {e.args[0]!r}") from None
            except wire.WireError as e:
                raise wire.WireError(f"report {j}: {e}") from None
            frames.append(
                wire.encode_report(
                    report_id=r.get("report_id") or uuid.uuid4().hex,
                    epoch=int(r["epoch"]),
                    lr_sum=float(r["lr_sum"]),
                    indices=idx,
                    outputs=out,
                    targets=tgt,
                    features=feat,
                )
            )
        return self._c_report_frames(run_id, frames)

    def _c_report_frames(self, run_id: str, frames: Sequence[bytes]) -> _Call[ReportsAck]:
        return _Call(
            "POST",
            _run_path(run_id) + "/reports",
            _model(ReportsAck),
            content=wire.encode_reports(frames),
            headers={"Content-Type": wire.REPORTS_CONTENT_TYPE},
        )

    def _c_scores(
        self, run_id: str, offset: int, limit: int | None, binary: bool | None
    ) -> _Call[ScoreArrays]:
        params: dict[str, Any] = {}
        if offset:
            params["offset"] = offset
        if limit is not None:
            params["limit"] = limit
        accept = wire.SCORES_CONTENT_TYPE if self._binary(binary) else "application/json"
        return _Call(
            "GET",
            _run_path(run_id) + "/scores",
            _parse_scores,
            params=params,
            headers={"Accept": accept},
        )

    def _c_stats(self, run_id: str) -> _Call[Stats]:
        return _Call("GET", _run_path(run_id) + "/stats", _model(Stats))

    def _c_health(self) -> _Call[dict[str, Any]]:
        return _Call("GET", "/healthz", _parse_json)

    def _c_ready(self) -> _Call[bool]:
        # A readiness probe wants the answer now, not after a backoff schedule.
        return _Call(
            "GET",
            "/readyz",
            lambda resp: resp.status_code < 400,
            retry=False,
            ok_statuses=frozenset({503}),
        )

    def _c_metrics(self) -> _Call[str]:
        return _Call("GET", "/metrics", lambda resp: resp.text)

    def _binary(self, binary: bool | None) -> bool:
        return self.binary if binary is None else binary

    @staticmethod
    def _next_epoch(run: Run) -> int:
        return 0 if run.last_epoch is None else run.last_epoch + 1


_VERSION: str | None = None


def _version() -> str:
    global _VERSION
    if _VERSION is None:
        try:
            from importlib.metadata import version

            _VERSION = version("docl")
        except Exception:  # a source checkout that was never installed
            _VERSION = "0"
    return _VERSION


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
    most ``max_backoff``). ``binary`` picks the binary encodings (reports,
    indices, scores) over JSON; each call can override it. ``transport`` is
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
        binary: bool | None = None,
    ) -> ScoreClient:
        """A client with other retry or encoding options that shares this one's connections.

        Closing the copy leaves the shared connection pool open; close the original.
        """
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._owns_http = False
        clone._rng = random.Random()
        clone.retry_count = 0
        if retries is not None:
            if retries < 0:
                raise ValueError("retries must be >= 0")
            clone.retries = retries
        if backoff is not None:
            clone.backoff = backoff
        if max_backoff is not None:
            clone.max_backoff = max_backoff
        if binary is not None:
            clone.binary = binary
        return clone

    # -- plumbing --------------------------------------------------------------------

    def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                resp = self._http.request(call.method, call.path, **self._request_kwargs(call))
            except _RETRYABLE_EXC as e:
                if not self._retryable(call, attempt):
                    raise self._transport_error(call, e, attempt + 1) from e
                delay = self._delay(attempt, None)
            except httpx.HTTPError as e:
                raise self._transport_error(call, e, attempt + 1) from e
            else:
                status = resp.status_code
                if status < 400 or status in call.ok_statuses:
                    return call.parse(resp)
                if status not in _RETRYABLE_STATUS or not self._retryable(call, attempt):
                    raise _api_error(call, resp)
                delay = self._delay(attempt, resp.headers.get("retry-after"))
            attempt += 1
            self.retry_count += 1
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
            binary=binary,
            headers=headers,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    async def _send(self, call: _Call[T]) -> T:
        attempt = 0
        while True:
            try:
                resp = await self._http.request(
                    call.method, call.path, **self._request_kwargs(call)
                )
            except _RETRYABLE_EXC as e:
                if not self._retryable(call, attempt):
                    raise self._transport_error(call, e, attempt + 1) from e
                delay = self._delay(attempt, None)
            except httpx.HTTPError as e:
                raise self._transport_error(call, e, attempt + 1) from e
            else:
                status = resp.status_code
                if status < 400 or status in call.ok_statuses:
                    return call.parse(resp)
                if status not in _RETRYABLE_STATUS or not self._retryable(call, attempt):
                    raise _api_error(call, resp)
                delay = self._delay(attempt, resp.headers.get("retry-after"))
            attempt += 1
            self.retry_count += 1
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


# ---------------------------------------------------------------------------
# The Reporter's transport
# ---------------------------------------------------------------------------


class ReportPoster:
    """POST report bodies for one sender thread of a :class:`~docl.client.Reporter`.

    httpx costs ~1.2 ms of CPU per request on the machines we measured (a sender
    thread's CPU is taken from the training thread through the GIL); one
    keep-alive ``http.client`` connection costs ~0.4 ms. So plain ``http://``
    servers are posted to over ``http.client``; ``https://`` and clients given
    their own httpx transport go through the client's httpx pool. No retries
    here (the Reporter retries, counting them); errors are the client's:
    :class:`TransportError` or the :class:`APIError` of the status. Not
    thread-safe: one per thread.
    """

    def __init__(self, client: ScoreClient) -> None:
        from urllib.parse import urlsplit

        self.client = client
        u = urlsplit(client.base_url)
        self.lean = u.scheme == "http" and not getattr(client, "_custom_transport", False)
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 80
        self.prefix = u.path.rstrip("/")
        t = client.timeout
        self.timeout = float(t) if isinstance(t, int | float) else float(t.read or 30.0)
        self.headers = dict(client._headers)
        self._conn: Any = None

    def post(self, path: str, body: bytes, content_type: str) -> bytes:
        """POST ``body``; the answer's body when the status is < 400."""
        if not self.lean:
            call = _Call("POST", path, lambda r: r.content, content=body,
                         headers={"Content-Type": content_type}, retry=False)  # fmt: skip
            return self.client._send(call)
        import http.client

        headers = {**self.headers, "Content-Type": content_type}
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._conn or http.client.HTTPConnection(
                self.host, self.port, timeout=self.timeout
            )
            self._conn = None
            try:
                conn.request("POST", self.prefix + path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # The server closed an idle keep-alive connection: one fresh attempt (a
                # report is safe to send twice: its report_id). Timeouts are not repeated.
                if attempt == 0 and reused and not isinstance(e, TimeoutError):
                    continue
                raise TransportError(
                    f"POST {self.client.base_url}{path} failed: {type(e).__name__}: {e}"
                ) from e
            if resp.will_close:
                conn.close()
            else:
                self._conn = conn
            if resp.status >= 400:
                url = f"{self.client.base_url}{path}"
                answer = httpx.Response(
                    resp.status, headers=resp.getheaders(), content=data,
                    request=httpx.Request("POST", url),
                )  # fmt: skip
                raise _api_error(_Call("POST", path, _parse_none), answer)
            return data
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
