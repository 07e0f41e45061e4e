"""Each partition's events to the processor in offset order, from where the group stands.

The processor relies on each partition's events coming in offset order from the
committed offset, as a Kafka consumer hands them out: a redelivered event is told by
the customer's applied offset, and event time moves the partition's watermark and replay
clock.  Faust does not keep that order around a rebalance (issue #15):

- events fetched before the rebalance wait in the agent's take buffer and are handed out
  after it, before Faust's seek back to the committed offset brings the events between.
  On 2026-12-05 (old code, Kafka 4.4) a worker kept partition 2 with offsets 2013-2356
  scored but only 2013 committed, scored the buffered 2357-2373 first (the restored
  replay clock took 2357-2359 for future-dated events: dead-lettered), and when
  2013-2373 came again the watermark had moved past them (dead-lettered as late): three
  events never got a prediction;
- a fetcher left with a stale read offset after a revocation drops the first events it
  fetches again and hands out later ones; the dropped ones come only after Faust's seek,
  when the processor takes them for redeliveries or late events.

So the worker keeps, per partition it owns, a cursor: the next offset to score, first the
group's committed offset (the one Faust seeks to).  Of a batch's events it scores, per
partition, the run that continues from the cursor; events below it were scored already
and are dropped.  An offset past the cursor is a gap: a real one (a transaction marker, a
compacted or deleted record) if the partition holds no record between the two, which the
broker is asked; otherwise a hole, and the partition is sought back to the cursor so
that the missing events come again, in order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition

#: ``records_between(partition, start, end)``: does the partition hold a record with an
#: offset in ``[start, end)``?
RecordsBetween = Callable[[int, int, int], Awaitable[bool]]


@dataclass
class Selection:
    """What of a batch to score, and where each partition's cursor stands after it."""

    #: Indexes into the batch of the events to score, by partition then offset.
    indexes: np.ndarray
    #: Each partition's cursor once the selected events are scored.
    cursors: dict[int, int] = field(default_factory=dict)
    #: Partitions with a hole: the offset to seek them back to (their cursor).
    holes: dict[int, int] = field(default_factory=dict)
    #: Events left out: not owned, already scored, or after a hole.
    dropped: int = 0


def run_length(offsets: np.ndarray, cursor: int) -> int:
    """How many of the sorted, distinct ``offsets`` continue from ``cursor`` one by one."""
    expected = np.arange(cursor, cursor + len(offsets), dtype=np.int64)
    breaks = np.flatnonzero(offsets != expected)
    return int(breaks[0]) if breaks.size else len(offsets)


async def select_in_order(
    partitions: np.ndarray,
    offsets: np.ndarray,
    cursors: Mapping[int, int],
    records_between: RecordsBetween,
) -> Selection:
    """The events of owned partitions (those in ``cursors``) that continue from the
    partitions' cursors, in offset order; a repeated offset once."""
    chosen: list[np.ndarray] = []
    selection = Selection(np.empty(0, np.int64))
    for p in np.unique(partitions).tolist():
        at = np.flatnonzero(partitions == p)
        cursor = cursors.get(p)
        if cursor is None:  # not this worker's partition (any more)
            continue
        order = at[np.argsort(offsets[at], kind="stable")]
        unique, first = np.unique(offsets[order], return_index=True)
        order = order[first]
        i = int(np.searchsorted(unique, cursor))  # below the cursor: scored already
        while i < len(unique):
            n = run_length(unique[i:], cursor)
            chosen.append(order[i : i + n])
            cursor += n
            i += n
            if i == len(unique):
                break
            if await records_between(p, cursor, int(unique[i])):
                selection.holes[p] = cursor
                break
            cursor = int(unique[i])  # a real gap: nothing to score in it
        selection.cursors[p] = cursor
    selection.indexes = np.concatenate(chosen) if chosen else np.empty(0, np.int64)
    selection.dropped = len(partitions) - len(selection.indexes)
    return selection


class GapProbe:
    """Answers ``records_between`` from the broker, with one consumer of its own."""

    def __init__(self, bootstrap: str, topic: str, timeout_s: float = 10.0) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout_s = timeout_s
        self._consumer: AIOKafkaConsumer | None = None
        self.asked = 0
        #: Per partition, the last hole found, ``(start, end)``: a batch after a hole
        #: usually holds more events past it, and the answer for them is the same.
        self._holes: dict[int, tuple[int, int]] = {}

    async def records_between(self, partition: int, start: int, end: int) -> bool:
        """True if the partition has a record in ``[start, end)``, or if that could not
        be told in time (then the caller seeks back: a needless re-read, never a loss)."""
        known = self._holes.get(partition)
        if known is not None and known[0] == start and known[1] <= end:
            return True
        self.asked += 1
        if self._consumer is None:
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",  # below the log start: from its start
            )
            await self._consumer.start()
        consumer = self._consumer
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            fetched = await consumer.getmany(tp, timeout_ms=500, max_records=1)
            for record in fetched.get(tp, []):
                if record.offset >= end:
                    return False
                self._holes[partition] = (start, end)
                return True
            await asyncio.sleep(0)
        return True

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
