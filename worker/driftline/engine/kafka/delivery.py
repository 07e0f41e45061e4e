"""Getting a batch's records to the broker, and its offsets committed (at-least-once).

What the worker produces for a batch (predictions, a retrain request, dead letters; the
changelog after them), how it waits when librdkafka's queue is full, how it learns of
records that failed, and how an at-least-once batch is finished: flushed, its changelog
flushed, then its offsets committed by the loop.  Exactly-once wraps the same produce
calls in a transaction (``driftline.engine.kafka.transactions``).

Everything here talks to the producer and consumer through ``ports`` only, so the rules
(a failed delivery is never committed; a commit refused because the group moved on is not
an error) are unit-tested without a broker in tests/unit/test_kafka_delivery.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import numpy as np
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from driftline.engine.kafka.errors import DeliveryFailed
from driftline.engine.kafka.ports import ConsumerPort, ProducerPort, kafka_error_of
from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import BatchResult, RawBatch, Rejected

log = logging.getLogger(__name__)

#: Commit errors meaning "you are no longer the owner": not fatal at-least-once.
GROUP_MOVED_ON = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
    }
)

#: A changelog record: (partition, customer key, snapshot or None for a tombstone).
ChangelogRecord = tuple[int, bytes, bytes | None]


class DeadLetterSink(Protocol):
    """Where rejected records go (``dead_letters.DeadLetterWriter``): cut to fit, headed."""

    def produce(
        self,
        producer: ProducerPort,
        records: list[Message],
        rejected: list[Rejected],
        failed_at: bytes,
    ) -> int: ...


def produce_with_backpressure(
    producer: ProducerPort,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    headers: list[tuple[str, bytes]] | None = None,
) -> None:
    """Produce, waiting for deliveries to drain while librdkafka's queue is full."""
    while True:
        try:
            producer.produce(topic, value, key, headers=headers)
            return
        except BufferError:
            producer.poll(0.05)  # queue full: let deliveries drain, then retry


def produce_changelog(producer: ProducerPort, topic: str, changelog: list[ChangelogRecord]) -> None:
    """Snapshots and tombstones to their partition of the changelog topic."""
    produce = producer.produce
    for partition, key, value in changelog:
        try:
            produce(topic, value, key, partition)
        except BufferError:
            while True:
                producer.poll(0.05)  # queue full: let deliveries drain, then retry
                try:
                    produce(topic, value, key, partition)
                    break
                except BufferError:
                    continue


def next_offsets(topic: str, raw: RawBatch) -> list[TopicPartition]:
    """Offset to commit per partition: one past the last record consumed from it."""
    offsets: dict[int, int] = {}
    for p in np.unique(raw.partitions).tolist():
        offsets[p] = int(raw.offsets[raw.partitions == p].max()) + 1
    return [TopicPartition(topic, p, o) for p, o in offsets.items()]


class Delivery:
    """A worker's producing side: its records, their failures, and the at-least-once commit.

    ``errors`` collects delivery failures reported by librdkafka (on the thread that
    polls the producer); a flush, or the end of a transaction, that finds any refuses to
    let the batch's offsets be committed.
    """

    def __init__(
        self,
        *,
        output_topic: str,
        retrain_topic: str,
        changelog_topic: str,
        metrics: WorkerMetrics,
    ) -> None:
        self.output_topic = output_topic
        self.retrain_topic = retrain_topic
        self.changelog_topic = changelog_topic
        self.metrics = metrics
        self.errors: list[str] = []

    def on_delivery(self, error: KafkaError | None, _message: Message) -> None:
        """librdkafka's delivery report (failures only: ``delivery.report.only.error``)."""
        if error is not None:
            self.errors.append(str(error))
            self.metrics.inc_producer_delivery_errors()

    def produce_batch(
        self,
        producer: ProducerPort,
        result: BatchResult,
        records: list[Message],
        dead_letters: DeadLetterSink | None,
    ) -> None:
        """A batch's predictions, its retrain request if any, and its dead letters."""
        produce = producer.produce
        topic = self.output_topic
        for key, value in zip(result.prediction_keys, result.prediction_values, strict=True):
            try:
                produce(topic, value, key)
            except BufferError:
                produce_with_backpressure(producer, topic, value, key)
        if result.retrain_request is not None:
            request = result.retrain_request
            log.warning(
                "retrain requested (%s, incident %s): %s",
                request.reason,
                request.incident_id,
                [f.feature for f in request.drifted_features],
            )
            produce_with_backpressure(
                producer,
                self.retrain_topic,
                msgspec.json.encode(request),
                request.incident_id.encode(),
            )
        if result.rejected:
            assert dead_letters is not None
            failed_at = str(int(time.time() * 1000)).encode()
            dead_letters.produce(producer, records, result.rejected, failed_at)

    def produce_changelog(self, producer: ProducerPort, changelog: list[ChangelogRecord]) -> None:
        produce_changelog(producer, self.changelog_topic, changelog)

    def flush(self, producer: ProducerPort) -> None:
        """Wait for every queued record; any undelivered or failed one fails the batch."""
        remaining = producer.flush(60)
        if remaining or self.errors:
            errors = self.errors[:3]
            raise DeliveryFailed(f"{remaining} undelivered, errors: {errors}")

    def finish_at_least_once(
        self, producer: ProducerPort, changelog: list[ChangelogRecord]
    ) -> None:
        """Predictions delivered, then the changelog delivered (the loop commits after).

        A snapshot must never claim an event whose prediction could still be lost, hence
        the changelog only after the first flush succeeded.
        """
        self.flush(producer)
        if changelog:
            self.produce_changelog(producer, changelog)
            self.flush(producer)

    def commit(self, consumer: ConsumerPort, offsets: list[TopicPartition]) -> None:
        """Commit a delivered batch's offsets; a group that moved on is not an error.

        When the broker was unreachable longer than the session timeout, the group has
        already given these partitions to another member (or will at the next poll): the
        commit is refused, the batch is delivered again to the new owner (at-least-once),
        and this worker's ``on_lost`` drops the partitions at its next poll.
        """
        try:
            consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            kafka_error = kafka_error_of(error)
            code = kafka_error.code() if kafka_error is not None else None
            if code not in GROUP_MOVED_ON:
                raise
            log.warning("commit refused (%s): the partitions moved; the batch comes again", error)

    def commit_async(self, consumer: ConsumerPort, offsets: list[TopicPartition]) -> None:
        """Commit without waiting for the answer (``on_commit`` gets it)."""
        consumer.commit(offsets=offsets, asynchronous=True)

    @staticmethod
    def on_commit(error: KafkaError | None, _partitions: list[TopicPartition]) -> None:
        """An asynchronous commit's answer (served in ``consume()``): failures are logged;
        the next commit covers the offsets, and a crash meanwhile only redelivers."""
        if error is None:
            return
        if error.code() in GROUP_MOVED_ON:
            log.warning("commit refused (%s): the partitions moved; the batch comes again", error)
        else:
            log.error("commit failed (%s): the next commit covers it", error)


