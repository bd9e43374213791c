"""The epoch plan: a pure function of the run config. No I/O.

Rules (docs/architecture.md "The plan", docs/algorithm.md for a worked example):

* episode 0 is the warmup: `warmup_epochs` uniform full-data epochs;
* episode j >= 1: L_j selection epochs, then (if `refresh`) one uniform
  full-data refresh epoch; L_1 = episode_epochs,
  L_{j+1} = max(L_j + 1, round_half_up(L_j · episode_growth));
* the learning rate of episode j is one cosine annealing over all S of the
  episode's steps: lr(s) = floor + ½(peak - floor)(1 + cos(π s / S)), s = 0..S-1,
  peak = lr_peak·lr_decay^j, floor = lr_min·lr_decay^j;
* warmup/refresh train with the L2 loss when the method's l2_phases (or
  params.l2_phases) says so, else the task loss; selection epochs use the task loss;
* subset size k of a selection epoch after m decays (m = j with k_decay
  "episode": k shrinks at the end of every episode, the warmup included, as in
  Algorithm 1; m = t + 1 with k_decay "epoch", t = selection epochs before it):
  shrink ceil(max(k_min·n, n·γ_k^m)), grow min(n, ceil(k_min·n / γ_k^m)), full n,
  where k_min·n is rounded up and at least 1; a method whose size is ``drawn``
  (infobatch) reserves n and its draw decides (see :func:`drawn_epoch_lr`);
* diversity pruning trains on ceil(gamma_k_prime · k) of the k drawn samples;
* steps = ceil(size / batch_size); `epochs` caps the number of epochs and
  `budget_batches` the total steps (the last epoch is cut: steps = what is left,
  size = min(size, steps · batch_size)); the learning-rate schedule is that of
  the uncut plan, so a budget only truncates it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import numpy as np

from docl.services.methods import get_method
from docl.wire.models import PlanEpoch, RunCreate, RunParams


@dataclass(frozen=True, eq=False)
class EpochSpec:
    epoch: int
    episode: int
    phase: str  # warmup | select | refresh
    loss: str  # l2 | task
    size: int
    steps: int
    lr: np.ndarray  # (steps,) float64 learning rate of each step
    lr_sum_start: float  # Σ of every learning rate before this epoch (float64, exact order)
    draw_size: int = 0  # samples drawn before diversity pruning (== size unless `prune`)
    prune: bool = False  # prune the drawn subset to `size` by facility location (Eq. 15)
    lam: float = 0.0  # λ_t, weight of the facility-location term (selection epochs)
    select_index: int = -1  # t: selection epochs before this one (-1: not a selection epoch)

    @property
    def lr_start(self) -> float:
        return float(self.lr[0])

    @property
    def lr_end(self) -> float:
        return float(self.lr[-1])

    @property
    def lr_sum_end(self) -> float:
        """Σ of every learning rate up to and including this epoch's last step
        (== the next epoch's lr_sum_start, bit for bit)."""
        return _sequential_sum(self.lr_sum_start, self.lr)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EpochSpec):
            return NotImplemented
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            if f.name == "lr"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )

    __hash__ = object.__hash__


def _sequential_sum(start: float, values: np.ndarray) -> float:
    """start + v0 + v1 + … added one at a time in float64, in step order: the
    same rounding as a worker that adds each step's learning rate to a running
    float (np.add.accumulate is sequential, unlike np.sum's pairwise sum)."""
    if values.size == 0:
        return float(start)
    acc = np.add.accumulate(np.concatenate(([float(start)], values.astype(np.float64))))
    return float(acc[-1])


def _ceil(x: float) -> int:
    """ceil that ignores float noise: 0.2·10 = 2.0000000000000004 -> 2, not 3."""
    return math.ceil(round(x, 9))


def min_subset(params: RunParams, n: int) -> int:
    """k_min as a sample count: k_min·n rounded up, at least 1, at most n."""
    return min(n, max(1, _ceil(params.k_min * n)))


