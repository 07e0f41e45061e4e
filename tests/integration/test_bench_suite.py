"""`driftline bench all` end to end on the real broker, tiny: the report's shape, not speed."""

from __future__ import annotations

import json

import pytest

from driftline.benchmarks.suite import run_suite

pytestmark = pytest.mark.integration


def test_a_tiny_suite_reports_every_row_stage_rate_and_target(kafka_bootstrap: str) -> None:
    report = run_suite(
        {"throughput", "latency", "state"},
        events=1_500,
        per_event_events=30,
        batch_size=500,
        partitions=4,
        customers=200,
        rates=[300.0, 600.0],
        duration_s=1.0,
        state_sizes=[500],
        changelog_sizes=[],
        bootstrap=kafka_bootstrap,
        progress=False,
        n_estimators=10,
    )
    doc = json.loads(report.to_json())
    assert doc["machine"] and doc["settings"]["events"] == 1_500
    assert doc["broker"] == f"existing cluster at {kafka_bootstrap}"
    assert f"broker: existing cluster at {kafka_bootstrap}" in report.to_markdown()

    throughput = doc["throughput"]
    for row in (
        "passthrough_eps",
        "worker_eps",
        "worker_exactly_once_eps",
        "worker_sequential_eps",
        "drift_worker_eps",
        "process_worker_eps",
        "process_worker_exactly_once_eps",
        "per_event_eps",
        "model_only_eps",
    ):
        assert throughput[row] > 0, row
    # ONNX rows: figures, or a reason they were skipped, never silently absent.
    assert (throughput["onnx_worker_eps"] or 0) > 0 or throughput["onnx_skipped"]
    assert set(throughput["stage_us"]) == {
        "poll", "decode", "state", "predict", "drift", "produce", "commit", "other",
    }  # fmt: skip
    assert throughput["stage_us"]["predict"] > 0
    assert throughput["stage_us"]["drift"] == 0  # (b) runs without the monitor
    assert throughput["drift_stage_us"]["drift"] > 0  # (b-drift) ran it
    assert set(throughput["process_stage_us"]) == set(throughput["stage_us"])
    for cores in (throughput["worker_cpu_cores"], throughput["process_cpu_cores"]):
        assert cores is None or cores > 0  # None: a run too short (< 0.2 s) to time
    assert {"worker/model_only", "worker/per_event", "exactly_once/at_least_once"} <= set(
        throughput["ratios"]
    )

    sklearn_rows = [row for row in doc["latency"] if row["runtime"] == "sklearn"]
    assert [row["offered_eps"] for row in sklearn_rows] == [300.0, 600.0]
    assert {row["runtime"] for row in doc["latency"]} >= {
        "one hop, no worker",
        "sklearn",
        "compiled",
        "sklearn+process",
    }
    for row in doc["latency"]:
        assert row["sent"] == int(row["offered_eps"])  # one second each
        assert row["received"] == row["sent"], row  # every event got its prediction
        assert 0 < row["p50_ms"] <= row["p99_ms"] <= row["p99_9_ms"] <= row["max_ms"]

    assert [s["customers"] for s in doc["state"]] and doc["state"][0]["events"] > 0
    assert {t["target"] for t in doc["targets"]} >= {
        "worker / model alone",
        "worker / per-event",
        "exactly-once / at-least-once",
        "worker with a scoring process / model alone",
    }

    markdown = report.to_markdown()
    for heading in ("## Throughput", "## Latency", "## State", "## Targets"):
        assert heading in markdown
    assert "| (b) driftline worker, at-least-once |" in markdown
    assert "| (b-process) worker, scoring process, at-least-once |" in markdown
    assert "| (b-drift) worker, at-least-once, drift monitor on |" in markdown
