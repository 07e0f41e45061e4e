"""Exactly-once: one transaction per batch, and the rewind after one fails.

A batch's transaction holds its predictions, dead letters, changelog records and input
offsets (``send_offsets_to_transaction``).  How it can end:

* committed: the offsets are remembered as the last committed (what a rewind restates);
  delivery errors reported meanwhile still fail it (``TransactionFailed``), since a
  record the broker refused is missing from what committed;
* failed, recoverable (records timed out, a broker did not answer): the worker replaces
  its producer and rewinds (``ExactlyOnce.rewind``) to the offsets the *broker* holds;
* its commit answered fenced after the transaction had been open for its whole timeout
  (a broker frozen, or a network slow, while the commit was in flight: the broker aborts a
  transaction that outlives ``transaction.timeout.ms``, and Kafka then answers fenced,
  which librdkafka makes fatal).  Whether the commit landed is not known on the client:
  the broker may have committed it and the answer been lost or late.  So the worker asks
  the broker (``ExactlyOnce.rewind``): a new producer under the same transactional id
  finishes the old transaction either way in ``init_transactions``, then the group's
  stable committed offsets say which it was.  At the batch's end: it landed, the worker
  keeps its state and carries on with the new producer (no rewind, no second score).
  At the batch's start: it was aborted, the worker rewinds.  Anything else: unknown, the
  worker stops (exit 3; a restart restores from the committed offsets).  A rewind past a
  landed commit scored a batch twice (a fresh-clone CI of 2026-12-05, reverted 8b8adca);
* fenced otherwise, or fatal: ``TransactionFailed`` not recoverable, the worker stops
  (exit 3).

Like Quix Streams' checkpoint, this module decides what a batch's end means and leaves the
I/O to the producer and consumer behind ``ports``, so these rules are unit-tested without a
broker (tests/unit/test_kafka_transactions.py); the fault tests run them on a real one.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)

from driftline.engine.kafka.delivery import Delivery
from driftline.engine.kafka.errors import TransactionFailed
from driftline.engine.kafka.ports import ConsumerPort, ProducerPort, kafka_error_of
from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics

log = logging.getLogger(__name__)

#: How long a replacement transactional producer waits for the broker to answer its
#: ``init_transactions`` before the worker gives up and stops (exit 3).
INIT_TRANSACTIONS_PATIENCE_S = 600.0


def transactional_producer(config: dict[str, Any], stop: threading.Event) -> Producer:
    """A producer with transactions initialised, waiting while the broker is away."""
    producer = Producer(config)
    deadline = time.monotonic() + INIT_TRANSACTIONS_PATIENCE_S
    while True:
        try:
            producer.init_transactions(30)
            return producer
        except KafkaException as error:
            kafka_error = kafka_error_of(error)
            retriable = kafka_error is not None and kafka_error.retriable()
            if not retriable or stop.is_set() or time.monotonic() > deadline:
                raise TransactionFailed(f"transactions not initialised: {error}") from error
            log.warning("init_transactions not answered yet (%s): retrying", error)


#: Error codes of a fenced producer: librdkafka's own, and the broker's two.
FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)


def transaction_failure(error: KafkaException) -> TransactionFailed:
    """What a failed transaction means: rewind, or stop.

    A fenced or fatal producer stops the worker.  Anything else is recoverable, and is
    not aborted here: records that timed out need an epoch bump to abort (KIP-360),
    which Tansu refuses with an unknown error that librdkafka retries for good.  A new
    producer under the same transactional id aborts the open transaction on any
    broker, in ``init_transactions``.
    """
    kafka_error = kafka_error_of(error)
    recoverable = kafka_error is not None and not kafka_error.fatal()
    return TransactionFailed(f"transaction not committed: {error}", recoverable=recoverable)


class ExactlyOnce:
    """A worker's transactions: open, finish, fail, and rewind to the last committed batch.

    ``new_producer`` makes a producer with transactions initialised (the rewind's
    replacement); ``committed_offsets`` asks the broker for the group's committed input
    offsets; ``restore`` rebuilds partitions' state from the changelog as of given offsets.
    """

    def __init__(
        self,
        *,
        input_topic: str,
        delivery: Delivery,
        metrics: WorkerMetrics,
        health: HealthState,
        new_producer: Callable[[], ProducerPort],
        committed_offsets: Callable[[list[int]], dict[int, int]],
        restore: Callable[[list[int], dict[int, int]], None],
        transaction_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.input_topic = input_topic
        self.delivery = delivery
        self.metrics = metrics
        self.health = health
        self.new_producer = new_producer
        self.committed_offsets = committed_offsets
        self.restore = restore
        #: Each assigned partition's offset as this worker last committed it (or found
        #: it at assignment); what a rewind compares the broker's answer with.
        self.last_committed: dict[int, int] = {}
        #: The producer's ``transaction.timeout.ms`` in seconds (None: no fence is put
        #: down to a timeout), and when the open transaction began (``clock``).
        self.transaction_timeout_s = transaction_timeout_s
        self.clock = clock
        self.began: float | None = None

    def fenced_by_own_timeout(self, error: KafkaError | None) -> bool:
        """Whether a fence may be the broker's end of this worker's own transaction for
        its timeout, not a newer instance: the transaction has been open (by this
        process's clock, which starts before the broker's) for at least its timeout.
        The transactional id is this process's own (its worker or static instance id), so
        nobody else fences it unless an operator runs two workers as one instance; a
        fence sooner than the timeout is that, and stops the worker."""
        return (
            error is not None
            and error.code() in FENCED_CODES
            and self.transaction_timeout_s is not None
            and self.began is not None
            and self.clock() - self.began >= self.transaction_timeout_s
        )

    def _begin(self, producer: ProducerPort) -> None:
        self.began = self.clock()
        producer.begin_transaction()

    # ------------------------------------------------------------------ a batch
    def open(self, producer: ProducerPort, fill: Callable[[], None]) -> None:
        """Begin the batch's transaction and produce its records into it (``fill``)."""
        try:
            self._begin(producer)
            fill()
        except KafkaException as error:
            raise transaction_failure(error) from error

    def finish(self, producer: ProducerPort, offsets: list[TopicPartition], group: Any) -> None:
        """The batch's input offsets join its transaction, which is then committed.

        Runs on the deliverer thread; the loop records the offsets as committed
        (``committed``) once this returned.
        """
        try:
            producer.send_offsets_to_transaction(offsets, group, 60)
            producer.commit_transaction(60)
        except KafkaException as error:
            if self.fenced_by_own_timeout(kafka_error_of(error)):
                # Committed or aborted: the broker knows, the rewind asks it.
                raise TransactionFailed(
                    f"transaction commit fenced after its timeout: {error}",
                    recoverable=True,
                    fenced_batch={tp.partition: tp.offset for tp in offsets},
                ) from error
            raise transaction_failure(error) from error
        self.began = None
        if self.delivery.errors:
            raise TransactionFailed(
                f"delivery errors in a committed transaction: {self.delivery.errors[:3]}"
            )

    def committed(self, offsets: list[TopicPartition]) -> None:
        """A batch's transaction committed: its offsets are the partitions' last committed."""
        self.last_committed.update((tp.partition, tp.offset) for tp in offsets)

    def send_alone(
        self, producer: ProducerPort, produce: Callable[[], None], what: str = "record"
    ) -> None:
        """Records outside any batch (a retrain request) in a transaction of their own."""
        try:
            self._begin(producer)
            produce()
            producer.commit_transaction(60)
        except KafkaException as error:
            raise TransactionFailed(f"{what} not committed: {error}") from error
        self.began = None

    # ------------------------------------------------------------------ assignment
    def assigned(self, committed: dict[int, int]) -> None:
        self.last_committed.update(committed)

    def revoked(self, partitions: set[int]) -> None:
        for p in partitions:
            self.last_committed.pop(p, None)

    # ------------------------------------------------------------------ rewind
    def rewind(
        self,
        consumer: ConsumerPort,
        producer: ProducerPort,
        failed: TransactionFailed,
        partitions: list[int],
        reset: Callable[[], None],
    ) -> ProducerPort:
        """After a failed transaction, carry on from the last committed batch.

        The failed batch's records are purged and its producer replaced: the new one's
        ``init_transactions`` fences the old epoch and aborts the open transaction, so
        none of the batch's predictions, changelog records or offsets become visible.
        This process's state already holds the batch's events, though, and the consumer
        is past them: as a new owner would, the worker restores its partitions from the
        changelog (read committed: as of the last committed batch) and seeks back to the
        committed offsets, so the batch is scored again, once.  Kafka Streams treats a
        task whose transaction failed the same way (closed dirty, restored, resumed).
        The drift monitor keeps what it saw of the failed batch: it sees those events
        twice.  ``reset`` drops what the worker holds beyond the committed batch (a
        batch prepared after the failed one, evictions since) before the new producer.
        """
        self.health.end_batch()  # the failed batch is over (/readyz times a batch)
        if failed.fenced_batch is not None:
            return self._after_fenced_commit(
                consumer, failed, failed.fenced_batch, partitions, reset
            )
        log.warning("%s: rewinding partitions %s to the last committed batch", failed, partitions)
        self.metrics.inc_transactions_aborted()
        self.health.note_abort()
        producer.purge()
        producer.poll(0)  # the purged records' delivery reports, then forget them
        self.delivery.errors.clear()
        self.began = None
        reset()
        producer = self.new_producer()
        self._rewind_to_broker(consumer, producer, partitions)
        return producer

    def _after_fenced_commit(
        self,
        consumer: ConsumerPort,
        failed: TransactionFailed,
        batch_end: dict[int, int],
        partitions: list[int],
        reset: Callable[[], None],
    ) -> ProducerPort:
        """A commit answered fenced after its timeout: landed or aborted, the broker says.

        The fenced producer is dropped untouched (it refuses everything, even a purge;
        its records are all delivered, since a commit flushes first).  The new producer's
        ``init_transactions`` finishes the old transaction on the coordinator, committed
        or aborted, markers written; the group's committed offsets, read stable (the
        admin client's ``require_stable``, asked again while UNSTABLE_OFFSET_COMMIT),
        are then final:

        * every batch partition at the batch's end (the others unchanged): it landed.
          The state, the pending batch and the consumer's position are all already past
          it, so nothing is undone: the worker carries on with the new producer;
        * every partition where this worker last committed: it was aborted, and the
          worker rewinds to there as after any failed transaction;
        * anything else: not this worker's batch alone (another instance, a rebalance):
          it stops (exit 3), and a restart restores from the committed offsets.
        """
        self.began = None
        producer = self.new_producer()
        asked = sorted(set(partitions) | set(batch_end))
        answer = self.committed_offsets(asked)
        committed = {p: answer.get(p, -1) for p in asked}
        start = {p: self.last_committed.get(p, -1) for p in asked}
        landed = {**start, **batch_end}
        if committed == landed and not self.delivery.errors:
            log.warning(
                "%s: the broker committed the batch (offsets %s): carrying on without rewind",
                failed,
                batch_end,
            )
            self.last_committed.update(batch_end)
            self.health.note_commit()
            return producer
        if committed == start:
            log.warning(
                "%s: the broker aborted the batch: rewinding partitions %s", failed, partitions
            )
            self.metrics.inc_transactions_aborted()
            self.health.note_abort()
            self.delivery.errors.clear()
            reset()
            self._rewind_to_broker(consumer, producer, partitions, committed)
            return producer
        raise TransactionFailed(
            f"{failed}: outcome unknown (committed offsets {committed}, batch from {start} "
            f"to {batch_end}, delivery errors {self.delivery.errors[:3]})"
        )

    def _rewind_to_broker(
        self,
        consumer: ConsumerPort,
        producer: ProducerPort,
        partitions: list[int],
        answer: dict[int, int] | None = None,
    ) -> None:
        """Restore ``partitions`` from the changelog as of the offsets the broker holds
        (``answer`` if already asked) and seek the consumer back to them."""
        if partitions:
            # The broker's word, not this worker's: a commit that failed on the client may
            # have committed on the broker (an EndTxn answered after the client gave up),
            # and rewinding past it scores its batch twice (seen on Kafka: 200 duplicated
            # predictions after a freeze).  The new producer's init_transactions finished
            # the old transaction either way, so the stable offsets are final.
            if answer is None:
                answer = self.committed_offsets(partitions)
            committed = {p: answer.get(p, -1) for p in partitions}
            stale = {p: o for p, o in committed.items() if o != self.last_committed.get(p, -1)}
            if stale:
                log.warning("the failed transaction committed on the broker: offsets %s", stale)
            self.last_committed.update(committed)
            log.info("rewinding to the committed offsets %s", committed)
            self.restate_offsets(consumer, producer, committed)
            self.health.set_restoring(f"rewinding partitions {partitions} after an abort")
            self.restore(partitions, committed)
            self.health.set_restoring(None)
            for p in partitions:
                offset = committed[p]
                position = offset if offset >= 0 else OFFSET_BEGINNING
                consumer.seek(TopicPartition(self.input_topic, p, position))

    def restate_offsets(
        self, consumer: ConsumerPort, producer: ProducerPort, committed: dict[int, int]
    ) -> None:
        """Commit the last committed offsets again, in a transaction of their own.

        Defensive: the failed transaction's offset commit may reach the broker after the
        new producer fenced it (a request sent before the broker froze, read when it
        woke).  Kafka refuses it (old epoch); a broker that did not would move the group
        past a batch that was never delivered, so the offsets this worker knows to be
        right are restated before it goes on.  (A rewind on Tansu once lost a small batch;
        the restore reading the aborted batch's changelog explains it as well, and is
        guarded in ``changelog.Changelog.restore``.)  A partition never committed gets
        offset 0, which reads the same as no commit (``auto.offset.reset`` earliest).
        """
        topic = self.input_topic
        offsets = [TopicPartition(topic, p, max(o, 0)) for p, o in committed.items()]
        try:
            self._begin(producer)
            producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 60)
            producer.commit_transaction(60)
            self.began = None
        except KafkaException as error:
            # A rebalance since (the group moved on while the broker was away) refuses it:
            # the partitions are then revoked at the next poll and restored by their owner.
            log.warning("could not restate the committed offsets: %s", error)
            kafka_error = kafka_error_of(error)
            if kafka_error is not None and kafka_error.fatal():
                raise TransactionFailed(f"offsets not restated: {error}") from error
            with contextlib.suppress(KafkaException):
                producer.abort_transaction(30)
