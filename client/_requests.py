"""Requests as data: what both clients send and how they read the answers.

Every method of :class:`~docl.client.ScoreClient` and
:class:`~docl.client.AsyncScoreClient` builds its request once, here, as a
:class:`_Call` (``_Base._c_*``, pure: no I/O), and hands it to its client's
retry loop (``_client.py``), so the two clients cannot drift apart. Also here:
the parsers of the answers (:class:`Shard`, :class:`ScoreArrays`, the wire
models), the mapping of an error answer to the :mod:`~docl.client.errors`
hierarchy, and the configuration both clients share (``_Base``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import numpy as np
import pydantic

from docl.client._arrays import check_report_arrays
from docl.client.errors import (
    APIError,
    DoclError,
    InvalidRequestError,
    TransportError,
    error_for_status,
    retryable,
)
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
    SignalAck,
    SignalList,
    Stats,
)
from docl.wire.retry import Attempts, EqualJitterBackoff, ExponentialBackoff, Retry

#: Where the clients connect when neither ``base_url`` nor ``DOCL_SERVER`` is given
#: (the default of ``docl serve``).
DEFAULT_SERVER = "http://127.0.0.1:8000"
ENV_SERVER = "DOCL_SERVER"
ENV_TOKEN = "DOCL_API_TOKEN"

T = TypeVar("T")

# Transport failures that may fare better on another try (TransportError.retryable).
# Other httpx.TransportErrors (an unsupported scheme, a proxy misconfiguration, a
# protocol error of our own) will fail the same way every time.
_RETRYABLE_EXC: tuple[type[Exception], ...] = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
)


def request_policy(retries: int, backoff: float, max_backoff: float) -> Retry:
    """The clients' retry policy from their ``retries``, ``backoff`` and ``max_backoff``:
    try ``n`` (0, 1, …) waits uniform in [½, 1]·min(max_backoff, backoff·2ⁿ)."""
    if backoff < 0 or max_backoff < 0:
        raise ValueError("backoff and max_backoff must be >= 0")
    return Retry(EqualJitterBackoff(backoff, max_backoff, rng=random.Random()), retries=retries)


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


def _parse_signal(resp: httpx.Response) -> tuple[np.ndarray, int | None]:
    """One page of a signal: a writable float32 copy, and where the next page starts."""
    nxt = resp.headers.get("X-Docl-Next-Offset")
    values = np.frombuffer(resp.content, dtype="<f4").astype(np.float32, copy=True)
    return values, None if nxt is None else int(nxt)


def _signal_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or "?" in name:
        raise ValueError(f"a signal name must be a non-empty string without '/', got {name!r}")
    return name


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
        retry: Retry | None,
        binary: bool,
        headers: Mapping[str, str] | None,
    ) -> None:
        url = base_url or os.environ.get(ENV_SERVER) or DEFAULT_SERVER
        if "://" not in url:
            url = "http://" + url
        self.base_url = url.rstrip("/")
        if retry is None:
            retry = request_policy(retries, backoff, max_backoff)
        #: The retry policy of every request (docs/client.md, "Retries").
        self.retry = retry
        self.binary = binary
        self.timeout = timeout
        self._token = token if token is not None else os.environ.get(ENV_TOKEN) or None
        self._headers: dict[str, str] = {"User-Agent": f"docl-client/{_version()}"}
        if self._token:
            self._headers["Authorization"] = f"Bearer {self._token}"
        if headers:
            self._headers.update(headers)
        #: Requests repeated after a retryable failure, since this client was made.
        self.retry_count = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # -- the retry policy ----------------------------------------------------------

    @property
    def retries(self) -> int | None:
        """How many times a request is repeated (the policy's; None: no limit)."""
        return self.retry.retries

    @retries.setter
    def retries(self, value: int | None) -> None:
        self.retry = dataclasses.replace(self.retry, retries=value)

    def _retry_with(self, backoff: float | None, max_backoff: float | None) -> Retry:
        """The policy with another base or cap (a fresh random source for the jitter)."""
        b = self.retry.backoff
        if backoff is None and max_backoff is None and not isinstance(b, EqualJitterBackoff):
            return self.retry
        if not isinstance(b, ExponentialBackoff):
            raise TypeError(f"backoff and max_backoff need an exponential backoff, not {b!r}")
        changes: dict[str, Any] = {"base": b.base if backoff is None else backoff}
        changes["cap"] = b.cap if max_backoff is None else max_backoff
        if isinstance(b, EqualJitterBackoff):
            changes["rng"] = random.Random()
        return dataclasses.replace(self.retry, backoff=dataclasses.replace(b, **changes))

    @property
    def backoff(self) -> float:
        """The first retry's wait, before jitter (the policy's backoff ``base``)."""
        return float(getattr(self.retry.backoff, "base", self.retry.backoff.cap))

    @property
    def max_backoff(self) -> float:
        """The longest wait between two tries (the policy's backoff ``cap``)."""
        return self.retry.backoff.cap

    def _transport_error(self, call: _Call[Any], exc: Exception, attempts: int) -> TransportError:
        return TransportError(
            f"{call.method} {self.base_url}{call.path} failed after {attempts} attempt(s): "
            f"{type(exc).__name__}: {exc}",
            retryable=isinstance(exc, _RETRYABLE_EXC),
        )

    def _next_try(
        self, call: _Call[Any], tries: Attempts, error: DoclError, retry_after: str | None
    ) -> float | None:
        """The wait before repeating ``call`` after ``error``, or None: raise it.
        ``retry_after``: the answer's Retry-After (seconds; an HTTP date, rare for
        429/503, is ignored: the policy's own wait stands)."""
        if not (call.retry and retryable(error)):
            return None
        hint = None
        if retry_after:
            with contextlib.suppress(ValueError):
                hint = float(retry_after)
        delay = tries.next_delay(hint)
        if delay is not None:
            self.retry_count += 1
        return delay

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
        idx, out, tgt, feat = check_report_arrays(
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
                idx, out, tgt, feat = check_report_arrays(
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

    def _c_put_signal(self, run_id: str, name: str, values: Any, start: int) -> _Call[SignalAck]:
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"values must be a vector of float32, got shape {arr.shape}")
        if isinstance(start, bool) or not isinstance(start, int | np.integer) or start < 0:
            raise ValueError(f"start must be a non-negative integer, got {start!r}")
        data = np.ascontiguousarray(arr, dtype="<f4").tobytes()
        return _Call(
            "PUT",
            f"{_run_path(run_id)}/signals/{_signal_name(name)}",
            _model(SignalAck),
            params={"start": int(start), "stop": int(start) + int(arr.shape[0])},
            content=data,
            headers={"Content-Type": wire.INDICES_CONTENT_TYPE},
        )

    def _c_get_signal(
        self, run_id: str, name: str, start: int, stop: int | None
    ) -> _Call[tuple[np.ndarray, int | None]]:
        params: dict[str, Any] = {"start": int(start)}
        if stop is not None:
            params["stop"] = int(stop)
        return _Call(
            "GET",
            f"{_run_path(run_id)}/signals/{_signal_name(name)}",
            _parse_signal,
            params=params,
            headers={"Accept": wire.INDICES_CONTENT_TYPE},
        )

    def _c_signals(self, run_id: str) -> _Call[SignalList]:
        return _Call("GET", f"{_run_path(run_id)}/signals", _model(SignalList))

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
