"""Events before the reference period are counted on /metrics and logged rarely."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from driftline.observability.drift_coverage import UnmonitoredEvents
from driftline.observability.drift_metrics import BEFORE_REFERENCE, DriftMetrics

REFERENCE_START_MS = 1_775_001_600_000  # 2026-04-01 00:00 UTC


def counted(registry: CollectorRegistry, version: str = "v0001") -> float | None:
    return registry.get_sample_value(
        "driftline_drift_unmonitored_events_total",
        {"model": "churn", "model_version": version, "reason": BEFORE_REFERENCE},
    )


def test_events_before_the_reference_are_counted_and_logged_once_then_summarised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    metrics = DriftMetrics(registry)
    metrics.set_reference("churn", "v0001", 1933)
    assert counted(registry) == 0.0  # exported from the model's load on, before any event
    now = [100.0]
    unmonitored = UnmonitoredEvents(metrics, interval_s=60.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="driftline.observability.drift_coverage")

    for _ in range(50):  # 50 batches within a minute: one line, not one per batch
        unmonitored.record("churn", "v0001", 500, REFERENCE_START_MS)
        now[0] += 1.0
    unmonitored.record("churn", "v0001", 0, REFERENCE_START_MS)
    assert counted(registry) == 25_000 and unmonitored.total == 25_000
    assert len(caplog.records) == 1
    first = caplog.records[0]
    assert first.levelno == logging.WARNING
    assert "2026-04-01 00:00 UTC" in first.getMessage()
    assert "--drift-from-start" in first.getMessage()

    now[0] += 60.0
    unmonitored.record("churn", "v0001", 200, REFERENCE_START_MS)
    assert len(caplog.records) == 2
    assert "25200 events not monitored so far (24700 since the last summary)" in (
        caplog.records[1].getMessage()
    )
    now[0] += 600.0  # nothing new: no summary
    unmonitored.record("churn", "v0001", 0, REFERENCE_START_MS)
    assert len(caplog.records) == 2
    assert counted(registry) == 25_200


def test_drift_from_start_flag_and_its_environment_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from driftline.cli import build_parser
    from driftline.commands._flags import apply_env_defaults

    assert build_parser().parse_args(["worker", "--drift"]).drift_from_start is False
    assert build_parser().parse_args(["worker", "--drift-from-start"]).drift_from_start
    monkeypatch.setenv("DRIFTLINE_DRIFT_FROM_START", "1")
    parser = build_parser()
    apply_env_defaults(parser)
    assert parser.parse_args(["worker", "--drift"]).drift_from_start is True
