"""The numpy update path: a batch applied in rounds (the fallback without the C kernel).

Round ``r`` holds the ``r``-th event of every customer in the batch, so inside a round every
customer appears at most once and numpy fancy indexing updates all of them at once.  It is
also the oracle the tests hold the C kernel to: same records, same features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftline.core.events import EventBatch
from driftline.core.state.features import Readings
from driftline.core.state.layout import COUNT, MIN, NO_TIME, SUM
from driftline.core.state.store import SlotStore


def segmented_cummax(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Running maximum of int64 ``values`` restarting wherever ``starts`` is True.

    Each segment is lifted above all earlier ones by an offset so that one
    ``maximum.accumulate`` does every segment; when the offsets could overflow int64
    (absurd time spans), pandas' grouped cummax does it instead.
    """
    low = int(values.min())
    span = int(values.max()) - low + 1
    segment = np.cumsum(starts) - 1
    if span * (int(segment[-1]) + 1) < 2**62:
        lift = segment * span - low
        lifted: np.ndarray = np.maximum.accumulate(values + lift) - lift
        return lifted
    grouped: np.ndarray = pd.Series(values).groupby(segment).cummax().to_numpy()
    return grouped


@dataclass(slots=True)
class Rounds:
    """One batch in round order (round ``r`` is ``[bounds[r], bounds[r+1])``), with each
    event's clock before and after it, known before any round runs."""

    order: np.ndarray  # round position -> batch row
    bounds: np.ndarray
    slots: np.ndarray
    times: np.ndarray
    clock: np.ndarray  # the customer's clock after the event
    previous: np.ndarray  # ... before it (NO_TIME: new customer)
    expired: np.ndarray  # the event starts its customer afresh
    position: np.ndarray  # index of the event inside its round
    customers: np.ndarray  # distinct slots of the batch
    last: np.ndarray  # batch row of each customer's last event


