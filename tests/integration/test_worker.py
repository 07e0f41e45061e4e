"""The scoring worker end to end on a real broker."""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest

from driftline.core.events import EventBatch, decode_batch
from driftline.core.offline import reference_features
from driftline.core.predictions import (
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    Prediction,
)
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.model.registry import LoadedModel
from driftline.model.scoring import Scorer
from driftline.simulate import Population, produce, produce_records
from driftline.testing.corpus import bad_payloads, interleave

pytestmark = pytest.mark.integration

decode_prediction = msgspec.json.Decoder(Prediction).decode


def live_events(n: int, seed: int = 5) -> list[dict[str, Any]]:
    population = Population(n_customers=150, seed=seed)
    population.generate_history(days=30)  # advance the clock; the stream continues from it
    return list(population.stream_events(max_events=n))


def offline_scores(
    events: list[dict[str, Any]], partitions: dict[str, int], spec: FeatureSpec, model: LoadedModel
) -> pd.Series:
    """Score each event from features computed offline by the reference implementation.

    Events are taken per partition in production order, as the worker sees them.
    """
    frame = EventBatch.from_frame(pd.DataFrame(events)).to_frame()
    frame["partition"] = frame["customer_id"].map(partitions)
    frame = frame.sort_values("partition", kind="stable")
    features = reference_features(frame, spec)
    scores = Scorer(model).score(features)
    return pd.Series(scores, index=frame.loc[features.index, "event_id"].to_numpy())


@pytest.mark.parametrize("runtime", ["sklearn", "compiled"])
def test_every_valid_event_gets_exactly_one_prediction_equal_to_offline_scoring(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    runtime: str,
) -> None:
    """The offline reference scores with scikit-learn's predict_proba, whatever runtime
    the worker uses: the compiled one must give the same scores."""
    worker_settings.model_runtime = runtime
    events = live_events(3000)
    with worker_in_thread(worker_settings, spec):
        produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=90)
    predictions = [decode_prediction(m.value()) for m in messages]
    ids = collections.Counter(p.event_id for p in predictions)
    assert len(predictions) == len(events)
    assert set(ids) == {e["event_id"] for e in events}
    assert max(ids.values()) == 1
    assert all(
        m.key().decode() == p.customer_id for m, p in zip(messages, predictions, strict=True)
    )

    partitions = {p.customer_id: p.source_partition for p in predictions}
    expected = offline_scores(events, partitions, spec, loaded_model)
    got = pd.Series({p.event_id: p.score for p in predictions})
    np.testing.assert_allclose(
        got[expected.index].to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12
    )
    assert all(p.decision == (p.score >= p.threshold) for p in predictions)
    assert {p.model_version for p in predictions} == {loaded_model.version}
    assert consume_all(worker_settings.dead_letter_topic, expected=0, timeout=20) == []


def test_bad_input_goes_to_the_dead_letter_topic_and_valid_events_around_it_are_scored(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    valid = [msgspec.json.encode(e) for e in live_events(1500, seed=8)]
    bad = bad_payloads(600, seed=4)
    mixed = interleave([(v, None) for v in valid], bad, seed=2)
    records = []
    for value, _reason in mixed:
        batch, _ = decode_batch([value]) if value else (EventBatch.empty(), [])
        key = batch.customer_id[0].encode() if len(batch) else b"poison"
        records.append((key, value, None))
    with worker_in_thread(worker_settings, spec) as worker:
        produce_records(
            worker_settings.bootstrap_servers, worker_settings.input_topic, iter(records)
        )
        predictions = consume_all(worker_settings.output_topic, expected=len(valid), timeout=90)
        dead = consume_all(worker_settings.dead_letter_topic, expected=len(bad), timeout=60)
        assert worker.batches > 0
    assert len(predictions) == len(valid)
    assert len(dead) == len(bad)
    expected_reasons = collections.Counter(reason for _, reason in bad)
    got_reasons = collections.Counter(dict(m.headers())[DLQ_REASON].decode() for m in dead)
    assert got_reasons == expected_reasons
    sent = collections.Counter(value for value, reason in mixed if reason is not None)
    assert collections.Counter(m.value() for m in dead) == sent
    for m in dead:
        headers = dict(m.headers())
        assert int(headers[DLQ_SOURCE_PARTITION]) >= 0 and int(headers[DLQ_SOURCE_OFFSET]) >= 0
