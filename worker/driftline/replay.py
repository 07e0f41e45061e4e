"""Replay a real event log (CSV or Parquet) into the input topic as customer events.

Real logs never use our field names, so a ``ColumnMapping`` says which source column
feeds which ``CustomerEvent`` field, and which fields are constants (CDNOW has only
purchases, so ``event_type`` is the constant "purchase").  Loading normalizes the table
once, vectorized: ids stay strings (CDNOW's customer ids are zero-padded, and "00042" and
"42" must stay different customers), dates become epoch millis at midnight UTC, and rows
are sorted *stably* by event time so same-time rows keep their file order.

Replaying produces in that order, either as fast as the broker takes it or at a speed-up
relative to event time (``speedup=86400``: one day of history per second), which is how a
log of past purchases becomes a live stream for the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pandas as pd

from driftline.core.events import EVENT_TYPES, CustomerEvent
from driftline.event_producer import produce_records
from driftline.simulate import EVENT_FIELDS, with_none

__all__ = [
    "CALENDAR_CYCLE_MS",
    "CDNOW_MAPPING",
    "ColumnMapping",
    "encode_events",
    "event_file_mapping",
    "load_events",
    "replay",
]

_STRING_FIELDS = ("event_id", "customer_id", "event_type", "plan_type", "region")
_NUMERIC_FIELDS = ("amount", "quantity", "age", "income", "tenure_months")
_UNIT_FACTOR_TO_MS = {"s": 1000.0, "ms": 1.0, "us": 1e-3, "ns": 1e-6}


@dataclass(frozen=True, slots=True)
class ColumnMapping:
    """How a source table maps onto ``CustomerEvent`` fields.

    ``columns``: event field -> source column.  ``constants``: event field -> fixed value.
    ``customer_id`` and ``event_time`` must be columns; ``event_type`` a column or a
    constant; ``event_id`` is generated as ``"{file stem}-{row}"`` when not mapped, which
    is stable across replays of the same file (so downstream dedup by id works).

    Times: strings are parsed as ISO 8601 (date-only means midnight UTC; naive datetimes
    are taken as UTC) unless ``time_format`` (strptime) is given; numbers are epoch values
    in ``time_unit`` ("s", "ms", "us", "ns", or "auto" to guess from the magnitude).
    ``time_shift_ms`` is then added to every time: the event contract only accepts
    2000..2100, so older logs (CDNOW is 1997-98) are moved forward by whole 28-year
    Gregorian cycles (``CALENDAR_CYCLE_MS``), which keeps dates *and* weekdays.
    """

    columns: Mapping[str, str]
    constants: Mapping[str, Any] = field(default_factory=dict)
    time_format: str | None = None
    time_unit: str = "auto"
    time_shift_ms: int = 0

    def __post_init__(self) -> None:
        unknown = (set(self.columns) | set(self.constants)) - set(EVENT_FIELDS)
        if unknown:
            raise ValueError(
                f"unknown event field(s) {sorted(unknown)}; fields: {', '.join(EVENT_FIELDS)}"
            )
        both = set(self.columns) & set(self.constants)
        if both:
            raise ValueError(f"field(s) {sorted(both)} mapped both to a column and a constant")
        for required in ("customer_id", "event_time"):
            if required not in self.columns:
                raise ValueError(f"{required!r} must be mapped to a source column")
        if "event_type" not in self.columns and "event_type" not in self.constants:
            raise ValueError("event_type must be a column or a constant")
        constant_type = self.constants.get("event_type")
        if constant_type is not None and constant_type not in EVENT_TYPES:
            raise ValueError(f"event_type {constant_type!r} is not one of {EVENT_TYPES}")
        if self.time_unit not in ("auto", *_UNIT_FACTOR_TO_MS):
            raise ValueError(f"time_unit must be auto, s, ms, us or ns, not {self.time_unit!r}")

    @classmethod
    def from_strings(
        cls,
        columns: Sequence[str],
        constants: Sequence[str] = (),
        time_format: str | None = None,
        time_unit: str = "auto",
        time_shift_ms: int = 0,
    ) -> ColumnMapping:
        """From CLI-style ``field=column`` and ``field=value`` pairs.

        Numeric constants (for numeric fields) are converted to float.
        """
        return cls(
            columns=_pairs(columns, "column"),
            constants={
                name: float(value) if name in _NUMERIC_FIELDS else value
                for name, value in _pairs(constants, "constant").items()
            },
            time_format=time_format,
            time_unit=time_unit,
            time_shift_ms=time_shift_ms,
        )


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValueError(f"bad {what} mapping {item!r}: use field={what}")
        result[name.strip()] = value.strip()
    return result


#: 28 Gregorian years (10,227 days = 1,461 weeks, 7 leap days between 1901 and 2099):
#: shifting by it maps every date to the same month/day and the same weekday.
CALENDAR_CYCLE_MS = 10_227 * 86_400_000

#: The CDNOW master file shipped in ``../shared/data/cdnow`` (purchases only), moved
#: from 1997-01-01..1998-06-30 to 2025-01-01..2026-06-30 so the contract accepts it.
CDNOW_MAPPING = ColumnMapping(
    columns={
        "customer_id": "customer_id",
        "event_time": "date",
        "amount": "dollar_value",
        "quantity": "number_of_cds",
    },
    constants={"event_type": "purchase"},
    time_shift_ms=CALENDAR_CYCLE_MS,
)


def event_file_mapping(path: str | Path) -> ColumnMapping:
    """Identity mapping for a file already in the event format (e.g. ``write_history``).

    Uses whichever event field columns the file has; it must have at least
    ``customer_id``, ``event_time`` and ``event_type``.
    """
    header = file_columns(path)
    return ColumnMapping(columns={name: name for name in EVENT_FIELDS if name in header})


def file_columns(path: str | Path) -> list[str]:
    """The column names of a CSV/Parquet event file (its header; no rows are read)."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, nrows=0, sep=_separator(path)).columns)


