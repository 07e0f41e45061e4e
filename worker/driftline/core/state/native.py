"""Dispatch to the C state kernel (``driftline/core/_state_kernel.c``).

The kernel is an optional extension built at install time when a C compiler is there
(``driftline.core._state_kernel``, see pyproject.toml).  It applies a batch in one pass over
the events in arrival order, each straight into its customer's record, with the features
as of each event read on the way, and writes snapshots straight from the records.  Without
it (or on a big-endian machine) the numpy rounds of :mod:`driftline.core.state.update` do
the same, several times slower.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from driftline.core.events import EventBatch
from driftline.core.state.features import Readings
from driftline.core.state.layout import COUNT, MAX, MIN, N_TYPES, SUM
from driftline.core.state.store import SlotStore

_state_kernel: ModuleType | None
try:  # built at install time when a C compiler is there (an optional extension)
    _state_kernel = importlib.import_module("driftline.core._state_kernel")
except ImportError:  # pragma: no cover - depends on the install
    _state_kernel = None

#: Whether ``FeatureState`` applies events with the C kernel (``_state_kernel.c``) by
#: default; without it, the numpy rounds do the same, several times slower.
NATIVE_KERNEL = _state_kernel is not None and sys.byteorder == "little"

#: Block kinds and dtypes as the C kernel numbers them.
KERNEL_KIND = {COUNT: 0, SUM: 1, MIN: 2, MAX: 3}
KERNEL_DTYPE = {np.dtype(np.int32): 0, np.dtype(np.int64): 1, np.dtype(np.float64): 2}


def export_snapshots(
    records: np.ndarray,
    width: int,
    slots: np.ndarray,
    prefix: bytes,
    categories: np.ndarray,
    n_categories: int,
) -> list[bytes] | None:
    """Snapshots of ``slots`` written by the kernel (see ``Snapshots.export``); None when a
    category is not a str (msgspec encodes those) or the kernel is not built."""
    if _state_kernel is None:
        return None
    try:
        snapshots: list[bytes] = _state_kernel.export_snapshots(
            records, width, slots, prefix, categories.ctypes.data, n_categories
        )
    except TypeError:  # a category that is not a str
        return None
    return snapshots


class NativeKernel(SlotStore):
    """Mixin of ``FeatureState``: the kernel's tables, and a batch applied by the kernel."""

    _kernel_tables: dict[str, np.ndarray]

    def _describe_for_kernel(self) -> dict[str, np.ndarray]:
        """The record layout and the accumulator keys as flat int64 tables (C kernel).

        Keys are numbered block after block; each key has its window (index into
        ``_bucket_ms``), its field (column of the kernel's values; the last column, all
        ones, for keys without a field) and the event types it accepts.
        """
        offset = self._offsets
        rows, first_key = [], 0
        for block in self._blocks:
            rows.append(
                [
                    KERNEL_KIND[block.kind],
                    int(block.windowed),
                    KERNEL_DTYPE[block.dtype],
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

        def table(values: Sequence[object], dtype: type = np.int64) -> np.ndarray:
            return np.ascontiguousarray(np.array(values, dtype=dtype))

        return {
            "layout": table(layout),
            "blocks": table(rows).reshape(len(rows), 7),
            "key_window": table([int(w) for b in self._blocks for w in b.window_index]),
            "key_field": table([int(f) for b in self._blocks for f in b.field_index]),
            "type_table": np.ascontiguousarray(
                np.concatenate([b.type_table for b in self._blocks], axis=1)
                if self._blocks
                else np.zeros((N_TYPES, 0), dtype=bool)
            ).view(np.uint8),
            "windows": table(self._bucket_ms.tolist()),
            "latest_cols": table(latest_cols).reshape(len(latest_cols), 2),
            "first_key": table([r[6] for r in rows]),
        }

    def _apply_native(
        self, batch: EventBatch, slots: np.ndarray, offsets: np.ndarray | None
    ) -> Readings:
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
        assert _state_kernel is not None  # ``native`` is refused without the kernel
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
        return Readings(
            clock=clock,
            first_seen=first,
            totals=[
                totals[:, a : a + len(b.keys)] for a, b in zip(starts, self._blocks, strict=True)
            ],
            latest_time=time_out,
            latest_value=value_out,
            latest_category=category_out,
        )
