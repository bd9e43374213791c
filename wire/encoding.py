"""Binary encodings of the REST API (one module for both ends; ``docl.client.wire`` re-exports it).

The client encodes reports with :func:`encode_report`; the server decodes them
with :func:`decode_report`. docs/api.md describes the same layouts byte by byte
so that a client in another language can implement them.

All integers and floats are little-endian.

Report (``Content-Type: application/vnd.docl.report.v1``)::

    offset  size  field
    0       4     magic  b"DOCR"
    4       1     version (1)
    5       1     flags: bit 0 = regression targets (float32 B×c), bit 1 = features present
    6       2     L, length of report_id in bytes (uint16, 1..128)
    8       4     B, samples (uint32, >= 1)
    12      4     c, outputs per sample (uint32, >= 1)
    16      4     d, feature width (uint32; 0 unless bit 1)
    20      4     epoch (uint32)
    24      8     lr_sum (float64)
    32      L     report_id, UTF-8
    ...     pad   zero bytes up to the next multiple of 8
            8B    indices  int64[B]
            4Bc   outputs  float32[B, c]   (row-major)
            8B    targets  int64[B]        (classification)
         or 4Bc   targets  float32[B, c]   (regression)
            4Bd   features float32[B, d]   (only when bit 1)

Several reports in one request (``Content-Type: application/vnd.docl.reports.v1``)::

    0   4   magic b"DOCM"
    4   1   version (1)
    5   3   zero
    8   4   K, reports that follow (uint32, 1..MAX_REPORTS_PER_BODY)
    12  4   zero
    16  ..  K times: L (uint64), then one report as above of exactly L bytes,
            then zero bytes up to the next multiple of 8

Each report keeps its own report_id, epoch and lr_sum: the server applies (or
recognises as a duplicate) each one exactly as if it had come alone, and
answers one acknowledgement per report, in order.

Scores (``Accept: application/vnd.docl.scores.v1``)::

    0   4   magic b"DOCS"
    4   4   version (uint32, 1)
    8   8   n, rows that follow (uint64)
    16  8   offset of the first row (uint64)
    24  4n  scores  float32[n]  (NaN = unset)
    ..  4n  visits  uint32[n]
    ..  8n  lr_sums float64[n]  (NaN = never seen)

Indices (``Accept: application/octet-stream``): int64[m], nothing else.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Defined in docl.wire.errors (a DoclError and a ValueError), re-exported for the codec's users.
from docl.wire.errors import WireError

__all__ = [
    "INDICES_CONTENT_TYPE",
    "MAX_REPORTS_PER_BODY",
    "REPORTS_CONTENT_TYPE",
    "REPORT_CONTENT_TYPE",
    "SCORES_CONTENT_TYPE",
    "ReportArrays",
    "WireError",
    "decode_indices",
    "decode_report",
    "decode_reports",
    "decode_scores",
    "encode_indices",
    "encode_report",
    "encode_reports",
    "encode_scores",
]

REPORT_CONTENT_TYPE = "application/vnd.docl.report.v1"
REPORTS_CONTENT_TYPE = "application/vnd.docl.reports.v1"
SCORES_CONTENT_TYPE = "application/vnd.docl.scores.v1"
INDICES_CONTENT_TYPE = "application/octet-stream"

_REPORT_MAGIC = b"DOCR"
_SCORES_MAGIC = b"DOCS"
_MULTI_MAGIC = b"DOCM"
_MULTI_HEADER = struct.Struct("<4sB3xI4x")  # 16 bytes
_FRAME_LEN = struct.Struct("<Q")
#: Most reports one multi-report body may carry.
MAX_REPORTS_PER_BODY = 4096
_HEADER = struct.Struct("<4sBBHIIIId")  # 32 bytes
_SCORES_HEADER = struct.Struct("<4sIQQ")  # 24 bytes
_FLAG_REGRESSION = 1
_FLAG_FEATURES = 2
MAX_REPORT_ID = 128


@dataclass(frozen=True)
class ReportArrays:
    """A decoded report: read-only numpy views into the request body."""

    report_id: str
    epoch: int
    lr_sum: float
    indices: np.ndarray  # (B,) int64
    outputs: np.ndarray  # (B, c) float32
    targets: np.ndarray  # (B,) int64 or (B, c) float32
    features: np.ndarray | None  # (B, d) float32

    @property
    def regression(self) -> bool:
        return self.targets.ndim == 2


def _pad8(n: int) -> int:
    return (-n) % 8


def encode_report(
    *,
    report_id: str,
    epoch: int,
    lr_sum: float,
    indices: np.ndarray,
    outputs: np.ndarray,
    targets: np.ndarray,
    features: np.ndarray | None = None,
) -> bytes:
    """Encode one report. ``targets`` of shape (B,) are class ids, (B, c) regression targets."""
    idx = np.ascontiguousarray(indices, dtype="<i8").reshape(-1)
    out = np.ascontiguousarray(outputs, dtype="<f4")
    if out.ndim != 2 or out.shape[0] != idx.shape[0]:
        raise WireError(f"outputs must be (B, c) with B = {idx.shape[0]}, got {out.shape}")
    b, c = out.shape
    tgt = np.asarray(targets)
    regression = tgt.ndim == 2
    if regression:
        tgt = np.ascontiguousarray(tgt, dtype="<f4")
        if tgt.shape != out.shape:
            raise WireError(f"regression targets must be {out.shape}, got {tgt.shape}")
    else:
        tgt = np.ascontiguousarray(tgt, dtype="<i8").reshape(-1)
        if tgt.shape[0] != b:
            raise WireError(f"targets must have B = {b} entries, got {tgt.shape[0]}")
    flags = _FLAG_REGRESSION if regression else 0
    d = 0
    feat = b""
    if features is not None:
        f = np.ascontiguousarray(features, dtype="<f4")
        if f.ndim != 2 or f.shape[0] != b:
            raise WireError(f"features must be (B, d) with B = {b}, got {f.shape}")
        flags |= _FLAG_FEATURES
        d = f.shape[1]
        feat = f.tobytes()
    rid = report_id.encode()
    if not 1 <= len(rid) <= MAX_REPORT_ID:
        raise WireError(f"report_id must be 1..{MAX_REPORT_ID} bytes")
    head = _HEADER.pack(_REPORT_MAGIC, 1, flags, len(rid), b, c, d, epoch, float(lr_sum))
    return b"".join(
        (head, rid, b"\0" * _pad8(len(rid)), idx.tobytes(), out.tobytes(), tgt.tobytes(), feat)
    )


def decode_report(body: bytes | bytearray | memoryview) -> ReportArrays:
    """Decode a report; raise :class:`WireError` with a precise message when malformed."""
    buf = memoryview(body)
    if len(buf) < _HEADER.size:
        raise WireError(
            f"report body is {len(buf)} bytes, shorter than the {_HEADER.size}-byte header"
        )
    magic, version, flags, rid_len, b, c, d, epoch, lr_sum = _HEADER.unpack_from(buf)
    if magic != _REPORT_MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}, expected {_REPORT_MAGIC!r}")
    if version != 1:
        raise WireError(f"unsupported report version {version}")
    if flags & ~(_FLAG_REGRESSION | _FLAG_FEATURES):
        raise WireError(f"unknown flag bits {flags:#x}")
    if not 1 <= rid_len <= MAX_REPORT_ID:
        raise WireError(f"report_id length must be 1..{MAX_REPORT_ID}, got {rid_len}")
    if b < 1 or c < 1:
        raise WireError(f"B and c must be >= 1, got B={b}, c={c}")
    has_features = bool(flags & _FLAG_FEATURES)
    if has_features and d < 1:
        raise WireError("features flag set but d = 0")
    if not has_features and d != 0:
        raise WireError("d must be 0 when the features flag is not set")
    regression = bool(flags & _FLAG_REGRESSION)
    pos = _HEADER.size + rid_len + _pad8(rid_len)
    tgt_bytes = 4 * b * c if regression else 8 * b
    expected = pos + 8 * b + 4 * b * c + tgt_bytes + 4 * b * d
    if len(buf) != expected:
        raise WireError(
            f"report body is {len(buf)} bytes; B={b}, c={c}, d={d} needs exactly {expected}"
        )
    try:
        rid = bytes(buf[_HEADER.size : _HEADER.size + rid_len]).decode()
    except UnicodeDecodeError as e:
        raise WireError("report_id is not valid UTF-8") from e
    indices = np.frombuffer(buf, dtype="<i8", count=b, offset=pos)
    pos += 8 * b
    outputs = np.frombuffer(buf, dtype="<f4", count=b * c, offset=pos).reshape(b, c)
    pos += 4 * b * c
    if regression:
        targets = np.frombuffer(buf, dtype="<f4", count=b * c, offset=pos).reshape(b, c)
    else:
        targets = np.frombuffer(buf, dtype="<i8", count=b, offset=pos)
    pos += tgt_bytes
    features = (
        np.frombuffer(buf, dtype="<f4", count=b * d, offset=pos).reshape(b, d)
        if has_features
        else None
    )
    return ReportArrays(
        report_id=rid,
        epoch=int(epoch),
        lr_sum=float(lr_sum),
        indices=indices,
        outputs=outputs,
        targets=targets,
        features=features,
    )


def encode_reports(frames: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """Wrap already encoded reports (:func:`encode_report`) into one multi-report body."""
    k = len(frames)
    if not 1 <= k <= MAX_REPORTS_PER_BODY:
        raise WireError(f"a multi-report body carries 1..{MAX_REPORTS_PER_BODY} reports, got {k}")
    parts: list[bytes | bytearray | memoryview] = [_MULTI_HEADER.pack(_MULTI_MAGIC, 1, k)]
    for f in frames:
        n = len(f)
        parts.append(_FRAME_LEN.pack(n))
        parts.append(f)
        if n % 8:
            parts.append(b"\0" * _pad8(n))
    return b"".join(parts)


def decode_reports(body: bytes | bytearray | memoryview) -> list[ReportArrays]:
    """Decode a multi-report body; :class:`WireError` names the bad report (0-based)."""
    buf = memoryview(body)
    if len(buf) < _MULTI_HEADER.size:
        raise WireError(
            f"multi-report body is {len(buf)} bytes, shorter than its {_MULTI_HEADER.size}-byte header"
        )
    magic, version, k = _MULTI_HEADER.unpack_from(buf)
    if magic != _MULTI_MAGIC:
        raise WireError(f"bad magic {bytes(magic)!r}, expected {_MULTI_MAGIC!r}")
    if version != 1:
        raise WireError(f"unsupported multi-report version {version}")
    if not 1 <= k <= MAX_REPORTS_PER_BODY:
        raise WireError(f"a multi-report body carries 1..{MAX_REPORTS_PER_BODY} reports, got {k}")
    out: list[ReportArrays] = []
    pos = _MULTI_HEADER.size
    for j in range(k):
        if pos + _FRAME_LEN.size > len(buf):
            raise WireError(f"report {j}: the body ends before its length field (K = {k})")
        (n,) = _FRAME_LEN.unpack_from(buf, pos)
        pos += _FRAME_LEN.size
        if n > len(buf) - pos:
            raise WireError(f"report {j}: length {n} runs past the end of the body")
        try:
            out.append(decode_report(buf[pos : pos + n]))
        except WireError as e:
            raise WireError(f"report {j}: {e}") from None
        pos += n + _pad8(n)
    if pos != len(buf):
        raise WireError(f"{len(buf) - pos} bytes after the last of the {k} reports")
    return out


def encode_scores(
    scores: np.ndarray, visits: np.ndarray, lr_sums: np.ndarray, *, offset: int = 0
) -> bytes:
    n = int(scores.shape[0])
    if visits.shape[0] != n or lr_sums.shape[0] != n:
        raise WireError("scores, visits and lr_sums must have the same length")
    return b"".join(
        (
            _SCORES_HEADER.pack(_SCORES_MAGIC, 1, n, offset),
            np.ascontiguousarray(scores, dtype="<f4").tobytes(),
            np.ascontiguousarray(visits, dtype="<u4").tobytes(),
            np.ascontiguousarray(lr_sums, dtype="<f8").tobytes(),
        )
    )


def decode_scores(body: bytes) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(offset, scores, visits, lr_sums)``."""
    if len(body) < _SCORES_HEADER.size:
        raise WireError("scores body shorter than its header")
    magic, version, n, offset = _SCORES_HEADER.unpack_from(body)
    if magic != _SCORES_MAGIC or version != 1:
        raise WireError("not a docl scores body (bad magic or version)")
    if len(body) != _SCORES_HEADER.size + 16 * n:
        raise WireError(
            f"scores body is {len(body)} bytes, expected {_SCORES_HEADER.size + 16 * n}"
        )
    p = _SCORES_HEADER.size
    scores = np.frombuffer(body, dtype="<f4", count=n, offset=p)
    visits = np.frombuffer(body, dtype="<u4", count=n, offset=p + 4 * n)
    lr_sums = np.frombuffer(body, dtype="<f8", count=n, offset=p + 8 * n)
    return int(offset), scores, visits, lr_sums


def encode_indices(indices: np.ndarray) -> bytes:
    return np.ascontiguousarray(indices, dtype="<i8").tobytes()


def decode_indices(body: bytes) -> np.ndarray:
    if len(body) % 8:
        raise WireError(f"indices body of {len(body)} bytes is not a whole number of int64")
    return np.frombuffer(body, dtype="<i8")