def subset_size(size_schedule: str, n: int, params: RunParams, decays: int) -> int:
    """k of a selection epoch after `decays` applications of γ_k."""
    if size_schedule in ("full", "drawn"):  # drawn: the plan reserves n, the draw decides
        return n
    kmin = min_subset(params, n)
    factor = params.gamma_k**decays  # may underflow to 0.0 after many decays
    if size_schedule == "shrink":
        return min(n, max(kmin, _ceil(n * factor)))
    if size_schedule == "grow":
        grown = kmin / factor if factor > 0 else math.inf
        return n if grown >= n else max(kmin, _ceil(grown))
    raise ValueError(f"unknown size schedule {size_schedule!r}")


def lambda_at(params: RunParams, select_index: int) -> float:
    """λ_t = lambda0 · gamma_lambda^t for the t-th selection epoch (t from 0)."""
    return float(params.lambda0 * params.gamma_lambda**select_index)


def episode_length(params: RunParams, j: int) -> int:
    """L_j, the selection epochs of episode j >= 1 (round half up)."""
    length = params.episode_epochs
    for _ in range(j - 1):
        length = max(length + 1, math.floor(length * params.episode_growth + 0.5))
    return length


def cosine_lr(peak: float, floor: float, steps: int) -> np.ndarray:
    """lr(s) = floor + ½(peak - floor)(1 + cos(π s / S)) for s = 0..S-1 (float64)."""
    return _cosine(peak, floor, steps, 0, steps)


def _cosine(peak: float, floor: float, total: int, start: int, stop: int) -> np.ndarray:
    """cosine_lr(peak, floor, total)[start:stop], without building the other steps."""
    s = np.arange(start, stop, dtype=np.float64)
    return floor + 0.5 * (peak - floor) * (1.0 + np.cos(np.pi * s / total))


class PlanTooLarge(ValueError):
    """A plan over one of the server's limits; ``setting`` names the limit's variable."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting

    def __reduce__(self) -> tuple[type[PlanTooLarge], tuple[str, str]]:
        # pickled across processes (the JSON-report child, Ray workers): keep both arguments
        return (type(self), (str(self), self.setting))


@dataclass(frozen=True)
class PlanLimits:
    """The server's bounds on a plan (``DOCL_MAX_PLAN_EPOCHS`` etc., services.config)."""

    epochs: int  # epochs in the plan, and in any one episode of it (the warmup included)
    steps: int  # optimizer steps in the plan
    epoch_steps: int  # optimizer steps in one epoch


@dataclass(frozen=True)
class _Row:
    phase: str
    loss: str
    size: int
    draw_size: int
    prune: bool
    lam: float
    select_index: int


@dataclass(frozen=True)
class _Slot:
    """One epoch of the uncut plan: its row, its steps and where they lie in its episode."""

    episode: int
    row: _Row
    steps: int
    episode_steps: int  # S: the episode's learning-rate schedule spans this many steps
    offset: int  # steps of the episode before this epoch
    peak: float
    floor: float


