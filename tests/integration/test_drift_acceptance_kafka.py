"""Stationary acceptance through the Kafka worker: a stream nobody tuned the monitor on.

The independent generator's renewing population (``tests/support/drift_acceptance.py``):
a model trained on its first 330 days as ``driftline train`` does, then the whole log
(history and about 10^6 stationary events after the reference period) produced to Kafka
and served by a worker with drift monitoring on.  No retrain request may come, and the
reference check must say the reference fits.  Takes minutes: ``DRIFTLINE_SLOW=1``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.commands.train import register, train_on_events
from driftline.core.spec import DAY_MS, FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce_records
from driftline.model.registry import ModelRegistry
from driftline.simulate import frame_to_events
from support.drift_acceptance import independent_frame

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.environ.get("DRIFTLINE_SLOW") != "1", reason="takes minutes: set DRIFTLINE_SLOW=1"
    ),
]


def metric(exposition: str, name: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name
    )


def test_a_million_stationary_events_through_the_worker_send_no_retrain_request(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    tmp_path: Path,
    topic_factory: Callable[..., str],
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    events = independent_frame(5, customers=4000, days=560).sort_values("event_time", kind="stable")
    # The generator starts in 2026: move the log back by whole weeks so that it ends
    # before today (the worker refuses events from the future), weekdays kept.
    week_ms = 7 * DAY_MS
    late_by = int(events["event_time"].max()) - (int(time.time() * 1000) - DAY_MS)
    events["event_time"] -= max(0, -(-late_by // week_ms)) * week_ms
    t0 = int(events["event_time"].iloc[0])
    history = events[events["event_time"] < t0 + 330 * DAY_MS]
    result = train_on_events(history, spec, horizon_days=60, n_estimators=60, progress=False)
    registry = ModelRegistry(tmp_path / "models")
    register(result, registry, "churn", spec)
    reference_end = int(result.reference_profile["window_ms"][1])
    served = int((events["event_time"] > reference_end).sum())
    assert served >= 1_000_000, served
    settings = worker_settings
    settings.registry = str(registry.root)
    settings.drift = True
    settings.retrain_topic = topic_factory(1, "retrain")
    encode = msgspec.json.encode
    started = time.monotonic()
    with worker_in_thread(settings, spec) as worker:
        produce_records(
            settings.bootstrap_servers,
            settings.input_topic,
            ((str(e["customer_id"]).encode(), encode(e), None) for e in frame_to_events(events)),
        )
        # The monitor runs beside the scoring path and may lag it: wait until it has seen
        # every event from the reference period on (late ones aside) and stopped moving.
        deadline = time.monotonic() + 1800
        last = -1
        while time.monotonic() < deadline:
            time.sleep(10)
            now = worker.processor.drift.events_seen
            if now >= served and now == last:
                break
            last = now
        exposition = worker.metrics.render().decode()
        seen = worker.processor.drift.events_seen
        mismatch = worker.processor.drift.reference_check.mismatch
    requests = consume_all(settings.retrain_topic, expected=0, timeout=10)
    alarms = metric(exposition, "driftline_drift_alarms_total")
    print(
        f"independent seed 5: {len(events):,} events produced, {seen:,} monitored, "
        f"{alarms:.0f} alarms, {len(requests)} retrain requests, reference mismatch "
        f"{mismatch}, {time.monotonic() - started:.0f} s"
    )
    assert seen >= 1_000_000
    assert mismatch is False
    assert requests == []
