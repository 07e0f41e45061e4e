"""At-least-once delivery rules of the Kafka engine (``engine.kafka.delivery``), no broker.

The same code runs against a real Kafka in tests/integration (test_worker.py,
test_worker_lifecycle.py, test_poison_delivery.py); here each rule is pinned by
scripting the producer's and consumer's answers.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from kafka_fakes import FakeConsumer, FakeProducer, kafka_exception

from driftline.engine.kafka.delivery import GROUP_MOVED_ON, Deliverer, Delivery, next_offsets
from driftline.engine.kafka.errors import DeliveryFailed
from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import BatchResult, RawBatch

OFFSETS = [TopicPartition("events", 0, 11)]


def delivery() -> Delivery:
    return Delivery(
        output_topic="out", retrain_topic="retrain", changelog_topic="cl", metrics=WorkerMetrics()
    )


def result(n: int) -> BatchResult:
    return BatchResult(
        prediction_keys=[f"c{i}".encode() for i in range(n)],
        prediction_values=[f"p{i}".encode() for i in range(n)],
        prediction_index=np.arange(n),
        rejected=[],
        n_late=0,
        scores=np.zeros(n),
        feature_block=None,
        event_latency_seconds=np.zeros(n),
    )


@pytest.mark.parametrize("code", sorted(GROUP_MOVED_ON))
def test_a_commit_refused_because_the_group_moved_on_is_not_an_error(code: int) -> None:
    """The partitions went to another member (the broker was away past the session
    timeout): the new owner gets the batch again; this worker must not stop."""
    consumer = FakeConsumer()
    consumer.fail_commit = kafka_exception(code)
    delivery().commit(consumer, OFFSETS)  # no exception


def test_any_other_commit_failure_raises() -> None:
    consumer = FakeConsumer()
    consumer.fail_commit = kafka_exception(KafkaError._TIMED_OUT, retriable=True)
    with pytest.raises(KafkaException):
        delivery().commit(consumer, OFFSETS)


def test_a_delivery_error_fails_the_flush() -> None:
    d = delivery()
    producer = FakeProducer()
    producer.on_flush = lambda: d.on_delivery(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
    with pytest.raises(DeliveryFailed, match=r"0 undelivered, errors: \[.+\]"):
        d.flush(producer)
    assert d.metrics.registry.get_sample_value("driftline_producer_delivery_errors_total") == 1.0


def test_records_still_undelivered_fail_the_flush() -> None:
    producer = FakeProducer()
    producer.undelivered = 3
    with pytest.raises(DeliveryFailed, match="3 undelivered"):
        delivery().flush(producer)


def test_no_changelog_is_written_for_predictions_that_were_not_delivered() -> None:
    """A snapshot must never claim an event whose prediction could still be lost."""
    producer = FakeProducer()
    producer.undelivered = 1
    with pytest.raises(DeliveryFailed):
        delivery().finish_at_least_once(producer, [(0, b"c1", b"snapshot")])
    assert producer.produced == []


def test_the_changelog_follows_delivered_predictions_and_is_flushed() -> None:
    d = delivery()
    producer = FakeProducer()
    d.produce_batch(producer, result(2), [], None)
    d.finish_at_least_once(producer, [(1, b"c1", b"snapshot"), (1, b"c2", None)])
    assert [(t, p) for t, _, _, p in producer.produced] == [
        ("out", -1),
        ("out", -1),
        ("cl", 1),
        ("cl", 1),
    ]
    assert producer.calls.count("flush") == 2


def test_a_full_queue_waits_for_deliveries_and_loses_nothing() -> None:
    d = delivery()
    producer = FakeProducer()
    producer.buffer_full = 3
    d.produce_batch(producer, result(4), [], None)
    d.produce_changelog(producer, [(0, b"c", b"s")])
    assert [v for _, v, _, _ in producer.produced] == [b"p0", b"p1", b"p2", b"p3", b"s"]
    # The first refusal hands over to the backpressure loop, which polls before each retry.
    assert producer.calls.count("poll") == 2


def test_offsets_to_commit_are_one_past_the_last_record_of_each_partition() -> None:
    raw = RawBatch(
        topic="events",
        values=[b""] * 4,
        keys=[None] * 4,
        partitions=np.array([0, 1, 0, 1], np.int32),
        offsets=np.array([5, 9, 6, 8], np.int64),
    )
    assert {tp.partition: tp.offset for tp in next_offsets("events", raw)} == {0: 7, 1: 10}


def test_a_failed_delivery_is_never_committed() -> None:
    consumer = FakeConsumer()
    deliverer = Deliverer(delivery(), HealthState())

    def fails() -> None:
        raise DeliveryFailed("1 undelivered")

    deliverer.submit(fails, (), OFFSETS, 10, 0.0)
    with pytest.raises(DeliveryFailed):
        deliverer.collect(consumer, block=True)
    assert consumer.commits == [] and deliverer.batches == 0
    assert deliverer.close() is False  # collected: nothing left in flight


def test_a_delivered_batch_is_committed_and_counted() -> None:
    consumer = FakeConsumer()
    deliverer = Deliverer(delivery(), HealthState())
    deliverer.submit(lambda: None, (), OFFSETS, 10, 1.0)
    deliverer.collect(consumer, block=True, commit_async=True)
    assert consumer.commits == [(OFFSETS, True)]
    assert (deliverer.batches, deliverer.events, deliverer.first_batch_started) == (1, 10, 1.0)
    deliverer.submit(lambda: None, (), OFFSETS, 5, 2.0)
    deliverer.collect(consumer, block=True)
    assert consumer.commits[-1] == (OFFSETS, False)  # rebalances and shutdown: synchronous
    assert deliverer.close() is False


def test_a_batch_still_in_flight_is_not_collected_without_blocking() -> None:
    consumer = FakeConsumer()
    deliverer = Deliverer(delivery(), HealthState())
    release = threading.Event()
    deliverer.submit(release.wait, (), OFFSETS, 1, 0.0)
    deliverer.collect(consumer, block=False)
    assert consumer.commits == [] and deliverer.in_flight is not None
    release.set()
    deliverer.collect(consumer, block=True)
    assert len(consumer.commits) == 1


def test_exactly_once_offsets_are_remembered_not_committed_by_the_consumer() -> None:
    consumer = FakeConsumer()
    remembered: list[list[TopicPartition]] = []
    deliverer = Deliverer(delivery(), HealthState(), on_transaction_committed=remembered.append)
    deliverer.submit(lambda: None, (), OFFSETS, 1, 0.0)
    deliverer.collect(consumer, block=True)
    assert consumer.commits == [] and remembered == [OFFSETS]


def test_closing_with_a_failed_batch_in_flight_reports_it() -> None:
    deliverer = Deliverer(delivery(), HealthState())

    def fails() -> None:
        raise DeliveryFailed("x")

    deliverer.submit(fails, (), OFFSETS, 1, 0.0)
    assert deliverer.close() is True