def _slots(run: RunCreate, max_episode_epochs: int | None = None) -> Iterator[_Slot]:
    """Every epoch of the uncut (endless) plan, lazily, from integers only: nothing is
    computed for an epoch the caller does not ask for, except the sizes of the
    episode it lies in (the schedule of an episode spans all of it). With
    ``max_episode_epochs`` an episode longer than that raises :class:`PlanTooLarge`
    before any of its rows is built."""
    p = run.params
    n = run.num_samples
    bs = p.batch_size
    spec = get_method(run.method)
    l2 = spec.l2_phases if p.l2_phases is None else p.l2_phases
    phase_loss = "l2" if l2 else "task"
    prune = spec.diversity if p.diversity is None else p.diversity

    def too_long(what: str, count: int | str) -> PlanTooLarge:
        if isinstance(count, int) and count > 10**15:
            count = f"about {float(count):.3g}"
        return PlanTooLarge(
            f"{what} would have {count} epochs, over this server's limit of "
            f"{max_episode_epochs} epochs per episode (DOCL_MAX_PLAN_EPOCHS): an episode's "
            "learning-rate schedule is laid out at once",
            "DOCL_MAX_PLAN_EPOCHS",
        )

    if p.warmup_epochs > 0:
        if max_episode_epochs is not None and p.warmup_epochs > max_episode_epochs:
            raise too_long("the warmup (params.warmup_epochs)", p.warmup_epochs)
        row = _Row("warmup", phase_loss, n, n, False, 0.0, -1)
        steps = _steps(n, bs)
        total = p.warmup_epochs * steps
        for i in range(p.warmup_epochs):
            yield _Slot(0, row, steps, total, i * steps, p.lr_peak, p.lr_min)
    episode = 1
    length = p.episode_epochs
    select_index = 0
    while True:
        if max_episode_epochs is not None and length + p.refresh > max_episode_epochs:
            raise too_long(f"episode {episode}", length + p.refresh)
        rows: list[_Row] = []
        for _ in range(length):
            decays = episode if p.k_decay == "episode" else select_index + 1
            k = subset_size(spec.size, n, p, decays)
            size = min(k, _ceil(p.gamma_k_prime * k)) if prune else k
            lam = lambda_at(p, select_index)
            rows.append(_Row("select", "task", max(1, size), k, prune, lam, select_index))
            select_index += 1
        if p.refresh:
            rows.append(_Row("refresh", phase_loss, n, n, False, 0.0, -1))
        steps_of = [_steps(r.size, bs) for r in rows]
        total = sum(steps_of)
        decay = p.lr_decay**episode
        offset = 0
        for r, steps in zip(rows, steps_of, strict=True):
            yield _Slot(episode, r, steps, total, offset, p.lr_peak * decay, p.lr_min * decay)
            offset += steps
        # L_{j+1} = max(L_j + 1, round_half_up(L_j · growth)), without overflowing a float
        grown = length * p.episode_growth + 0.5
        if not math.isfinite(grown):
            raise too_long(f"episode {episode + 1}", "more than 1e308")
        length = max(length + 1, math.floor(grown))
        episode += 1


def plan_size(run: RunCreate, limits: PlanLimits) -> tuple[int, int]:
    """(epochs, steps) of the run's plan, counted from integers only (no learning
    rates, no arrays), stopping at the first limit it passes with :class:`PlanTooLarge`.
    Costs at most ~2 × ``limits.epochs`` cheap iterations: check this before
    :func:`build_plan` allocates anything."""
    max_epochs = run.epochs if run.epochs is not None else math.inf
    budget = run.params.budget_batches if run.params.budget_batches is not None else math.inf
    epochs = steps = 0
    hint = "give fewer epochs, a smaller params.budget_batches or a larger params.batch_size"
    for slot in _slots(run, limits.epochs):  # epochs >= 1 and budget >= 1: one at least
        s = int(min(slot.steps, budget - steps))
        if s > limits.epoch_steps:
            raise PlanTooLarge(
                f"epoch {epochs} would have {s} steps (size {slot.row.size}, batch_size "
                f"{run.params.batch_size}), over this server's limit of {limits.epoch_steps} "
                "steps per epoch (DOCL_MAX_EPOCH_STEPS); use a larger params.batch_size",
                "DOCL_MAX_EPOCH_STEPS",
            )
        epochs += 1
        steps += s
        if epochs > limits.epochs:
            raise PlanTooLarge(
                f"the plan would have more than {limits.epochs} epochs, this server's limit "
                f"(DOCL_MAX_PLAN_EPOCHS); {hint}",
                "DOCL_MAX_PLAN_EPOCHS",
            )
        if steps > limits.steps:
            raise PlanTooLarge(
                f"the plan would have more than {limits.steps} optimizer steps, this server's "
                f"limit (DOCL_MAX_PLAN_STEPS); {hint}",
                "DOCL_MAX_PLAN_STEPS",
            )
        if epochs >= max_epochs or steps >= budget:
            break  # before asking for the next epoch: its episode may never be started
    return epochs, steps


