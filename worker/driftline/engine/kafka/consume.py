"""Taking a micro-batch off the group consumer, and the records' columns.

The consuming side's counterpart of ``delivery``: how long to wait for records, which
consume errors are skipped, and the records' fields as the arrays the processor takes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from driftline.engine.batching import BatchPlan
from driftline.processor import RawBatch

log = logging.getLogger(__name__)


def poll_batch(
    consumer: Consumer,
    plan: BatchPlan,
    *,
    adaptive: bool,
    pending: bool,
    finish_pending: Callable[[], None],
) -> list[Message]:
    """Up to ``plan.size`` records: whatever is there, as soon as anything is.

    librdkafka's ``consume(n, timeout)`` returns early only once it has ``n`` records,
    so a caught-up worker would sit out the whole timeout with records in hand (at 5k
    events/s that was ~17 ms of every event's wait).  Here the timeout only bounds
    the wait for the *first* record; the batch is what arrived meanwhile, so it grows
    with the load by itself (smart batching) and a backlog still yields full batches.
    With ``adaptive`` off the old fill-or-timeout behaviour is kept.

    A batch ``pending`` in the scoring process overlaps the next one only under a
    backlog (a full batch is already there).  Otherwise it is finished first
    (``finish_pending``), and the next batch is scored in the loop.
    """
    if pending:
        ready = consumer.consume(num_messages=plan.size, timeout=0)
        if len(ready) < plan.size:
            finish_pending()
        if ready:
            return ready
    if not adaptive:
        return consumer.consume(num_messages=plan.size, timeout=plan.wait_s)
    ready = consumer.consume(num_messages=plan.size, timeout=0)
    if ready:
        return ready
    first = consumer.poll(plan.wait_s)
    if first is None:
        return []
    return [first, *consumer.consume(num_messages=plan.size - 1, timeout=0)]


def raw_batch(topic: str, records: list[Message]) -> tuple[RawBatch, float]:
    """The records' values, keys, partitions, offsets and timestamps, and the seconds it
    took (list comprehensions then one array conversion: the cheapest way through the
    Message API)."""
    started = time.perf_counter()
    raw = RawBatch(
        topic=topic,
        values=[r.value() for r in records],
        keys=[r.key() for r in records],
        partitions=np.array([r.partition() for r in records], np.int32),
        offsets=np.array([r.offset() for r in records], np.int64),
        timestamps=np.array([r.timestamp()[1] for r in records], np.int64),
    )
    return raw, time.perf_counter() - started


def is_error(message: Message) -> bool:
    """A consume error in place of a record: skipped (logged), or raised when fatal."""
    error = message.error()
    if error is None:
        return False
    if error.code() == KafkaError._PARTITION_EOF:
        return True
    if error.fatal():
        raise KafkaException(error)
    log.warning("consume error: %s", error)
    return True
