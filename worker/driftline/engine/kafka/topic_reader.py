"""Read a whole (small) topic once, from the beginning to its end, without a group.

For the worker's own records (retrain requests, drift checkpoints) read back at start.
The end is partition EOF, which is fetch-based and right on Tansu, whose ListOffsets high
watermark is not; no consumer group is joined and nothing is committed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition

from driftline.engine.kafka.client_config import kafka_client_config


def read_to_end(bootstrap: str, topic: str, timeout_s: float = 15.0) -> Iterator[Message]:
    """Every record of ``topic`` in partition order; nothing if the topic does not exist.

    Raises ``TimeoutError`` if the end is not reached in ``timeout_s`` (a caller must not
    act on part of the history) and ``RuntimeError`` on a broker error.
    """
    consumer = Consumer(
        kafka_client_config(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "driftline-topic-reader",  # required by the client, never used
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return
        pending = set(metadata.partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in pending])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} partitions {sorted(pending)} not read to the end")
            message = consumer.poll(0.5)
            if message is None:
                continue
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                    continue
                raise RuntimeError(f"reading {topic}: {error}")
            yield message
    finally:
        consumer.close()
