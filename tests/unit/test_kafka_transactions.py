"""Exactly-once rules of the Kafka engine (``engine.kafka.transactions``), without a broker.

The same code runs against a real Kafka in tests/integration/test_worker.py (a commit the
client saw fail but the broker committed), test_faults.py (-k "exactly_once or rewind")
and test_zombie.py; here each rule is pinned by scripting the producer's answers.
"""

from __future__ import annotations

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition
from kafka_fakes import FakeConsumer, FakeProducer, kafka_exception

from driftline.engine.kafka.delivery import Delivery
from driftline.engine.kafka.errors import TransactionFailed
from driftline.engine.kafka.transactions import ExactlyOnce
from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics

TOPIC = "events"


class Harness:
    """An ``ExactlyOnce`` whose broker answers (committed offsets) a test sets."""

    def __init__(self) -> None:
        self.metrics = WorkerMetrics()
        self.health = HealthState()
        self.delivery = Delivery(
            output_topic="out", retrain_topic="retrain", changelog_topic="cl", metrics=self.metrics
        )
        self.broker_committed: dict[int, int] = {}
        self.restored: list[tuple[list[int], dict[int, int]]] = []
        self.replacements: list[FakeProducer] = []
        self.tx = ExactlyOnce(
            input_topic=TOPIC,
            delivery=self.delivery,
            metrics=self.metrics,
            health=self.health,
            new_producer=self._new_producer,
            committed_offsets=self._committed,
            restore=self._restore,
        )
        self.restoring_seen: list[str | None] = []

    def _new_producer(self) -> FakeProducer:
        producer = FakeProducer(f"replacement-{len(self.replacements)}")
        self.replacements.append(producer)
        return producer

    def _restore(self, partitions: list[int], committed: dict[int, int]) -> None:
        self.restored.append((partitions, committed))
        self.restoring_seen.append(self.health.restoring_reason)

    def _committed(self, partitions: list[int]) -> dict[int, int]:
        return {p: self.broker_committed[p] for p in partitions if p in self.broker_committed}

    def aborted(self) -> float:
        value = self.metrics.registry.get_sample_value("driftline_transactions_aborted_total")
        return value or 0.0


def offsets(**by_partition: int) -> list[TopicPartition]:
    return [TopicPartition(TOPIC, int(p[1:]), o) for p, o in by_partition.items()]


def as_dict(tps: list[TopicPartition]) -> dict[int, int]:
    return {tp.partition: tp.offset for tp in tps}


def test_a_committed_batch_becomes_the_last_committed() -> None:
    h = Harness()
    producer = FakeProducer()
    h.tx.open(producer, lambda: producer.produce("out", b"v", b"k"))
    h.tx.finish(producer, offsets(p0=10, p1=7), "group")
    h.tx.committed(offsets(p0=10, p1=7))
    assert producer.calls[:3] == ["begin_transaction", "produce", "send_offsets_to_transaction"]
    assert producer.calls[-1] == "commit_transaction"
    assert as_dict(producer.offsets_sent[0]) == {0: 10, 1: 7}
    assert h.tx.last_committed == {0: 10, 1: 7}


def test_a_failed_commit_rewinds_to_the_offsets_the_broker_holds() -> None:
    """The client was told its commit timed out, but the broker committed it: the rewind
    must go to the broker's offsets (past the batch), or the batch is scored twice."""
    h = Harness()
    h.tx.assigned({0: 100, 1: 50})
    producer = FakeProducer("failed")
    producer.fail["commit_transaction"] = [kafka_exception(KafkaError._TIMED_OUT, retriable=True)]
    h.delivery.errors.append("a purged record")  # what the failed producer reported
    with pytest.raises(TransactionFailed) as failed:
        h.tx.finish(producer, offsets(p0=150, p1=80), "group")
    assert failed.value.recoverable

    h.broker_committed = {0: 150, 1: 50}  # partition 0's batch did commit on the broker
    resets: list[str] = []
    consumer = FakeConsumer()
    new = h.tx.rewind(consumer, producer, failed.value, [0, 1], lambda: resets.append("reset"))

    assert new is h.replacements[0] and new is not producer
    assert "purge" in producer.calls  # none of the failed batch's records go out
    assert resets == ["reset"] and h.delivery.errors == []
    assert h.restored == [([0, 1], {0: 150, 1: 50})]
    assert [(tp.partition, tp.offset) for tp in consumer.seeks] == [(0, 150), (1, 50)]
    assert h.tx.last_committed == {0: 150, 1: 50}
    # The offsets are restated by the new producer, in a transaction of their own.
    assert as_dict(new.offsets_sent[0]) == {0: 150, 1: 50}
    assert new.calls[-1] == "commit_transaction"
    assert h.aborted() == 1.0
    # /readyz said "restoring" during the restore, and is clear of it after.
    assert h.restoring_seen == ["rewinding partitions [0, 1] after an abort"]
    assert h.health.readiness()[1]["checks"]["state_restored"]


