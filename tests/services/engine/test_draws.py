"""The stored epoch (``StoredEpoch``): the JSON of a run's ``epochs`` hash, typed."""

from __future__ import annotations

import json

from docl.services import plan
from docl.services.engine.draws import DrawTiming, StoredEpoch
from docl.wire.models import RunCreate


def test_a_stored_epoch_reads_what_the_untyped_version_wrote_and_writes_the_same_keys() -> None:
    old = {
        "epoch": 3, "seed": 12345, "size": 90, "weighted": False, "drawn_at": 1.7e9,
        "drawn": 120, "lambda": 0.5, "timing": {"read_s": 0.001, "draw_s": 0.02},
    }  # fmt: skip
    doc = StoredEpoch.model_validate_json(json.dumps(old))
    assert (doc.epoch, doc.seed, doc.size, doc.drawn, doc.lam) == (3, 12345, 90, 120, 0.5)
    assert doc.timing == DrawTiming(read_s=0.001, draw_s=0.02)
    assert json.loads(doc.to_json()) == old
    plain = StoredEpoch(epoch=0, seed=1, size=10, weighted=True, drawn_at=2.0)
    assert json.loads(plain.to_json()) == {
        "epoch": 0, "seed": 1, "size": 10, "weighted": True, "drawn_at": 2.0,
    }  # fmt: skip


def test_an_entry_without_a_size_has_the_plans_and_unknown_keys_are_ignored() -> None:
    cfg = RunCreate(run_id="r", num_samples=50, num_outputs=3, task="classification", epochs=2)
    spec = plan.build_plan(cfg)[1]
    doc = StoredEpoch.model_validate_json('{"epoch": 1, "seed": 7, "future": [1, 2]}')
    assert doc.size_or(spec) == spec.size and not doc.weighted
    assert StoredEpoch(epoch=1, seed=7, size=4).size_or(spec) == 4
