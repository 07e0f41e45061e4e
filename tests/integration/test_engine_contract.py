"""The contract every engine keeps, checked on both (``kafka`` and ``faust``) on a real broker.

Every event scored once, with the offline reference's score; bad records dead-lettered
with the same headers and reasons; a restart restores the state from the changelog (also
across engines: one engine's changelog is the other's); predictions keyed and
partitioned alike; the same metrics and health endpoints.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
from confluent_kafka import Producer
from test_worker import assert_scored_once_as_offline, decode_prediction, live_events

from driftline.broker import free_port
from driftline.core.events import EventBatch, decode_batch
from driftline.core.predictions import (
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_FAILED_AT,
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_TIMESTAMP,
    DLQ_SOURCE_TOPIC,
    DLQ_WORKER,
)
from driftline.core.spec import FeatureSpec
from driftline.corpus import bad_payloads, interleave
from driftline.engine.faust.worker import FaustScoringWorker
from driftline.engine.kafka.worker import KafkaScoringWorker, WorkerSettings
from driftline.event_producer import produce
from driftline.model.registry import LoadedModel

pytestmark = pytest.mark.integration

ENGINES = ("kafka", "faust")
WORKERS: dict[str, Callable[..., Any]] = {
    "kafka": KafkaScoringWorker,
    "faust": FaustScoringWorker,
}
#: Driftline's own headers on every dead letter, whichever engine wrote it.
DLQ_HEADERS = {
    DLQ_SOURCE_TOPIC,
    DLQ_SOURCE_PARTITION,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_TIMESTAMP,
    DLQ_REASON,
    DLQ_ERROR_CLASS,
    DLQ_ERROR_MESSAGE,
    DLQ_FAILED_AT,
    DLQ_WORKER,
}


@contextmanager
def engine_worker(engine: str, settings: WorkerSettings, spec: FeatureSpec) -> Iterator[Any]:
    """A worker of ``engine`` in a background thread; stopped (batch finished, offsets
    committed) on exit, and it must exit 0."""
    worker = WORKERS[engine](settings, spec)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(code=worker.run()), daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop()
        thread.join(60)
        assert not thread.is_alive(), f"{engine} worker did not stop within 60 s"
    assert result.get("code") == 0, f"{engine} worker exited with {result.get('code')}"


def metric(worker: Any, name: str) -> float:
    """Sum of a metric's samples in the worker's registry."""
    return sum(
        sample.value
        for family in worker.metrics.registry.collect()
        for sample in family.samples
        if sample.name == name
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_every_event_is_scored_once_with_the_offline_score(
    engine: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
) -> None:
    """Predictions keyed by customer id on librdkafka's partition for the key (crc32):
    whichever engine writes them, a customer's predictions stay on one partition."""
    events = live_events(3000)
    with engine_worker(engine, worker_settings, spec) as worker:
        produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=120)
        deadline = time.monotonic() + 30  # the metrics follow the delivery
        while worker.events_processed < len(events) and time.monotonic() < deadline:
            time.sleep(0.1)
        consumed = metric(worker, "driftline_events_consumed_total")
        produced = metric(worker, "driftline_predictions_produced_total")
    predictions = assert_scored_once_as_offline(messages, events, spec, loaded_model)
    assert len(predictions) == len(events)
    for message, prediction in zip(messages, predictions, strict=True):
        assert message.key().decode() == prediction.customer_id
        assert message.partition() == zlib.crc32(message.key()) % 4
    assert consumed == produced == len(events)
    assert consume_all(worker_settings.dead_letter_topic, expected=0, timeout=15) == []


