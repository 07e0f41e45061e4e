"""State restore from Driftline's changelog, read with aiokafka inside the Faust app.

The Faust engine keeps its state where the Kafka engine keeps it: the compacted topic
``<group>-<input>-changelog``, one record per customer snapshot plus a watermark record
per partition (``driftline.processor``).  A Faust table was not used: a table's changelog
is Faust's own topic and format, so state would not move between the engines, and a
table holds one Python value per key where the processor keeps numpy blocks per
partition.  With the same topic, a group can switch engine and keep its state.

The restore reads a partition's changelog from the beginning to the end offset it had
when the restore began (``read_committed``: records of an exactly-once Kafka-engine
transaction that did not commit stay unseen), and asks the group's committed input
offset, which tells the processor which watermark record to trust.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition


class RestoreFailed(RuntimeError):
    """A partition's state could not be restored: processing it would give wrong scores."""


@dataclass
class Restored:
    """What a restore read, per partition."""

    #: Latest value per changelog key (None: a tombstone), in the order first seen.
    latest: dict[int, dict[bytes, bytes | None]] = field(default_factory=dict)
    #: Changelog records read.
    records: dict[int, int] = field(default_factory=dict)
    #: The group's committed input offset (-1: none yet).
    committed: dict[int, int] = field(default_factory=dict)
    #: Where the group's consumer starts reading the input partition (``group_positions``).
    starts: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


async def group_positions(
    bootstrap: str, group_id: str, topic: str, partitions: list[int]
) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets of ``topic``'s ``partitions`` (-1: none), and where
    its consumer starts reading each: the committed offset, or the partition's first
    offset when there is none (``auto.offset.reset=earliest``)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        committed: dict[int, int] = {}
        for p in partitions:
            offset = await consumer.committed(TopicPartition(topic, p))
            committed[p] = -1 if offset is None else int(offset)
        unset = [TopicPartition(topic, p) for p, offset in committed.items() if offset < 0]
        first = await consumer.beginning_offsets(unset) if unset else {}
        starts = {p: offset for p, offset in committed.items() if offset >= 0}
        starts.update({tp.partition: int(offset) for tp, offset in first.items()})
        return committed, starts
    finally:
        await consumer.stop()


async def read_changelog(
    bootstrap: str,
    changelog_topic: str,
    partitions: list[int],
    timeout_s: float,
) -> tuple[dict[int, dict[bytes, bytes | None]], dict[int, int]]:
    """Latest value per key of each changelog partition, and the records read.

    The end is each partition's end offset when the read begins: what was written before
    this worker owned the partition.  (Nothing else writes it meanwhile: the partition's
    input is this worker's now.)
    """
    latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in partitions}
    records = dict.fromkeys(partitions, 0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        tps = [TopicPartition(changelog_topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        pending = {tp for tp in tps if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        while pending:
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
            if not pending:
                break
            if time.monotonic() > deadline:
                raise RestoreFailed(
                    f"changelog {changelog_topic} partitions "
                    f"{sorted(tp.partition for tp in pending)} not read to their end within "
                    f"{timeout_s:g} s"
                )
            batches = await consumer.getmany(*pending, timeout_ms=200, max_records=10_000)
            for tp, messages in batches.items():
                table = latest[tp.partition]
                for message in messages:
                    table[message.key or b""] = message.value
                records[tp.partition] += len(messages)
    finally:
        await consumer.stop()
    return latest, records


async def restore(
    bootstrap: str,
    group_id: str,
    input_topic: str,
    changelog_topic: str,
    partitions: list[int],
    timeout_s: float,
) -> Restored:
    """Everything ``ScoringProcessor.restore`` needs for ``partitions``."""
    started = time.perf_counter()
    committed, starts = await group_positions(bootstrap, group_id, input_topic, partitions)
    latest, records = await read_changelog(bootstrap, changelog_topic, partitions, timeout_s)
    return Restored(latest, records, committed, starts, time.perf_counter() - started)
