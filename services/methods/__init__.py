"""Selection methods: one :class:`SelectionMethod` object per method, in one registry.

A method is everything the service needs to know about it, in one place:

* ``name`` — what ``POST /v1/runs`` accepts as ``method``;
* ``params`` — a pydantic model of its own parameters (``method_params`` on the
  wire), validated when the run is created (422 on an unknown or bad one);
* ``signal`` — the per-sample signal its draws read: ``"docl"`` / ``"docl-nr"``
  (the score the reports maintain), ``"loss"`` (each sample's last task loss:
  the run keeps a loss column in Redis) or ``"none"``;
* ``size`` — its subset-size schedule over the plan (``full``, ``shrink``,
  ``grow``; ``drawn``: the plan reserves the whole data set and the draw decides
  how many samples the epoch trains on);
* ``draw`` — a pure function of a :class:`DrawContext` (numpy, seeded Generator)
  returning a :class:`~docl.services.sampling.Draw`: the selection, in any order
  (:func:`draw` shuffles it into training order with the same Generator). The
  method is generic over its params: ``SelectionMethod[P]``'s draw receives a
  ``DrawContext[P]`` whose ``params`` is a ``P``;
* ``weights`` — whether its draws carry per-sample loss weights;
* ``uniform`` — a uniform control (its draws read no signal: the plain local
  loop can draw it without a server);
* ``random_epochs`` — its epochs are random SGD's draws whatever its step rule
  does (``loss-topk``, ``rho-loss``: the rule and its signals run in the worker),
  so the plain local loop can run it too (:attr:`SelectionMethod.local_ok`,
  ``docl bench overhead``), pools and all, without being a uniform control;
* ``l2_phases`` / ``diversity`` — its defaults for ``params.l2_phases`` and
  ``params.diversity``;
* ``control`` — the name of its size-matched control, when the generic ones
  (``random``, ``random-subset``) do not match its sizes (``infobatch`` →
  ``infobatch-random``); ``docl experiment`` compares the method with it;
* ``step`` — a step rule, for a method that selects **per step** from fresh values
  (``loss-topk``, ``pool-random``): in its selection epochs each training step
  forwards a candidate pool of ``pool_ratio`` (a field its ``params`` must have)
  times the step's batch without gradients and trains on the batch the rule picks
  from the pool's per-sample values (:class:`StepContext`, :func:`select_step`);
* ``signals`` — the named per-sample signal columns it reads besides the score and the
  last loss (``rho-loss``: ``"irreducible_loss"``), each uploaded once to the run
  (``PUT /v1/runs/{run}/signals/{name}``). One declaration for both kinds of method: an
  epoch-level method's selection draws get them in ``DrawContext.signals`` (a draw
  before one is uploaded is refused with 409); a step-level method's rule gets them in
  ``StepContext.values`` over the pool, which the worker supplies (reading them from
  the run, or computing and uploading them).

Everything else — which Redis columns a run has, the CLI help, which methods the
local baseline may run — is derived from the registry. The built-in methods live
in :mod:`.builtin` (the DoCL family) and :mod:`.infobatch`; every module of this
package is imported when it is, so a new built-in method is one new module here.

Adding a method: write one module that builds a :class:`SelectionMethod` and
either call :func:`register_method` on import, or expose it through the entry
point group ``docl.methods`` (``[project.entry-points."docl.methods"]`` in your
package's pyproject: ``mymethod = "my_pkg.selection:METHOD"``), or name it in
``DOCL_METHODS=my_pkg.selection:METHOD`` when starting ``docl serve``. The
object may be a :class:`SelectionMethod`, a list of them, or a callable
returning either. See docs/methods.md.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Generic, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from docl.services.sampling import Draw, shuffle_draw
from docl.wire.models import RunParams

__all__ = [
    "DEFAULT_TAU",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "SIGNAL_NAME",
    "Draw",
    "DrawContext",
    "NoParams",
    "SelectionMethod",
    "Signal",
    "SizeSchedule",
    "StepContext",
    "draw",
    "get_method",
    "import_module_here",
    "load_plugins",
    "method_names",
    "register_method",
    "registry",
    "select_step",
    "validate_method_params",
]

log = logging.getLogger("docl.services")

#: The entry point group third-party packages register methods under.
ENTRY_POINT_GROUP = "docl.methods"
#: Comma-separated ``module:object`` specs imported at server start (besides entry points).
ENV_VAR = "DOCL_METHODS"

Signal = Literal["docl", "docl-nr", "loss", "none"]
SizeSchedule = Literal["full", "shrink", "grow", "drawn"]
_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")  # as wire.models.Method
#: A signal's name (as the signals route accepts it).
SIGNAL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
#: The Boltzmann temperature when none is given: the run parameter's default.
DEFAULT_TAU: float = RunParams.model_fields["tau"].default


class NoParams(BaseModel):
    """A method without parameters of its own (``method_params`` must be empty)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: A method's params model (``SelectionMethod.params``).