@dataclass
class InFlight:
    """A batch handed to the deliverer thread: what to commit once it is delivered."""

    future: Future[None]
    offsets: list[TopicPartition]
    n: int
    started: float


class Deliverer:
    """Delivers and commits batch N on a second thread while the loop scores N+1.

    At most one batch is in flight: the loop collects it (``collect``) before it produces
    anything of the next, so ordering and the duplicates a crash can cause (one batch)
    are those of a sequential loop.  Also counts what was done, for the worker's
    ``batches`` / ``events_processed`` and the benchmarks' timings.
    """

    def __init__(
        self,
        delivery: Delivery,
        health: HealthState,
        *,
        on_transaction_committed: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        self.delivery = delivery
        self.health = health
        #: Exactly-once: the transaction committed the offsets; they are only remembered.
        self.on_transaction_committed = on_transaction_committed
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="driftline-deliver")
        self.in_flight: InFlight | None = None
        self.batches = 0
        self.events = 0
        self.first_batch_started: float | None = None  # perf_counter, for benchmarks
        self.last_batch_done: float | None = None

    def submit(
        self,
        job: Callable[..., None],
        args: tuple[Any, ...],
        offsets: list[TopicPartition],
        n: int,
        started: float,
    ) -> None:
        """Hand a produced batch's delivery (``job``) to the deliverer thread."""
        assert self.in_flight is None, "collect the batch in flight first"
        future = self._executor.submit(job, *args)
        self.in_flight = InFlight(future, offsets, n, started)

    def collect(self, consumer: ConsumerPort, *, block: bool, commit_async: bool = False) -> None:
        """Wait for (or, ``block=False``, just look at) the batch in flight, then commit
        its offsets (at-least-once) and count it done.

        The commit happens here, on the loop's thread, not on the deliverer: a synchronous
        commit from another thread while this one sits in ``consume()`` waits for a reply
        that ``consume()`` takes off the queue (it hung for seconds in the benchmark).  A
        delivery failure is re-raised here, so the worker stops without committing.

        ``commit_async``: the loop, about to produce the next batch, does not wait for the
        commit's answer (a broker round trip off every event's latency).  Nothing waits on
        it: the batch's predictions and changelog are delivered already, so a commit lost
        in a crash only means the batch comes again, and the restored state skips its
        events (counted as redelivered), as after any crash before a commit.  Commits
        from one consumer reach the coordinator in order, and a later one covers an
        earlier one that failed.  Rebalances and shutdown still commit synchronously.
        """
        in_flight = self.in_flight
        if in_flight is None or (not block and not in_flight.future.done()):
            return
        self.in_flight = None
        in_flight.future.result()
        if self.on_transaction_committed is not None:
            self.on_transaction_committed(in_flight.offsets)
        elif commit_async:
            self.delivery.commit_async(consumer, in_flight.offsets)
        else:
            self.delivery.commit(consumer, in_flight.offsets)
        self.health.note_commit()
        self.batches += 1
        self.events += in_flight.n
        self.first_batch_started = self.first_batch_started or in_flight.started
        self.last_batch_done = time.perf_counter()
        self.health.end_batch()

    def close(self) -> bool:
        """Stop the thread, after the batch in flight; True if that batch failed (its
        offsets are not committed).  Never close clients under a running delivery."""
        in_flight, self.in_flight = self.in_flight, None
        failed = in_flight is not None and in_flight.future.exception() is not None
        self._executor.shutdown(wait=True)
        return failed