def test_a_partition_never_committed_is_rewound_to_its_beginning() -> None:
    h = Harness()
    consumer = FakeConsumer()
    new = h.tx.rewind(consumer, FakeProducer(), TransactionFailed("x", recoverable=True), [3], list)
    assert consumer.seeks[0].offset == OFFSET_BEGINNING
    assert h.restored == [([3], {3: -1})]
    assert as_dict(new.offsets_sent[0]) == {3: 0}  # reads as no commit (earliest)


def test_no_partitions_assigned_only_replaces_the_producer() -> None:
    h = Harness()
    consumer = FakeConsumer()
    h.tx.rewind(consumer, FakeProducer(), TransactionFailed("x", recoverable=True), [], list)
    assert consumer.seeks == [] and h.restored == [] and len(h.replacements) == 1


@pytest.mark.parametrize("step", ["send_offsets_to_transaction", "commit_transaction"])
def test_a_fenced_or_fatal_producer_stops_the_worker(step: str) -> None:
    h = Harness()
    producer = FakeProducer()
    producer.fail[step] = [kafka_exception(KafkaError._FENCED, fatal=True)]
    with pytest.raises(TransactionFailed) as failed:
        h.tx.finish(producer, offsets(p0=1), "group")
    assert not failed.value.recoverable


def test_a_failure_while_filling_the_transaction_is_recoverable_unless_fatal() -> None:
    h = Harness()
    producer = FakeProducer()
    producer.fail["produce"] = [kafka_exception(KafkaError._MSG_TIMED_OUT)]
    with pytest.raises(TransactionFailed) as failed:
        h.tx.open(producer, lambda: producer.produce("out", b"v"))
    assert failed.value.recoverable
    producer.fail["begin_transaction"] = [kafka_exception(KafkaError._FATAL, fatal=True)]
    with pytest.raises(TransactionFailed) as fatal:
        h.tx.open(producer, lambda: None)
    assert not fatal.value.recoverable


def test_delivery_errors_in_a_committed_transaction_raise() -> None:
    """A record the broker refused is missing from what committed: the worker must not go
    on as if the batch were complete."""
    h = Harness()
    producer = FakeProducer()
    h.delivery.errors.append("MSG_SIZE_TOO_LARGE")
    with pytest.raises(TransactionFailed, match="delivery errors in a committed transaction"):
        h.tx.finish(producer, offsets(p0=5), "group")
    assert producer.calls[-1] == "commit_transaction"


def test_restating_refused_by_a_rebalance_aborts_and_carries_on() -> None:
    h = Harness()
    producer = FakeProducer()
    producer.fail["send_offsets_to_transaction"] = [
        kafka_exception(KafkaError.REBALANCE_IN_PROGRESS)
    ]
    h.tx.restate_offsets(FakeConsumer(), producer, {0: 4})
    assert producer.calls[-1] == "abort_transaction"


def test_restating_refused_fatally_stops_the_worker() -> None:
    h = Harness()
    producer = FakeProducer()
    producer.fail["commit_transaction"] = [kafka_exception(KafkaError._FENCED, fatal=True)]
    with pytest.raises(TransactionFailed, match="offsets not restated"):
        h.tx.restate_offsets(FakeConsumer(), producer, {0: 4})


def test_revoked_partitions_are_forgotten() -> None:
    h = Harness()
    h.tx.assigned({0: 1, 1: 2})
    h.tx.revoked({1})
    assert h.tx.last_committed == {0: 1}


def test_a_request_in_its_own_transaction_that_fails_stops() -> None:
    h = Harness()
    producer = FakeProducer()
    producer.fail["commit_transaction"] = [kafka_exception(KafkaError._TIMED_OUT, retriable=True)]
    with pytest.raises(TransactionFailed, match="retrain request not committed") as failed:
        h.tx.send_alone(
            producer, lambda: producer.produce("retrain", b"r", b"i"), "retrain request"
        )
    assert not failed.value.recoverable


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def fenced_commit(h: Harness, clock: Clock, code: int = KafkaError._FENCED) -> TransactionFailed:
    """Partitions 0 and 1 committed at 100 and 50; a batch of partition 0 up to 150 is
    committed, and the commit answered fenced 4.5 s into a 4 s transaction."""
    h.tx.transaction_timeout_s = 4.0
    h.tx.clock = clock
    h.tx.assigned({0: 100, 1: 50})
    producer = FakeProducer("fenced")
    h.tx.open(producer, lambda: producer.produce("out", b"v", b"k"))
    clock.now += 4.5
    producer.fail["commit_transaction"] = [kafka_exception(code, fatal=True)]
    assert h.tx.fenced_by_own_timeout(kafka_exception(code, fatal=True).args[0])
    with pytest.raises(TransactionFailed) as failed:
        h.tx.finish(producer, offsets(p0=150), "group")
    assert failed.value.recoverable and failed.value.fenced_batch == {0: 150}
    # The fenced producer refuses everything; the rewind must not need it.
    for method in ("purge", "poll", "begin_transaction", "abort_transaction"):
        producer.fail[method] = [kafka_exception(KafkaError._FENCED, fatal=True)]
    return failed.value


