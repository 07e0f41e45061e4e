"""Read the retained input topic back as an event table, for point-in-time retraining.

``driftline retrain`` builds its training set from the input topic itself (its retention
must cover the training history; docs/retraining.md says why this and not an archive).
What the worker would accept is what is read: values are decoded with the worker's own
decoder (``core.events.decode_batch``), so a record the worker dead-letters is left out
here too, and duplicates (at-least-once producers) are dropped by ``event_id``.

"By time": Kafka timestamps are produce times, not event times, so they only bound where
to *start*: with ``since_ms`` each partition is read from the first record produced at or
after it (``offsets_for_times``), which is safe when producers send events after they
happen.  The training window itself is cut on ``event_time``.  The end is partition EOF
as in :mod:`driftline.engine.kafka.topic_reader` (right on Tansu too); a topic that keeps
growing is read up to the point the reader first catches up with each partition.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from driftline.core.events import EventBatch, decode_batch
from driftline.engine.kafka.client_config import kafka_client_config

log = logging.getLogger(__name__)

_CHUNK = 5000


@dataclass
class History:
    """The events read (``EventBatch.to_frame`` columns) and what was left out."""

    events: pd.DataFrame
    records: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0


def read_history(
    bootstrap: str,
    topic: str,
    *,
    since_ms: int | None = None,
    timeout_s: float = 120.0,
    extra_config: dict[str, object] | None = None,
) -> History:
    """Every valid event of ``topic`` (from ``since_ms`` produce time on, if given).

    Raises ``LookupError`` when the topic does not exist, ``TimeoutError`` when the end is
    not reached in ``timeout_s`` (a training set must not silently be a part of the
    history) and ``RuntimeError`` on a broker error.
    """
    consumer = Consumer(
        kafka_client_config(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "driftline-retrain-history",  # required, never joined
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                **(extra_config or {}),
            }
        )
    )
    batches: list[EventBatch] = []
    history = History(events=pd.DataFrame())
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            raise LookupError(f"topic {topic!r} does not exist (or has no partitions)")
        partitions = sorted(metadata.partitions)
        start = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
        if since_ms is not None:
            wanted = [TopicPartition(topic, p, int(since_ms)) for p in partitions]
            found = consumer.offsets_for_times(wanted, timeout=10)
            # offset -1: nothing produced at or after since_ms there: start at the end
            start = [
                tp if tp.offset >= 0 else TopicPartition(topic, tp.partition, OFFSET_END)
                for tp in found
            ]
        pending = {tp.partition for tp in start}
        consumer.assign(start)
        deadline = time.monotonic() + timeout_s
        values: list[bytes | None] = []
        keys: list[bytes | None] = []
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} partitions {sorted(pending)} not read to the end")
            for message in consumer.consume(_CHUNK, 0.5):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        pending.discard(message.partition())
                        continue
                    raise RuntimeError(f"reading {topic}: {error}")
                values.append(message.value())
                keys.append(message.key())
            if len(values) >= _CHUNK or (not pending and values):
                _decode(values, keys, batches, history)
                values, keys = [], []
    finally:
        consumer.close()
    frame = EventBatch.concat(batches).to_frame() if batches else EventBatch.empty().to_frame()
    before = len(frame)
    frame = frame.drop_duplicates("event_id", keep="first").reset_index(drop=True)
    history.duplicates = before - len(frame)
    history.events = frame
    if history.rejected:
        log.warning(
            "%s: %d record(s) left out as the worker would dead-letter them: %s",
            topic,
            sum(history.rejected.values()),
            dict(history.rejected),
        )
    return history


def _decode(
    values: list[bytes | None],
    keys: list[bytes | None],
    batches: list[EventBatch],
    history: History,
) -> None:
    batch, rejections = decode_batch(values, keys)
    history.records += len(values)
    history.rejected.update(r.reason for r in rejections)
    if len(batch):
        batches.append(batch)
