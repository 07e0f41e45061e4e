"""Faust's consumed messages as the processor and the dead-letter code want them.

The processor takes parallel columns (``RawBatch``); the dead-letter headers are built
by the Kafka engine's own functions (``engine.kafka.dead_letters``) so that both engines
write the same headers byte for byte.  Those functions read a confluent-kafka ``Message``;
``SourceRecord`` answers the same accessors from a Faust ``ConsumerMessage``.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from driftline.processor import RawBatch

#: confluent-kafka's ``TIMESTAMP_NOT_AVAILABLE`` / ``TIMESTAMP_CREATE_TIME``: the dead-letter
#: code leaves out the source timestamp header when there is none.
_NO_TIMESTAMP = 0
_CREATE_TIME = 1


class SourceRecord:
    """A consumed record with confluent-kafka's ``Message`` accessors (read-only)."""

    __slots__ = ("_headers", "_key", "_offset", "_partition", "_timestamp_ms", "_value")

    def __init__(
        self,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        timestamp_ms: int | None,
        headers: Sequence[tuple[str, bytes | None]] | None,
    ) -> None:
        self._partition = partition
        self._offset = offset
        self._key = key
        self._value = value
        self._timestamp_ms = timestamp_ms
        self._headers = list(headers) if headers else None

    @classmethod
    def of(cls, message: Any) -> SourceRecord:
        """From a Faust ``ConsumerMessage`` (timestamp in float seconds, from the ms)."""
        timestamp = message.timestamp
        return cls(
            int(message.partition),
            int(message.offset),
            message.key,
            message.value,
            None if timestamp is None else round(timestamp * 1000.0),
            message.headers,
        )

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def headers(self) -> list[tuple[str, bytes | None]] | None:
        return self._headers

    def timestamp(self) -> tuple[int, int]:
        if self._timestamp_ms is None:
            return _NO_TIMESTAMP, -1
        return _CREATE_TIME, self._timestamp_ms


def raw_batch(topic: str, records: Sequence[SourceRecord]) -> RawBatch:
    """The processor's columns for a batch of records (one array conversion each)."""
    return RawBatch(
        topic=topic,
        values=[r.value() for r in records],
        keys=[r.key() for r in records],
        partitions=np.array([r.partition() for r in records], np.int32),
        offsets=np.array([r.offset() for r in records], np.int64),
        timestamps=np.array([r.timestamp()[1] for r in records], np.int64),
    )


def next_offsets(raw: RawBatch) -> dict[int, int]:
    """Per partition of the batch: the offset after its last record."""
    return {
        p: int(raw.offsets[raw.partitions == p].max()) + 1
        for p in np.unique(raw.partitions).tolist()
    }


def consistent_partition(
    key: bytes | None, all_partitions: Sequence[int], available: Sequence[int]
) -> int:
    """librdkafka's default partitioner (``consistent_random``), for aiokafka.

    The Kafka engine's producer puts a keyed record on ``crc32(key) % partitions``;
    aiokafka's default (murmur2, the Java client's) would put the same customer's
    predictions on another partition, and a reader following one customer across an
    engine switch would see them out of order.  Keyless records go to a random
    available partition, as librdkafka's do.
    """
    if key is None:
        return random.choice(list(available or all_partitions))
    return sorted(all_partitions)[zlib.crc32(key) % len(all_partitions)]