@pytest.mark.parametrize("engine", ENGINES)
def test_bad_records_are_dead_lettered_with_their_reason_and_the_rest_scored(
    engine: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    consume_all: Callable[..., list[Any]],
) -> None:
    """Each bad record once on the dead-letter topic: its original bytes, its reason, and
    headers pointing back at it (partition and offset give the same bytes)."""
    valid = [msgspec.json.encode(e) for e in live_events(1200, seed=8)]
    bad = bad_payloads(400, seed=4)
    mixed = interleave([(v, None) for v in valid], bad, seed=2)
    records = []
    for value, _reason in mixed:
        batch, _ = decode_batch([value]) if value else (EventBatch.empty(), [])
        key = batch.customer_id[0].encode() if len(batch) else b"poison"
        records.append((key, value))
    producer = Producer({"bootstrap.servers": worker_settings.bootstrap_servers})
    for key, value in records:  # with a header of their own, which dead letters keep
        producer.produce(worker_settings.input_topic, value, key, headers=[("origin", b"test")])
        producer.poll(0)
    assert producer.flush(30) == 0
    with engine_worker(engine, worker_settings, spec) as worker:
        predictions = consume_all(worker_settings.output_topic, expected=len(valid), timeout=120)
        dead = consume_all(worker_settings.dead_letter_topic, expected=len(bad), timeout=60)
        dead_counted = metric(worker, "driftline_dead_letters_total")
    assert len(predictions) == len(valid)
    assert len(dead) == len(bad) == dead_counted
    expected_reasons = collections.Counter(reason for _, reason in bad)
    got_reasons = collections.Counter(dict(m.headers())[DLQ_REASON].decode() for m in dead)
    assert got_reasons == expected_reasons
    sent = collections.Counter(value for value, reason in mixed if reason is not None)
    assert collections.Counter(m.value() for m in dead) == sent
    source = {
        (m.partition(), m.offset()): m.value()
        for m in consume_all(worker_settings.input_topic, expected=len(mixed), timeout=60)
    }
    for m in dead:
        headers = dict(m.headers())
        assert set(headers) >= DLQ_HEADERS, sorted(headers)
        assert headers["origin"] == b"test"  # the record's own headers follow Driftline's
        assert headers[DLQ_SOURCE_TOPIC].decode() == worker_settings.input_topic
        at = (int(headers[DLQ_SOURCE_PARTITION]), int(headers[DLQ_SOURCE_OFFSET]))
        assert source[at] == m.value()


@pytest.mark.parametrize(
    ("first", "second"),
    [("kafka", "kafka"), ("faust", "faust"), ("kafka", "faust"), ("faust", "kafka")],
)
def test_a_restart_restores_the_state_from_the_changelog(
    first: str,
    second: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
) -> None:
    """The second worker scores the later events from the features the first one built:
    only a restored state gives the offline scores (a fresh one starts every customer's
    windows empty).  Across engines too: both read and write the same changelog."""
    events = live_events(2400, seed=9)
    head, tail = events[:1200], events[1200:]
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, head)
    with engine_worker(first, worker_settings, spec):
        early = consume_all(worker_settings.output_topic, expected=len(head), timeout=120)
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, tail)
    with engine_worker(second, worker_settings, spec) as worker:
        messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=120)
        restored = metric(worker, "driftline_restored_customers_total")
    assert len(early) == len(head)
    assert restored > 0
    assert_scored_once_as_offline(messages, events, spec, loaded_model)


