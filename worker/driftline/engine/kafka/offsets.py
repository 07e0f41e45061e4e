"""What the broker holds: the group's committed input offsets and the changelog's ends.

Asked through an admin client of the worker's own, never the group consumer (see
``BrokerOffsets.committed``).  Used at assignment and by the exactly-once rewind (the
committed offsets) and by the changelog restore (its ends).
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.ports import kafka_error_of

log = logging.getLogger(__name__)

#: Times the committed offsets are asked for at assignment before giving up (a timeout,
#: or offsets held by an open transaction, which its transaction timeout ends).
COMMITTED_ATTEMPTS = 30


class BrokerOffsets:
    """One admin client, asked for offsets; replaced when its metadata went stale."""

    def __init__(
        self, bootstrap_servers: str, group_id: str, input_topic: str, changelog_topic: str
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.input_topic = input_topic
        self.changelog_topic = changelog_topic
        self._admin: AdminClient | None = None

    def _client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(
                kafka_client_config({"bootstrap.servers": self.bootstrap_servers})
            )
        return self._admin

    def committed(self, partitions: list[int]) -> dict[int, int]:
        """The group's committed input offset per partition (negative: none yet).

        Asked through an admin client of its own, not the consumer: the consumer asks
        from inside its assignment callback, and there (Apache Kafka 4.4, librdkafka
        2.16) a restarted member's request went unanswered for minutes, in ~1 of 2 runs
        of the drift restart test; the admin client's answer comes in milliseconds.
        Stable offsets (``require_stable``): a transaction still open on them is waited
        for, as a read_committed consumer would.  Asked again (a timeout, or offsets
        still held by an open transaction) up to COMMITTED_ATTEMPTS times.
        """
        asked = [TopicPartition(self.input_topic, p) for p in partitions]
        admin = self._client()
        for attempt in range(1, COMMITTED_ATTEMPTS + 1):
            request = [ConsumerGroupTopicPartitions(self.group_id, asked)]
            futures = admin.list_consumer_group_offsets(
                request, require_stable=True, request_timeout=30
            )
            try:
                answer = futures[self.group_id].result(timeout=35)
            except KafkaException as error:
                kafka_error = kafka_error_of(error)
                retriable = kafka_error is not None and kafka_error.retriable()
                if not retriable or attempt == COMMITTED_ATTEMPTS:
                    raise
                log.warning("committed offsets of %s: %s; asking again", partitions, error)
                continue
            answered: list[TopicPartition] = answer.topic_partitions or []
            unstable = [tp for tp in answered if tp.error is not None]
            if not unstable:
                return {tp.partition: tp.offset for tp in answered}
            # UNSTABLE_OFFSET_COMMIT: a transaction holding offsets for these partitions
            # is still open (a predecessor killed inside it); it ends by its timeout.
            if attempt == COMMITTED_ATTEMPTS:
                raise KafkaException(unstable[0].error)
            log.warning("committed offsets of %s: %s; asking again", partitions, unstable[0].error)
            time.sleep(1.0)
        raise AssertionError("unreachable")

    def changelog_ends(self, partition: int) -> tuple[int, int]:
        """The changelog partition's stable end (what read_committed can see) and log end.

        A read_committed reader's EOF is the last stable offset: the first record of the
        oldest transaction still open.  When a worker was killed inside a transaction,
        its records sit there until the broker aborts it (its transaction timeout), and
        every record committed after them (this worker's own batches of the partition
        since it took over) stays invisible until then: an exactly-once restore that
        stopped at that EOF would rebuild the state of long before the committed offsets
        (seen on Kafka: a rewind during a rebalance restored 665 of ~3,000 records, and
        3,944 later scores were wrong).  So it waits until stable end = log end.
        """
        from confluent_kafka import IsolationLevel
        from confluent_kafka.admin import OffsetSpec

        tp = TopicPartition(self.changelog_topic, partition)
        ends = []
        for level in (IsolationLevel.READ_COMMITTED, IsolationLevel.READ_UNCOMMITTED):
            futures = self._client().list_offsets(
                # OffsetSpec.latest is not annotated in confluent_kafka.
                {tp: OffsetSpec.latest()},  # type: ignore[no-untyped-call]
                isolation_level=level,
                request_timeout=10,
            )
            try:
                ends.append(next(iter(futures.values())).result(timeout=15).offset)
            except KafkaException as error:
                # A broker just back from a freeze answers FENCED_LEADER_EPOCH and the
                # like for a moment: not known yet, asked again (the restore deadline
                # bounds the wait).
                log.info("changelog partition %d: end offsets not known yet: %s", partition, error)
                self._admin = None  # a fresh client, with fresh metadata, next time
                return -1, 0
        return ends[0], ends[1]
