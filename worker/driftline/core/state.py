"""Per-customer windowed state, updated and read a micro-batch at a time.

One ``FeatureState`` holds the customers of one input partition (so that a partition's
state can be restored, moved or dropped on its own).  Storage is columnar: each customer
owns a *slot*, a row index into numpy arrays; windows are ring buffers of buckets, shape
``(capacity, buckets_per_window)``.  No Python object per customer but the id -> slot dict.

A batch is applied in *rounds*: round ``r`` holds the ``r``-th event of every customer in
the batch, so inside a round every customer appears at most once and numpy fancy indexing
updates all of them at once.  Features are read after each round, so every event gets the
features as of itself (its customer's events up to and including it), whatever the batch
boundaries are: a prediction does not depend on how the stream was cut into batches.

Semantics (the offline reference in ``core.offline`` implements the same, independently):

- The customer's *clock* is the latest event time seen for it; windows end at the clock.
- An event newer than ``clock + eviction_after`` starts the customer afresh (it was idle
  long enough to be evicted, whether or not the eviction sweep had run yet).
- An event older than its window (its bucket already slid out) updates lifetime values
  only (first seen, profile fields, last-of-type if newer), never a window.
- ``last`` / ``time_since_last`` / profile fields follow the greatest event time (ties:
  the later arrival wins).
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec
import numpy as np
import pandas as pd

from driftline.core.events import EVENT_TYPE_CODE, EventBatch
from driftline.core.spec import (
    AggregateFeature,
    FeatureSpec,
    ProfileFeature,
    RatioFeature,
    TenureFeature,
)

NO_TIME = np.iinfo(np.int64).min
_SNAPSHOT = msgspec.msgpack.Encoder()
_SNAPSHOT_DECODER = msgspec.msgpack.Decoder(tuple[bytes, bytes, bytes, list[str | None]])
NO_BUCKET = np.iinfo(np.int64).min

# Accumulator kinds over a set of events: count of events, count of events where the
# field is present, sum, min and max of the field.
_COUNT, _PRESENT, _SUM, _MIN, _MAX = "n", "present", "sum", "min", "max"
_IDENTITY = {_COUNT: 0.0, _PRESENT: 0.0, _SUM: 0.0, _MIN: np.inf, _MAX: -np.inf}


@dataclass(frozen=True, slots=True)
class _AccKey:
    window_ms: int | None
    types: tuple[int, ...]  # event type codes; empty: all
    field: str | None
    kind: str


def _needed_accumulators(feature: AggregateFeature, codes: tuple[int, ...]) -> list[_AccKey]:
    w, f = feature.window_ms, feature.field
    match feature.agg:
        case "count":
            return [_AccKey(w, codes, None, _COUNT)]
        case "sum":
            return [_AccKey(w, codes, f, _SUM)]
        case "mean":
            return [_AccKey(w, codes, f, _SUM), _AccKey(w, codes, f, _PRESENT)]
        case "min":
            return [_AccKey(w, codes, f, _MIN)]
        case "max":
            return [_AccKey(w, codes, f, _MAX)]
    return []


class FeatureState:
    """Windowed aggregates and latest profile values for the customers of one partition."""

    def __init__(self, spec: FeatureSpec, capacity: int = 1024) -> None:
        self.spec = spec
        self._n = spec.buckets_per_window
        self._evict_after = spec.eviction_after_ms
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._capacity = 0
        self._size = 0  # high-water mark of slots handed out

        codes = {
            f.name: tuple(sorted(EVENT_TYPE_CODE[t] for t in f.event_types))
            for f in spec.aggregates
        }
        self._codes = codes
        keys: list[_AccKey] = []
        for feature in spec.aggregates:
            for key in _needed_accumulators(feature, codes[feature.name]):
                if key not in keys:
                    keys.append(key)
        self._acc_keys = keys
        self._windows = sorted({k.window_ms for k in keys if k.window_ms is not None})
        self._last_keys = sorted(
            {
                (codes[f.name], f.field)
                for f in spec.aggregates
                if f.agg in ("last", "time_since_last")
            },
            key=repr,
        )
        self._profiles = sorted({f.source for f in spec.features if isinstance(f, ProfileFeature)})
        self._categorical_profiles = {
            f.source for f in spec.features if isinstance(f, ProfileFeature) and f.categorical
        }
        # Columns: allocated by _grow.
        self.clock = np.empty(0, dtype=np.int64)
        self.first_seen = np.empty(0, dtype=np.int64)
        # Input offset of the customer's latest applied event: after an at-least-once
        # crash, a restored customer may already reflect events that are delivered again.
        self.applied_offset = np.empty(0, dtype=np.int64)
        self._bucket_ids: dict[int, np.ndarray] = {}
        self._acc: dict[_AccKey, np.ndarray] = {}
        self._last_time: dict[tuple[tuple[int, ...], str | None], np.ndarray] = {}
        self._last_value: dict[tuple[tuple[int, ...], str | None], np.ndarray] = {}
        self._profile_time: dict[str, np.ndarray] = {}
        self._profile_value: dict[str, np.ndarray] = {}
        self._grow(max(capacity, 16))

    # ------------------------------------------------------------------ storage
    def _grow(self, capacity: int) -> None:
        old = self._capacity

        def extend(array: np.ndarray, fill: object) -> np.ndarray:
            shape = (capacity, *array.shape[1:])
            grown = np.full(shape, fill, dtype=array.dtype)
            grown[:old] = array[:old]
            return grown

        n = self._n
        self.clock = extend(self.clock, NO_TIME)
        self.first_seen = extend(self.first_seen, NO_TIME)
        self.applied_offset = extend(self.applied_offset, -1)
        for w in self._windows:
            self._bucket_ids[w] = extend(
                self._bucket_ids.get(w, np.empty((0, n), np.int64)), NO_BUCKET
            )
        for key in self._acc_keys:
            shape = (0, n) if key.window_ms is not None else (0,)
            self._acc[key] = extend(self._acc.get(key, np.empty(shape)), _IDENTITY[key.kind])
        for lk in self._last_keys:
            self._last_time[lk] = extend(self._last_time.get(lk, np.empty(0, np.int64)), NO_TIME)
            self._last_value[lk] = extend(self._last_value.get(lk, np.empty(0)), np.nan)
        for p in self._profiles:
            self._profile_time[p] = extend(
                self._profile_time.get(p, np.empty(0, np.int64)), NO_TIME
            )
            dtype = object if p in self._categorical_profiles else np.float64
            fill = None if dtype is object else np.nan
            self._profile_value[p] = extend(self._profile_value.get(p, np.empty(0, dtype)), fill)
        self._capacity = capacity

    def _clear(self, rows: np.ndarray) -> None:
        if rows.size == 0:
            return
        self.clock[rows] = NO_TIME
        self.first_seen[rows] = NO_TIME
        self.applied_offset[rows] = -1
        for ids in self._bucket_ids.values():
            ids[rows] = NO_BUCKET
        for key, acc in self._acc.items():
            acc[rows] = _IDENTITY[key.kind]
        for lk in self._last_keys:
            self._last_time[lk][rows] = NO_TIME
            self._last_value[lk][rows] = np.nan
        for p in self._profiles:
            self._profile_time[p][rows] = NO_TIME
            self._profile_value[p][rows] = None if p in self._categorical_profiles else np.nan

    def _slots_for(self, customer_ids: np.ndarray) -> np.ndarray:
        """Slot of each id, allocating slots for ids not seen before."""
        get = self._slots.get
        slots = np.fromiter(
            (get(c, -1) for c in customer_ids), dtype=np.int64, count=len(customer_ids)
        )
        missing = slots < 0
        if missing.any():
            for customer in dict.fromkeys(customer_ids[missing].tolist()):
                if self._free:
                    slot = self._free.pop()
                else:
                    if self._size >= self._capacity:
                        self._grow(self._capacity * 2)
                    slot = self._size
                    self._size += 1
                self._slots[customer] = slot
            slots[missing] = np.fromiter(
                (self._slots[c] for c in customer_ids[missing]),
                dtype=np.int64,
                count=int(missing.sum()),
            )
        return slots

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, customer_id: str) -> bool:
        return customer_id in self._slots

    @property
    def nbytes(self) -> int:
        """Bytes held by the numpy columns (the id dict is not counted)."""
        arrays = [self.clock, self.first_seen, *self._bucket_ids.values(), *self._acc.values()]
        arrays += [
            *self._last_time.values(),
            *self._last_value.values(),
            *self._profile_time.values(),
        ]
        arrays += list(self._profile_value.values())
        return sum(a.nbytes for a in arrays)

    # ------------------------------------------------------------------ update
    def already_applied(self, customer_ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Mask of events this state already reflects (redelivered after a crash)."""
        if len(offsets) == 0 or offsets.min() > self.applied_offset.max(initial=-1):
            return np.zeros(len(offsets), dtype=bool)  # the usual case: no id lookups
        get = self._slots.get
        slots = np.fromiter((get(c, -1) for c in customer_ids), np.int64, len(customer_ids))
        applied = np.where(slots >= 0, self.applied_offset[np.maximum(slots, 0)], -1)
        return offsets <= applied

    def update(self, batch: EventBatch, offsets: np.ndarray | None = None) -> pd.DataFrame:
        """Apply the events in order; return each event's features (rows in batch order).

        ``offsets`` (input offsets, one per event) are remembered per customer so that a
        restore can tell which redelivered events it already holds.
        """
        n_events = len(batch)
        out = _FeatureBuffer(self.spec, n_events)
        if n_events == 0:
            return out.frame()
        slots = self._slots_for(batch.customer_id)
        rank = pd.Series(slots).groupby(slots).cumcount().to_numpy()
        order = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[order], np.arange(rank.max() + 2))
        for r in range(len(bounds) - 1):
            rows = order[bounds[r] : bounds[r + 1]]
            self._apply_round(batch, rows, slots[rows])
            if offsets is not None:
                self.applied_offset[slots[rows]] = offsets[rows]
            self._read(slots[rows], rows, out)
        return out.frame()

    def _apply_round(self, batch: EventBatch, rows: np.ndarray, slots: np.ndarray) -> None:
        t = batch.event_time_ms[rows]
        types = batch.event_type[rows]
        clock = self.clock[slots]
        expired = (clock != NO_TIME) & (t > clock + self._evict_after)
        self._clear(slots[expired])
        clock = np.where(expired, NO_TIME, clock)
        new_clock = np.maximum(clock, t)
        self.clock[slots] = new_clock
        first = self.first_seen[slots]
        self.first_seen[slots] = np.where(first == NO_TIME, t, np.minimum(first, t))

        values = {
            name: getattr(batch, name)[rows] for name in {k.field for k in self._acc_keys} if name
        }
        type_masks: dict[tuple[int, ...], np.ndarray] = {}

        def matches(codes: tuple[int, ...]) -> np.ndarray:
            if codes not in type_masks:
                type_masks[codes] = np.isin(types, codes) if codes else np.ones(len(rows), bool)
            return type_masks[codes]

        # Windows: find each event's ring position, recycle stale buckets, then accumulate.
        usable_by_window: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for w in self._windows:
            b = w // self._n
            k = t // b
            pos = k % self._n
            ids = self._bucket_ids[w]
            stored = ids[slots, pos]
            in_window = k > new_clock // b - self._n
            recycle = in_window & (k > stored)
            if recycle.any():
                rs, ps = slots[recycle], pos[recycle]
                ids[rs, ps] = k[recycle]
                for key, acc in self._acc.items():
                    if key.window_ms == w:
                        acc[rs, ps] = _IDENTITY[key.kind]
            usable_by_window[w] = (in_window, pos)
        for key, acc in self._acc.items():
            mask = matches(key.types).copy()
            if key.window_ms is not None:
                in_window, pos = usable_by_window[key.window_ms]
                mask &= in_window
            if key.field is not None:
                v = values[key.field]
                mask &= ~np.isnan(v)
            if not mask.any():
                continue
            s = slots[mask]
            idx = (s, usable_by_window[key.window_ms][1][mask]) if key.window_ms is not None else s
            if key.kind == _COUNT or key.kind == _PRESENT:
                acc[idx] += 1.0
            elif key.kind == _SUM:
                acc[idx] += v[mask]
            elif key.kind == _MIN:
                acc[idx] = np.minimum(acc[idx], v[mask])
            else:
                acc[idx] = np.maximum(acc[idx], v[mask])
        # Latest-of-type values: follow the greatest event time, ties to the later arrival.
        for lk in self._last_keys:
            codes, field = lk
            mask = matches(codes).copy()
            if field is not None:
                v = getattr(batch, field)[rows]
                mask &= ~np.isnan(v)
            newer = mask & (t >= self._last_time[lk][slots])
            s = slots[newer]
            self._last_time[lk][s] = t[newer]
            if field is not None:
                self._last_value[lk][s] = v[newer]
        for p in self._profiles:
            v = getattr(batch, p)[rows]
            present = v != None if p in self._categorical_profiles else ~np.isnan(v)  # noqa: E711
            present = present.astype(bool)
            newer = present & (t >= self._profile_time[p][slots])
            s = slots[newer]
            self._profile_time[p][s] = t[newer]
            self._profile_value[p][s] = v[newer]

    # ------------------------------------------------------------------ read
    def _read(self, slots: np.ndarray, rows: np.ndarray, out: _FeatureBuffer) -> None:
        clock = self.clock[slots]
        valid: dict[int, np.ndarray] = {}
        for w in self._windows:
            b = w // self._n
            valid[w] = self._bucket_ids[w][slots] > (clock // b - self._n)[:, None]

        def total(key: _AccKey) -> np.ndarray:
            acc = self._acc[key][slots]
            if key.window_ms is None:
                return acc
            ok = valid[key.window_ms]
            if key.kind in (_COUNT, _PRESENT, _SUM):
                return np.where(ok, acc, 0.0).sum(axis=1)
            if key.kind == _MIN:
                return np.where(ok, acc, np.inf).min(axis=1)
            return np.where(ok, acc, -np.inf).max(axis=1)

        computed: dict[str, np.ndarray] = {}
        for feature in self.spec.features:
            if isinstance(feature, AggregateFeature):
                codes = self._codes[feature.name]
                w, f = feature.window_ms, feature.field
                match feature.agg:
                    case "count":
                        value = total(_AccKey(w, codes, None, _COUNT))
                    case "sum":
                        value = total(_AccKey(w, codes, f, _SUM))
                    case "mean":
                        n = total(_AccKey(w, codes, f, _PRESENT))
                        with np.errstate(invalid="ignore", divide="ignore"):
                            value = np.where(n > 0, total(_AccKey(w, codes, f, _SUM)) / n, np.nan)
                    case "min" | "max":
                        value = total(_AccKey(w, codes, f, _MIN if feature.agg == "min" else _MAX))
                        value = np.where(np.isinf(value), np.nan, value)
                    case "last":
                        value = self._last_value[(codes, f)][slots]
                    case "time_since_last":
                        last = self._last_time[(codes, f)][slots]
                        value = np.where(last == NO_TIME, np.nan, (clock - last) / feature.unit_ms)
                    case _:  # pragma: no cover - the spec parser rejects others
                        raise AssertionError(feature.agg)
            elif isinstance(feature, TenureFeature):
                value = np.maximum(
                    (clock - self.first_seen[slots]) / feature.unit_ms, feature.floor
                )
            elif isinstance(feature, ProfileFeature):
                value = self._profile_value[feature.source][slots]
            else:
                assert isinstance(feature, RatioFeature)
                num, den = computed[feature.numerator], computed[feature.denominator]
                with np.errstate(invalid="ignore", divide="ignore"):
                    value = np.where((den != 0) & ~np.isnan(den), num / den, np.nan)
            computed[feature.name] = value
            out.put(feature.name, rows, value)

    # ------------------------------------------------------------------ eviction
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

    # ------------------------------------------------------------------ snapshots
    def _int_columns(self) -> list[np.ndarray]:
        return [
            self.clock,
            self.first_seen,
            self.applied_offset,
            *(self._bucket_ids[w] for w in self._windows),
            *(self._last_time[k] for k in self._last_keys),
            *(self._profile_time[p] for p in self._profiles),
        ]

    def _float_columns(self) -> list[np.ndarray]:
        return [
            *(self._acc[k] for k in self._acc_keys),
            *(self._last_value[k] for k in self._last_keys),
            *(
                self._profile_value[p]
                for p in self._profiles
                if p not in self._categorical_profiles
            ),
        ]

    def _category_columns(self) -> list[np.ndarray]:
        return [self._profile_value[p] for p in self._profiles if p in self._categorical_profiles]

    @property
    def layout(self) -> bytes:
        """Identifies the snapshot layout: the spec's digest (8 bytes)."""
        return bytes.fromhex(self.spec.digest[:16])

    def export(self, customer_ids: list[str]) -> list[bytes]:
        """One compact snapshot per customer (all its columns), for the changelog."""
        if not customer_ids:
            return []
        slots = np.fromiter((self._slots[c] for c in customer_ids), np.int64, len(customer_ids))
        ints = np.concatenate(
            [c[slots].reshape(len(slots), -1) for c in self._int_columns()], axis=1
        )
        floats = np.concatenate(
            [c[slots].reshape(len(slots), -1) for c in self._float_columns()], axis=1
        )
        cats = [c[slots].tolist() for c in self._category_columns()]
        layout = self.layout
        return [
            _SNAPSHOT.encode((layout, ints[i].tobytes(), floats[i].tobytes(), [c[i] for c in cats]))
            for i in range(len(slots))
        ]

    def restore(self, customer_ids: list[str], snapshots: list[bytes]) -> int:
        """Load snapshots (latest per customer wins); returns how many were applied.

        Snapshots of another layout (written under a different feature spec) are skipped:
        those customers start afresh rather than being read with the wrong columns.
        """
        layout = self.layout
        decoded = [_SNAPSHOT_DECODER.decode(v) for v in snapshots]
        keep = [i for i, d in enumerate(decoded) if d[0] == layout]
        if not keep:
            return 0
        slots = self._slots_for(np.array([customer_ids[i] for i in keep], dtype=object))
        self._clear(slots)
        ints = np.frombuffer(b"".join(decoded[i][1] for i in keep), np.int64).reshape(len(keep), -1)
        floats = np.frombuffer(b"".join(decoded[i][2] for i in keep), np.float64)
        floats = floats.reshape(len(keep), -1)
        for block, columns in ((ints, self._int_columns()), (floats, self._float_columns())):
            start = 0
            for column in columns:
                width = column[0].size if column.ndim > 1 else 1
                part = block[:, start : start + width]
                column[slots] = part if column.ndim > 1 else part[:, 0]
                start += width
        for j, column in enumerate(self._category_columns()):
            column[slots] = np.array([decoded[i][3][j] for i in keep], dtype=object)
        return len(keep)

    def forget(self, customer_ids: list[str]) -> None:
        """Drop customers (a changelog tombstone)."""
        slots = [self._slots.pop(c) for c in customer_ids if c in self._slots]
        if slots:
            rows = np.asarray(slots, dtype=np.int64)
            self._clear(rows)
            self._free.extend(slots)


class _FeatureBuffer:
    """Output columns for one batch, filled round by round."""

    def __init__(self, spec: FeatureSpec, n_rows: int) -> None:
        self._names = spec.feature_names
        cats = set(spec.categorical_features)
        self._columns = {
            name: np.full(n_rows, None, dtype=object) if name in cats else np.full(n_rows, np.nan)
            for name in self._names
        }

    def put(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        self._columns[name][rows] = values

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self._columns, columns=self._names)
