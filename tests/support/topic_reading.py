"""Reading topics and committed offsets back, for the integration tests.

``read_topic`` reads a topic to its end (``enable.partition.eof`` on every partition,
never the high watermark: the Tansu broker reports a wrong one), optionally with
``isolation.level=read_committed``; ``read_predictions`` decodes what it read.
``topic_layout`` and ``wait_committed`` tell where records landed and when a group has
committed past them; ``broker_filters_aborted_transactions`` and
``fence_transactional_id`` tell a broker's limitation from a worker's bug and stand in
for a broker that never times out a dead producer's transaction.

Test support, not shipped: the product reads its topics through the worker's own consumer.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from driftline.benchmarks.worker_process import WorkerProcess
from driftline.core.predictions import Prediction

__all__ = [
    "TopicLayout",
    "broker_filters_aborted_transactions",
    "committed_all",
    "committed_offsets",
    "fence_transactional_id",
    "read_predictions",
    "read_topic",
    "topic_layout",
    "wait_committed",
]

log = logging.getLogger(__name__)
_KAFKA_LOGGER = logging.getLogger("driftline.kafka")
_decode_prediction = msgspec.json.Decoder(Prediction).decode


def _consumer(bootstrap: str, read_committed: bool, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"faults-reader-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            "logger": _KAFKA_LOGGER,
            **extra,
        }
    )


def read_topic(
    bootstrap: str,
    topic: str,
    read_committed: bool = False,
    expected: int = 0,
    timeout: float = 60.0,
) -> list[Any]:
    """Every record of ``topic`` from the beginning, as confluent-kafka ``Message`` objects.

    Reads until at least ``expected`` records arrived *and* every partition reported EOF
    after its last record (so records beyond ``expected``, e.g. duplicates, are read too),
    or until ``timeout``: then it returns what it has (the caller's counts show the gap).
    With ``read_committed``, EOF is the last stable offset: an open transaction hides
    everything after it.
    """
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    consumer = _consumer(bootstrap, read_committed)
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        if metadata.error is not None:
            raise KafkaException(metadata.error)
        partitions = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, -2) for p in sorted(partitions)])  # beginning
        at_end: set[int] = set()
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = consumer.consume(num_messages=10_000, timeout=0.2)
            for message in batch:
                error = message.error()
                if error is None:
                    at_end.discard(message.partition())
                    messages.append(message)
                elif error.code() == KafkaError._PARTITION_EOF:
                    at_end.add(message.partition())
                else:
                    raise KafkaException(error)
            if len(messages) >= expected and at_end >= partitions:
                break
        else:
            log.warning(
                "read_topic %s: %d/%d records, EOF on %s of %s after %.0fs",
                topic,
                len(messages),
                expected,
                sorted(at_end),
                sorted(partitions),
                timeout,
            )
        return messages
    finally:
        consumer.close()


def read_predictions(
    bootstrap: str,
    topic: str,
    read_committed: bool = False,
    expected: int = 0,
    timeout: float = 60.0,
) -> list[Prediction]:
    """The predictions on ``topic`` (see ``read_topic``), decoded; keys are checked."""
    predictions = []
    for message in read_topic(bootstrap, topic, read_committed, expected, timeout):
        prediction = _decode_prediction(message.value())
        if message.key() != prediction.customer_id.encode():
            raise AssertionError(
                f"prediction for {prediction.event_id} keyed {message.key()!r}, "
                f"not its customer {prediction.customer_id!r}"
            )
        predictions.append(prediction)
    return predictions


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition of ``topic`` (-1001: none yet)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "logger": _KAFKA_LOGGER}
    )
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        committed = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=10)
        return {tp.partition: tp.offset for tp in committed}
    finally:
        consumer.close()


def broker_filters_aborted_transactions(bootstrap: str, timeout: float = 20.0) -> bool:
    """Does a read_committed consumer on this broker skip records of aborted transactions?

    Kafka does; the Tansu broker (0.6.0) does not: it hides *open* transactions (the last
    stable offset holds) but returns an aborted transaction's records as if committed.
    Exactly-once tests use this to tell a broker limitation from a worker bug.
    """
    from confluent_kafka import Producer

    from driftline.engine.kafka.admin import TopicSpec, ensure_topics

    topic = f"probe-abort-{uuid.uuid4().hex[:12]}"
    ensure_topics(bootstrap, [TopicSpec(topic, 1, {})])
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": f"probe-{uuid.uuid4().hex}",
            "logger": _KAFKA_LOGGER,
        }
    )
    producer.init_transactions(timeout)
    producer.begin_transaction()
    producer.produce(topic, b"aborted", b"k")
    producer.flush(timeout)  # on the broker before the abort, as after a crash
    producer.abort_transaction(timeout)
    producer.begin_transaction()
    producer.produce(topic, b"committed", b"k")
    producer.commit_transaction(timeout)
    values = [m.value() for m in read_topic(bootstrap, topic, True, expected=1, timeout=timeout)]
    return values == [b"committed"]


def fence_transactional_id(bootstrap: str, transactional_id: str, timeout: float = 30.0) -> None:
    """Abort the transaction a dead producer left open under ``transactional_id``.

    Starting a producer under the same id bumps its epoch, and the coordinator aborts the
    open transaction.  Kafka does it by itself once ``transaction.timeout.ms`` passes;
    Tansu (0.6.0) never does, and while such a transaction stays open it also holds back
    every other producer's transactional offset commits for the group: the group stops
    committing for good.  Tests that kill an exactly-once worker for good call this in
    the broker's place.
    """
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": transactional_id,
            "logger": _KAFKA_LOGGER,
        }
    )
    producer.init_transactions(timeout)
    producer.flush(0)


@dataclass(frozen=True)
class TopicLayout:
    """Where records landed: end offset per partition, and customer (key) -> partition."""

    end_offsets: dict[int, int]
    partition_of: dict[str, int]
    records: int


def topic_layout(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> TopicLayout:
    """Read ``topic`` to EOF once: its end offsets and which partition each key is on.

    End offsets come from the records read, not ListOffsets (wrong on Tansu).
    """
    messages = read_topic(bootstrap, topic, False, expected, timeout)
    if len(messages) < expected:
        raise AssertionError(f"{topic}: {len(messages)} records, expected {expected}")
    ends: dict[int, int] = {}
    keys: dict[str, int] = {}
    for m in messages:
        ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
        if m.key() is not None:
            keys.setdefault(m.key().decode(errors="replace"), m.partition())
    return TopicLayout(ends, keys, len(messages))


def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    end_offsets: Mapping[int, int],
    timeout: float,
    workers: Sequence[WorkerProcess] = (),
) -> float:
    """Wait until ``group`` committed ``end_offsets`` on every partition; seconds waited.

    Raises if the timeout passes, or if every given worker has exited meanwhile.
    """
    started = time.monotonic()
    deadline = started + timeout
    committed: dict[int, int] = {}
    while time.monotonic() < deadline:
        committed = committed_offsets(bootstrap, group, topic)
        if all(committed.get(p, -1) >= end for p, end in end_offsets.items()):
            return time.monotonic() - started
        if workers and not any(w.alive for w in workers):
            tails = "\n".join(f"--- {w.name}:\n{w.log_tail()}" for w in workers)
            raise RuntimeError(f"all workers exited before committing {end_offsets}:\n{tails}")
        time.sleep(0.25)
    raise RuntimeError(
        f"group {group} committed {committed}, not {dict(end_offsets)}, after {timeout:g}s"
    )


def committed_all(bootstrap: str, group: str, topic: str, end_offsets: Mapping[int, int]) -> bool:
    committed = committed_offsets(bootstrap, group, topic)
    return all(committed.get(p, -1) >= end for p, end in end_offsets.items())
