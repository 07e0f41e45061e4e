"""The per-customer record of ``FeatureState``: what a customer holds, and where.

Each customer owns a *slot*, a row of one numpy structured array: a packed record of every
number the customer holds (clock, first seen, applied offset, latest times and values,
accumulator rings), plus a row of an object array for categorical profile values.  No
Python object per customer but the id -> slot dict.  A round gathers and scatters whole
records (one memcpy per customer) and a changelog snapshot is a record's bytes.

Accumulators are grouped by kind into *blocks*, one record field of shape
``(keys, buckets)`` each (windowed counts, windowed sums, lifetime maxima, ...), so that one
round updates every key of a kind with a handful of numpy calls rather than several calls
per key: at a few hundred events per partition and batch, per-call overhead, not
arithmetic, is what the update costs.  Windows are rings of ``buckets_per_window`` buckets
that hold no bucket ids: a ring is kept *aligned to its customer's clock* (position ``p``
holds the one bucket ``k`` with ``k % n == p`` inside the window that ends at the clock, or
the identity), by clearing the buckets that slide out whenever the clock moves on.  Reading
a window is then a plain reduction over the ring, and no memory goes to bucket ids.

Dtypes: times and offsets are int64 (exact epoch milliseconds); windowed counts are int32
per bucket (2**31 events of one customer in one window is far beyond any real stream, and
``update`` refuses a batch with ``CountOverflowError`` rather than wrap); lifetime counts
are int64; sums, minima, maxima and values stay float64 because the features must equal
the float64 reference and float32 cannot hold e.g. 19.99 exactly.

:class:`StateLayout` works all of this out from the spec, once; it holds no customer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from driftline.core.events import EVENT_TYPE_CODE, EVENT_TYPES, EventBatch
from driftline.core.spec import AggregateFeature, FeatureSpec, ProfileFeature

NO_TIME = np.iinfo(np.int64).min
#: Largest count a windowed bucket holds (its dtype is int32).
COUNT_MAX = int(np.iinfo(np.int32).max)

# Accumulator kinds over a set of events: count of events, count of events where the
# field is present, sum, min and max of the field.
COUNT, PRESENT, SUM, MIN, MAX = "n", "present", "sum", "min", "max"
IDENTITY = {COUNT: 0, PRESENT: 0, SUM: 0.0, MIN: np.inf, MAX: -np.inf}
#: Keys of these kinds share a block; counts of present values are counts too.
BLOCK_KIND = {COUNT: COUNT, PRESENT: COUNT, SUM: SUM, MIN: MIN, MAX: MAX}
N_TYPES = len(EVENT_TYPES)


@dataclass(frozen=True, slots=True)
class AccKey:
    window_ms: int | None
    types: tuple[int, ...]  # event type codes; empty: all
    field: str | None
    kind: str


def needed_accumulators(feature: AggregateFeature, codes: tuple[int, ...]) -> list[AccKey]:
    w, f = feature.window_ms, feature.field
    match feature.agg:
        case "count":
            return [AccKey(w, codes, None, COUNT)]
        case "sum":
            return [AccKey(w, codes, f, SUM)]
        case "mean":
            return [AccKey(w, codes, f, SUM), AccKey(w, codes, f, PRESENT)]
        case "min":
            return [AccKey(w, codes, f, MIN)]
        case "max":
            return [AccKey(w, codes, f, MAX)]
    return []


def type_table(types: list[tuple[int, ...]]) -> np.ndarray:
    """``(n_event_types, keys)``: whether each key accepts each event type code."""
    table = np.zeros((N_TYPES, len(types)), dtype=bool)
    for j, codes in enumerate(types):
        table[list(codes) if codes else slice(None), j] = True
    return table


def window_peaks(counts: np.ndarray) -> np.ndarray:
    """Per row of a (rows, keys, buckets) count block, the largest window total (int64)."""
    peaks: np.ndarray = counts.sum(axis=2, dtype=np.int64).max(axis=1, initial=0)
    return peaks


@dataclass(slots=True)
class Block:
    """The accumulators of one kind, windowed (a ring per key) or lifetime (one bucket)."""

    kind: str  # COUNT, SUM, MIN or MAX
    keys: list[AccKey]
    windowed: bool
    buckets: int
    dtype: np.dtype
    identity: float
    window_index: np.ndarray  # (keys,) index into FeatureState._windows (0 when lifetime)
    field_index: np.ndarray  # (keys,) index into FeatureState._fields; the last: no field
    type_table: np.ndarray  # (event types, keys)
    name: str  # its field in the customer record

    def total(self, gathered: np.ndarray) -> np.ndarray:
        """Per key totals over the buckets of ``gathered`` (rows, keys, buckets).

        ``einsum`` sums a short last axis several times faster than ``sum`` (which reduces
        it one row at a time); it accumulates in the input dtype, which for int32 counts is
        exact because ``_check_headroom`` keeps every window's total within int32.  Minima
        and maxima are reduced bucket-major, over a transposed copy, for the same reason.
        """
        totals: np.ndarray
        if self.kind in (COUNT, SUM):
            totals = np.einsum("ijk->ij", gathered)
            return totals
        by_bucket = np.ascontiguousarray(gathered.transpose(2, 0, 1))
        totals = by_bucket.min(axis=0) if self.kind == MIN else by_bucket.max(axis=0)
        return totals


@dataclass(frozen=True, slots=True)
class FrameLayout:
    """Column names of a feature frame, split into the numeric and the categorical block."""

    names: list[str]
    numeric: pd.Index
    categorical: list[str]
    #: Position of each categorical column in ``names``, ascending.
    categorical_at: list[int]

    @classmethod
    def of(cls, spec: FeatureSpec) -> FrameLayout:
        names = spec.feature_names
        categorical = spec.categorical_features
        return cls(
            names=names,
            numeric=pd.Index(spec.numeric_features),
            categorical=categorical,
            categorical_at=[names.index(c) for c in categorical],
        )


class StateLayout:
    """The record layout, accumulator blocks and latest-value columns of one spec."""

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self._n = spec.buckets_per_window
        self._evict_after = spec.eviction_after_ms

        codes = {
            f.name: tuple(sorted(EVENT_TYPE_CODE[t] for t in f.event_types))
            for f in spec.aggregates
        }
        self._codes = codes
        keys: list[AccKey] = []
        for feature in spec.aggregates:
            for key in needed_accumulators(feature, codes[feature.name]):
                if key not in keys:
                    keys.append(key)
        self._acc_keys = keys
        self._windows = sorted({k.window_ms for k in keys if k.window_ms is not None})
        self._bucket_ms = np.array([w // self._n for w in self._windows], dtype=np.int64)
        self._fields = sorted({k.field for k in keys if k.field is not None})
        self._last_keys: list[tuple[tuple[int, ...], str | None]] = sorted(
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

        # Accumulator blocks, and where each key lives: key -> (block index, column).
        self._blocks: list[Block] = []
        self._acc_at: dict[AccKey, tuple[int, int]] = {}
        for windowed in (True, False):
            for kind in (COUNT, SUM, MIN, MAX):
                members = [
                    k
                    for k in keys
                    if BLOCK_KIND[k.kind] == kind and (k.window_ms is not None) == windowed
                ]
                if not members:
                    continue
                for j, k in enumerate(members):
                    self._acc_at[k] = (len(self._blocks), j)
                no_field = len(self._fields)
                self._blocks.append(
                    Block(
                        kind=kind,
                        keys=members,
                        windowed=windowed,
                        buckets=self._n if windowed else 1,
                        dtype=np.dtype(
                            (np.int32 if windowed else np.int64) if kind == COUNT else np.float64
                        ),
                        identity=IDENTITY[kind],
                        window_index=np.array(
                            [
                                self._windows.index(k.window_ms)
                                if windowed and k.window_ms is not None
                                else 0
                                for k in members
                            ],
                            dtype=np.intp,
                        ),
                        field_index=np.array(
                            [self._fields.index(k.field) if k.field else no_field for k in members],
                            dtype=np.intp,
                        ),
                        type_table=type_table([k.types for k in members]),
                        name=f"acc{len(self._blocks)}",
                    )
                )

        # Latest values: one time column per last-of-type key and per profile field (the
        # time of the value held), a float64 value column per last key with a field and
        # per numeric profile, an object column per categorical profile.
        self._latest_sources: list[str | None] = [f for _, f in self._last_keys] + list(
            self._profiles
        )
        self._latest_types = type_table(
            [c for c, _ in self._last_keys] + [() for _ in self._profiles]
        )
        n_last = len(self._last_keys)
        self._value_cols = [j for j, (_, f) in enumerate(self._last_keys) if f is not None] + [
            n_last + i for i, p in enumerate(self._profiles) if p not in self._categorical_profiles
        ]
        self._category_cols = [
            n_last + i for i, p in enumerate(self._profiles) if p in self._categorical_profiles
        ]

        # _sliding[p, d]: the ring positions that slide out when a clock in the bucket at
        # position p moves on by d buckets (all of them from d = n on).
        ring = np.arange(self._n)
        self._sliding = (ring[None, None, :] - ring[:, None, None] - 1) % self._n < np.arange(
            self._n + 1
        )[None, :, None]
        self._frame_layout = FrameLayout.of(spec)
        # The spec's digest hashes its JSON form: computed once, not per snapshot batch.
        self._layout = bytes.fromhex(spec.digest[:16])

        # Every number a customer holds lives in one packed record (explicitly little
        # endian): a round gathers and scatters one record per customer instead of a
        # dozen columns, and a snapshot row is the record's bytes.
        fields: list[tuple[object, ...]] = [
            ("clock", "<i8"),
            ("first_seen", "<i8"),
            # Input offset of the customer's latest applied event: after an at-least-once
            # crash, a restored customer may already reflect events delivered again.
            ("applied_offset", "<i8"),
        ]
        if self._latest_sources:
            fields.append(("latest_time", "<i8", (len(self._latest_sources),)))
        for block in self._blocks:
            shape = (len(block.keys), block.buckets)
            fields.append((block.name, block.dtype.newbyteorder("<"), shape))
        if self._value_cols:
            fields.append(("latest_value", "<f8", (len(self._value_cols),)))
        self._record = np.dtype(fields)
        #: Byte offset of each record field (the C kernel and ``applied_offset_of``).
        self._offsets = {name: int(at[1]) for name, at in (self._record.fields or {}).items()}
        empty = np.zeros((), dtype=self._record)
        empty["clock"] = empty["first_seen"] = NO_TIME
        empty["applied_offset"] = -1
        if self._latest_sources:
            empty["latest_time"] = NO_TIME
        for block in self._blocks:
            empty[block.name] = block.identity
        if self._value_cols:
            empty["latest_value"] = np.nan
        self._empty = empty
        self._empty_bytes = empty.tobytes()

    def _field_values(self, batch: EventBatch, order: np.ndarray | None) -> np.ndarray:
        """Per event (in ``order``; None: batch order), the accumulated fields' values (NaN:
        absent), plus a last all-ones column for keys without a field."""
        values = np.ones((len(batch), len(self._fields) + 1))
        for j, name in enumerate(self._fields):
            column = getattr(batch, name)
            values[:, j] = column if order is None else column[order]
        return values

    def _latest_inputs(
        self, batch: EventBatch, order: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per event (in ``order``; None: batch order) and latest column: whether the event
        may set it (its type, and a value present), the numeric values and the categories."""
        types = batch.event_type if order is None else batch.event_type[order]
        n_events = len(types)
        latest_mask = self._latest_types[types]
        latest_values = np.empty((n_events, len(self._value_cols)))
        latest_categories = np.empty((n_events, len(self._category_cols)), dtype=object)
        for j, source in enumerate(self._latest_sources):
            if source is None:
                continue
            column = getattr(batch, source)
            if order is not None:
                column = column[order]
            if j in self._category_cols:
                latest_categories[:, self._category_cols.index(j)] = column
                latest_mask[:, j] &= (column != None).astype(bool)  # noqa: E711 - elementwise
            else:
                latest_values[:, self._value_cols.index(j)] = column
                latest_mask[:, j] &= ~np.isnan(column)
        return latest_mask, latest_values, latest_categories
