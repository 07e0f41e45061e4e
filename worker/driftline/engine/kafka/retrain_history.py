"""Read the retrain-requests topic back, so a starting worker knows what was already asked.

The requests topic is the shared record of every worker's retrain requests (and of the
alert webhook's); :meth:`driftline.core.drift.trigger.RetrainTrigger.recall` rebuilds the
cooldown, weekly cap and in-flight gates from it.  The topic is read from the beginning to
partition EOF (fetch-based, which is right on Tansu, whose ListOffsets high watermark is
not) with no consumer group: nothing is committed.
"""

from __future__ import annotations

import logging
import time

import msgspec
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from driftline.core.drift.trigger import RetrainRequest

log = logging.getLogger(__name__)


def read_retrain_requests(
    bootstrap: str, topic: str, timeout_s: float = 15.0
) -> list[RetrainRequest]:
    """Every decodable request on ``topic`` (undecodable records are logged and skipped).

    Raises ``TimeoutError`` if the topic cannot be read to its end in ``timeout_s``: the
    caller must not guess the gates from a partial history.
    """
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "driftline-retrain-history",  # required by the client, never used
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        }
    )
    requests: list[RetrainRequest] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return requests
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
            try:
                requests.append(msgspec.json.decode(message.value(), type=RetrainRequest))
            except msgspec.DecodeError as exc:
                log.warning("skipping an undecodable record on %s: %s", topic, exc)
    finally:
        consumer.close()
    return requests
