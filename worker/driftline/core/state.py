"""Per-customer windowed state, updated and read a micro-batch at a time.

One ``FeatureState`` holds the customers of one input partition (so that a partition's
state can be restored, moved or dropped on its own).  Each customer owns a *slot*, a row of
one numpy structured array: a packed record of every number the customer holds (clock,
first seen, applied offset, latest times and values, accumulator rings), plus a row of an
object array for categorical profile values.  No Python object per customer but the
id -> slot dict.  A round gathers and scatters whole records (one memcpy per customer) and
a changelog snapshot is a record's bytes.

Accumulators are grouped by kind into *blocks*, one record field of shape
``(keys, buckets)`` each (windowed counts, windowed sums, lifetime maxima, ...), so that one
round updates every key of a kind with a handful of numpy calls rather than several calls
per key: at a few hundred events per partition and batch, per-call overhead, not
arithmetic, is what the update costs.  Windows are rings of ``buckets_per_window`` buckets
that hold no bucket ids: a ring is kept *aligned to its customer's clock* (position ``p``
holds the one bucket ``k`` with ``k % n == p`` inside the window that ends at the clock, or
the identity), by clearing the buckets that slide out whenever the clock moves on.  Reading
a window is then a plain reduction over the ring, and no memory goes to bucket ids.

A batch is applied by a C kernel (``_state_kernel.c``, built at install when a compiler
is there): one pass over the events in arrival order, each straight into its customer's
record, with the features as of each event read on the way.  The numpy path below is
the fallback without it, and the oracle the tests hold the kernel to (same records, same
features).  It applies a batch in *rounds*: round ``r`` holds the ``r``-th event of every
customer in the batch, so inside a round every customer appears at most once and numpy
fancy indexing updates all of them at once.  Either way every event gets the features as
of itself (its customer's events up to and including it), whatever the batch boundaries
are: a prediction does not depend on how the stream was cut into batches.  Only the raw
totals are read per event; the features are derived from them once per batch.

Semantics (the tests' oracle, ``tests/support/feature_oracle.py``, implements the same,
independently):

- The customer's *clock* is the latest event time seen for it; windows end at the clock.
- An event newer than ``clock + eviction_after`` starts the customer afresh (it was idle
  long enough to be evicted, whether or not the eviction sweep had run yet).
- An event older than its window (its bucket already slid out) updates lifetime values
  only (first seen, profile fields, last-of-type if newer), never a window.
- ``last`` / ``time_since_last`` / profile fields follow the greatest event time (ties:
  the later arrival wins).

Dtypes: times and offsets are int64 (exact epoch milliseconds); windowed counts are int32
per bucket (2**31 events of one customer in one window is far beyond any real stream, and
``update`` refuses a batch with ``CountOverflowError`` rather than wrap); lifetime counts
are int64; sums, minima, maxima and values stay float64 because the features must equal
the float64 reference and float32 cannot hold e.g. 19.99 exactly.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from itertools import repeat

import msgspec
import numpy as np
import pandas as pd

from driftline.core.events import EVENT_TYPE_CODE, EVENT_TYPES, EventBatch
from driftline.core.spec import (
    AggregateFeature,
    FeatureSpec,
    ProfileFeature,
    RatioFeature,
    TenureFeature,
)

try:  # built at install time when a C compiler is there (an optional extension)
    from driftline.core import _state_kernel
except ImportError:  # pragma: no cover - depends on the install
    _state_kernel = None  # type: ignore[assignment]

#: Whether ``FeatureState`` applies events with the C kernel (``_state_kernel.c``) by
#: default; without it, the numpy rounds do the same, several times slower.
NATIVE_KERNEL = _state_kernel is not None and sys.byteorder == "little"

NO_TIME = np.iinfo(np.int64).min
#: Largest count a windowed bucket holds (its dtype is int32).
COUNT_MAX = int(np.iinfo(np.int32).max)
#: Version of the per-customer snapshot written to the changelog.  1: the first format
#: (int64 bucket ids, float64 accumulators), still restored; 2: the current one.
SNAPSHOT_VERSION = 2

_SNAPSHOT = msgspec.msgpack.Encoder()
_ANY_DECODER = msgspec.msgpack.Decoder()
_V1_DECODER = msgspec.msgpack.Decoder(tuple[bytes, bytes, bytes, list[str | None]])

# Accumulator kinds over a set of events: count of events, count of events where the
# field is present, sum, min and max of the field.
_COUNT, _PRESENT, _SUM, _MIN, _MAX = "n", "present", "sum", "min", "max"
_IDENTITY = {_COUNT: 0, _PRESENT: 0, _SUM: 0.0, _MIN: np.inf, _MAX: -np.inf}
#: Keys of these kinds share a block; counts of present values are counts too.
_BLOCK_KIND = {_COUNT: _COUNT, _PRESENT: _COUNT, _SUM: _SUM, _MIN: _MIN, _MAX: _MAX}
_N_TYPES = len(EVENT_TYPES)
#: Block kinds and dtypes as the C kernel numbers them.
_KERNEL_KIND = {_COUNT: 0, _SUM: 1, _MIN: 2, _MAX: 3}
_KERNEL_DTYPE = {np.dtype(np.int32): 0, np.dtype(np.int64): 1, np.dtype(np.float64): 2}


class SnapshotError(ValueError):
    """A changelog snapshot this worker cannot read (e.g. written by a newer version)."""


class CountOverflowError(OverflowError):
    """A windowed count would exceed its dtype; raised before any state is changed."""


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


def _type_table(types: list[tuple[int, ...]]) -> np.ndarray:
    """``(n_event_types, keys)``: whether each key accepts each event type code."""
    table = np.zeros((_N_TYPES, len(types)), dtype=bool)
    for j, codes in enumerate(types):
        table[list(codes) if codes else slice(None), j] = True
    return table


def _segmented_cummax(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
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
        return np.maximum.accumulate(values + lift) - lift
    return pd.Series(values).groupby(segment).cummax().to_numpy()


def _window_peaks(counts: np.ndarray) -> np.ndarray:
    """Per row of a (rows, keys, buckets) count block, the largest window total (int64)."""
    return counts.sum(axis=2, dtype=np.int64).max(axis=1, initial=0)


@dataclass(slots=True)
class _Block:
    """The accumulators of one kind, windowed (a ring per key) or lifetime (one bucket)."""

    kind: str  # _COUNT, _SUM, _MIN or _MAX
    keys: list[_AccKey]
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
        if self.kind in (_COUNT, _SUM):
            return np.einsum("ijk->ij", gathered)
        by_bucket = np.ascontiguousarray(gathered.transpose(2, 0, 1))
        return by_bucket.min(axis=0) if self.kind == _MIN else by_bucket.max(axis=0)


@dataclass(slots=True)
class _Rounds:
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


@dataclass(slots=True)
class _Readings:
    """What the rounds read after each event (round order), before features are derived."""

    clock: np.ndarray
    first_seen: np.ndarray
    totals: list[np.ndarray]  # per block: (events, keys)
    latest_time: np.ndarray
    latest_value: np.ndarray
    latest_category: np.ndarray


@dataclass(frozen=True, slots=True)
class _FrameLayout:
    """Column names of a feature frame, split into the numeric and the categorical block."""

    names: list[str]
    numeric: pd.Index
    categorical: list[str]
    #: Position of each categorical column in ``names``, ascending.
    categorical_at: list[int]

    @classmethod
    def of(cls, spec: FeatureSpec) -> _FrameLayout:
        names = spec.feature_names
        categorical = spec.categorical_features
        return cls(
            names=names,
            numeric=pd.Index(spec.numeric_features),
            categorical=categorical,
            categorical_at=[names.index(c) for c in categorical],
        )


@dataclass(slots=True)
class FeatureBlock:
    """Features of a batch as two numpy blocks: ``numeric`` (numeric features, rows)
    float64 and ``categorical`` (categorical features, rows) object.

    Blocks of several partitions ``concat`` cheaply; ``frame`` builds the DataFrame once.
    """

    layout: _FrameLayout
    numeric: np.ndarray
    categorical: np.ndarray

    def __len__(self) -> int:
        return self.numeric.shape[1]

    @classmethod
    def empty(cls, layout: _FrameLayout) -> FeatureBlock:
        return cls(
            layout,
            np.empty((len(layout.numeric), 0)),
            np.empty((len(layout.categorical), 0), dtype=object),
        )

    @classmethod
    def concat(cls, blocks: list[FeatureBlock]) -> FeatureBlock:
        if len(blocks) == 1:
            return blocks[0]
        return cls(
            blocks[0].layout,
            np.concatenate([b.numeric for b in blocks], axis=1),
            np.concatenate([b.categorical for b in blocks], axis=1),
        )

    def take(self, rows: np.ndarray) -> FeatureBlock:
        """The block of some rows (positions), in that order: a copy."""
        return FeatureBlock(self.layout, self.numeric[:, rows], self.categorical[:, rows])

    def frame(self) -> pd.DataFrame:
        """The feature frame in spec column order: float64 columns from the numeric block
        (one pandas block, no copy) and object columns (missing: ``None``).

        Categorical columns are inserted as object Series: inserting a bare object array
        makes pandas infer its string dtype value by value, which costs more than the whole
        numeric frame.
        """
        layout = self.layout
        frame = pd.DataFrame(self.numeric.T, columns=layout.numeric, copy=False)
        for i, (name, loc) in enumerate(
            zip(layout.categorical, layout.categorical_at, strict=True)
        ):
            frame.insert(loc, name, pd.Series(self.categorical[i], dtype=object, copy=False))
        return frame


class FeatureState:
    """Windowed aggregates and latest profile values for the customers of one partition."""

    def __init__(
        self, spec: FeatureSpec, capacity: int = 1024, *, native: bool | None = None
    ) -> None:
        """``native``: apply events with the C kernel (None: whenever it is built)."""
        if native and not NATIVE_KERNEL:
            raise RuntimeError("the C state kernel is not built (driftline.core._state_kernel)")
        self.native = NATIVE_KERNEL if native is None else native
        self.spec = spec
        self._n = spec.buckets_per_window
        self._evict_after = spec.eviction_after_ms
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._capacity = 0
        self._size = 0  # high-water mark of slots handed out
        #: An upper bound of ``applied_offset`` (never lowered): lets ``already_applied``
        #: skip the id lookups without scanning every slot.
        self._applied_bound = -1
        #: An upper bound of every windowed bucket count (see ``_check_headroom``).
        self._count_bound = 0

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
        self._blocks: list[_Block] = []
        self._acc_at: dict[_AccKey, tuple[int, int]] = {}
        for windowed in (True, False):
            for kind in (_COUNT, _SUM, _MIN, _MAX):
                members = [
                    k
                    for k in keys
                    if _BLOCK_KIND[k.kind] == kind and (k.window_ms is not None) == windowed
                ]
                if not members:
                    continue
                for j, k in enumerate(members):
                    self._acc_at[k] = (len(self._blocks), j)
                no_field = len(self._fields)
                self._blocks.append(
                    _Block(
                        kind=kind,
                        keys=members,
                        windowed=windowed,
                        buckets=self._n if windowed else 1,
                        dtype=np.dtype(
                            (np.int32 if windowed else np.int64) if kind == _COUNT else np.float64
                        ),
                        identity=_IDENTITY[kind],
                        window_index=np.array(
                            [self._windows.index(k.window_ms) if windowed else 0 for k in members],
                            dtype=np.intp,
                        ),
                        field_index=np.array(
                            [self._fields.index(k.field) if k.field else no_field for k in members],
                            dtype=np.intp,
                        ),
                        type_table=_type_table([k.types for k in members]),
                        name=f"acc{len(self._blocks)}",
                    )
                )

        # Latest values: one time column per last-of-type key and per profile field (the
        # time of the value held), a float64 value column per last key with a field and
        # per numeric profile, an object column per categorical profile.
        self._latest_sources: list[str | None] = [f for _, f in self._last_keys] + list(
            self._profiles
        )
        self._latest_types = _type_table(
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
        self._frame_layout = _FrameLayout.of(spec)
        # The spec's digest hashes its JSON form: computed once, not per snapshot batch.
        self._layout = bytes.fromhex(spec.digest[:16])
        self._feature_steps = self._compile_features()

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
        self._record = np.dtype(fields)  # type: ignore[arg-type]
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
        # A snapshot up to its record's bytes is the same for every customer: the C
        # kernel writes it, then the record, then the categories (see ``export``).
        blank = _SNAPSHOT.encode((SNAPSHOT_VERSION, self._layout, bytes(self._record.itemsize), []))
        self._snapshot_prefix = blank[: len(blank) - self._record.itemsize - 1]
        self._kernel_tables = self._describe_for_kernel()
        self._rows = np.empty(0, dtype=self._record)
        self._raw = self._rows.view(f"V{self._record.itemsize}")
        self._bytes = self._rows.view(np.uint8)
        self._latest_category = np.empty((0, len(self._category_cols)), dtype=object)
        self._grow(max(capacity, 16))

    # ------------------------------------------------------------------ storage
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

    # ------------------------------------------------------------------ update
    def already_applied(self, customer_ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Mask of events this state already reflects (redelivered after a crash)."""
        if len(offsets) == 0 or offsets.min() > self._applied_bound:
            return np.zeros(len(offsets), dtype=bool)  # the usual case: no id lookups
        slots = self._lookup(customer_ids.tolist())
        applied = np.where(slots >= 0, self.applied_offset[np.maximum(slots, 0)], -1)
        return offsets <= applied

    def update(self, batch: EventBatch, offsets: np.ndarray | None = None) -> pd.DataFrame:
        """Apply the events in order; return each event's features (rows in batch order).

        ``offsets`` (input offsets, one per event) are remembered per customer so that a
        restore can tell which redelivered events it already holds.
        """
        return self.update_block(batch, offsets).frame()

    def update_block(self, batch: EventBatch, offsets: np.ndarray | None = None) -> FeatureBlock:
        """``update``, with the features as numpy blocks: several partitions' blocks
        concatenate into one frame per micro-batch, built once (a DataFrame per partition
        and a ``pd.concat`` cost more than the whole state update)."""
        n_events = len(batch)
        if n_events == 0:
            return FeatureBlock.empty(self._frame_layout)
        slots = self._slots_for(batch.customer_id.tolist())
        if self.native:
            self._check_batch_headroom(slots)
            numeric, categorical = self._features(self._apply_native(batch, slots, offsets))
            if offsets is not None:
                self._applied_bound = max(self._applied_bound, int(offsets.max()))
            return FeatureBlock(self._frame_layout, numeric, categorical)
        rounds = self._plan_rounds(slots, batch.event_time_ms)
        readings = self._apply(batch, rounds)
        if offsets is not None:
            # After the rounds: an eviction inside the batch clears the offset too.
            self.applied_offset[rounds.customers] = offsets[rounds.last]
            self._applied_bound = max(self._applied_bound, int(offsets.max()))
        numeric, categorical = self._features(readings)
        # Back to batch order: the rounds permuted the events.
        if rounds.bounds.size > 2:
            arrival = np.empty_like(numeric)
            arrival[:, rounds.order] = numeric
            numeric = arrival
            back = np.empty_like(categorical)
            back[:, rounds.order] = categorical
            categorical = back
        return FeatureBlock(self._frame_layout, numeric, categorical)

    def _plan_rounds(self, slots: np.ndarray, times: np.ndarray) -> _Rounds:
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
        clock = np.maximum(_segmented_cummax(sorted_times, starts_mask), stored)
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
        return _Rounds(
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

    def _check_headroom(self, customers: np.ndarray, events: np.ndarray) -> None:
        """Refuse a batch that could push a window's count past int32 (never wrap).

        The bound is on a window's *total* (the sum of its buckets), which also keeps the
        int32 sums in ``_Block.total`` exact.  A batch adds at most ``events`` (per
        customer) to any window; ``_count_bound`` is an upper bound of every window total,
        so the usual batch costs one addition, and only when that loose bound nears the
        limit are the counts themselves looked at.
        """
        more = int(events.max())
        if self._count_bound + more <= COUNT_MAX:
            self._count_bound += more
            return
        blocks = [
            self._rows[b.name][: self._size]
            for b in self._blocks
            if b.kind == _COUNT and b.windowed
        ]
        self._count_bound = max((int(_window_peaks(a).max(initial=0)) for a in blocks), default=0)
        if self._count_bound + more <= COUNT_MAX:
            self._count_bound += more
            return
        for array in blocks:
            peak = _window_peaks(array[customers])
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

    def _describe_for_kernel(self) -> dict[str, np.ndarray]:
        """The record layout and the accumulator keys as flat int64 tables (C kernel).

        Keys are numbered block after block; each key has its window (index into
        ``_bucket_ms``), its field (column of the kernel's values; the last column, all
        ones, for keys without a field) and the event types it accepts.
        """
        offset = {name: self._record.fields[name][1] for name in self._record.names}
        rows, first_key = [], 0
        for block in self._blocks:
            rows.append(
                [
                    _KERNEL_KIND[block.kind],
                    int(block.windowed),
                    _KERNEL_DTYPE[block.dtype],
                    len(block.keys),
                    block.buckets,
                    offset[block.name],
                    first_key,
                ]
            )
            first_key += len(block.keys)
        n_keys = first_key
        latest_cols = [
            [
                self._value_cols.index(j) if j in self._value_cols else -1,
                self._category_cols.index(j) if j in self._category_cols else -1,
            ]
            for j in range(len(self._latest_sources))
        ]
        layout = [
            offset["clock"],
            offset["first_seen"],
            offset["applied_offset"],
            offset.get("latest_time", 0),
            len(self._latest_sources),
            offset.get("latest_value", 0),
            len(self._value_cols),
            self._n,
            len(self._fields) + 1,
            n_keys,
        ]

        def table(values: list[object], dtype: type = np.int64) -> np.ndarray:
            return np.ascontiguousarray(np.array(values, dtype=dtype))

        return {
            "layout": table(layout),
            "blocks": table(rows).reshape(len(rows), 7),
            "key_window": table([int(w) for b in self._blocks for w in b.window_index]),
            "key_field": table([int(f) for b in self._blocks for f in b.field_index]),
            "type_table": np.ascontiguousarray(
                np.concatenate([b.type_table for b in self._blocks], axis=1)
                if self._blocks
                else np.zeros((_N_TYPES, 0), dtype=bool)
            ).view(np.uint8),
            "windows": table(self._bucket_ms.tolist()),
            "latest_cols": table(latest_cols).reshape(len(latest_cols), 2),
            "first_key": table([r[6] for r in rows]),
        }

    def _apply_native(
        self, batch: EventBatch, slots: np.ndarray, offsets: np.ndarray | None
    ) -> _Readings:
        """``_apply``'s readings, in batch order, from the C kernel: one pass over the
        events in arrival order, each applied straight into its customer's record (no
        rounds, no per-block numpy calls)."""
        k = self._kernel_tables
        n_events = len(slots)
        values = self._field_values(batch, None)
        latest_mask, latest_values, latest_categories = self._latest_inputs(batch, None)
        n_keys = int(k["layout"][9])
        clock = np.empty(n_events, dtype=np.int64)
        first = np.empty(n_events, dtype=np.int64)
        totals = np.empty((n_events, n_keys))
        time_out = np.empty((n_events, len(self._latest_sources)), dtype=np.int64)
        value_out = np.empty_like(latest_values)
        category_out = np.empty((n_events, len(self._category_cols)), dtype=object)
        categories = self._latest_category
        assert categories.flags.c_contiguous and latest_categories.flags.c_contiguous
        _state_kernel.apply_events(
            self._bytes,
            self._empty_bytes,
            np.ascontiguousarray(slots, dtype=np.int64),
            np.ascontiguousarray(batch.event_time_ms, dtype=np.int64),
            np.ascontiguousarray(batch.event_type, dtype=np.int8),
            values,
            None if offsets is None else np.ascontiguousarray(offsets, dtype=np.int64),
            latest_mask.view(np.uint8),
            latest_values,
            self._evict_after,
            k["layout"],
            k["blocks"],
            k["key_window"],
            k["key_field"],
            k["type_table"],
            k["windows"],
            k["latest_cols"],
            categories.ctypes.data,
            latest_categories.ctypes.data,
            category_out.ctypes.data,
            len(self._category_cols),
            clock,
            first,
            totals,
            time_out,
            value_out,
        )
        starts = k["first_key"].tolist()
        return _Readings(
            clock=clock,
            first_seen=first,
            totals=[
                totals[:, a : a + len(b.keys)] for a, b in zip(starts, self._blocks, strict=True)
            ],
            latest_time=time_out,
            latest_value=value_out,
            latest_category=category_out,
        )

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

    def _apply(self, batch: EventBatch, rounds: _Rounds) -> _Readings:
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
            if block.kind == _COUNT:
                contributions.append(counts.astype(block.dtype))
            else:
                contributions.append(np.where(counts, values[:, block.field_index], block.identity))
            targets.append(target)
            keeps.append(keep)
        latest_mask, latest_values, latest_categories = self._latest_inputs(batch, order)

        # Readings after each event.
        first_out = np.empty(n_events, dtype=np.int64)
        totals = [
            np.empty((n_events, len(b.keys)), np.int64 if b.kind == _COUNT else np.float64)
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
                if block.kind in (_COUNT, _SUM):
                    cells[at] += contribution
                elif block.kind == _MIN:
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

        return _Readings(
            clock=rounds.clock,
            first_seen=first_out,
            totals=totals,
            latest_time=time_out,
            latest_value=value_out,
            latest_category=category_out,
        )

    # ------------------------------------------------------------------ read
    def _compile_features(self) -> list[tuple[str, int, tuple[object, ...]]]:
        """Resolve each feature to where its inputs are read, once: ``_features`` then runs
        a flat list of steps per batch, without key lookups.

        A step is ``(op, output row, arguments)``; numeric features write row ``output
        row`` of the numeric block, categorical ones row ``-1 - output row`` of the
        categorical block.
        """
        numeric_row = {name: i for i, name in enumerate(self.spec.numeric_features)}
        categorical_row = {name: i for i, name in enumerate(self.spec.categorical_features)}
        n_last = len(self._last_keys)
        steps: list[tuple[str, int, tuple[object, ...]]] = []
        for feature in self.spec.features:
            if isinstance(feature, ProfileFeature):
                j = n_last + self._profiles.index(feature.source)
                if feature.categorical:
                    col = self._category_cols.index(j)
                    steps.append(("category", -1 - categorical_row[feature.name], (col,)))
                else:
                    steps.append(("value", numeric_row[feature.name], (self._value_cols.index(j),)))
                continue
            out = numeric_row[feature.name]
            if isinstance(feature, TenureFeature):
                steps.append(("tenure", out, (feature.unit_ms, feature.floor)))
            elif isinstance(feature, RatioFeature):
                num, den = numeric_row[feature.numerator], numeric_row[feature.denominator]
                steps.append(("ratio", out, (num, den)))
            else:
                codes = self._codes[feature.name]
                w, f = feature.window_ms, feature.field
                match feature.agg:
                    case "count":
                        steps.append(("total", out, self._acc_at[_AccKey(w, codes, None, _COUNT)]))
                    case "sum":
                        steps.append(("total", out, self._acc_at[_AccKey(w, codes, f, _SUM)]))
                    case "mean":
                        total = self._acc_at[_AccKey(w, codes, f, _SUM)]
                        count = self._acc_at[_AccKey(w, codes, f, _PRESENT)]
                        steps.append(("mean", out, (*total, *count)))
                    case "min" | "max":
                        kind = _MIN if feature.agg == "min" else _MAX
                        steps.append(("extreme", out, self._acc_at[_AccKey(w, codes, f, kind)]))
                    case "last":
                        j = self._last_keys.index((codes, f))
                        steps.append(("value", out, (self._value_cols.index(j),)))
                    case "time_since_last":
                        j = self._last_keys.index((codes, f))
                        steps.append(("since", out, (j, feature.unit_ms)))
                    case _:  # pragma: no cover - the spec parser rejects others
                        raise AssertionError(feature.agg)
        return steps

    def _features(self, readings: _Readings) -> tuple[np.ndarray, np.ndarray]:
        """Features from the raw readings: (numeric features, events) float64 and
        (categorical features, events) object blocks."""
        clock = readings.clock
        n_events = len(clock)
        numeric = np.empty((len(self._frame_layout.numeric), n_events))
        categorical = np.empty((len(self._frame_layout.categorical), n_events), dtype=object)
        totals = readings.totals
        with np.errstate(invalid="ignore", divide="ignore"):
            for op, out, args in self._feature_steps:
                if op == "total":
                    b, j = args
                    numeric[out] = totals[b][:, j]
                elif op == "mean":
                    b, j, bn, jn = args
                    n = totals[bn][:, jn]
                    numeric[out] = np.where(n > 0, totals[b][:, j] / n, np.nan)
                elif op == "extreme":
                    b, j = args
                    value = totals[b][:, j]
                    numeric[out] = np.where(np.isinf(value), np.nan, value)
                elif op == "value":
                    numeric[out] = readings.latest_value[:, args[0]]
                elif op == "since":
                    j, unit = args
                    last = readings.latest_time[:, j]
                    numeric[out] = np.where(last == NO_TIME, np.nan, (clock - last) / unit)
                elif op == "tenure":
                    unit, floor = args
                    numeric[out] = np.maximum((clock - readings.first_seen) / unit, floor)
                elif op == "ratio":
                    num, den = numeric[args[0]], numeric[args[1]]
                    numeric[out] = np.where((den != 0) & ~np.isnan(den), num / den, np.nan)
                else:  # "category"
                    categorical[-1 - out] = readings.latest_category[:, args[0]]
        return numeric, categorical

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
    @property
    def layout(self) -> bytes:
        """Identifies the snapshot layout: the spec's digest (8 bytes)."""
        return self._layout

    def export(self, customer_ids: list[str]) -> list[bytes]:
        """One compact snapshot per customer, for the changelog.

        A snapshot is ``(version, layout, record, categories)``: ``record`` is the
        customer's packed little-endian record (int64 times and offsets, int32 bucket
        counts, float64 sums and values), so a restore is one ``frombuffer`` for a whole
        batch of customers.
        """
        if not customer_ids:
            return []
        slots = self._lookup(customer_ids)
        if (slots < 0).any():
            raise KeyError(customer_ids[int(np.argmax(slots < 0))])
        width = self._record.itemsize
        if self.native:
            try:
                return _state_kernel.export_snapshots(
                    self._bytes,
                    width,
                    slots,
                    self._snapshot_prefix,
                    self._latest_category.ctypes.data,
                    len(self._category_cols),
                )
            except TypeError:  # a category that is not a str: msgspec encodes it below
                pass
        data = np.take(self._raw, slots).tobytes()
        categories = self._latest_category[slots].tolist()
        layout, encode = self.layout, _SNAPSHOT.encode
        return [
            encode((SNAPSHOT_VERSION, layout, data[i * width : (i + 1) * width], categories[i]))
            for i in range(len(slots))
        ]

    def applied_offset_of(self, snapshot: bytes) -> int | None:
        """The input offset of the latest event a snapshot holds (None: not readable here,
        e.g. a version 1 snapshot, which has none, or another layout's)."""
        try:
            decoded = _ANY_DECODER.decode(snapshot)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        if not (isinstance(decoded, list) and len(decoded) == 4 and decoded[0] == SNAPSHOT_VERSION):
            return None
        record = decoded[2]
        if decoded[1] != self.layout or not isinstance(record, bytes):
            return None
        if len(record) != self._record.itemsize:
            return None
        at = self._record.fields["applied_offset"][1]
        return int.from_bytes(record[at : at + 8], "little", signed=True)

    def restore(self, customer_ids: list[str], snapshots: list[bytes]) -> int:
        """Load snapshots (latest per customer wins); returns how many were applied.

        Snapshots of another layout (written under a different feature spec) are skipped:
        those customers start afresh rather than being read with the wrong columns.  Both
        the current format and the first one (version 1) are read; a snapshot of an
        unknown version raises ``SnapshotError``, as does one whose size does not match.
        """
        layout = self.layout
        latest = dict(zip(customer_ids, snapshots, strict=True))
        current_ids: list[str] = []
        current: list[list[object]] = []
        old_ids: list[str] = []
        old: list[tuple[bytes, bytes, bytes, list[str | None]]] = []
        for customer, value in latest.items():
            try:
                decoded = _ANY_DECODER.decode(value)
                version = decoded[0] if isinstance(decoded, list) and decoded else None
                if isinstance(version, bytes):  # version 1: (layout, ints, floats, categories)
                    if version == layout:
                        old.append(_V1_DECODER.decode(value))
                        old_ids.append(customer)
                    continue
            except (msgspec.DecodeError, msgspec.ValidationError) as error:
                raise SnapshotError(f"customer {customer!r}: not a state snapshot") from error
            if version is None:
                raise SnapshotError(f"customer {customer!r}: not a state snapshot")
            if version == SNAPSHOT_VERSION and len(decoded) == 4:
                if decoded[1] == layout:
                    if not isinstance(decoded[2], bytes) or not isinstance(decoded[3], list):
                        raise SnapshotError(f"customer {customer!r}: malformed state snapshot")
                    current_ids.append(customer)
                    current.append(decoded)
            else:
                raise SnapshotError(
                    f"customer {customer!r}: state snapshot version {version!r} is not one "
                    f"this worker reads (1, {SNAPSHOT_VERSION}); it was written by a newer "
                    "Driftline: upgrade the worker, or drop the changelog"
                )
        if current:
            self._restore_current(current_ids, current)
        if old:
            self._restore_v1(old_ids, old)
        return len(current) + len(old)

    def _restore_current(self, customer_ids: list[str], decoded: list[list[object]]) -> None:
        width = self._record.itemsize
        data = b"".join(d[2] for d in decoded)  # type: ignore[misc]
        if len(data) != width * len(decoded):
            raise SnapshotError(
                f"state snapshot records are not {width} bytes: written by an incompatible build"
            )
        slots = self._slots_for(customer_ids)
        self._rows[slots] = np.frombuffer(data, dtype=self._record)
        categories = np.empty((len(slots), len(self._category_cols)), dtype=object)
        for i, d in enumerate(decoded):
            categories[i] = d[3]
        self._latest_category[slots] = categories
        self._raise_bounds(slots)

    def _restore_v1(
        self, customer_ids: list[str], decoded: list[tuple[bytes, bytes, bytes, list[str | None]]]
    ) -> None:
        """Convert version 1 snapshots: bucket ids become ring alignment, floats counts."""
        k, n = len(decoded), self._n
        ints = np.frombuffer(b"".join(d[1] for d in decoded), np.int64).reshape(k, -1)
        floats = np.frombuffer(b"".join(d[2] for d in decoded), np.float64).reshape(k, -1)
        n_last, n_prof = len(self._last_keys), len(self._profiles)
        int_width = 3 + n * len(self._windows) + n_last + n_prof
        float_width = sum(n if key.window_ms is not None else 1 for key in self._acc_keys)
        n_num_prof = n_prof - len(self._categorical_profiles)
        float_width += n_last + n_num_prof
        if ints.shape[1] != int_width or floats.shape[1] != float_width:
            raise SnapshotError("version 1 state snapshot of unexpected size")
        clock = ints[:, 0]
        valid: dict[int, np.ndarray] = {}
        for i, w in enumerate(self._windows):
            ids = ints[:, 3 + i * n : 3 + (i + 1) * n]
            valid[w] = ids > (clock // (w // n) - n)[:, None]
        latest_time = ints[:, 3 + n * len(self._windows) :]
        blocks = [np.full((k, len(b.keys), b.buckets), b.identity, b.dtype) for b in self._blocks]
        start = 0
        for key in self._acc_keys:
            b, j = self._acc_at[key]
            width = n if key.window_ms is not None else 1
            acc = floats[:, start : start + width]
            start += width
            if key.window_ms is not None:
                acc = np.where(valid[key.window_ms], acc, _IDENTITY[key.kind])
            if self._blocks[b].kind == _COUNT and (
                acc.max(initial=0) > COUNT_MAX or (acc != np.round(acc)).any()
            ):
                raise SnapshotError("version 1 state snapshot holds a count out of range")
            blocks[b][:, j, :] = acc
        last_values = floats[:, start : start + n_last]
        profile_values = floats[:, start + n_last :]
        values = np.concatenate(
            [last_values[:, [j for j in self._value_cols if j < n_last]], profile_values], axis=1
        )
        records = np.empty(k, dtype=self._record)
        records[:] = self._empty
        records["clock"] = clock
        records["first_seen"] = ints[:, 1]
        records["applied_offset"] = ints[:, 2]
        if self._latest_sources:
            records["latest_time"] = latest_time
        for block, converted in zip(self._blocks, blocks, strict=True):
            records[block.name] = converted
        if self._value_cols:
            records["latest_value"] = values
        slots = self._slots_for(customer_ids)
        self._rows[slots] = records
        categories = np.empty((k, len(self._category_cols)), dtype=object)
        for i, d in enumerate(decoded):
            categories[i] = d[3]
        self._latest_category[slots] = categories
        self._raise_bounds(slots)

    def _raise_bounds(self, slots: np.ndarray) -> None:
        """Keep the applied-offset and count bounds true for restored slots."""
        self._applied_bound = max(self._applied_bound, int(self.applied_offset[slots].max()))
        for block in self._blocks:
            if block.kind == _COUNT and block.windowed:
                peak = int(_window_peaks(self._rows[block.name][slots]).max(initial=0))
                self._count_bound = max(self._count_bound, peak)

    def forget(self, customer_ids: list[str]) -> None:
        """Drop customers (a changelog tombstone)."""
        slots = [self._slots.pop(c) for c in customer_ids if c in self._slots]
        if slots:
            rows = np.asarray(slots, dtype=np.int64)
            self._clear(rows)
            self._free.extend(slots)
