"""A batch the model cannot score: the offending events are dead-lettered, the rest scored.

The model is a real one from the registry: the trained churn pipeline registered with
``OneHotEncoder(handle_unknown="error")`` (``tests/support/strict_model.py``), which
raises on an event whose plan it never saw.  Before ``driftline.model.isolation`` the
worker stopped on such a batch, and after every restart the same batch came again.

Covered: scoring in the loop, in the scoring process (the child reports the error, the
loop isolates the rows with its own copy of the model), and exactly-once.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from driftline.core.events import REASON_MODEL_ERROR
from driftline.core.predictions import DLQ_ERROR_CLASS, DLQ_ERROR_MESSAGE, DLQ_REASON, Prediction
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce_records
from driftline.model.registry import LoadedModel, ModelRegistry
from driftline.simulate import Population
from support.faults import PredictionCheck, reference_scores
from support.strict_model import UNKNOWN_PLAN, register_strict

pytestmark = pytest.mark.integration

BATCH = 200
MODES = {
    "in-loop": {},
    "scoring-process": {"scoring_process": True},
    "in-loop-exactly-once": {"exactly_once": True},
}


def metric(worker: KafkaScoringWorker, name: str) -> float:
    text = worker.metrics.render()
    text = text.decode() if isinstance(text, bytes) else text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    )


@pytest.mark.parametrize("mode", list(MODES))
def test_events_the_model_raises_on_are_dead_lettered_and_the_rest_of_the_batch_scored(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    trained_registry: Path,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    root = tmp_path / "models"
    shutil.copytree(trained_registry, root)
    register_strict(loaded_model, root)
    strict = ModelRegistry(root).load(loaded_model.name, expected_features=spec.feature_names)
    assert strict.version != loaded_model.version
    settings = dataclasses.replace(
        worker_settings, registry=str(root), batch_size=BATCH, min_batch_size=BATCH, **MODES[mode]
    )

    population = Population(n_customers=150, seed=17)
    population.generate_history(days=10)
    events = list(population.stream_events(max_events=2_400))
    poison = []
    stream = list(events)
    for i in range(5):  # new customers on a plan the model never saw: one event each
        at = (i + 1) * len(stream) // 6
        # A copy of the event before it (same time: no watermark jump makes others late).
        event = dict(stream[at - 1], event_id=f"poison-{i}", customer_id=f"poison-customer-{i}")
        event["plan_type"] = UNKNOWN_PLAN
        poison.append(event)
        stream.insert(at, event)
    encode = msgspec.json.encode
    records = [(e["customer_id"].encode(), encode(e), None) for e in stream]
    # All of it before the worker starts: a backlog, so a scoring process gets batches.
    produce_records(settings.bootstrap_servers, settings.input_topic, iter(records))

    caplog.set_level(logging.WARNING, logger="driftline")
    with worker_in_thread(settings, spec) as worker:
        output = consume_all(settings.output_topic, len(events), timeout=120)
        dead = consume_all(settings.dead_letter_topic, len(poison), timeout=60)
        errors = metric(worker, "driftline_model_errors_total")
        calls = metric(worker, "driftline_model_isolation_calls_total")
        to_child = worker.batches_to_scoring_process
        served = worker.processor.scorer.version if worker.processor else None

    assert served == strict.version
    decode = msgspec.json.Decoder(Prediction).decode
    predictions = [decode(m.value()) for m in output]
    partition_of = {p.customer_id: p.source_partition for p in predictions}
    reference = reference_scores(events, partition_of, spec, strict)
    check = PredictionCheck.of(predictions, (e["event_id"] for e in events), reference)
    print(f"\n{mode}: {check.summary()}; model errors {errors}, extra calls {calls}")
    assert check.exactly_once, check.summary()
    assert check.mismatched == 0 and check.checked_scores == len(events), check.summary()

    assert sorted(dict(m.headers())[DLQ_REASON].decode() for m in dead) == [
        REASON_MODEL_ERROR
    ] * len(poison)
    for message in dead:
        headers = dict(message.headers())
        assert headers[DLQ_ERROR_CLASS] == b"model"
        text = headers[DLQ_ERROR_MESSAGE].decode()
        assert text.startswith("ValueError: Found unknown categories") and UNKNOWN_PLAN in text
    assert sorted(msgspec.json.decode(m.value())["event_id"] for m in dead) == sorted(
        e["event_id"] for e in poison
    )
    assert errors == len(poison)
    # Bisection: at most 2 log2(batch) extra calls per offender.
    assert 0 < calls <= len(poison) * 2 * math.ceil(math.log2(BATCH)), calls
    if MODES[mode].get("scoring_process"):
        assert to_child > 0
        assert "the scoring process could not score a batch" in caplog.text
