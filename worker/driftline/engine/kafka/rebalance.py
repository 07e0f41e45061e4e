"""Partitions coming and going: restore before the first event, settle before they go.

librdkafka calls these from inside ``consume()``, between batches.  On assignment, the
partitions' state is restored from the changelog as of the group's committed offsets
before any of their events is processed (``/readyz`` is false meanwhile).  On revocation
(or loss), the batch pending in the scoring process and the batch in flight are finished
and committed first (``settle``), then the partitions' state is dropped: their new owner
restores it.  A failure while settling cannot be raised through librdkafka: it is kept in
``failure`` and re-raised by the loop after ``consume()`` returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Consumer, TopicPartition

from driftline.engine.kafka.changelog import Changelog
from driftline.engine.kafka.errors import DeliveryFailed, TransactionFailed
from driftline.engine.kafka.offsets import BrokerOffsets
from driftline.engine.kafka.settings import WorkerSettings
from driftline.engine.kafka.transactions import ExactlyOnce
from driftline.model.runtimes.process import ScoringProcessFailed
from driftline.observability.http import HealthState
from driftline.observability.metrics import WorkerMetrics
from driftline.processor import ScoringProcessor

log = logging.getLogger(__name__)

#: What settling a revoked partition's batches can raise (the loop re-raises it).
SettleFailure = DeliveryFailed | TransactionFailed | ScoringProcessFailed


class Rebalance:
    """A worker's assignment: which partitions it owns, and the callbacks that change it."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        processor: Callable[[], ScoringProcessor | None],
        changelog: Changelog,
        offsets: BrokerOffsets,
        transactions: ExactlyOnce | None,
        settle: Callable[[Consumer], None],
        health: HealthState,
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self._processor = processor
        self.changelog = changelog
        self.offsets = offsets
        self.transactions = transactions
        self.settle = settle
        self.health = health
        self.metrics = metrics
        self.assigned: set[int] = set()
        #: A failure seen inside a callback, re-raised by the loop (``take_failure``).
        self.failure: SettleFailure | None = None

    def processor(self) -> ScoringProcessor:
        processor = self._processor()
        assert processor is not None, "partitions are assigned only once the worker runs"
        return processor

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        processor = self.processor()
        numbers = sorted(tp.partition for tp in partitions)
        s = self.settings
        needed = bool(numbers) and (s.changelog or s.exactly_once)
        committed = self.offsets.committed(numbers) if needed else {}
        if self.transactions is not None:
            self.transactions.assigned(committed)
        if s.changelog and numbers:
            self.health.set_restoring(f"restoring state of partitions {numbers}")
            log.info("restoring %s, committed offsets %s", numbers, committed)
            self.changelog.restore(processor, numbers, committed)
            self.health.set_restoring(None)
        else:
            processor.assign(numbers)
        self.assigned.update(numbers)
        self.report()
        log.info("assigned %s", sorted(tp.partition for tp in partitions))

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Also ``on_lost``.  The last batch may still be in flight on the deliverer
        thread, and one may be pending in the scoring process: both are finished (published
        and committed) first, then the partitions' state can simply be dropped."""
        processor = self.processor()
        try:
            self.settle(consumer)
        except (DeliveryFailed, TransactionFailed, ScoringProcessFailed) as failed:
            self.failure = failed  # the loop re-raises it after consume() returns
        revoked = {tp.partition for tp in partitions}
        processor.revoke(sorted(revoked))
        self.changelog.forget(revoked)
        self.assigned.difference_update(revoked)
        if self.transactions is not None:
            self.transactions.revoked(revoked)
        self.report()
        log.info("revoked %s", sorted(tp.partition for tp in partitions))

    def take_failure(self) -> None:
        """Raise the failure a callback kept, if any (the loop, after ``consume()``)."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def report(self) -> None:
        n = len(self.assigned)
        self.health.set_assigned(n)
        self.metrics.set_assigned_partitions(n)
