"""The figures the README and the docs promise for `make demo` are what the
command produces.

`make demo` is `docl train --task mnist1d --method docl --out out/demo`: one Ray
Train worker. Every draw and the model init are seeded and a draw waits for
the previous epoch's reports, so the run is deterministic, and one Ray worker
trains exactly what the in-process loop (`--workers 0`) trains: the same
epochs, batches and accuracy to the last digit (checked by hand: 0.9467 and
1,833 batches both ways). This test runs the in-process form (about 10 s
each, no Ray start-up) of the demo and of the random-SGD comparison at the
same batch budget, and compares them with the text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _demo_figures() -> tuple[float, int, float, int]:
    """(docl accuracy, its batches, random SGD's accuracy, its budget) from the README."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(
        r"^test_accuracy (0\.\d{4})  batches (\d+)  wall [\d.]+s  \(docl on mnist1d, seed 0\) -> out/demo$",
        readme,
        re.M,
    )
    assert m, "README: the demo's last line is missing"
    r = re.search(
        r"--method random\s+--budget-batches (\d+) --workers 0`, reaches \*\*(0\.\d{4})\*\*", readme
    )
    assert r, "README: the random-SGD comparison is missing"
    return float(m.group(1)), int(m.group(2)), float(r.group(2)), int(r.group(1))


def test_the_docs_quote_the_readmes_demo_figures() -> None:
    acc, batches, rand_acc, budget = _demo_figures()
    assert budget == batches  # the comparison is at the same number of batches
    training = (ROOT / "docs" / "training.md").read_text()
    assert f"test_accuracy {acc:.4f}  batches {batches}  wall" in training
    assert f"--budget-batches {budget} --workers 0`, reaches\n{rand_acc:.4f}" in training
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert f"make demo`: {acc:.4f}" in deploy
    stale = {"0.9450", "0.9592", "0.9579"} - {f"{acc:.4f}", f"{rand_acc:.4f}"}
    for page in ("README.md", "docs/training.md", "docs/deploy.md"):
        text = (ROOT / page).read_text()
        assert not [s for s in stale if s in text], page


@pytest.mark.slow
def test_the_demo_figures_are_what_the_command_produces(tmp_path: Path) -> None:
    from docl.worker.train import TrainSpec, train

    acc, batches, rand_acc, budget = _demo_figures()
    demo = train(
        TrainSpec(task="mnist1d", method="docl", workers=0, progress=False, out=str(tmp_path / "d"))
    )
    assert (f"{demo['test_accuracy']:.4f}", demo["batches"]) == (f"{acc:.4f}", batches)
    rand = train(
        TrainSpec(
            task="mnist1d",
            method="random",
            budget_batches=budget,
            workers=0,
            progress=False,
            out=str(tmp_path / "r"),
        )
    )
    assert (f"{rand['test_accuracy']:.4f}", rand["batches"]) == (f"{rand_acc:.4f}", budget)
