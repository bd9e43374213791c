"""What each route does, between the HTTP layer and the store.

The engine validates input, calls the pure math (``scoring``, ``sampling``,
``plan``, ``diversity``) and reads/writes through the store. It knows nothing
about HTTP except the :mod:`docl.services.errors` it raises, so the service
benchmark (``docl.lab``) can run the same report path in-process, without HTTP,
as the limit the server is compared with.

One module per stage of the flow; :class:`Engine` is their union:

- :mod:`.runs` — run lifecycle: the immutable :class:`RunState`, create/read/list/delete, the plan;
- :mod:`.draws` — epochs: draw once, re-read, per-rank index shards;
- :mod:`.validate` — the one report validator (one report or a request's many);
- :mod:`.jsonreport` — a JSON report parsed into the binary decoder's arrays;
- :mod:`.cache` — this process's record cache and the run's write lease;
- :mod:`.reports` — report grouping and application (read, score, scatter);
- :mod:`.stats` — score pages and statistics.
"""

from __future__ import annotations

from docl.services.engine.draws import DrawStage
from docl.services.engine.jsonreport import report_arrays_from_json
from docl.services.engine.reports import ReportStage
from docl.services.engine.runs import RunState
from docl.services.engine.stats import StatsStage
from docl.services.seeds import epoch_seed

__all__ = ["Engine", "RunState", "epoch_seed", "report_arrays_from_json"]


class Engine(ReportStage, DrawStage, StatsStage):
    """The score server's behaviour, one method per route."""