def _separator(path: Path) -> str:
    return "\t" if path.suffix.lower() == ".tsv" else ","


def load_events(
    path: str | Path, mapping: ColumnMapping | None = None, limit: int | None = None
) -> pd.DataFrame:
    """Read a CSV/Parquet log into an event table sorted stably by event time.

    Columns: the mapped/constant event fields (``event_id``, ``customer_id``,
    ``event_time``, ``event_type`` always), ``event_time`` as int64 epoch millis.
    ``mapping=None`` means the file already uses the event field names.  ``limit`` keeps
    the first rows *of the file* (before sorting).  Raises ``ValueError`` naming the
    first bad row when a time cannot be parsed or an id is missing.
    """
    path = Path(path)
    if mapping is None:
        mapping = event_file_mapping(path)
    source_columns = sorted(set(mapping.columns.values()))
    string_sources = {mapping.columns[f] for f in _STRING_FIELDS if f in mapping.columns}
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        raw = pd.read_parquet(path, columns=source_columns)
        if limit is not None:
            raw = raw.head(limit)
    elif suffix in (".csv", ".gz", ".txt", ".tsv"):
        raw = pd.read_csv(
            path,
            usecols=source_columns,
            # Ids as text: reading them as numbers would strip CDNOW's zero padding.
            dtype={column: str for column in string_sources},
            keep_default_na=False,
            na_values=[""],
            nrows=limit,
            sep=_separator(path),
        )
    else:
        raise ValueError(f"unsupported event file type {path.suffix!r}: use .csv or .parquet")
    rows = len(raw)
    out: dict[str, Any] = {}
    if "event_id" in mapping.columns:
        out["event_id"] = _strings(raw[mapping.columns["event_id"]], "event_id")
    else:
        out["event_id"] = np.array([f"{path.stem}-{i}" for i in range(rows)], dtype=object)
    out["customer_id"] = _strings(raw[mapping.columns["customer_id"]], "customer_id")
    out["event_time"] = (
        _epoch_ms(raw[mapping.columns["event_time"]], mapping) + mapping.time_shift_ms
    )
    if "event_type" in mapping.columns:
        out["event_type"] = _strings(raw[mapping.columns["event_type"]], "event_type")
    for name in EVENT_FIELDS:
        if name in out:
            continue
        if name in mapping.constants:
            value = mapping.constants[name]
            dtype = np.float64 if name in _NUMERIC_FIELDS else object
            out[name] = np.full(rows, value, dtype=dtype)
        elif name in mapping.columns:
            column = raw[mapping.columns[name]]
            if name in _NUMERIC_FIELDS:
                out[name] = pd.to_numeric(column, errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan
                )
            else:
                out[name] = column.astype(object).where(column.notna(), None).to_numpy()
    frame = pd.DataFrame({name: out[name] for name in EVENT_FIELDS if name in out})
    return frame.sort_values("event_time", kind="stable").reset_index(drop=True)


