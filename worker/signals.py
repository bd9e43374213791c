"""The per-sample signals a run's method declares, as the worker supplies them.

A method names the signal columns it reads besides the score and the last loss in
``SelectionMethod.signals`` (docs/methods.md, "Signals"): an epoch-level method's
selection draws read them on the server (``rho-epoch``: a 409 until they are
uploaded), a step-level method's rule reads them over each pool in the worker
(``rho-loss``). One phase of the loop serves both (:func:`supply`, called by
``_set_up`` before the first epoch, for every method that declares any):

1. **From the run.** With a score server, each declared signal that the run keeps
   complete (every sample, no NaN) is read back; when every rank finds all it needs
   there (one small all-reduce: every rank takes the same branch), nothing is computed.
2. **Computed.** The signals the worker knows how to compute (:data:`COMPUTED`: the
   irreducible loss ``irreducible_loss`` and its l2 kind ``irreducible_loss_l2``,
   trained by ``worker/irreducible.py`` with the method's :class:`ILParams`, the models
   split over the ranks) are computed, and rank 0 uploads them; every rank then uses
   the float32 values the server keeps, so a run behaves the same read back or not.
3. **Otherwise** a declared signal the worker cannot compute and the run does not
   keep is a :class:`ValueError` naming it and the route to upload it.

Values are kept per loss kind (``"task"``, ``"l2"``: the rule subtracts like from like);
a signal the worker only reads has the same column in both kinds.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from docl.client.step import registered
from docl.services.methods.rho import IL_SIGNAL, IL_SIGNALS, ILParams
from docl.worker.irreducible import KINDS, shared_irreducible, upload
from docl.worker.session import Session
from docl.worker.tasks import TaskData

__all__ = ["COMPUTED", "Declared", "RunSignals", "declared", "read_columns", "supply"]

log = logging.getLogger("docl.worker")

#: The signals the worker computes when the run does not keep them (the IL, both kinds).
COMPUTED = frozenset(IL_SIGNALS.values())


@dataclass(frozen=True)
class Declared:
    """A run's method as its epoch source names it, with the signals it declares."""

    method: str
    params: BaseModel  # the method's validated ``method_params``
    signals: tuple[str, ...]


@dataclass(frozen=True)
class RunSignals:
    """Every declared signal over every training sample, and what computing them cost."""

    values: dict[str, dict[str, np.ndarray]]  # name -> loss kind -> (n,) float64
    forward_samples: int = 0  # sample-passes, all ranks (0: read back from the run)
    backward_samples: int = 0


def declared(source: Any) -> Declared | None:
    """The run's method (``source.method``, ``source.method_params``) and the signals it
    declares; None when the source names no method or one this process does not know
    (a plugin's method is loaded from its entry point or ``$DOCL_METHODS`` first)."""
    name = getattr(source, "method", None)
    spec = None if name is None else registered(name)
    if name is None or spec is None:
        return None
    params = spec.params.model_validate(dict(getattr(source, "method_params", None) or {}))
    return Declared(name, params, tuple(spec.signals))


def read_columns(
    client: Any, run_id: str, names: Sequence[str], n: int, *, tolerance: float
) -> dict[str, np.ndarray] | None:
    """The run's signal columns ``names`` as float64 of the stored float32, or None
    unless each is there and complete (shape (n,), no NaN: an upload that did not
    finish). ``client``: a ``ScoreClient``; each call rides out a server outage of up
    to ``tolerance`` seconds."""
    from docl.client.sampler import ride_out

    listed = ride_out(
        functools.partial(client.signals, run_id),
        tolerance=tolerance,
        what="listing the run's signals",
    )
    if not all(name in listed.signals for name in names):
        return None
    out = {}
    for name in names:
        col = ride_out(
            functools.partial(client.get_signal, run_id, name),
            tolerance=tolerance,
            what=f"reading the signal {name!r}",
        )
        if col.shape != (n,) or np.isnan(col).any():
            return None
        out[name] = np.asarray(col, dtype=np.float64)
    return out


