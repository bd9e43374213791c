"""``docl experiment``: does a selection method pay on this data, against random SGD
and the budgeted-random control? (The learning benchmark; ``docl.lab.experiment``.)

Every method (or named variant, ``docl[tau=1,normalize=none]``) is trained on
every task for every seed with the **same budget of training batches** (the
x-axis of the paper's Figure 4), each run through the real service and the real
worker loop:

* one score server (``docl serve`` with its embedded Redis, on a free port) is
  started for the whole experiment and shared by all runs;
* each run is :func:`docl.worker.train.train` — exactly what ``docl train``
  does — in-process (``workers=0``: :func:`~docl.worker.loop.train_loop` with a
  ``LocalSession``) or, for the first ``ray_runs`` runs, on a Ray Train
  ``TorchTrainer`` with one worker (the same loop in a ``RaySession``);
* runs execute in ``jobs`` worker processes (one torch thread each).

Outputs in ``DIR`` (see docs/results.md for how to read them):

* ``runs/<key>/`` — each run's ``metrics.jsonl``, ``result.json``, ``train.log``
  and ``row.json`` (written last: its presence marks the run as done, so an
  interrupted experiment resumes where it stopped);
* ``results.csv`` — one row per run (early-stopped figures and sample-passes
  included); ``results.md`` — mean ± std per task × variant; the headline: each
  run's test metric at its best validation epoch (early stopping) beside the final
  one, its backward batches and compute, against random SGD at equal batches and at
  equal compute and against its control (:func:`~.summary.judge`); per method, its
  final test metric at the equal batch budget beside
  random SGD and random-subset, the batches it needs to reach random SGD's final
  metric, and one sentence "pays here?" (the gap against the pooled std); the
  DoCL bar;
* ``curves.png`` — test accuracy (regression: test MSE) against training
  batches, one subplot per task, mean ± std band over seeds;
* ``study.png`` — the score-dynamics study of the paper's §3 (``top``,
  ``bottom``, ``alternate``): score of the selected samples and true-class
  probability of the unselected ones, epoch by epoch (see :mod:`.study`).

Tasks: the built-in ones (:data:`TASKS`) or the user's own
``package.module:factory`` (as in ``docl train --task``; its budget comes from
the task's defaults, see :func:`~.tasks.task_setup`).

Validation: every built-in task carves a validation split off its training split
(``validation`` task parameter); defaults were chosen on it, and the test split
is only reported.

Modules: :mod:`.tasks` (task setups), :mod:`.variants` (``method[key=value]``),
:mod:`.runner` (jobs, the process pool), :mod:`.summary` (the numbers),
:mod:`.report` (CSV, markdown), :mod:`.plots`.
"""

from docl.lab.experiment.report import CSV_COLUMNS, render_markdown, write_csv, write_outputs
from docl.lab.experiment.runner import (
    ExperimentSpec,
    Job,
    build_jobs,
    execute_job,
    load_row,
    run_experiment,
)
from docl.lab.experiment.summary import batches_to_reach, summarize
from docl.lab.experiment.tasks import (
    DEFAULT_METHODS,
    DEFAULT_TASKS,
    STUDY_METHODS,
    STUDY_PARAMS,
    TASKS,
    ExperimentError,
    TaskSetup,
    task_setup,
)
from docl.lab.experiment.variants import Variant, parse_variant, parse_variants

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_METHODS",
    "DEFAULT_TASKS",
    "STUDY_METHODS",
    "STUDY_PARAMS",
    "TASKS",
    "ExperimentError",
    "ExperimentSpec",
    "Job",
    "TaskSetup",
    "Variant",
    "batches_to_reach",
    "build_jobs",
    "execute_job",
    "load_row",
    "parse_variant",
    "parse_variants",
    "render_markdown",
    "run_experiment",
    "summarize",
    "task_setup",
    "write_csv",
    "write_outputs",
]