P = TypeVar("P", bound=BaseModel)
#: The default ``params`` (typed Any: a method without parameters is a SelectionMethod[NoParams]).
_NO_PARAMS: Any = NoParams


@dataclass(frozen=True)
class DrawContext(Generic[P]):
    """Everything a draw may read (docs/methods.md has the table, field by field).
    Arrays are (n,); NaN means "not known yet"."""

    k: int  # how many samples the plan asks for (a ``drawn`` method returns at most k)
    scores: np.ndarray  # the score column, float32 (NaN = never scored)
    losses: np.ndarray  # each sample's last task loss (NaN = never visited, or not kept)
    rng: np.random.Generator  # the epoch's Generator, seeded per (run, epoch): the only randomness
    params: P  # the method's own validated parameters (``method_params``), a ``P``
    tau: float = DEFAULT_TAU  # the run's Boltzmann temperature (RunParams.tau)
    normalize: str = "std"  # the run's score standardization: "std" or "none"
    exp3: bool = False  # the run asks for inclusion probabilities (fill Draw.inclusion)
    episode: int = 1  # the plan's episode of this epoch (0 = warmup)
    epoch: int = 0  # this epoch's number
    num_epochs: int = 1  # the plan's length
    #: the method's declared signal columns (``SelectionMethod.signals``), each (n,)
    #: float32 as uploaded (NaN = unknown); read-only. Empty for a method declaring none.
    signals: Mapping[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.scores.shape[0])


DrawFn = Callable[[DrawContext[P]], Draw]


@dataclass(frozen=True)
class StepContext:
    """Everything a step rule may read: per-sample values over one step's candidate pool.

    ``values`` maps a name to a (p,) array over the pool's p candidates, in pool order.
    The worker loop passes ``"loss"``: each candidate's fresh per-sample loss (the
    epoch's loss kind) from a forward pass without gradients at the step's parameters.
    A rule that needs another value (e.g. an irreducible loss) names it and raises a
    clear error when it is missing."""

    b: int  # how many candidates to train on (0 <= b <= p)
    values: Mapping[str, np.ndarray]
    rng: np.random.Generator  # the step's Generator: the only source of randomness
    params: BaseModel  # the method's own validated parameters

    @property
    def p(self) -> int:
        return int(next(iter(self.values.values())).shape[0])


#: A step rule: the b chosen positions into the pool (distinct int64 in [0, p)).
StepFn = Callable[[StepContext], np.ndarray]