def _strings(column: pd.Series, name: str) -> np.ndarray:
    missing = column.isna()
    if missing.any():
        row = int(np.flatnonzero(missing.to_numpy())[0])
        raise ValueError(f"{name} is missing at data row {row}")
    return column.astype(str).str.strip().to_numpy(dtype=object)


def _epoch_ms(column: pd.Series, mapping: ColumnMapping) -> np.ndarray:
    """Any supported time column -> int64 epoch millis (UTC)."""
    if pd.api.types.is_datetime64_any_dtype(column):
        stamps = pd.to_datetime(column, utc=True)
    elif pd.api.types.is_numeric_dtype(column):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        _fail_on_nan(values, column)
        unit = mapping.time_unit
        if unit == "auto":
            unit = _guess_unit(values)
        return np.round(values * _UNIT_FACTOR_TO_MS[unit]).astype(np.int64)
    else:
        stamps = pd.to_datetime(
            column.astype(str),
            utc=True,
            format=mapping.time_format or "ISO8601",
            errors="coerce",
        )
        stamps = stamps.where(column.notna())
    _fail_on_nan(stamps.isna().to_numpy(), column)
    return stamps.astype("datetime64[ms, UTC]").astype("int64").to_numpy()


def _fail_on_nan(values: np.ndarray, column: pd.Series) -> None:
    bad = values if values.dtype == bool else np.isnan(values)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"unparseable event time {column.iloc[row]!r} in column {column.name!r} "
            f"at data row {row}"
        )


def _guess_unit(values: np.ndarray) -> str:
    """Epoch unit from magnitude: 2001..2286 in seconds is < 1e10, in ms < 1e13, etc."""
    typical = float(np.nanmedian(np.abs(values))) if len(values) else 0.0
    if typical < 1e11:
        return "s"
    if typical < 1e14:
        return "ms"
    if typical < 1e17:
        return "us"
    return "ns"


_ENCODER = msgspec.json.Encoder()
_ENCODE_CHUNK = 50_000


def encode_events(frame: pd.DataFrame) -> list[bytes]:
    """Each row as the JSON of a ``CustomerEvent`` (absent fields omitted).

    Columns go to Python lists once, then one struct construction and one C-level encode
    per row: no per-field Python.  Validation is the consumer's job (the decoder is the
    contract); the tests check that replayed values decode with zero rejections.
    """
    rows = len(frame)
    columns: list[list[Any]] = []
    for name in EVENT_FIELDS:
        if name not in frame.columns:
            columns.append([None] * rows)
            continue
        series = frame[name]
        if name == "event_time":
            columns.append(series.to_numpy(dtype=np.int64).tolist())
        elif name in _NUMERIC_FIELDS:
            values = series.to_numpy(dtype=np.float64, na_value=np.nan)
            columns.append(with_none(values))
        else:
            values = series.astype(object).to_numpy()
            columns.append([None if _missing(v) else str(v) for v in values])
    encode = _ENCODER.encode
    return [encode(CustomerEvent(*row)) for row in zip(*columns, strict=True)]


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)


def replay(
    bootstrap: str,
    topic: str,
    df: pd.DataFrame,
    speedup: float | None = None,
    progress: bool = False,
    rate: float | None = None,
    limit: int | None = None,
    producer_config: Mapping[str, Any] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Produce an event table in row order, keyed by customer id; return the count.

    ``speedup``: event time runs that many times faster than wall time (None: as fast as
    possible); ``rate`` additionally caps records per second.  Rows are expected in event
    time order (``load_events`` sorts them).  ``stop`` ends it early, gracefully.
    """
    if limit is not None:
        df = df.head(limit)

    def records() -> Iterator[tuple[bytes, bytes, int]]:
        # Encoded a slice at a time: a big log is never held twice in memory.
        for start in range(0, len(df), _ENCODE_CHUNK):
            part = df.iloc[start : start + _ENCODE_CHUNK]
            values = encode_events(part)
            keys = part["customer_id"].astype(str).tolist()
            times = part["event_time"].to_numpy(dtype=np.int64).tolist()
            for key, value, when in zip(keys, values, times, strict=True):
                yield key.encode(), value, when

    return produce_records(
        bootstrap,
        topic,
        records(),
        rate=rate,
        speedup=speedup,
        progress=progress,
        total=len(df),
        producer_config=producer_config,
        desc=f"replay {topic}",
        stop=stop,
    )