def _get(url: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        body, status = error.read().decode(), error.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def test_driftline_worker_engine_faust_serves_health_and_metrics_and_stops_on_sigterm(
    worker_settings: WorkerSettings,
    consume_all: Callable[..., list[Any]],
    tmp_path: Path,
) -> None:
    """``driftline worker --engine faust``: /readyz ready once its partitions are restored,
    /healthz alive, /metrics with the Kafka engine's names, exit 0 on SIGTERM."""
    s = worker_settings
    events = live_events(500, seed=12)
    produce(s.bootstrap_servers, s.input_topic, events)
    port = free_port()
    log = tmp_path / "worker.log"
    args = [
        *("--bootstrap-servers", s.bootstrap_servers, "--input-topic", s.input_topic),
        *("--output-topic", s.output_topic, "--dead-letter-topic", s.dead_letter_topic),
        *("--group-id", s.group_id, "--registry", s.registry, "--engine", "faust"),
        *("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "worker", *args],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert len(consume_all(s.output_topic, expected=len(events), timeout=120)) == len(events)
        deadline = time.monotonic() + 30
        ready: tuple[int, Any] = (0, None)
        while time.monotonic() < deadline and ready[0] != 200:
            assert process.poll() is None, log.read_text()
            ready = _get(f"http://127.0.0.1:{port}/readyz")
            time.sleep(0.2)
        assert ready[0] == 200, (ready, log.read_text())
        assert ready[1]["checks"]["state_restored"] is True  # type: ignore[index]
        alive = _get(f"http://127.0.0.1:{port}/healthz")
        assert alive[0] == 200, alive
        status, text = _get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and isinstance(text, str)
        for name in (
            "driftline_events_consumed_total",
            "driftline_predictions_produced_total",
            "driftline_stage_duration_seconds_bucket",
            "driftline_event_to_prediction_seconds_bucket",
            "driftline_assigned_partitions",
            "driftline_consumer_lag",
        ):
            assert f"\n{name}{{" in text or f"\n{name} " in text, name
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
    assert "worker stopped after" in log.read_text()
    ids = {decode_prediction(m.value()).event_id for m in consume_all(s.output_topic, len(events))}
    assert ids == {e["event_id"] for e in events}


@pytest.mark.parametrize("engine", ENGINES)
def test_a_batch_whose_predictions_the_broker_refuses_is_not_committed(
    engine: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    topic_factory: Callable[..., str],
    kafka_bootstrap: str,
) -> None:
    """At-least-once: offsets are committed only after the batch's predictions are
    delivered.  The output topic takes no record of a prediction's size, so the first
    batch fails: the worker stops with exit 3 and the group commits nothing, so a
    fixed deployment scores those events again.  (Faust's ``Stream.take`` would have
    acked the batch anyway, and Faust committed it on the way out.)"""
    from confluent_kafka import Consumer, TopicPartition

    worker_settings.output_topic = topic_factory(4, "tiny", {"max.message.bytes": "100"})
    events = live_events(300, seed=13)
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, events)
    worker = WORKERS[engine](worker_settings, spec)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(code=worker.run()), daemon=True)
    thread.start()
    thread.join(90)
    if thread.is_alive():
        worker.stop()
        thread.join(60)
    assert result.get("code") == 3, f"{engine} worker exited with {result.get('code')}"
    reader = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": worker_settings.group_id})
    try:
        asked = [TopicPartition(worker_settings.input_topic, p) for p in range(4)]
        committed = reader.committed(asked, timeout=30)
    finally:
        reader.close()
    assert [tp.offset for tp in committed if tp.offset >= 0] == []


@pytest.mark.parametrize("engine", ENGINES)
def test_a_second_worker_joining_mid_stream_loses_and_repeats_nothing(
    engine: str,
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    loaded_model: LoadedModel,
    consume_all: Callable[..., list[Any]],
) -> None:
    """Partitions move to a second worker during a backlog: the first delivers what it
    handed out before they go, the second restores their state from the changelog, so
    every event is scored once with the offline score.  More events follow once the
    second worker holds partitions, so it always has work even if the first finished
    the backlog before the group rebalanced (a quick machine)."""
    worker_settings.model_runtime = "sklearn"  # slower batches: the backlog lasts
    worker_settings.batch_size = 200
    events = live_events(24_000, seed=14)
    backlog, later = events[:20_000], events[20_000:]
    produce(worker_settings.bootstrap_servers, worker_settings.input_topic, backlog)
    with engine_worker(engine, worker_settings, spec) as first:
        deadline = time.monotonic() + 90
        while first.events_processed < 1_000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert first.events_processed >= 1_000, "the first worker made no progress"
        joining = dataclasses.replace(worker_settings, worker_id="second-worker")
        with engine_worker(engine, joining, spec) as second:
            deadline = time.monotonic() + 90
            while (
                metric(second, "driftline_assigned_partitions") < 1 and time.monotonic() < deadline
            ):
                time.sleep(0.05)
            assert metric(second, "driftline_assigned_partitions") >= 1, "no partition moved"
            produce(worker_settings.bootstrap_servers, worker_settings.input_topic, later)
            messages = consume_all(worker_settings.output_topic, expected=len(events), timeout=180)
            assert second.events_processed > 0, "the second worker got no partition"
        assert first.events_processed < len(events)
    assert_scored_once_as_offline(messages, events, spec, loaded_model)