@dataclass(frozen=True)
class SelectionMethod(Generic[P]):
    """One selection method (see the module docstring for each field), generic over its
    params model ``P``: the draw receives a ``DrawContext[P]``."""

    name: str
    draw: Callable[[DrawContext[P]], Draw]
    signal: Signal = "none"
    size: SizeSchedule = "shrink"
    params: type[P] = _NO_PARAMS
    weights: bool = False
    uniform: bool = False
    l2_phases: bool = False
    diversity: bool = False
    control: str | None = None  # the method's size-matched uniform control, if any
    summary: str = ""
    #: its epoch draws are random SGD's (not a control: its step rule selects)
    random_epochs: bool = False
    step: StepFn | None = None  # a step rule: the method selects per step from a pool
    #: the per-sample signal columns it reads (e.g. ``"irreducible_loss"``), uploaded to
    #: the run: an epoch draw gets them in ``DrawContext.signals``, a step rule in
    #: ``StepContext.values`` (whoever runs the steps supplies each over the pool)
    signals: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"a method name is 1-64 characters of [a-z0-9_-], starting with a letter "
                f"or digit (what the wire accepts), got {self.name!r}"
            )
        if self.signal not in ("docl", "docl-nr", "loss", "none"):
            raise ValueError(f"signal must be docl, docl-nr, loss or none, got {self.signal!r}")
        if self.size not in ("full", "shrink", "grow", "drawn"):
            raise ValueError(f"size must be full, shrink, grow or drawn, got {self.size!r}")
        if not callable(self.draw):
            raise TypeError(f"method {self.name!r}: draw must be callable")
        if not (isinstance(self.params, type) and issubclass(self.params, BaseModel)):
            raise TypeError(f"method {self.name!r}: params must be a pydantic model class")
        if self.step is not None:
            if not callable(self.step):
                raise TypeError(f"method {self.name!r}: step must be callable")
            if "pool_ratio" not in self.params.model_fields:
                raise ValueError(
                    f"method {self.name!r} has a step rule: its params need a pool_ratio field"
                )
            if self.weights:
                raise ValueError(f"method {self.name!r}: a step-level method has no weights")
        bad = [s for s in self.signals if not SIGNAL_NAME.fullmatch(str(s))]
        if bad or len(set(self.signals)) != len(self.signals):
            raise ValueError(
                f"method {self.name!r}: signals must be distinct names matching "
                f"^[a-z][a-z0-9_]{{0,31}}$, got {list(self.signals)}"
            )

    def pool_ratio(self, method_params: Mapping[str, Any] | None = None) -> int | None:
        """m, the candidates per trained sample of a step-level method (None: the
        method trains every sample of its steps)."""
        if self.step is None:
            return None
        params = self.params.model_validate(dict(method_params or {}))
        return int(params.pool_ratio)  # type: ignore[attr-defined]

    @property
    def local_ok(self) -> bool:
        """Whether the plain local loop (no server) can run it: its epochs read nothing
        the server keeps (a uniform control, or random SGD's epochs and a step rule
        that runs in the worker)."""
        return self.uniform or self.random_epochs

    @property
    def score_kind(self) -> Literal["docl", "docl-nr"]:
        """Which score the reports maintain for this method's runs."""
        return "docl-nr" if self.signal == "docl-nr" else "docl"

    @property
    def loss_column(self) -> bool:
        """Whether the run keeps each sample's last loss (a column in Redis)."""
        return self.signal == "loss"


_REGISTRY: dict[str, SelectionMethod[Any]] = {}


def register_method(method: SelectionMethod[P], *, replace: bool = False) -> SelectionMethod[P]:
    """Add ``method`` to the registry (``replace``: over one of the same name)."""
    if not isinstance(method, SelectionMethod):
        raise TypeError(f"expected a SelectionMethod, got {type(method).__name__}")
    old = _REGISTRY.get(method.name)
    if old is not None and old is not method and not replace:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


def registry() -> dict[str, SelectionMethod[Any]]:
    """Every registered method by name (a copy), built-ins first."""
    return dict(_REGISTRY)


def method_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_method(name: str) -> SelectionMethod[Any]:
    """The registered method ``name``, or a ValueError naming the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; known: {', '.join(_REGISTRY)}. A plugin's method must be "
            "loaded where the server runs: restart `docl serve` with "
            "DOCL_METHODS=package.module:METHOD (or install its 'docl.methods' entry point); "
            "see docs/methods.md"
        ) from None


def validate_method_params(name: str, raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """``method_params`` validated by the method's model, with its defaults filled in.

    Raises ValueError with a readable message (unknown method, unknown or bad field)."""
    spec = get_method(name)
    try:
        model = spec.params.model_validate(dict(raw or {}))
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err.get("loc", ())) or "method_params"
            parts.append(f"{loc}: {err.get('msg', 'invalid')}")
        known = ", ".join(spec.params.model_fields) or "none"
        raise ValueError(
            f"invalid method_params for method {name!r} ({'; '.join(parts)}); "
            f"its parameters: {known}"
        ) from None
    return model.model_dump(mode="json")


def _load_object(obj: Any, origin: str) -> list[SelectionMethod[Any]]:
    if isinstance(obj, SelectionMethod):
        return [obj]
    if obj is None:
        return []
    if callable(obj) and not isinstance(obj, type):
        return _load_object(obj(), origin)
    if isinstance(obj, Iterable):
        out: list[SelectionMethod[Any]] = []
        for o in obj:
            out.extend(_load_object(o, origin))
        return out
    raise TypeError(f"{origin}: expected a SelectionMethod, a list of them or a callable")


def import_module_here(module_name: str) -> Any:
    """Import ``module_name``; failing that, once more with the working directory on
    sys.path (as ``python -m`` and uvicorn have it: a console script's sys.path starts
    at its own bin directory, so ``my_pkg`` next to the user would not be found).
    ``docl train --task my_pkg.data:make_task`` and ``$DOCL_METHODS`` both use it."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError:
        cwd = os.getcwd()
        if cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        return importlib.import_module(module_name)