@pytest.mark.parametrize(
    "code",
    [KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH],
)
def test_a_fenced_commit_that_landed_on_the_broker_is_kept_not_rewound(code: int) -> None:
    """The broker committed the batch and the client was told fenced (the CI duplicate
    of 2026-12-05, reverted in 8b8adca): nothing is rewound, restored or scored again."""
    h = Harness()
    failed = fenced_commit(h, Clock(), code)
    h.broker_committed = {0: 150, 1: 50}
    consumer = FakeConsumer()
    resets: list[str] = []
    h.health.begin_batch()
    new = h.tx.rewind(consumer, FakeProducer(), failed, [0, 1], lambda: resets.append("reset"))
    assert new is h.replacements[0]
    assert resets == [] and h.restored == [] and consumer.seeks == []
    assert h.health.batch_started is None  # /readyz does not time a batch that is over
    assert h.tx.last_committed == {0: 150, 1: 50}
    assert new.calls == []  # nothing restated: the broker holds the batch's offsets
    assert h.aborted() == 0.0
    assert not h.tx.fenced_by_own_timeout(kafka_exception(code, fatal=True).args[0])


def test_a_fenced_commit_the_broker_aborted_is_rewound_to_the_batch_start() -> None:
    h = Harness()
    failed = fenced_commit(h, Clock())
    h.broker_committed = {0: 100, 1: 50}
    consumer = FakeConsumer()
    resets: list[str] = []
    new = h.tx.rewind(consumer, FakeProducer(), failed, [0, 1], lambda: resets.append("reset"))
    assert new is h.replacements[0]
    assert resets == ["reset"]
    assert h.restored == [([0, 1], {0: 100, 1: 50})]
    assert [(tp.partition, tp.offset) for tp in consumer.seeks] == [(0, 100), (1, 50)]
    assert as_dict(new.offsets_sent[0]) == {0: 100, 1: 50}
    assert h.aborted() == 1.0


@pytest.mark.parametrize(
    "broker",
    [{0: 120, 1: 50}, {0: 150, 1: 60}, {0: 100, 1: 60}, {0: 170, 1: 50}],
    ids=["inside-the-batch", "another-partition-moved", "start-but-other-moved", "past-the-end"],
)
def test_a_fenced_commit_with_any_other_broker_answer_stops(broker: dict[int, int]) -> None:
    h = Harness()
    failed = fenced_commit(h, Clock())
    h.broker_committed = broker
    consumer = FakeConsumer()
    resets: list[str] = []
    with pytest.raises(TransactionFailed, match="outcome unknown") as stopped:
        h.tx.rewind(consumer, FakeProducer(), failed, [0, 1], lambda: resets.append("reset"))
    assert not stopped.value.recoverable
    assert resets == [] and h.restored == [] and consumer.seeks == []


def test_a_fenced_commit_that_landed_with_delivery_errors_stops() -> None:
    h = Harness()
    failed = fenced_commit(h, Clock())
    h.delivery.errors.append("MSG_SIZE_TOO_LARGE")
    h.broker_committed = {0: 150, 1: 50}
    with pytest.raises(TransactionFailed, match="outcome unknown"):
        h.tx.rewind(FakeConsumer(), FakeProducer(), failed, [0, 1], list)


def test_a_fence_within_the_timeout_is_a_newer_instance_and_stops() -> None:
    clock = Clock()
    h = Harness()
    h.tx.transaction_timeout_s = 4.0
    h.tx.clock = clock
    producer = FakeProducer()
    h.tx.open(producer, lambda: None)
    clock.now += 3.9
    producer.fail["commit_transaction"] = [kafka_exception(KafkaError._FENCED, fatal=True)]
    with pytest.raises(TransactionFailed) as failed:
        h.tx.finish(producer, offsets(p0=1), "group")
    assert not failed.value.recoverable and failed.value.fenced_batch is None


def test_another_fatal_error_after_the_timeout_still_stops() -> None:
    clock = Clock()
    h = Harness()
    h.tx.transaction_timeout_s = 4.0
    h.tx.clock = clock
    producer = FakeProducer()
    h.tx.open(producer, lambda: None)
    clock.now += 10
    producer.fail["commit_transaction"] = [kafka_exception(KafkaError._FATAL, fatal=True)]
    with pytest.raises(TransactionFailed) as failed:
        h.tx.finish(producer, offsets(p0=1), "group")
    assert not failed.value.recoverable and failed.value.fenced_batch is None
