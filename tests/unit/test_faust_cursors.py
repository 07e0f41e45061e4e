"""The Faust engine's in-order selection (``engine.faust.cursors``), without a broker.

The broker's part (is there a record between two offsets?) is answered from a list of
the offsets a partition holds; the integration tests ask a real broker.
"""

from __future__ import annotations

import asyncio

import numpy as np

from driftline.engine.faust.cursors import RecordsBetween, run_length, select_in_order


def log_of(held: dict[int, list[int]]) -> RecordsBetween:
    """``records_between`` over partitions holding exactly the ``held`` offsets."""

    async def records_between(partition: int, start: int, end: int) -> bool:
        return any(start <= o < end for o in held[partition])

    return records_between


def select(
    batch: list[tuple[int, int]], cursors: dict[int, int], held: dict[int, list[int]]
) -> tuple[list[tuple[int, int]], dict[int, int], dict[int, int]]:
    partitions = np.array([p for p, _ in batch], np.int32)
    offsets = np.array([o for _, o in batch], np.int64)
    chosen = asyncio.run(select_in_order(partitions, offsets, cursors, log_of(held)))
    return [batch[i] for i in chosen.indexes.tolist()], chosen.cursors, chosen.holes


def test_run_length_counts_the_offsets_continuing_from_the_cursor() -> None:
    assert run_length(np.array([5, 6, 7, 9]), 5) == 3
    assert run_length(np.array([6, 7]), 5) == 0
    assert run_length(np.array([], np.int64), 5) == 0


def test_a_later_run_handed_out_before_the_dropped_events_is_not_scored() -> None:
    """Faust dropped 10..19 (stale read offset) and handed out 20..24: scoring those now
    would make the processor take 10..19 for redeliveries when they come."""
    held = {0: list(range(0, 100))}
    chosen, cursors, holes = select([(0, o) for o in range(20, 25)], {0: 10}, held)
    assert chosen == []
    assert holes == {0: 10}
    assert cursors == {0: 10}


def test_events_continuing_from_the_cursor_are_scored_in_offset_order_once() -> None:
    held = {0: list(range(100)), 1: list(range(100))}
    batch = [(1, 41), (0, 11), (1, 40), (0, 10), (0, 11), (1, 39)]
    chosen, cursors, holes = select(batch, {0: 10, 1: 40}, held)
    assert chosen == [(0, 10), (0, 11), (1, 40), (1, 41)]  # 39: scored already
    assert cursors == {0: 12, 1: 42}
    assert holes == {}


def test_a_hole_stops_the_partition_at_the_cursor_and_the_others_go_on() -> None:
    held = {0: list(range(100)), 1: list(range(100))}
    batch = [(0, 10), (0, 11), (0, 15), (0, 16), (1, 5)]
    chosen, cursors, holes = select(batch, {0: 10, 1: 5}, held)
    assert chosen == [(0, 10), (0, 11), (1, 5)]
    assert holes == {0: 12}
    assert cursors == {0: 12, 1: 6}


def test_a_gap_the_partition_really_has_is_passed() -> None:
    """Offsets the log does not hold (transaction markers, compaction) are no hole."""
    held = {0: [10, 11, 14, 15, 17]}
    chosen, cursors, holes = select([(0, o) for o in held[0]], {0: 10}, held)
    assert chosen == [(0, o) for o in held[0]]
    assert holes == {}
    assert cursors == {0: 18}


def test_partitions_the_worker_does_not_own_are_left_to_their_owner() -> None:
    held = {0: list(range(10)), 3: list(range(10))}
    chosen, cursors, holes = select([(3, 0), (0, 0), (3, 1)], {0: 0}, held)
    assert chosen == [(0, 0)]
    assert cursors == {0: 1}
    assert holes == {}