def supply(
    source: Any,
    data: TaskData,
    session: Session,
    *,
    seed: int,
    momentum: float,
    weight_decay: float,
) -> RunSignals:
    """Every signal the run's method declares, on every rank (module docs): read from
    the run when it keeps them all, else the IL computed (rank 0 uploads it); a
    declared signal the worker cannot compute and the run does not keep raises."""
    decl = declared(source)
    if decl is None or not decl.signals:
        return RunSignals({})
    n = data.num_samples
    client, run_id = getattr(source, "client", None), getattr(source, "run_id", None)
    server = client is not None and isinstance(run_id, str)
    tolerance = float(getattr(source, "outage_tolerance", 0.0) or 0.0)
    # What the IL group needs: both kinds' columns (a rule reads the epoch's kind).
    il_needed = any(name in COMPUTED for name in decl.signals)
    own = [name for name in decl.signals if name not in COMPUTED]  # only readable
    wanted = sorted(COMPUTED) + own if il_needed else own
    stored = read_columns(client, str(run_id), wanted, n, tolerance=tolerance) if server else None
    if server:
        # every rank must agree: the IL's all-reduce below needs all of them
        flag = torch.tensor([0.0 if stored is None else 1.0], dtype=torch.float64)
        if int(session.all_reduce_sum(flag).item()) != session.world:
            stored = None
    if stored is not None:
        if session.rank == 0:
            session.log(f"signals {wanted} read back from the run's signal columns")
        return RunSignals(_by_kind(stored, decl.signals))

    values: dict[str, np.ndarray] = {}
    if own:  # the IL is computed below; the others must be on the run
        have = read_columns(client, str(run_id), own, n, tolerance=tolerance) if server else None
        flag = torch.tensor([0.0 if have is None else 1.0], dtype=torch.float64)
        agreed = have is not None
        if server:  # every rank takes the same branch (the all-reduce below needs all)
            agreed = int(session.all_reduce_sum(flag).item()) == session.world
        if have is None or not agreed:
            where = (
                f"run {run_id!r} does not keep them complete"
                if server
                else "this run has no score server to read them from"
            )
            raise ValueError(
                f"method {decl.method!r} reads the per-sample signals {own}, which the "
                f"worker cannot compute (it computes {sorted(COMPUTED)}) and {where}: "
                "upload each, one value per sample, before training — PUT "
                f"/v1/runs/{run_id}/signals/<name> (ScoreClient.put_signal(run_id, name, "
                "values)) — and start again"
            )
        values.update(have)
    spent = (0, 0)
    if il_needed:
        il, spent = _irreducible(decl, source, data, session, seed, momentum, weight_decay)
        if server:  # the server keeps float32: every rank uses what a read-back would give
            il = {k: v.astype(np.float32).astype(np.float64) for k, v in il.items()}
            if session.rank == 0:
                upload(client, str(run_id), il, tolerance=tolerance)
            # no rank draws an epoch before the upload is in (a plan without warmup
            # epochs: an epoch-level method's first draw reads it)
            session.barrier()
        values.update({IL_SIGNALS[k]: il[k] for k in KINDS})
    return RunSignals(_by_kind(values, decl.signals), *spent)


def _by_kind(
    columns: dict[str, np.ndarray], names: Sequence[str]
) -> dict[str, dict[str, np.ndarray]]:
    """Each declared signal per loss kind: ``irreducible_loss`` in the epoch's kind
    (its task and l2 columns), any other signal — ``irreducible_loss_l2`` named
    explicitly too — the same column in both kinds."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        if name == IL_SIGNAL:
            out[name] = {k: columns[IL_SIGNALS[k]] for k in KINDS}
        else:
            out[name] = {k: columns[name] for k in KINDS}
    return out


def _irreducible(
    decl: Declared,
    source: Any,
    data: TaskData,
    session: Session,
    seed: int,
    momentum: float,
    weight_decay: float,
) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """The IL per loss kind, trained once over the ranks with the method's IL params."""
    params = ILParams.of(decl.params)
    run_params = getattr(source, "run_params", None)
    if run_params is None:
        raise ValueError(f"method {decl.method!r} needs the run's parameters from its source")
    t0 = time.perf_counter()
    il = shared_irreducible(
        data,
        rank=session.rank,
        world=session.world,
        all_reduce_sum=session.all_reduce_sum,
        il=params.il,
        seed=seed,
        epochs=params.il_epochs,
        batch_size=run_params.batch_size,
        lr=params.il_lr if params.il_lr is not None else run_params.lr_peak,
        momentum=momentum,
        weight_decay=weight_decay,
        device=session.device,
    )
    if session.rank == 0:
        session.log(
            f"irreducible loss ({params.il}, {params.il_epochs} epochs): "
            f"{il.forward_samples + il.backward_samples} sample-passes, "
            f"{time.perf_counter() - t0:.1f}s"
        )
    return il.values, (il.forward_samples, il.backward_samples)
