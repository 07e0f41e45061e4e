"""``driftline bench explain`` runs and reports what it measured, on a small model."""

from __future__ import annotations

import json

from driftline.benchmarks.explain import measure, to_json, to_table
from driftline.model.registry import LoadedModel


def test_the_explain_bench_measures_both_paths(model: LoadedModel) -> None:
    figures = measure(model, batch_size=250, k=3, events=1000, rounds=1)
    assert figures.sklearn_us > 0 and figures.explain_us > 0 and figures.auto_us > 0
    assert figures.explain_stage_us > 0  # measured, not defaulted: only with reasons on
    assert figures.extra_us == figures.explain_us - figures.sklearn_us
    assert "+explain us/ev" in to_table([figures])
    assert json.loads(to_json([figures]))[0]["k"] == 3
