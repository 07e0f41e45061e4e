"""Features of every customer held, as of an event time ``T`` (a tick), read-only.

A customer's record holds its windows *as of its clock* (its latest event time): each
ring is aligned to the clock (``layout``).  The features as of a later time ``T`` are what
the same record would give if the clock moved on to ``T`` with no new event: the ring
buckets that slide out between the clock's bucket and ``T``'s are left out of the totals
(the same ``_sliding`` table the update paths use to clear them), and ``time_since_last``
and the tenure are measured to ``T``.  Nothing is written: the state after a tick is the
state before it, so ticks cannot change any event's features.

Who is scored at ``T``: every customer whose clock lies in ``[T - eviction_after, T]``.
A customer idle for longer is gone by the state's own rule (its next event would start it
afresh; the eviction sweep drops it), and whether the sweep has run yet depends on wall
time, so it must not decide who a tick scores.  A customer whose clock is after ``T``
already holds events after ``T``, which cannot be taken out again; an engine fires a tick
before the first event past it, so this only happens to state restored ahead of its
offsets (an at-least-once redelivery), and such a customer has a fresher prediction.

The work is numpy over all customers, a chunk of records at a time (a chunk's gathered
records and masks stay a few MB whatever the state's size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from driftline.core.state.features import FeatureBlock, FeatureDerivation, Readings
from driftline.core.state.store import SlotStore

#: Records gathered per chunk: at ~1 KB a record (the default spec), ~8 MB a chunk.
AS_OF_CHUNK = 8192


@dataclass(slots=True)
class AsOf:
    """The customers scored as of one time, and their features (rows in that order)."""

    at_ms: int
    customer_ids: list[str]
    #: Each customer's clock (its latest event time, at most ``at_ms``).
    clock: np.ndarray
    block: FeatureBlock

    def __len__(self) -> int:
        return len(self.customer_ids)


class AsOfReader(SlotStore, FeatureDerivation):
    """Mixin of ``FeatureState``: features of every live customer as of a time."""

    def features_at(self, at_ms: int) -> AsOf:
        """Every customer with a clock in ``[at_ms - eviction_after, at_ms]``, with its
        features as of ``at_ms`` (see the module docstring); the state is not changed."""
        at_ms = int(at_ms)
        ids = np.fromiter(self._slots.keys(), dtype=object, count=len(self._slots))
        slots = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        clock = self.clock[slots]
        live = (clock <= at_ms) & (clock >= at_ms - self._evict_after)
        if not live.all():
            ids, slots, clock = ids[live], slots[live], clock[live]
        blocks = [
            self._features_at_slots(slots[lo : lo + AS_OF_CHUNK], at_ms)
            for lo in range(0, len(slots), AS_OF_CHUNK)
        ]
        block = FeatureBlock.concat(blocks) if blocks else FeatureBlock.empty(self._frame_layout)
        return AsOf(at_ms, ids.tolist(), clock, block)

    def features_of(self, customer_id: str) -> tuple[int, int, FeatureBlock] | None:
        """One customer's clock (its latest event time), the input offset of the latest
        event its record holds, and its features as of that clock; None if it is not
        held.  For a customer whose events came in event-time
        order these are the features its latest event was scored with (read-only: the
        serving replica answers ``GET /customers/{id}`` with it)."""
        slot = self._slots.get(customer_id)
        if slot is None:
            return None
        clock = int(self.clock[slot])
        offset = int(self.applied_offset[slot])
        return clock, offset, self._features_at_slots(np.array([slot], dtype=np.int64), clock)

    def _features_at_slots(self, slots: np.ndarray, at_ms: int) -> FeatureBlock:
        rows = self._rows[slots]
        m = len(slots)
        clock = rows["clock"]
        keep = None
        if self._windows:
            # (customers, windows, ring positions): what each window still holds at T.
            width = self._bucket_ms
            then = clock[:, None] // width
            moved = np.minimum(at_ms // width - then, self._n)
            keep = ~self._sliding[then % self._n, moved]
        totals: list[np.ndarray] = []
        for block in self._blocks:
            held = rows[block.name]
            if block.windowed:
                assert keep is not None
                held = np.where(keep[:, block.window_index, :], held, block.identity).astype(
                    block.dtype, copy=False
                )
            totals.append(block.total(np.ascontiguousarray(held)))
        n_latest = len(self._latest_sources)
        readings = Readings(
            clock=np.full(m, at_ms, dtype=np.int64),
            first_seen=rows["first_seen"],
            totals=totals,
            latest_time=rows["latest_time"] if n_latest else np.empty((m, 0), dtype=np.int64),
            latest_value=(
                rows["latest_value"] if self._value_cols else np.empty((m, 0), dtype=np.float64)
            ),
            latest_category=self._latest_category[slots],
        )
        numeric, categorical = self._features(readings)
        return FeatureBlock(self._frame_layout, numeric, categorical)
