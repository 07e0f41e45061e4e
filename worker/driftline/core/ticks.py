"""Scheduled re-scoring: event-time ticks, and a partition's batch applied around them.

A worker that scores only when an event arrives never re-scores the customers who go
quiet, and those are the churners.  So at every *tick* (event-time boundaries every
``period``, aligned to the epoch: ``1d`` ticks at 00:00 UTC) every customer held in a
partition's state is scored again, with its features as of the boundary
(``FeatureState.features_at``).

**The rule, per partition.**  A partition's tick at boundary ``T`` fires just before the
first event of that partition, in arrival order, dated after ``T`` (its *event-time high
mark*, the greatest accepted event time, crosses ``T``).  At that point the state holds
exactly the partition's events up to ``T`` (none after it), so the features as of ``T``
are exact: the same ones a training row at cutoff ``T`` gets (``core.offline``).  Per
partition, not per worker: a partition's order is fixed, so which events precede a tick
does not depend on how its events were cut into batches or interleaved with other
partitions'; and a partition's customers live in its state only.  Event time, not wall
time: a replay of last year's log ticks once per day of the log.

Why the high mark and not the watermark (the front minus the allowed lateness): when the
watermark passes ``T``, events after ``T`` are already in the state, and a window cannot
take them out again.  The price: an event dated at or before ``T`` that arrives after the
partition's first event past ``T`` (late, but within the allowed lateness) updates the
state and gets its own prediction, but is not in tick ``T`` (the training set, built from
a history in event-time order, has it: streams out of order by more than a tick's
lead differ there).  A single event dated ahead of its partition fires the tick early by
as much; the future-event rule (``core.clock_skew``) bounds that lead to the clock skew
(live) or the replay jump (replays).

A partition whose clock jumps over several boundaries (a quiet week) fires each of them,
in order, each with the features as of its own boundary; boundaries later than the old
high mark plus the eviction horizon are skipped (nobody is left in state to score).

The high mark is the partition's ``PartitionWatermark.max_event_time_ms``, which the
changelog restores (the value before or after the last batch, whichever the committed
offsets say): a batch consumed again after a crash or a rewind fires the same ticks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from driftline.core.events import EventBatch
from driftline.core.spec import DAY_MS, SpecError, parse_duration_ms
from driftline.core.state import NO_TIME, FeatureBlock, FeatureState

#: The default tick period: daily, at 00:00 UTC.
DEFAULT_TICK_MS = DAY_MS
#: The value of ``--tick`` that turns ticks off.
TICK_OFF = "off"


def parse_tick(text: str) -> int | None:
    """``--tick``: a duration (``1d``, ``6h``, ``1w``) or ``off`` (None)."""
    if text.strip().lower() == TICK_OFF:
        return None
    period = parse_duration_ms(text)
    if period <= 0:
        raise SpecError(f"bad tick period {text!r}: must be positive, or 'off'")
    if DAY_MS % period and period % DAY_MS:
        raise SpecError(
            f"bad tick period {text!r}: use a divisor or a multiple of a day (1h, 6h, 1d, "
            "7d), so that ticks fall at the same times every day"
        )
    return period


@dataclass(frozen=True, slots=True)
class Crossings:
    """The ticks a partition's events fire: ``positions[i]`` is the index of the event
    before which the tick at ``boundaries[i]`` fires (ascending, boundaries ascending
    within one position)."""

    positions: np.ndarray
    boundaries: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)


def crossings(period_ms: int, high_mark_ms: int, times: np.ndarray, horizon_ms: int) -> Crossings:
    """The boundaries ``times`` (a partition's accepted event times, in arrival order)
    cross after ``high_mark_ms`` (its greatest event time before them; ``NO_TIME``: none).

    Boundary ``T`` fires before event ``i`` when the running high mark before ``i`` is at
    most ``T`` and ``times[i] > T``.  A partition with no event yet fires nothing at its
    first event.  Boundaries beyond the high mark plus ``horizon_ms`` (the eviction
    horizon) are left out: nobody is in state to score there.
    """
    times = np.asarray(times, dtype=np.int64)
    none = Crossings(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    if times.size == 0:
        return none
    running = np.maximum.accumulate(times)
    before = np.empty_like(running)
    before[0] = high_mark_ms
    before[1:] = np.maximum(running[:-1], high_mark_ms)
    known = before != NO_TIME
    before = np.where(known, before, times)  # no high mark yet: nothing to cross
    # First boundary at or after the high mark; first at or after the event (exclusive).
    first = -(-before // period_ms)
    last = np.minimum(-(-times // period_ms), (before + horizon_ms) // period_ms + 1)
    count = np.where(known, np.maximum(last - first, 0), 0)
    if not count.any():
        return none
    positions = np.repeat(np.arange(len(times)), count)
    starts = np.repeat(first, count)
    within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    return Crossings(positions, (starts + within) * period_ms)


@dataclass(slots=True)
class Tick:
    """One partition's tick: who was scored as of ``boundary_ms``, with which features."""

    partition: int
    boundary_ms: int
    #: Raw index and input offset of the event whose arrival fired it.
    source_index: int
    source_offset: int
    customer_ids: list[str]
    block: FeatureBlock
    #: Seconds spent on it: the features here; the scoring and encoding are added later.
    seconds: float

    def __len__(self) -> int:
        return len(self.customer_ids)


@dataclass(slots=True)
class PartitionUpdate:
    """A partition's part of a batch applied to its state, with the ticks it fired."""

    block: FeatureBlock
    ticks: list[Tick] = field(default_factory=list)


def apply_with_ticks(
    state: FeatureState,
    part: EventBatch,
    offsets: np.ndarray,
    *,
    partition: int,
    period_ms: int | None,
    high_mark_ms: int,
    skip: np.ndarray | None = None,
    from_ms: int | None = None,
) -> PartitionUpdate:
    """Apply a partition's accepted events (arrival order) to its state, firing the ticks
    they cross on the way (see the module docstring).

    ``high_mark_ms`` is the partition's greatest event time before ``part``.  ``skip``
    marks events the state already holds (redelivered): they still move the high mark,
    as they did when first applied, but are not applied again.  ``from_ms``: boundaries
    before it fire nothing (a replay that only warms the state up, then goes live).
    Returns the events' features (rows of the applied events, in order) and the ticks.
    """
    found = (
        crossings(period_ms, high_mark_ms, part.event_time_ms, state.spec.eviction_after_ms)
        if period_ms is not None
        else None
    )
    if found is not None and from_ms is not None and len(found):
        wanted = found.boundaries >= from_ms
        found = Crossings(found.positions[wanted], found.boundaries[wanted])
    if found is None or not len(found):  # the usual batch: no boundary crossed
        if skip is None:
            return PartitionUpdate(state.update_block(part, offsets))
        rows = np.flatnonzero(~skip)
        return PartitionUpdate(state.update_block(part.take(rows), offsets[rows]))
    keep = np.ones(len(part), dtype=bool) if skip is None else ~skip
    blocks: list[FeatureBlock] = []
    ticks: list[Tick] = []
    start = 0
    for position, boundary in zip(found.positions.tolist(), found.boundaries.tolist(), strict=True):
        if position > start:
            blocks.append(_apply(state, part, offsets, keep, start, position))
            start = position
        t0 = time.perf_counter()
        as_of = state.features_at(boundary)
        ticks.append(
            Tick(
                partition=partition,
                boundary_ms=boundary,
                source_index=int(part.index[position]),
                source_offset=int(offsets[position]),
                customer_ids=as_of.customer_ids,
                block=as_of.block,
                seconds=time.perf_counter() - t0,
            )
        )
    blocks.append(_apply(state, part, offsets, keep, start, len(part)))
    return PartitionUpdate(FeatureBlock.concat(blocks), ticks)


def _apply(
    state: FeatureState,
    part: EventBatch,
    offsets: np.ndarray,
    keep: np.ndarray,
    lo: int,
    hi: int,
) -> FeatureBlock:
    rows = lo + np.flatnonzero(keep[lo:hi])
    return state.update_block(part.take(rows), offsets[rows])