def _import_spec(spec: str) -> Any:
    module, _, attr = spec.strip().partition(":")
    if not module or not attr:
        raise ValueError(f"{ENV_VAR} entries are 'module:object', got {spec!r}")
    obj: Any = import_module_here(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _loaded(load: Callable[[], Any], origin: str) -> Any:
    """``load()``, with an import failure said in one line that names the plugin."""
    try:
        return load()
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"{origin} cannot be loaded ({type(e).__name__}: {e}); is its package installed, "
            "or on PYTHONPATH?"
        ) from e


def load_plugins(env: Mapping[str, str] | None = None) -> list[str]:
    """Register the methods of the ``docl.methods`` entry points and of ``$DOCL_METHODS``.

    Called when the server starts. Returns the names registered. A plugin that
    fails to load raises (a server that silently lacks a method would 422 the
    runs that need it with a misleading message)."""
    env = os.environ if env is None else env
    found: list[tuple[SelectionMethod[Any], str]] = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        origin = f"entry point {ep.name!r}"
        found += [(m, origin) for m in _load_object(_loaded(ep.load, origin), origin)]
    for spec in filter(None, (s.strip() for s in env.get(ENV_VAR, "").split(","))):
        origin = f"{ENV_VAR} entry {spec!r}"
        obj = _loaded(functools.partial(_import_spec, spec), origin)
        found += [(m, origin) for m in _load_object(obj, origin)]
    names: list[str] = []
    for m, origin in found:
        if m.name in _BUILTIN and _REGISTRY[m.name] is not m:
            raise ValueError(f"{origin}: a plugin may not replace the built-in method {m.name!r}")
        register_method(m, replace=True)  # loading again (another call) is a no-op
        names.append(m.name)
    if names:
        log.info("selection methods from plugins: %s", ", ".join(names))
    return names


