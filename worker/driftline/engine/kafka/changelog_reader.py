"""Reading a changelog to its end: the one loop every restore of this engine shares.

The worker's state restore (``changelog.Changelog.restore``) and ``driftline outcomes``'
(``outcomes.OutcomeService.restore``) both read compacted changelog partitions, read
committed, from their beginning to their end before any input record of theirs is
processed.  Kept apart from ``changelog`` so the outcomes service does not import the
scoring processor to do it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from driftline.engine.kafka.client_config import kafka_client_config
from driftline.engine.kafka.errors import RestoreFailed

log = logging.getLogger(__name__)

__all__ = ["read_to_end"]


def read_to_end(
    reader_config: dict[str, Any],
    topic: str,
    partitions: list[int],
    on_record: Callable[[int, Message], None],
    *,
    timeout_s: float,
    stable_ends: Callable[[int], tuple[int, int]] | None = None,
    settle_s: float = 0.0,
    beat: Callable[[], None] = lambda: None,
) -> None:
    """Read a changelog's ``partitions`` from their beginning to their ends, read
    committed, handing every record to ``on_record`` (partition, message).

    One reader for all of them, so partitions are read in parallel.  The end is each
    partition's EOF event, not a high watermark from ListOffsets: Tansu reports the high
    watermark as the last batch's base offset + 1, so a restore that stopped there lost
    the rest of the last batch, and on Kafka a read_committed reader never reaches a high
    watermark held back by an open transaction.  Shared by the worker's restore and
    ``driftline outcomes``' (``engine.kafka.outcomes``).

    ``stable_ends`` (exactly-once writers): a partition's stable end (what read_committed
    can see) and log end.  A read_committed EOF is the last stable offset, the first
    record of the oldest transaction still open: when a writer was killed inside a
    transaction, every record committed after it stays invisible until the broker aborts
    it (its timeout), and a restore that stopped at that EOF would rebuild an old state.
    So a partition at its EOF is done only once its stable end reached its log end and
    was read to, or ``settle_s`` passed (then what is visible is restored, with a
    warning).  ``reader_config``: the reader's bootstrap servers, group id (never
    committed to), fetch wait and error callback.  Raises ``RestoreFailed`` if not done
    within ``timeout_s``.
    """
    reader = Consumer(
        kafka_client_config(
            {
                **reader_config,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )
    )
    pending = set(partitions)
    #: Exactly-once: partitions at their EOF, checked for an open transaction first.
    waiting: dict[int, int] = {}
    settle_deadline = time.monotonic() + settle_s
    try:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise RestoreFailed(
                    f"changelog {topic} partitions {sorted(pending)} not read to "
                    f"their end within {timeout_s:g} s"
                )
            for message in reader.consume(10_000, 0.2):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        p, eof_offset = _position(message)
                        if stable_ends is not None:
                            # Checked below; the EOF event's offset is where it is.
                            waiting[p] = eof_offset
                        else:
                            pending.discard(p)
                        continue
                    raise KafkaException(error)
                on_record(_position(message)[0], message)
            for p, eof_at in sorted(waiting.items()):
                assert stable_ends is not None
                # Done once nothing holds the stable end back and it has been read to.
                stable, end = stable_ends(p)
                # Aborted records and markers past the last EOF move the position on
                # without a new EOF event: the position says how far it was read.
                tp = TopicPartition(topic, p)
                at = max(eof_at, reader.position([tp])[0].offset)
                waited_out = time.monotonic() > settle_deadline
                if (stable >= 0 and stable >= end and at >= end) or waited_out:
                    if waited_out and not (stable >= end >= 0):
                        log.warning(
                            "changelog partition %d: its stable end did not reach its log "
                            "end within %.0f s; restoring what is visible",
                            p,
                            settle_s,
                        )
                    pending.discard(p)
                    del waiting[p]
                elif 0 <= stable < end:
                    log.info(
                        "changelog partition %d: an open transaction holds its stable "
                        "end at %d (log end %d): waiting for it before restoring",
                        p,
                        stable,
                        end,
                    )
            if waiting:
                time.sleep(0.2)
            beat()
    finally:
        reader.close()


def _position(message: Message) -> tuple[int, int]:
    """Partition and offset of a changelog record or EOF event (librdkafka sets both on
    those; only errors not tied to a partition lack them)."""
    partition, offset = message.partition(), message.offset()
    assert partition is not None and offset is not None
    return partition, offset
