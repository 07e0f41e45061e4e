"""The whole CDNOW purchase log, replayed through a real broker into a worker.

A model is trained on CDNOW's own history (as ``driftline train --mapping cdnow`` does),
then all 69,659 purchases are replayed as fast as the broker takes them.  Every event
must get exactly one prediction, none may be dead-lettered (the replay is in event-time
order, so nothing is late), and every score must equal scoring the features that the
reference implementation computes offline from the same events in the same order.
Skipped when ``../shared`` (the real data) is absent.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.commands.train import read_event_file, register, train_on_events
from driftline.core.predictions import DLQ_REASON, Prediction
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.model.registry import ModelRegistry
from driftline.model.runtimes.sklearn import Scorer
from driftline.replay import replay
from support.feature_oracle import reference_features

pytestmark = pytest.mark.integration

CDNOW_EVENTS = 69_659
MODEL_NAME = "churn"

decode_prediction = msgspec.json.Decoder(Prediction).decode


def test_the_whole_cdnow_log_is_scored_once_per_event_as_offline(
    require_shared: Callable[..., Path],
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    spec: FeatureSpec,
    tmp_path: Path,
) -> None:
    path = require_shared("data", "cdnow", "cdnow_master.csv")
    events, shift_ms = read_event_file(path, "cdnow")
    assert len(events) == CDNOW_EVENTS
    assert events["event_id"].is_unique
    assert events["event_time"].is_monotonic_increasing

    # Trained as `driftline train --events ... --mapping cdnow` does (automatic cutoff).
    result = train_on_events(
        events,
        spec,
        horizon_days=90,
        calendar_shift_ms=shift_ms,
        n_estimators=30,
        cv_folds=3,
        progress=False,
    )
    registry = tmp_path / "models"
    register(result, ModelRegistry(registry), MODEL_NAME, spec)
    model = ModelRegistry(registry).load(MODEL_NAME, expected_features=spec.feature_names)

    settings = WorkerSettings(
        bootstrap_servers=kafka_bootstrap,
        input_topic=topic_factory(4, "cdnow"),
        output_topic=topic_factory(4, "predictions"),
        dead_letter_topic=topic_factory(1, "dlq"),
        group_id=unique_group,
        registry=str(registry),
        model_name=MODEL_NAME,
        metrics_port=0,
    )
    with worker_in_thread(settings, spec) as worker:
        started = time.perf_counter()
        sent = replay(settings.bootstrap_servers, settings.input_topic, events)
        replayed = time.perf_counter() - started
        messages = consume_all(settings.output_topic, expected=len(events), timeout=120)
        consumed = time.perf_counter() - started
        dead = consume_all(settings.dead_letter_topic, expected=0, timeout=20)
        busy = (worker.last_batch_done or 0.0) - (worker.first_batch_started or 0.0)
        print(
            f"\nCDNOW: {sent} events replayed in {replayed:.1f} s ({sent / replayed:,.0f}/s); "
            f"{len(messages)} predictions consumed after {consumed:.1f} s "
            f"({len(messages) / consumed:,.0f}/s end to end); worker: {worker.batches} "
            f"batches, {worker.events_processed / max(busy, 1e-9):,.0f} events/s busy"
        )
    assert sent == len(events)
    reasons = collections.Counter(dict(m.headers() or [])[DLQ_REASON].decode() for m in dead)
    assert not dead, f"{len(dead)} CDNOW events dead-lettered: {dict(reasons)}"

    predictions = [decode_prediction(m.value()) for m in messages]
    ids = collections.Counter(p.event_id for p in predictions)
    assert set(ids) == set(events["event_id"]), "events without a prediction"
    assert max(ids.values()) == 1, f"{sum(ids.values()) - len(ids)} duplicate predictions"
    assert len(predictions) == len(events)
    assert {p.model_version for p in predictions} == {model.version}

    # Offline: the reference features of each event, partition by partition in replay order
    # (what each partition's consumer saw), scored by the same model.
    partitions = {p.customer_id: p.source_partition for p in predictions}
    assert all(partitions[p.customer_id] == p.source_partition for p in predictions), (
        "a customer's events on more than one partition"
    )
    frame = events.copy()
    frame["partition"] = frame["customer_id"].map(partitions)
    frame = frame.sort_values("partition", kind="stable")
    features = reference_features(frame, spec)
    assert len(features) == len(frame), "the reference found late events"
    expected = pd.Series(
        Scorer(model).score(features), index=frame.loc[features.index, "event_id"].to_numpy()
    )
    got = pd.Series({p.event_id: p.score for p in predictions})
    np.testing.assert_allclose(
        got[expected.index].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12
    )
    assert all(p.decision == (p.score >= p.threshold) for p in predictions)