def build_plan(run: RunCreate, limits: PlanLimits | None = None) -> list[EpochSpec]:
    """Every epoch of the run (see the module docstring for the rules). With ``limits``
    the plan is first sized by :func:`plan_size` (:class:`PlanTooLarge` when over)."""
    if limits is not None:
        plan_size(run, limits)
    bs = run.params.batch_size
    max_epochs = run.epochs if run.epochs is not None else math.inf
    budget = run.params.budget_batches if run.params.budget_batches is not None else math.inf

    plan: list[EpochSpec] = []
    lr_sum = 0.0
    used_steps = 0
    for slot in _slots(run):  # epochs >= 1 and budget >= 1: one at least
        r, steps = slot.row, slot.steps
        size, draw_size = r.size, r.draw_size
        if used_steps + steps > budget:  # the budget cuts this epoch short
            steps = int(budget - used_steps)
            size = min(size, steps * bs)
            draw_size = draw_size if r.prune else size
        epoch_lr = _cosine(
            slot.peak, slot.floor, slot.episode_steps, slot.offset, slot.offset + steps
        )
        plan.append(
            EpochSpec(
                epoch=len(plan),
                episode=slot.episode,
                phase=r.phase,
                loss=r.loss,
                size=size,
                steps=steps,
                lr=epoch_lr,
                lr_sum_start=lr_sum,
                draw_size=draw_size,
                prune=r.prune,
                lam=r.lam,
                select_index=r.select_index,
            )
        )
        lr_sum = _sequential_sum(lr_sum, epoch_lr)
        used_steps += steps
        if len(plan) >= max_epochs or used_steps >= budget:
            break  # before asking for the next epoch: its episode may never be started
    return plan


def _steps(size: int, batch_size: int) -> int:
    return -(-size // batch_size)


def lr_sum_at(plan: list[EpochSpec], epoch: int, step: int) -> float:
    """Σ of the learning rates applied before step `step` of epoch `epoch`.

    step ranges over 0..steps (step == steps: after the epoch's last step, equal
    to the next epoch's lr_sum_start). Summed one step at a time in float64 from
    the epoch's lr_sum_start, exactly as a worker accumulating a running float.
    """
    if not 0 <= epoch < len(plan):
        raise ValueError(f"epoch must lie in [0, {len(plan)}), got {epoch}")
    spec = plan[epoch]
    if not 0 <= step <= spec.steps:
        raise ValueError(f"step must lie in [0, {spec.steps}] for epoch {epoch}, got {step}")
    return _sequential_sum(spec.lr_sum_start, spec.lr[:step])


def total_steps(plan: list[EpochSpec]) -> int:
    return sum(e.steps for e in plan)


def drawn_epoch_lr(spec: EpochSpec, steps: int) -> np.ndarray:
    """The learning rates of a selection epoch whose draw kept fewer samples than the
    plan reserved (a ``drawn``-size method): the epoch's slot of the plan's schedule
    resampled onto ``steps`` steps (step s takes the slot's rate at ⌊s·S/steps⌋), so the
    schedule's shape over the epochs is kept and the epoch ends where the plan's did."""
    if steps >= spec.steps:
        return spec.lr
    pos = (np.arange(steps, dtype=np.int64) * spec.steps) // max(1, steps)
    return spec.lr[pos]


def plan_epoch(spec: EpochSpec) -> PlanEpoch:
    """The wire row (GET /v1/runs/{run}/plan) of one epoch."""
    return PlanEpoch(
        epoch=spec.epoch,
        episode=spec.episode,
        phase=spec.phase,
        loss=spec.loss,
        size=spec.size,
        steps=spec.steps,
        lr_start=spec.lr_start,
        lr_end=spec.lr_end,
        lr_sum_start=spec.lr_sum_start,
    )
