"""``driftline outcomes`` on a real broker: a ticking worker's predictions, joined with the
events that follow them, give exactly the labels ``core.offline.training_set`` gives for
the same history and tick times, once each, across a kill -9 of the outcome service;
external outcomes, dead letters and co-partitioning as documented."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd
import pytest
from confluent_kafka import Producer
from jsonschema import Draft202012Validator

from driftline.benchmarks.worker_process import WorkerProcess, killed_on_exit
from driftline.core.events import EventBatch
from driftline.core.labels import label_definition
from driftline.core.labels.records import PredictionOutcome
from driftline.core.offline import training_set
from driftline.core.predictions import TRIGGER_TICK, Prediction
from driftline.core.spec import DAY_MS, FeatureSpec, default_spec_path, load_spec
from driftline.core.watermark import PartitionWatermark
from driftline.event_producer import produce
from driftline.simulate import Population
from support.outcomes_process import OutcomesProcess
from support.topic_reading import (
    committed_all,
    committed_offsets,
    read_topic,
    topic_layout,
    wait_committed,
)

pytestmark = pytest.mark.integration

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
decode_outcome = msgspec.json.Decoder(PredictionOutcome).decode
decode_prediction = msgspec.json.Decoder(Prediction).decode


def spec_with_horizon(tmp_path: Path, horizon: str) -> Path:
    """The shipped spec (same features, so the same digest) with a shorter label horizon."""
    text = default_spec_path().read_text()
    assert 'horizon = "90d"' in text
    path = tmp_path / "features.toml"
    path.write_text(text.replace('horizon = "90d"', f'horizon = "{horizon}"'))
    return path


def wait_until(done: Callable[[], bool], timeout: float, what: str, *procs: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        for proc in procs:
            assert proc.alive, f"{proc.name} died waiting for {what}:\n{proc.log_tail()}"
        time.sleep(0.2)
    tails = "\n".join(p.log_tail() for p in procs)
    raise AssertionError(f"not done within {timeout:g}s: {what}\n{tails}")


def expected_outcomes(
    bootstrap: str, events_topic: str, n: int, spec: FeatureSpec, ticks: list[Prediction]
) -> tuple[dict[tuple[str, int], int], set[tuple[str, int]], dict[tuple[str, int], bool]]:
    """From the input topic as the worker reads it (each partition in offset order):
    the training set's label of every tick (customer, time) whose horizon fits in its
    partition's history; the ticks whose horizon the partition's final watermark passed
    (these must all be resolved); and whether a target followed each tick."""
    label = label_definition(spec)
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for message in read_topic(bootstrap, events_topic, False, n):
        by_partition.setdefault(message.partition(), []).append(
            msgspec.json.decode(message.value())
        )
    tick_times: dict[int, set[int]] = {}
    for p in ticks:
        tick_times.setdefault(p.source_partition, set()).add(p.event_time)
    labels: dict[tuple[str, int], int] = {}
    must: set[tuple[str, int]] = set()
    followed: dict[tuple[str, int], bool] = {}
    for partition, events in by_partition.items():
        frame = EventBatch.from_frame(pd.DataFrame(events)).to_frame()
        times = frame["event_time"].to_numpy(dtype=np.int64)
        watermark = PartitionWatermark(spec.allowed_lateness_ms)
        assert not watermark.classify(times).any(), "the stream has no late event"
        end = int(times.max())
        cutoffs = sorted(t for t in tick_times.get(partition, ()) if t + label.horizon_ms <= end)
        _, y, keys = training_set(frame, spec, cutoffs, label)
        pairs = list(
            zip(keys["customer_id"].astype(str), keys["cutoff_ms"].astype(int), strict=True)
        )
        labels.update(zip(pairs, y.astype(int), strict=True))
        must.update(k for k in pairs if k[1] + label.horizon_ms < watermark.watermark_ms)
        targets = frame[frame["event_type"] == label.target_event]
        for p in ticks:
            if p.source_partition == partition:
                mine = targets["event_time"][targets["customer_id"] == p.customer_id]
                window = (mine > p.event_time) & (mine <= p.event_time + label.horizon_ms)
                followed[(p.customer_id, p.event_time)] = bool(window.any())
    return labels, must, followed


def test_tick_outcomes_equal_the_training_set_labels_once_each_across_a_kill_9(
    kafka_bootstrap: str,
    topic_factory: Callable[..., str],
    unique_group: str,
    trained_registry: Path,
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    events_topic, predictions_topic = topic_factory(4, "events"), topic_factory(4, "predictions")
    population = Population(n_customers=200, seed=41)
    population.generate_history(days=10)
    events = list(population.stream_events(max_events=4000))
    produce(kafka_bootstrap, events_topic, events)
    layout = topic_layout(kafka_bootstrap, events_topic, len(events))
    worker = WorkerProcess(
        kafka_bootstrap, events_topic, predictions_topic, topic_factory(1, "dlq"),
        group=unique_group, registry=trained_registry,
        extra_args=["--tick", "1d", "--batch-size", "200"],
        log_path=tmp_path / "worker.log", name="ticking",
    )  # fmt: skip
    with killed_on_exit(worker):
        worker.start().wait_ready(90)
        wait_committed(kafka_bootstrap, unique_group, events_topic, layout.end_offsets, 120,
                       workers=[worker])  # fmt: skip
        assert worker.sigterm(timeout=60) == 0, worker.log_tail()
    messages = read_topic(kafka_bootstrap, predictions_topic, False, len(events))
    predictions = [decode_prediction(m.value()) for m in messages]
    ticks = [p for p in predictions if p.trigger == TRIGGER_TICK]
    assert {m.partition() for m in messages} == {p.source_partition for p in predictions}
    prediction_ends: dict[int, int] = {}
    for m in messages:
        prediction_ends[m.partition()] = max(prediction_ends.get(m.partition(), 0), m.offset() + 1)

    spec_path = spec_with_horizon(tmp_path, "4d")
    spec = load_spec(spec_path)
    label = label_definition(spec)
    group = f"{unique_group}-outcomes"
    output, dead = f"outcomes-{unique_group}", f"outcomes-dlq-{unique_group}"
    service = OutcomesProcess(
        kafka_bootstrap, events_topic=events_topic, predictions_topic=predictions_topic,
        output_topic=output, dead_letter_topic=dead, group=group,
        extra_args=["--features", str(spec_path), "--triggers", "tick", "--sample-every", "1d",
                    "--batch-size", "300"],
        log_path=tmp_path / "outcomes.log", name="outcomes",
    )  # fmt: skip

    def caught_up() -> bool:
        return committed_all(kafka_bootstrap, group, predictions_topic, prediction_ends) and (
            committed_all(kafka_bootstrap, group, events_topic, layout.end_offsets)
        )

    with killed_on_exit(service):
        service.start().wait_assigned(4)
        service.wait_metric("driftline_outcomes_resolved_total", 1, 60)
        killed_mid_stream = not caught_up()
        assert service.kill9() == -9
        service.start().wait_assigned(4)
        wait_until(caught_up, 120, "the outcome service caught up", service)
        metrics = service.metrics()
        assert service.sigterm(timeout=60) == 0, service.log_tail()
    assert killed_mid_stream, "the service was done before the kill: nothing was tested"

    records = read_topic(kafka_bootstrap, output, True, 1, timeout=30)
    outcomes = [decode_outcome(m.value()) for m in records]
    validator = Draft202012Validator(
        json.loads((SCHEMAS / "prediction-outcome.schema.json").read_text())
    )
    for m, o in zip(records, outcomes, strict=True):
        assert m.key() == o.customer_id.encode()
        validator.validate(json.loads(m.value()))
    got = {(o.customer_id, o.prediction_time): o for o in outcomes}
    assert len(got) == len(outcomes), "each tick prediction resolved once, across the kill"

    labels, must, followed = expected_outcomes(
        kafka_bootstrap, events_topic, len(events), spec, ticks
    )
    assert must and must <= got.keys(), f"unresolved: {sorted(must - got.keys())[:5]}"
    for key, outcome in got.items():
        assert outcome.trigger == "tick" and outcome.horizon_ms == label.horizon_ms
        assert outcome.label_source == "events"
        if key in labels:
            assert outcome.label == labels[key], key
        else:  # horizon past the end of the history: only a target seen can resolve it
            assert followed[key] and outcome.label == label.label_of(True), key
        if followed[key]:
            assert key[1] < outcome.resolved_at <= key[1] + label.horizon_ms
        else:
            assert outcome.resolved_at == key[1] + label.horizon_ms
    compared = sum(1 for k in got if k in labels)
    assert compared > 1000 and 0.1 < np.mean([o.label for o in outcomes]) < 0.9
    unresolved = {(p.customer_id, p.event_time) for p in ticks} - got.keys()
    assert metrics["driftline_outcomes_pending"] == len(unresolved)
    assert metrics["driftline_outcomes_resolved_total"] >= 1
    print(
        f"\noutcomes: {len(ticks)} tick predictions, {len(outcomes)} resolved "
        f"({compared} compared with training_set), {len(unresolved)} pending, "
        f"{time.monotonic() - started:.1f}s"
    )


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})


def _prediction(customer: str, t: int) -> bytes:
    return msgspec.json.encode(
        Prediction(event_id=f"tick-{t}", customer_id=customer, score=0.7, decision=True,
                   threshold=0.5, model_name="churn", model_version="v0001", event_time=t,
                   processed_at=0, source_partition=0, source_offset=0, trigger="tick")
    )  # fmt: skip


def test_external_outcomes_dead_letters_and_partition_counts(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_group: str, tmp_path: Path
) -> None:
    events_topic, predictions_topic = topic_factory(2, "events"), topic_factory(2, "predictions")
    external_topic = topic_factory(2, "customer-outcomes")
    t0 = 20_000 * DAY_MS
    producer = _producer(kafka_bootstrap)
    for customer in ("a", "b", "c"):
        producer.produce(predictions_topic, _prediction(customer, t0), customer.encode())
    producer.produce(predictions_topic, b"{not json", b"a")
    producer.produce(predictions_topic, _prediction("b", t0 + 1), b"someone-else")
    producer.produce(external_topic, b'{"customer_id": "a", "event_time": 1, "label": 7}', b"a")
    producer.flush(30)
    time.sleep(0.5)
    # b buys a day later; a's CRM reports churn two days later; c stays silent, and events
    # of other customers 10 days on move every partition's watermark past c's horizon.
    external = {"customer_id": "a", "event_time": t0 + 2 * DAY_MS, "label": 1, "source": "crm"}
    producer.produce(external_topic, json.dumps(external).encode(), b"a")
    producer.flush(30)
    later = [
        {"event_id": f"z{i}", "customer_id": f"z{i}", "event_time": t0 + 10 * DAY_MS + i,
         "event_type": "login"}
        for i in range(60)
    ]  # fmt: skip
    buys = [{"event_id": "b1", "customer_id": "b", "event_time": t0 + DAY_MS,
             "event_type": "purchase"}]  # fmt: skip
    produce(kafka_bootstrap, events_topic, buys + later)

    spec_path = spec_with_horizon(tmp_path, "4d")
    group = f"{unique_group}-outcomes"
    output, dead = f"outcomes-{unique_group}", f"outcomes-dlq-{unique_group}"
    service = OutcomesProcess(
        kafka_bootstrap, events_topic=events_topic, predictions_topic=predictions_topic,
        output_topic=output, dead_letter_topic=dead, group=group,
        extra_args=["--features", str(spec_path), "--customer-outcomes-topic", external_topic],
        log_path=tmp_path / "outcomes.log",
    )  # fmt: skip
    with killed_on_exit(service):
        service.start().wait_assigned(2)
        wait_until(
            lambda: service.metric("driftline_outcomes_resolved_total") >= 3
            and service.metric("driftline_outcomes_dead_letters_total") >= 3,
            60, "three outcomes and three dead letters", service,
        )  # fmt: skip
        metrics = service.metric_samples()
        assert service.sigterm(timeout=60) == 0, service.log_tail()
    outcomes = {
        o.customer_id: o
        for o in (decode_outcome(m.value()) for m in read_topic(kafka_bootstrap, output, True, 3))
    }
    summary = {c: (o.label, o.label_source, o.resolved_at - t0) for c, o in outcomes.items()}
    assert summary == {
        "a": (1, "external", 2 * DAY_MS),
        "b": (0, "events", DAY_MS),
        "c": (1, "events", 4 * DAY_MS),
    }
    letters = read_topic(kafka_bootstrap, dead, False, 3)
    reasons = sorted(
        (dict(m.headers())["driftline.source.topic"].decode(),
         dict(m.headers())["driftline.error.reason"].decode())
        for m in letters
    )  # fmt: skip
    assert reasons == sorted([
        (predictions_topic, "malformed_json"),
        (predictions_topic, "key_mismatch"),
        (external_topic, "schema_violation"),
    ])  # fmt: skip
    assert {m.value() for m in letters} >= {b"{not json"}
    by_reason = {s[1].get("reason"): s[2] for s in metrics if s[0].endswith("dead_letters_total")}
    assert by_reason == {"malformed_json": 1, "key_mismatch": 1, "schema_violation": 1}

    # Topics that are not co-partitioned are refused at start, with the reason.
    other = topic_factory(3, "predictions")
    refused = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "outcomes", "--bootstrap-servers",
         kafka_bootstrap, "--input-topic", events_topic, "--predictions-topic", other,
         "--group-id", f"{unique_group}-refused", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr
    assert "same partition count" in refused.stderr and "co-partitioned" in refused.stderr


def test_events_far_ahead_of_the_predictions_wait_for_them(
    kafka_bootstrap: str, topic_factory: Callable[..., str], unique_group: str, tmp_path: Path
) -> None:
    """Sixty days of events but predictions of day 1 only: the service reads the events
    to about the horizon plus a day past the predictions (enough to resolve them) and
    pauses there, keeping a few days of target times rather than sixty; a prediction of
    day 58 lets it read on to the end."""
    events_topic, predictions_topic = topic_factory(1, "events"), topic_factory(1, "predictions")
    t0 = 20_000 * DAY_MS
    daily = [
        {"event_id": f"{c}{d}", "customer_id": c, "event_time": t0 + d * DAY_MS + i,
         "event_type": "purchase" if c == "a" else "login"}
        for d in range(60)
        for i, c in enumerate(("a", "z1", "z2"))
    ]  # fmt: skip
    produce(kafka_bootstrap, events_topic, daily)
    producer = _producer(kafka_bootstrap)
    for customer in ("a", "b"):
        producer.produce(predictions_topic, _prediction(customer, t0 + DAY_MS), customer.encode())
    producer.flush(30)
    group = f"{unique_group}-outcomes"
    service = OutcomesProcess(
        kafka_bootstrap, events_topic=events_topic, predictions_topic=predictions_topic,
        output_topic=f"outcomes-{unique_group}", dead_letter_topic=f"dlq-{unique_group}",
        group=group,
        extra_args=["--features", str(spec_with_horizon(tmp_path, "4d")), "--batch-size", "5"],
        log_path=tmp_path / "outcomes.log",
    )  # fmt: skip
    with killed_on_exit(service):
        service.start().wait_assigned(1)
        service.wait_metric("driftline_outcomes_resolved_total", 2, 60)
        service.wait_metric("driftline_outcomes_paused_partitions", 1, 30)
        time.sleep(2)  # would it read on?
        read = committed_offsets(kafka_bootstrap, group, events_topic)[0]
        assert 3 * 6 <= read <= 3 * 9, f"read {read} events of {len(daily)}: not paused at ~day 6"
        assert service.metric("driftline_outcomes_retained_times") <= 10
        producer.produce(predictions_topic, _prediction("c", t0 + 58 * DAY_MS), b"c")
        producer.flush(30)
        wait_until(
            lambda: committed_all(kafka_bootstrap, group, events_topic, {0: len(daily)}),
            60, "the events read to their end", service,
        )  # fmt: skip
        assert service.metric("driftline_outcomes_paused_partitions") == 0
        assert service.sigterm(timeout=60) == 0, service.log_tail()
