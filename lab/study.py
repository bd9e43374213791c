"""The score-dynamics study of the paper's §3, through the real service and loop.

The paper trains with three primitive curricula — ``top`` (the k highest
scores every epoch), ``bottom`` (the k lowest) and ``alternate`` (top in odd,
bottom in even episodes) — and watches, epoch by epoch, (1) the score â(i) of
the selected samples and (2) how well the model predicts the samples it did NOT
train on (their true-class probability), split into the unselected samples
with the highest and the lowest scores.

Here the run goes through the score server and
:func:`~docl.worker.loop.train_loop` exactly like ``docl train --workers 0``;
the only difference is the session: :class:`StudySession` is a
:class:`~docl.worker.session.LocalSession` whose end-of-epoch ``save`` hook
(which the loop calls with the model's state after every epoch) also

* evaluates the model on the whole training set (true-class probability of
  every sample — cheap for the small built-in tasks),
* reads the epoch's indices and the score table back from the server,

and keeps one record per epoch. Nothing in the loop or the server changes.

The paper uses a fixed k (20% of the data); the experiment's study runs set
``gamma_k = k_min = 0.2`` (``docl.lab.experiment.STUDY_PARAMS``) so that the
``shrink`` schedule of these methods reaches k = 0.2·n at the first selection
epoch and stays there.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import torch

from docl.client import ScoreClient
from docl.worker.loop import LoopConfig, train_loop
from docl.worker.session import LocalSession
from docl.worker.tasks import TaskData
from docl.worker.train import TrainError, TrainSpec, prepare_job

__all__ = ["StudySession", "epoch_record", "train_with_study", "true_class_probability"]


def true_class_probability(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192
) -> np.ndarray:
    """p(x_i)[y_i] for every row (classification), float64 (n,)."""
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            logits = model(x[i : i + chunk]).double()  # (b, c)
            p = torch.softmax(logits, dim=1)
            out.append(p.gather(1, y[i : i + chunk].view(-1, 1)).squeeze(1).numpy())
    return np.concatenate(out) if out else np.zeros(0)


def _mean_std(v: np.ndarray) -> tuple[float | None, float | None]:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    return float(v.mean()), float(v.std())


def epoch_record(
    selected: np.ndarray, scores: np.ndarray, p_true: np.ndarray | None
) -> dict[str, Any]:
    """The study's numbers for one epoch (a pure function, tested on its own).

    ``selected`` the epoch's indices, ``scores`` (n,) the score table after the
    epoch (NaN = unset), ``p_true`` (n,) the true-class probabilities (None for
    regression). Unselected samples with a score are split at their median
    score into a high and a low half (the paper splits by the DoCL objective).
    """
    n = scores.shape[0]
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(selected, dtype=np.int64)] = True
    rec: dict[str, Any] = {"selected": int(mask.sum())}
    rec["sel_score_mean"], rec["sel_score_std"] = _mean_std(scores[mask].astype(np.float64))
    if p_true is None:
        return rec
    unsel = np.flatnonzero(~mask)
    rec["unsel_p_mean"], rec["unsel_p_std"] = _mean_std(p_true[unsel])
    scored = unsel[np.isfinite(scores[unsel])]
    order = scored[np.argsort(scores[scored], kind="stable")]
    half = order.size // 2
    lo, hi = order[:half], order[order.size - half :]
    rec["unsel_hi_p_mean"], rec["unsel_hi_p_std"] = _mean_std(p_true[hi])
    rec["unsel_lo_p_mean"], rec["unsel_lo_p_std"] = _mean_std(p_true[lo])
    rec["unsel_hi_score_mean"], _ = _mean_std(scores[hi].astype(np.float64))
    rec["unsel_lo_score_mean"], _ = _mean_std(scores[lo].astype(np.float64))
    return rec


class StudySession(LocalSession):
    """A LocalSession that records the study's numbers at every epoch end."""

    def __init__(self, data: TaskData, client: ScoreClient, run_id: str, seed: int) -> None:
        super().__init__(checkpoint_dir=None, progress=False)
        self.data = data
        self.client = client
        self.run_id = run_id
        self.model = data.make_model(seed)
        self.records: list[dict[str, Any]] = []

    def save(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        # The loop calls save(metrics, {model, optimizer, ...}) after every epoch
        # (rank 0, LoopConfig.checkpoint=True); nothing is written to disk here.
        e = int(metrics["epoch"])
        p_true = None
        if state is not None and self.data.task == "classification":
            self.model.load_state_dict(state["model"])
            self.model.eval()
            p_true = true_class_probability(self.model, self.data.x_train, self.data.y_train)
        selected = np.asarray(self.client.indices(self.run_id, e))
        scores = np.asarray(self.client.scores(self.run_id).scores, dtype=np.float32)
        rec = epoch_record(selected, scores, p_true)
        rec.update(
            {
                "epoch": e,
                "phase": metrics["phase"],
                "batches": metrics["batches"],
                "test_accuracy": metrics.get("test_accuracy"),
            }
        )
        self.records.append(rec)


def train_with_study(spec: TrainSpec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``docl train --workers 0`` against ``spec.server`` with a :class:`StudySession`.

    Writes ``OUT/metrics.jsonl`` and ``OUT/result.json`` as ``train`` does and
    returns (result, one study record per epoch).
    """
    if spec.server is None or spec.workers != 0:
        raise TrainError("the study runs in-process (workers=0) against a running server")
    t_start = time.perf_counter()
    job = prepare_job(spec)
    data, run, out, metrics_path = job.data, job.run, job.out, job.metrics_path
    weight_decay = job.weight_decay
    with ScoreClient(spec.server, token=spec.token) as client:
        client.create_run(run)
        cfg = LoopConfig(
            run_id=job.run_id,
            server=spec.server,
            token=spec.token,
            seed=spec.seed,
            momentum=spec.momentum,
            weight_decay=weight_decay,
            threads=spec.threads or 1,
            eval_every=spec.eval_every,
            metrics_path=str(metrics_path.resolve()),
            checkpoint=True,  # the loop hands the model's state to session.save
        )
        session = StudySession(data, client, job.run_id, spec.seed)
        t_train = time.perf_counter()
        final = train_loop(cfg, data, session)
        train_time = time.perf_counter() - t_train
    final.pop("history", None)
    result = {
        "task": spec.task,
        "method": run.method,
        "seed": spec.seed,
        "run_id": job.run_id,
        "test_accuracy": final.get("test_accuracy"),
        "batches": final.get("batches", 0),
        "train_time": train_time,
        "wall_time": time.perf_counter() - t_start,
        "params": run.params.model_dump(mode="json"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result, session.records
