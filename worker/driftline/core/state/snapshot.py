"""Changelog snapshots of customers: export, and restore of both formats.

A snapshot is ``(version, layout, record, categories)`` msgpack: ``record`` is the
customer's packed little-endian record, so a restore is one ``frombuffer`` for a whole batch
of customers.  Version 1 (int64 bucket ids, float64 accumulators) is still restored,
converted to the current record.
"""

from __future__ import annotations

import msgspec
import numpy as np

from driftline.core.state.layout import COUNT, COUNT_MAX, IDENTITY
from driftline.core.state.native import export_snapshots
from driftline.core.state.store import SlotStore

#: Version of the per-customer snapshot written to the changelog.  1: the first format
#: (int64 bucket ids, float64 accumulators), still restored; 2: the current one.
SNAPSHOT_VERSION = 2

_SNAPSHOT = msgspec.msgpack.Encoder()
_ANY_DECODER = msgspec.msgpack.Decoder()
_V1_DECODER = msgspec.msgpack.Decoder(tuple[bytes, bytes, bytes, list[str | None]])


class SnapshotError(ValueError):
    """A changelog snapshot this worker cannot read (e.g. written by a newer version)."""


def snapshot_prefix(layout: bytes, record_size: int) -> bytes:
    """A snapshot up to its record's bytes, the same for every customer: the C kernel
    writes it, then the record, then the categories (see ``Snapshots.export``)."""
    blank = _SNAPSHOT.encode((SNAPSHOT_VERSION, layout, bytes(record_size), []))
    return blank[: len(blank) - record_size - 1]


class Snapshots(SlotStore):
    """Mixin of ``FeatureState``: per-customer snapshots for the changelog."""

    native: bool
    _snapshot_prefix: bytes

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
            written = export_snapshots(
                self._bytes,
                width,
                slots,
                self._snapshot_prefix,
                self._latest_category,
                len(self._category_cols),
            )
            if written is not None:  # else a category that is not a str: msgspec below
                return written
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
        at = self._offsets["applied_offset"]
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
                acc = np.where(valid[key.window_ms], acc, IDENTITY[key.kind])
            if self._blocks[b].kind == COUNT and (
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
