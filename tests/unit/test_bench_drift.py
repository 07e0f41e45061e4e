"""`driftline bench drift` on a small stream: the report holds what the issue asks for."""

from __future__ import annotations

import json

from driftline.benchmarks.drift import run_drift_bench


def test_small_drift_bench_detects_and_names_the_changed_feature() -> None:
    result = run_drift_bench(stationary_events_total=20_000, before=4_000, max_after=20_000)
    by_name = {r.scenario: r for r in result.scenarios}
    # Large, visible changes are found quickly and attributed to the right feature.
    for name in ("mean +1 sd", "variance x4", "new category", "missing 2%->12%"):
        assert by_name[name].detected, name
        assert by_name[name].right_feature, name
        assert by_name[name].delay_events is not None and by_name[name].delay_events < 5_000
    # Concept drift changes nothing a label-free monitor sees: no alarm, nothing to name.
    concept = by_name["concept drift"]
    assert not concept.detected and concept.right_feature is None
    assert concept.alarms_after_change == 0
    assert all(r.false_alarms_before_change == 0 for r in result.scenarios)
    assert result.stationary_events == 20_000 and result.us_per_event > 0
    assert json.loads(result.to_json())["scenarios"][0]["scenario"] == "mean +0.25 sd"
    assert "| mean +1 sd | yes |" in result.to_table()