class NumpyRounds(SlotStore):
    """Mixin of ``FeatureState``: plan a batch's rounds and apply them with numpy."""

    def _plan_rounds(self, slots: np.ndarray, times: np.ndarray) -> Rounds:
        """Order the batch by round, and work out every event's clock up front.

        A customer's clock after an event is the running maximum of its event times (an
        eviction restarts the clock at the event's time, which is that maximum anyway),
        so the clocks of the whole batch are one segmented ``maximum.accumulate`` and the
        rounds need not compute them one after the other.  The count headroom is checked
        here too, before anything changes.
        """
        n = len(slots)
        by_customer = np.argsort(slots, kind="stable")
        sorted_slots = slots[by_customer]
        starts_mask = np.empty(n, dtype=bool)
        starts_mask[0] = True
        np.not_equal(sorted_slots[1:], sorted_slots[:-1], out=starts_mask[1:])
        starts = np.flatnonzero(starts_mask)
        per_customer = np.empty_like(starts)
        np.subtract(starts[1:], starts[:-1], out=per_customer[:-1])
        per_customer[-1] = n - starts[-1]
        customers = sorted_slots[starts]
        self._check_headroom(customers, per_customer)
        # The last event of each customer (a stable sort keeps arrival order within one).
        last = by_customer[starts + per_customer - 1]

        sorted_times = times[by_customer]
        stored = self.clock[sorted_slots]
        clock = np.maximum(segmented_cummax(sorted_times, starts_mask), stored)
        previous = np.empty_like(clock)
        previous[1:] = clock[:-1]
        previous[starts] = stored[starts]
        known = previous != NO_TIME
        expired = known & (sorted_times > np.where(known, previous, 0) + self._evict_after)

        # Sorted-by-customer index of each batch row.
        inverse = np.empty(n, dtype=np.int64)
        inverse[by_customer] = np.arange(n)
        if len(starts) == n:  # every customer once: a single round, in batch order
            order = np.arange(n)
            bounds = np.array([0, n])
            position = order
            to_round = inverse
        else:
            rank = np.empty(n, dtype=np.int64)
            rank[by_customer] = np.arange(n) - np.repeat(starts, per_customer)
            order = np.argsort(rank, kind="stable")
            bounds = np.concatenate(([0], np.cumsum(np.bincount(rank))))
            position = np.arange(n) - np.repeat(bounds[:-1], np.diff(bounds))
            to_round = inverse[order]
        return Rounds(
            order=order,
            bounds=bounds,
            slots=sorted_slots[to_round],
            times=sorted_times[to_round],
            clock=clock[to_round],
            previous=previous[to_round],
            expired=expired[to_round],
            position=position,
            customers=customers,
            last=last,
        )

    def _apply(self, batch: EventBatch, rounds: Rounds) -> Readings:
        """Apply the rounds; return the raw per-event readings, in round order.

        Everything that does not depend on the state a round leaves behind is computed
        for the whole batch first (what each event adds where, which ring buckets slide
        out); a round is then a gather, a few in-place updates and a scatter per block.
        """
        order, bounds, all_slots, all_times = (
            rounds.order,
            rounds.bounds,
            rounds.slots,
            rounds.times,
        )
        n_events, n = len(order), self._n
        types = batch.event_type[order]
        fresh = (rounds.previous == NO_TIME) | rounds.expired
        # Per event, per field: the value (NaN: absent); one extra all-present column for
        # keys without a field.
        values = self._field_values(batch, order)
        present = ~np.isnan(values)

        if self._windows:
            width = self._bucket_ms
            bucket = all_times[:, None] // width  # (events, windows)
            now = rounds.clock[:, None] // width
            then = np.where(fresh, rounds.clock, rounds.previous)[:, None] // width
            in_window = bucket > now - n
            moved = now - then  # buckets each ring moves on by (0: fresh or same bucket)
            slid = moved != 0
            slid_any = slid.any(axis=1)
            round_slides = np.logical_or.reduceat(slid_any, bounds[:-1])
            then_at, moved_by = then % n, np.minimum(moved, n)
        round_expires = np.logical_or.reduceat(rounds.expired, bounds[:-1])

        # Per block and event: what the event adds to each key (the identity where it does
        # not count), the flat index of its bucket in the round's copy of the block, and the
        # ring buckets to keep when the clock moved on.
        contributions: list[np.ndarray] = []
        targets: list[np.ndarray] = []
        keeps: list[np.ndarray | None] = []
        for block in self._blocks:
            counts = block.type_table[types] & present[:, block.field_index]
            keep = None
            key_base = np.arange(len(block.keys)) * block.buckets
            if block.windowed:
                wi = block.window_index
                counts &= in_window[:, wi]
                target = bucket[:, wi] % n + key_base
                if round_slides.any():
                    keep = ~self._sliding[then_at[:, wi], moved_by[:, wi]]
            else:
                target = np.broadcast_to(key_base, (n_events, len(block.keys)))
            target = target + (rounds.position * block.buckets * len(block.keys))[:, None]
            if block.kind == COUNT:
                contributions.append(counts.astype(block.dtype))
            else:
                contributions.append(np.where(counts, values[:, block.field_index], block.identity))
            targets.append(target)
            keeps.append(keep)
        latest_mask, latest_values, latest_categories = self._latest_inputs(batch, order)

        # Readings after each event.
        first_out = np.empty(n_events, dtype=np.int64)
        totals = [
            np.empty((n_events, len(b.keys)), np.int64 if b.kind == COUNT else np.float64)
            for b in self._blocks
        ]
        time_out = np.empty((n_events, len(self._latest_sources)), dtype=np.int64)
        value_out = np.empty_like(latest_values)
        category_out = np.empty_like(latest_categories)

        value_cols, category_cols = self._value_cols, self._category_cols
        has_latest = bool(self._latest_sources)
        for r in range(len(bounds) - 1):
            lo, hi = int(bounds[r]), int(bounds[r + 1])
            s, t = all_slots[lo:hi], all_times[lo:hi]
            rows = np.take(self._raw, s).view(self._record)
            if round_expires[r]:
                expired = rounds.expired[lo:hi]
                rows[expired] = self._empty
                self._latest_category[s[expired]] = None
            rows["clock"] = rounds.clock[lo:hi]
            first = rows["first_seen"]
            first = np.where(fresh[lo:hi], t, np.minimum(first, t))
            rows["first_seen"] = first
            first_out[lo:hi] = first

            for b, block in enumerate(self._blocks):
                # A contiguous copy: ufuncs on the strided record field cost more than it.
                held = np.ascontiguousarray(rows[block.name])
                keep = keeps[b]
                if keep is not None and round_slides[r]:
                    if block.identity == 0:
                        np.multiply(held, keep[lo:hi], out=held)
                    else:
                        np.copyto(held, block.identity, where=~keep[lo:hi])
                cells = held.reshape(-1)
                at, contribution = targets[b][lo:hi], contributions[b][lo:hi]
                if block.kind in (COUNT, SUM):
                    cells[at] += contribution
                elif block.kind == MIN:
                    cells[at] = np.minimum(cells[at], contribution)
                else:
                    cells[at] = np.maximum(cells[at], contribution)
                rows[block.name] = held
                totals[b][lo:hi] = block.total(held)

            if has_latest:
                times = rows["latest_time"]
                newer = latest_mask[lo:hi] & (t[:, None] >= times)
                changed = newer.any()
                if changed:
                    np.copyto(times, t[:, None], where=newer)
                time_out[lo:hi] = times
                if value_cols:
                    kept = rows["latest_value"]
                    if changed:
                        np.copyto(kept, latest_values[lo:hi], where=newer[:, value_cols])
                    value_out[lo:hi] = kept
                if category_cols:
                    categories = self._latest_category[s]
                    if changed:
                        np.copyto(
                            categories, latest_categories[lo:hi], where=newer[:, category_cols]
                        )
                        self._latest_category[s] = categories
                    category_out[lo:hi] = categories
            self._raw[s] = rows.view(self._raw.dtype)

        return Readings(
            clock=rounds.clock,
            first_seen=first_out,
            totals=totals,
            latest_time=time_out,
            latest_value=value_out,
            latest_category=category_out,
        )
