"""What the service costs a training job: ``docl bench overhead``.

The same training twice, in one run, alternating and repeated:

* **plain** — the plain local loop: the identical :func:`train_loop`, fed by
  :class:`~docl.worker.loop.LocalEpochs` (the same plan, uniform draws made
  locally), no server, no reports. With a step-level method (``loss-topk``,
  ``rho-loss``, ``pool-random``) the plain loop does the same work per step as the
  served one — the same pools forwarded without gradients, the same rule, and for
  ``rho-loss`` the same irreducible-loss model trained first — so the ratio is the
  service's own cost, not the method's;
* **service** — ``docl train`` as a user runs it: a score server started for
  the job, the run created, every epoch drawn and every rank's indices fetched
  over HTTP, every step reported by the background Reporter, flushed at each
  epoch's end.

Printed: the median wall time of the training loop (``train_time``: from the
first epoch to the last, the server already up) and of the whole job
(``wall_time``: task, server start, run creation, training, shutdown), their
ratio service / plain, and the cost per optimizer step. Wall time on a shared
machine moves with everyone else's load, so the CPU seconds are printed too:
the trainer process's (all threads) and, on the service side, the score
server's and its Redis's during the training; their sum over the plain loop's
CPU is the overhead in work done, independent of the machine's load.
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

from docl.worker.train import TrainError, TrainSpec, train

__all__ = ["OverheadResult", "format_overhead", "measure_overhead"]


@dataclass
class OverheadResult:
    spec: TrainSpec
    repeats: int
    plain: list[dict[str, Any]] = field(default_factory=list)
    service: list[dict[str, Any]] = field(default_factory=list)

    def median(self, which: str, key: str) -> float:
        rows = self.plain if which == "plain" else self.service
        return float(statistics.median(r[key] for r in rows))

    def ratio(self, key: str) -> float:
        return self.median("service", key) / self.median("plain", key)

    @property
    def batches(self) -> int:
        return int(self.plain[0]["batches"])

    def _cpu(self) -> dict[str, float]:
        rows = self.plain + self.service
        if any(r.get("train_cpu") is None for r in rows) or any(
            r.get("server_cpu") is None for r in self.service
        ):
            return {}  # Ray workers are other processes: no CPU figures
        plain = self.median("plain", "train_cpu")
        trainer = self.median("service", "train_cpu")
        server = self.median("service", "server_cpu")
        return {
            "plain_train_cpu": plain,
            "service_train_cpu": trainer,
            "service_server_cpu": server,
            "cpu_ratio": (trainer + server) / plain,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.spec.task,
            "method": self.spec.method,
            "epochs": self.spec.epochs,
            "workers": self.spec.workers,
            "batches": self.batches,
            # sample-passes of one training (equal on both sides: checked when measured)
            "forward_samples": int(self.plain[0].get("forward_samples", 0)),
            "compute_samples": int(self.plain[0].get("compute_samples", 0)),
            "repeats": self.repeats,
            "plain_train_time": self.median("plain", "train_time"),
            "service_train_time": self.median("service", "train_time"),
            "plain_wall_time": self.median("plain", "wall_time"),
            "service_wall_time": self.median("service", "wall_time"),
            "train_time_ratio": self.ratio("train_time"),
            "wall_time_ratio": self.ratio("wall_time"),
            "per_step_ms": 1e3
            * (self.median("service", "train_time") - self.median("plain", "train_time"))
            / max(1, self.batches),
            **self._cpu(),
            "plain_test_accuracy": [r["test_accuracy"] for r in self.plain],
            "service_test_accuracy": [r["test_accuracy"] for r in self.service],
            "reports_sent": self.service[0]["reporter"].get("sent"),
            "report_requests": self.service[0]["reporter"].get("requests"),
        }


def measure_overhead(base: TrainSpec, *, repeats: int = 3) -> OverheadResult:
    """Train ``base`` ``repeats`` times each way, alternating (plain first)."""
    from docl.services.methods import registry

    local_ok = [m.name for m in registry().values() if m.local_ok]
    if base.method not in local_ok:
        raise TrainError(
            f"the plain loop draws uniformly: measure with a method whose epochs are "
            f"uniform ({', '.join(local_ok)}), not {base.method!r}"
        )
    res = OverheadResult(spec=base, repeats=repeats)
    with tempfile.TemporaryDirectory(prefix="docl-overhead-") as tmp:
        # Not counted: one short plain training pays the process's first-use costs
        # (imports, building and caching the task, torch's kernel set-up).
        train(replace(base, epochs=1, budget_batches=None, local=True, server=None,
                      out=f"{tmp}/warmup", run_id=None, progress=False))  # fmt: skip
        for i in range(repeats):
            for which in ("plain", "service"):
                spec = replace(
                    base,
                    local=which == "plain",
                    server=None,
                    out=f"{tmp}/{which}-{i}",
                    run_id=None,
                    progress=False,
                )
                (res.plain if which == "plain" else res.service).append(train(spec))
    for key, what in (("batches", "steps"), ("forward_samples", "forward sample-passes"),
                      ("compute_samples", "sample-passes in all (pools, IL model)")):  # fmt: skip
        if res.plain[0].get(key) != res.service[0].get(key):
            raise RuntimeError(f"the two trainings did different numbers of {what}: not comparable")
    return res


def format_overhead(res: OverheadResult) -> str:
    d = res.as_dict()
    workers = res.spec.workers
    mode = "in-process (workers 0)" if workers == 0 else f"Ray Train, {workers} workers"
    mode += ", on the GPU" if res.spec.use_gpu else ", on the CPU"
    w = 28
    lines = [
        f"overhead: task {d['task']}, method {d['method']}, {d['batches']} optimizer steps, "
        f"{mode}, median of {d['repeats']}",
        f"each training, both sides: {d['forward_samples']:,} forward sample-passes, "
        f"{d['compute_samples']:,} in all (pools and the IL model included)",
        "",
        f"{'':<{w}}{'training loop s':>16}{'whole job s':>14}",
        f"{'plain local loop':<{w}}{d['plain_train_time']:>16.2f}{d['plain_wall_time']:>14.2f}",
        f"{'service in the loop':<{w}}{d['service_train_time']:>16.2f}"
        f"{d['service_wall_time']:>14.2f}",
        f"{'ratio service / plain':<{w}}{d['train_time_ratio']:>15.3f}x"
        f"{d['wall_time_ratio']:>13.3f}x",
    ]
    if "cpu_ratio" in d:
        lines += [
            "",
            f"{'':<{w}}{'trainer CPU s':>16}{'server CPU s':>14}",
            f"{'plain local loop':<{w}}{d['plain_train_cpu']:>16.2f}{0.0:>14.2f}",
            f"{'service in the loop':<{w}}{d['service_train_cpu']:>16.2f}"
            f"{d['service_server_cpu']:>14.2f}",
            f"{'ratio (trainer + server) / plain':<{w + 6}}{d['cpu_ratio']:>9.3f}x",
        ]
    lines += [
        "",
        f"per optimizer step: {d['per_step_ms']:+.3f} ms wall with the service "
        f"({d['reports_sent']} reports sent per run, in {d['report_requests']} requests)",
    ]
    return "\n".join(lines)