def draw(
    method: str,
    *,
    k: int,
    scores: np.ndarray,
    losses: np.ndarray | None = None,
    rng: np.random.Generator,
    tau: float = DEFAULT_TAU,
    normalize: str = "std",
    exp3: bool = False,
    episode: int = 1,
    epoch: int = 0,
    num_epochs: int = 1,
    shuffle: bool = True,
    method_params: Mapping[str, Any] | None = None,
    signals: Mapping[str, np.ndarray] | None = None,
) -> Draw:
    """Draw a selection epoch with the named method (a pure function of its inputs and rng).

    n = len(scores). ``losses`` (n,) is the last task loss per sample (NaN = never
    visited; None = all unknown). The method's draw returns its selection in any
    order; this shuffles it into training order (:func:`~docl.services.sampling.shuffle_draw`
    with the same Generator, after the method's draw), so no method shuffles itself.
    ``shuffle=False`` returns the selection before that shuffle: ``shuffle_draw`` with
    the same Generator then gives exactly the shuffled draw. A ``drawn``-size method
    returns at most k samples; every other method exactly k. ``signals``: the method's
    declared signal columns by name, each (n,) (an epoch-level method declaring
    signals needs every one; others are not passed on).
    """
    spec = get_method(method)
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must be a vector, got shape {s.shape}")
    n = s.size
    # unknown losses: a read-only all-NaN view, not an (n,) array allocated every draw
    ls = np.broadcast_to(np.float64(np.nan), (n,)) if losses is None else np.asarray(losses)
    if ls.shape != (n,):
        raise ValueError(f"losses must have shape ({n},), got {ls.shape}")
    k = int(k)
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in [0, {n}], got {k}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if normalize not in ("std", "none"):
        raise ValueError(f"normalize must be 'std' or 'none', got {normalize!r}")
    params = spec.params.model_validate(dict(method_params or {}))
    given = dict(signals or {})
    cols: dict[str, np.ndarray] = {}
    for name in spec.signals if spec.step is None else ():
        if name not in given:
            raise ValueError(
                f"method {method!r} reads the signal {name!r}, which was not given "
                f"(given: {sorted(given)})"
            )
        col = np.asarray(given[name], dtype=np.float32)
        if col.shape != (n,):
            raise ValueError(f"signal {name!r} must have shape ({n},), got {col.shape}")
        col = col.view()  # read-only for the method, without a copy
        col.flags.writeable = False
        cols[name] = col
    ctx = DrawContext(
        k=k,
        scores=s,
        losses=ls,
        rng=rng,
        params=params,
        tau=float(tau),
        normalize=normalize,
        exp3=bool(exp3),
        episode=int(episode),
        epoch=int(epoch),
        num_epochs=int(num_epochs),
        signals=cols,
    )
    d = spec.draw(ctx)
    m = int(d.indices.shape[0])
    if (m != k and spec.size != "drawn") or m > k:
        raise ValueError(f"method {method!r} drew {m} samples, the plan asked for {k}")
    if spec.weights and d.weights is None:
        raise ValueError(f"method {method!r} declares weights but its draw returned none")
    if not spec.weights and d.weights is not None:
        raise ValueError(f"method {method!r} returned weights but does not declare weights=True")
    if d.weights is not None and d.weights.shape != (m,):
        raise ValueError(f"method {method!r}: weights must have shape ({m},)")
    return shuffle_draw(d, rng) if shuffle else d


def select_step(
    method: str,
    *,
    b: int,
    values: Mapping[str, np.ndarray],
    rng: np.random.Generator,
    method_params: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """The positions (into the pool) of the b candidates one step of ``method`` trains on.

    ``values`` holds the pool's named per-sample values, each a (p,) array (``"loss"``:
    the fresh losses). A pure function of its inputs and ``rng``. Returns exactly
    min(b, p) distinct int64 positions in [0, p)."""
    spec = get_method(method)
    if spec.step is None:
        raise ValueError(f"method {method!r} does not select per step (it has no step rule)")
    if not values:
        raise ValueError("values must name at least one per-sample array (e.g. 'loss')")
    arrays = {str(k): np.asarray(v) for k, v in values.items()}
    shapes = {k: v.shape for k, v in arrays.items()}
    first = next(iter(arrays.values()))
    p = int(first.shape[0]) if first.ndim == 1 else -1
    if any(len(sh) != 1 or sh[0] != p for sh in shapes.values()):
        raise ValueError(f"values must be vectors over the same pool, got shapes {shapes}")
    b = int(b)
    if b < 0:
        raise ValueError(f"b must be >= 0, got {b}")
    params = spec.params.model_validate(dict(method_params or {}))
    ctx = StepContext(b=min(b, p), values=arrays, rng=rng, params=params)
    chosen = np.asarray(spec.step(ctx))
    if chosen.shape != (ctx.b,) or not np.issubdtype(chosen.dtype, np.integer):
        raise ValueError(
            f"method {method!r}: its step rule must return {ctx.b} integer positions, "
            f"got shape {chosen.shape} dtype {chosen.dtype}"
        )
    chosen = chosen.astype(np.int64, copy=False)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= p):
        raise ValueError(f"method {method!r}: its step rule chose positions outside [0, {p})")
    if np.unique(chosen).size != chosen.size:
        raise ValueError(f"method {method!r}: its step rule chose a candidate twice")
    return chosen


def _load_builtins() -> frozenset[str]:
    """Import every module of this package: each registers its methods on import (the
    DoCL family in ``builtin.py`` first, then the others by name), so a new built-in
    method is one new module here, listed nowhere else."""
    import pkgutil

    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    for name in sorted(names, key=lambda x: x != "builtin"):
        importlib.import_module(f"{__name__}.{name}")
    return frozenset(_REGISTRY)


#: The methods docl ships (plugins may add methods, not replace these).
_BUILTIN = _load_builtins()
