"""Slots of customers in the packed records: allocation, growth, bounds and eviction.

``SlotStore`` adds the customers to a :class:`~driftline.core.state.layout.StateLayout`:
the id -> slot dict, the record array (with its opaque-bytes views for whole-record
copies and for the C kernel), the categorical object array, and the bounds that let a
batch skip work (applied offsets for redelivered events, window counts for int32 headroom).
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from driftline.core.spec import FeatureSpec
from driftline.core.state.layout import COUNT, COUNT_MAX, NO_TIME, StateLayout, window_peaks


class CountOverflowError(OverflowError):
    """A windowed count would exceed its dtype; raised before any state is changed."""


class SlotStore(StateLayout):
    """The customers of one partition, each a slot of the packed record array."""

    def __init__(self, spec: FeatureSpec, capacity: int) -> None:
        super().__init__(spec)
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._capacity = 0
        self._size = 0  # high-water mark of slots handed out
        #: An upper bound of ``applied_offset`` (never lowered): lets ``already_applied``
        #: skip the id lookups without scanning every slot.
        self._applied_bound = -1
        #: An upper bound of every windowed bucket count (see ``_check_headroom``).
        self._count_bound = 0
        self._rows = np.empty(0, dtype=self._record)
        self._raw = self._rows.view(f"V{self._record.itemsize}")
        self._bytes = self._rows.view(np.uint8)
        self._latest_category = np.empty((0, len(self._category_cols)), dtype=object)
        self._grow(max(capacity, 16))

    @property
    def clock(self) -> np.ndarray:
        """Each slot's clock (latest event time; ``NO_TIME``: empty), a view."""
        return self._rows["clock"]

    @property
    def first_seen(self) -> np.ndarray:
        return self._rows["first_seen"]

    @property
    def applied_offset(self) -> np.ndarray:
        return self._rows["applied_offset"]

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        rows = np.empty(capacity, dtype=self._record)
        rows[:old] = self._rows[:old]
        rows[old:] = self._empty
        self._rows = rows
        # The same bytes as opaque items: numpy copies a structured record field by field
        # but a void item with one memcpy, so rounds gather and scatter through this view.
        self._raw = rows.view(f"V{self._record.itemsize}")
        self._bytes = rows.view(np.uint8)  # the C kernel's view
        categories = np.full((capacity, len(self._category_cols)), None, dtype=object)
        categories[:old] = self._latest_category[:old]
        self._latest_category = categories
        self._capacity = capacity

    def _clear(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        self._rows[rows] = self._empty
        self._latest_category[rows] = None

    def _lookup(self, customer_ids: list[str]) -> np.ndarray:
        """Slot of each id, -1 where unknown."""
        get = self._slots.get
        return np.fromiter(map(get, customer_ids, repeat(-1)), np.int64, len(customer_ids))

    def _slots_for(self, customer_ids: list[str]) -> np.ndarray:
        """Slot of each id, allocating slots for ids not seen before."""
        slots = self._lookup(customer_ids)
        missing = np.flatnonzero(slots < 0)
        if missing.size:
            table = self._slots
            for i in missing.tolist():
                customer = customer_ids[i]
                slot = table.get(customer, -1)
                if slot < 0:  # the id may repeat in the batch
                    if self._free:
                        slot = self._free.pop()
                    else:
                        if self._size >= self._capacity:
                            self._grow(self._capacity * 2)
                        slot = self._size
                        self._size += 1
                    table[customer] = slot
                slots[i] = slot
        return slots

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, customer_id: str) -> bool:
        return customer_id in self._slots

    @property
    def nbytes(self) -> int:
        """Bytes of the per-slot arrays (the id dict and the strings are not counted)."""
        return self._rows.nbytes + self._latest_category.nbytes

    def already_applied(self, customer_ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Mask of events this state already reflects (redelivered after a crash)."""
        if len(offsets) == 0 or offsets.min() > self._applied_bound:
            return np.zeros(len(offsets), dtype=bool)  # the usual case: no id lookups
        slots = self._lookup(customer_ids.tolist())
        applied = np.where(slots >= 0, self.applied_offset[np.maximum(slots, 0)], -1)
        return offsets <= applied

    def _check_headroom(self, customers: np.ndarray, events: np.ndarray) -> None:
        """Refuse a batch that could push a window's count past int32 (never wrap).

        The bound is on a window's *total* (the sum of its buckets), which also keeps the
        int32 sums in ``Block.total`` exact.  A batch adds at most ``events`` (per
        customer) to any window; ``_count_bound`` is an upper bound of every window total,
        so the usual batch costs one addition, and only when that loose bound nears the
        limit are the counts themselves looked at.
        """
        more = int(events.max())
        if self._count_bound + more <= COUNT_MAX:
            self._count_bound += more
            return
        blocks = [
            self._rows[b.name][: self._size] for b in self._blocks if b.kind == COUNT and b.windowed
        ]
        self._count_bound = max((int(window_peaks(a).max(initial=0)) for a in blocks), default=0)
        if self._count_bound + more <= COUNT_MAX:
            self._count_bound += more
            return
        for array in blocks:
            peak = window_peaks(array[customers])
            worst = peak + events
            if worst.max() > COUNT_MAX:
                i = int(worst.argmax())
                raise CountOverflowError(
                    f"a window count of customer slot {int(customers[i])} would exceed "
                    f"{COUNT_MAX} ({int(peak[i])} now, up to {int(events[i])} more): "
                    "refusing the batch rather than wrapping"
                )
        self._count_bound += more

    def _check_batch_headroom(self, slots: np.ndarray) -> None:
        """``_check_headroom`` with the batch's size as the bound of any customer's events
        (no per-customer counts unless that loose bound nears the limit)."""
        if self._count_bound + len(slots) <= COUNT_MAX:
            self._count_bound += len(slots)
            return
        customers, events = np.unique(slots, return_counts=True)
        self._check_headroom(customers, events)

    def _raise_bounds(self, slots: np.ndarray) -> None:
        """Keep the applied-offset and count bounds true for restored slots."""
        self._applied_bound = max(self._applied_bound, int(self.applied_offset[slots].max()))
        for block in self._blocks:
            if block.kind == COUNT and block.windowed:
                peak = int(window_peaks(self._rows[block.name][slots]).max(initial=0))
                self._count_bound = max(self._count_bound, peak)

    def evict_idle(self, watermark_ms: int) -> list[str]:
        """Drop customers whose clock is older than ``watermark - eviction_after``.

        Safe at any time: a non-late event of an evicted customer is necessarily newer than
        its clock plus ``eviction_after``, so it would have started afresh anyway.
        """
        if not self._slots or watermark_ms == NO_TIME:
            return []
        limit = watermark_ms - self._evict_after
        used = np.fromiter(self._slots.values(), dtype=np.int64, count=len(self._slots))
        stale = used[self.clock[used] < limit]
        if stale.size == 0:
            return []
        stale_set = set(stale.tolist())
        evicted = [c for c, s in self._slots.items() if s in stale_set]
        for customer in evicted:
            del self._slots[customer]
        self._clear(stale)
        self._free.extend(stale.tolist())
        return evicted

    def forget(self, customer_ids: list[str]) -> None:
        """Drop customers (a changelog tombstone)."""
        slots = [self._slots.pop(c) for c in customer_ids if c in self._slots]
        if slots:
            rows = np.asarray(slots, dtype=np.int64)
            self._clear(rows)
