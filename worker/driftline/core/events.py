"""Customer events: the input contract, and its batch decoder.

The msgspec ``CustomerEvent`` struct *is* the contract: ``schemas/customer-event.schema.json``
is generated from it (``driftline schemas``), and a test checks the two agree on the same
cases.  Decoding happens a micro-batch at a time: the decoder is mapped over the raw values
in C, with no Python frame per value; only when that fails (some value is bad) are the
values decoded one by one, with error handling, to find which.  Valid events come out
columnar (numpy arrays), ready for the vectorized state update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Annotated, Any, Literal, get_args

import msgspec
import numpy as np
import pandas as pd

from driftline.core.repeated_fields import rows_with_repeats

EventType = Literal[
    "purchase",
    "login",
    "support_ticket",
    "payment_failed",
    "plan_change",
    "refund",
    "page_view",
    "cancel_request",
]
EVENT_TYPES: tuple[str, ...] = get_args(EventType)
EVENT_TYPE_CODE: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}

#: Epoch millis accepted for ``event_time``: 2000-01-01 .. 2100-01-01.  Outside that range a
#: number is far more likely seconds, microseconds or garbage than a real event time.
MIN_EPOCH_MS = 946_684_800_000
MAX_EPOCH_MS = 4_102_444_800_000

Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Category = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
EventTime = (
    Annotated[datetime, msgspec.Meta(tz=True)]
    | Annotated[int, msgspec.Meta(ge=MIN_EPOCH_MS, le=MAX_EPOCH_MS)]
)


class CustomerEvent(msgspec.Struct, forbid_unknown_fields=False, omit_defaults=True):
    """One thing a customer did.  Unknown extra fields are ignored (forward compatible)."""

    event_id: Id
    customer_id: Id
    event_time: EventTime
    event_type: EventType
    amount: NonNegative | None = None
    quantity: Annotated[float, msgspec.Meta(ge=0, le=1e9)] | None = None
    age: Annotated[float, msgspec.Meta(ge=0, le=150)] | None = None
    income: NonNegative | None = None
    tenure_months: Annotated[float, msgspec.Meta(ge=0, le=1200)] | None = None
    plan_type: Category | None = None
    region: Category | None = None


NUMERIC_FIELDS = ("amount", "quantity", "age", "income", "tenure_months")
CATEGORICAL_FIELDS = ("plan_type", "region")
PROFILE_FIELDS = ("age", "income", "tenure_months", "plan_type", "region")

#: Dead-letter reasons: a closed set, so they are safe as a metric label.
REASON_MALFORMED = "malformed_json"
REASON_SCHEMA = "schema_violation"
REASON_UNKNOWN_TYPE = "unknown_event_type"
REASON_MISSING_FIELD = "missing_field"
REASON_INVALID_VALUE = "invalid_value"
REASON_OVERSIZED = "oversized"
REASON_EMPTY = "empty_value"
REASON_KEY_MISMATCH = "key_mismatch"
REASON_LATE = "late"
#: The model raised on the event's features (isolated by the model layer, ``model/isolation.py``).
REASON_MODEL_ERROR = "model_error"
#: Bytes that are not UTF-8 (overlong forms, surrogates, stray continuation bytes...)
#: anywhere in the value, even in a key or value the decoder would otherwise skip.
REASON_ENCODING = "invalid_encoding"
#: An event time further ahead than the clock-skew allowance (see ``core.clock_skew``).
REASON_FUTURE = "future"
DECODE_REASONS = (
    REASON_MALFORMED,
    REASON_ENCODING,
    REASON_SCHEMA,
    REASON_UNKNOWN_TYPE,
    REASON_MISSING_FIELD,
    REASON_INVALID_VALUE,
    REASON_OVERSIZED,
    REASON_EMPTY,
    REASON_KEY_MISMATCH,
)
#: Every reason a dead letter can carry (the ``driftline.error.reason`` header).
DLQ_REASONS = (*DECODE_REASONS, REASON_FUTURE, REASON_LATE, REASON_MODEL_ERROR)

DEFAULT_MAX_EVENT_BYTES = 64 * 1024
_REQUIRED = ("event_id", "customer_id", "event_time", "event_type")

_one_decoder = msgspec.json.Decoder(CustomerEvent)
#: What decoding untrusted bytes may raise.  Invalid UTF-8 inside a string the decoder
#: reads surfaces as UnicodeDecodeError (not msgspec.DecodeError): bad input, not a bug.
_DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError)


def is_utf8(value: bytes) -> bool:
    """Whether ``value`` is strict UTF-8 (RFC 3629: no overlong forms, no surrogates).

    msgspec checks UTF-8 only in the strings it decodes: an unknown field's key or value
    is skipped unread, so a bad byte there would be scored.  ``isascii`` (a word-at-a-time
    scan in C) settles the common case without decoding.
    """
    if value.isascii():
        return True
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _all_utf8(values: Sequence[bytes]) -> bool:
    """Whether every value is strict UTF-8: one C-level check over the whole batch.

    The values are joined with an ASCII newline, which cannot complete a sequence that a
    value leaves open nor be the continuation byte another one starts with, so the joined
    buffer is UTF-8 exactly when each value is.
    """
    joined = b"\n".join(values)
    return is_utf8(joined)


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why the value at ``index`` of a batch was not accepted."""

    index: int
    reason: str
    message: str


@dataclass(slots=True)
class EventBatch:
    """Valid events of one micro-batch, column by column.

    ``index`` maps each row back to its position in the raw batch (for offsets, headers,
    partitions).  Missing numbers are NaN; missing categories are None.
    """

    index: np.ndarray  # int64
    event_id: np.ndarray  # object (str)
    customer_id: np.ndarray  # object (str)
    #: ``customer_id`` as UTF-8 (object, bytes): the record key of the customer's
    #: predictions and changelog, encoded once per event here.
    customer_key: np.ndarray
    event_time_ms: np.ndarray  # int64
    event_type: np.ndarray  # int8 code into EVENT_TYPES
    amount: np.ndarray  # float64
    quantity: np.ndarray
    age: np.ndarray
    income: np.ndarray
    tenure_months: np.ndarray
    plan_type: np.ndarray  # object (str | None)
    region: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: np.ndarray) -> EventBatch:
        return EventBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @classmethod
    def concat(cls, parts: Sequence[EventBatch]) -> EventBatch:
        if len(parts) == 1:
            return parts[0]
        return cls(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)}
        )

    @classmethod
    def empty(cls) -> EventBatch:
        return cls.from_events([], np.empty(0, dtype=np.int64))

    @classmethod
    def from_events(cls, events: Sequence[CustomerEvent], index: np.ndarray) -> EventBatch:
        """Columnarize decoded structs.

        Each struct becomes one tuple in C (``msgspec.structs.astuple``), ``zip`` turns the
        tuples into columns, and ``np.fromiter`` fills each array without numpy's per-item
        shape discovery (which is slow for ``None``).  Objects that are not exactly
        ``CustomerEvent`` (duck-typed rows) are read by attribute name instead, as before.
        """
        if set(map(type, events)) <= {CustomerEvent}:
            rows: Iterable[tuple[Any, ...]] = map(msgspec.structs.astuple, events)
        else:
            rows = map(_event_row, events)
        return _batch_from_rows(rows, index)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame) -> EventBatch:
        """Build from a table with the event field names (offline files, tests).

        ``event_time`` may be datetime64 (any unit, naive means UTC) or epoch millis.
        Missing optional columns are filled as absent.
        """
        n = len(frame)
        times = frame["event_time"]
        if pd.api.types.is_datetime64_any_dtype(times):
            ts = pd.to_datetime(times, utc=True)
            time_ms = ts.astype("datetime64[ms, UTC]").astype("int64").to_numpy()
        else:
            time_ms = times.to_numpy(dtype=np.int64)
        types = frame["event_type"].map(EVENT_TYPE_CODE)
        if types.isna().any():
            bad = frame["event_type"][types.isna()].iloc[0]
            raise ValueError(f"unknown event_type {bad!r}; known: {', '.join(EVENT_TYPES)}")

        def col(name: str, dtype: type) -> np.ndarray:
            if name not in frame:
                return np.full(n, np.nan if dtype is float else None, dtype=dtype)
            if dtype is float:
                result: np.ndarray = frame[name].to_numpy(dtype=np.float64, na_value=np.nan)
                return result
            values = frame[name].astype(object).to_numpy()
            return np.array([None if _is_missing(v) else str(v) for v in values], dtype=object)

        return cls(
            index=np.arange(n, dtype=np.int64),
            event_id=frame["event_id"].astype(str).to_numpy(dtype=object)
            if "event_id" in frame
            else np.array([str(i) for i in range(n)], dtype=object),
            customer_id=(ids := frame["customer_id"].astype(str).to_numpy(dtype=object)),
            customer_key=np.fromiter(map(str.encode, ids), dtype=object, count=n),
            event_time_ms=time_ms.astype(np.int64),
            event_type=types.to_numpy(dtype=np.int8),
            amount=col("amount", float),
            quantity=col("quantity", float),
            age=col("age", float),
            income=col("income", float),
            tenure_months=col("tenure_months", float),
            plan_type=col("plan_type", object),
            region=col("region", object),
        )

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "event_id": self.event_id,
                "customer_id": self.customer_id,
                "event_time": self.event_time_ms,
                "event_type": np.asarray(EVENT_TYPES, dtype=object)[self.event_type],
                **{name: getattr(self, name) for name in NUMERIC_FIELDS},
                **{name: getattr(self, name) for name in CATEGORICAL_FIELDS},
            }
        )


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)


def _to_epoch_ms(value: datetime | int) -> int:
    if isinstance(value, int):
        return value
    # Integer arithmetic: float seconds * 1000 is off by one ms for some times.
    return (value - _EPOCH) // _ONE_MS


#: A ``CustomerEvent`` as a tuple in field order, for objects ``astuple`` cannot read.
_event_row = attrgetter(*CustomerEvent.__struct_fields__)
_event_type_code = EVENT_TYPE_CODE.__getitem__


def _batch_from_rows(rows: Iterable[tuple[Any, ...]], index: np.ndarray) -> EventBatch:
    """An ``EventBatch`` from event tuples in ``CustomerEvent`` field order.

    One ``zip`` makes all the columns; ``np.fromiter`` then fills each array with a known
    count and no shape discovery (it turns ``None`` into NaN, like ``np.array`` does, at
    half the cost).
    """
    columns = tuple(zip(*rows, strict=True)) or ((),) * len(CustomerEvent.__struct_fields__)
    (
        event_id,
        customer_id,
        event_time,
        event_type,
        amount,
        quantity,
        age,
        income,
        tenure_months,
        plan_type,
        region,
    ) = columns
    n = len(event_id)

    def objects(column: tuple[Any, ...]) -> np.ndarray:
        return np.fromiter(column, dtype=object, count=n)

    def numbers(column: tuple[Any, ...]) -> np.ndarray:
        return np.fromiter(column, dtype=np.float64, count=n)  # None -> nan

    return EventBatch(
        index=np.asarray(index, dtype=np.int64),
        event_id=objects(event_id),
        customer_id=objects(customer_id),
        # Cannot fail: the JSON decoder refuses lone surrogates.
        customer_key=np.fromiter(map(str.encode, customer_id), dtype=object, count=n),
        event_time_ms=_epoch_ms_column(event_time),
        event_type=np.fromiter(map(_event_type_code, event_type), dtype=np.int8, count=n),
        amount=numbers(amount),
        quantity=numbers(quantity),
        age=numbers(age),
        income=numbers(income),
        tenure_months=numbers(tenure_months),
        plan_type=objects(plan_type),
        region=objects(region),
    )


def _epoch_ms_column(times: tuple[datetime | int, ...]) -> np.ndarray:
    """Event times as int64 epoch millis, each converted exactly once.

    Epoch-millis integers (the common producer format) are copied in C; only when some
    time is RFC 3339 text (a ``datetime``) does a Python pass convert, exactly as
    ``_to_epoch_ms`` does.
    """
    if set(map(type, times)) <= {int}:
        return np.fromiter(times, dtype=np.int64, count=len(times))
    return np.array(
        [t if isinstance(t, int) else (t - _EPOCH) // _ONE_MS for t in times], dtype=np.int64
    )


def classify_error(error: Exception) -> str:
    """Map a msgspec error to a dead-letter reason (bounded set)."""
    if isinstance(error, msgspec.ValidationError):
        text = str(error)
        if text.startswith("Object missing required field"):
            return REASON_MISSING_FIELD
        if "Invalid enum value" in text and "event_type" in text:
            return REASON_UNKNOWN_TYPE
        if text.startswith("Expected"):
            return REASON_SCHEMA
        return REASON_INVALID_VALUE
    return REASON_MALFORMED


def decode_one(value: bytes | None, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> CustomerEvent:
    """Decode and validate one value; raises ``InvalidEvent`` with a reason otherwise."""
    if not value:
        raise InvalidEvent(REASON_EMPTY, "empty or null value")
    if len(value) > max_bytes:
        raise InvalidEvent(REASON_OVERSIZED, f"{len(value)} bytes > limit {max_bytes}")
    if not is_utf8(value):
        raise InvalidEvent(REASON_ENCODING, _encoding_error(value))
    try:
        event = _one_decoder.decode(value)
    except _DECODE_ERRORS as error:
        raise InvalidEvent(classify_error(error), str(error)) from None
    except RecursionError:
        raise InvalidEvent(REASON_MALFORMED, "JSON nested too deeply") from None
    when = event.event_time
    if isinstance(when, datetime):
        ms = _to_epoch_ms(when)
        if not MIN_EPOCH_MS <= ms <= MAX_EPOCH_MS:
            raise InvalidEvent(REASON_INVALID_VALUE, f"event_time {when.isoformat()} out of range")
    return event


def _encoding_error(value: bytes) -> str:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not UTF-8: byte {error.start}: {error.reason}"
    return "not UTF-8"


class InvalidEvent(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


def decode_batch(
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    max_bytes: int = DEFAULT_MAX_EVENT_BYTES,
) -> tuple[EventBatch, list[Rejection]]:
    """Decode a micro-batch of raw values into valid events and rejections.

    When ``keys`` are given, a record whose key is not the event's ``customer_id`` is
    rejected: the input topic is partitioned by customer, and a mis-keyed record would put
    the customer's state on two partitions.  A null key is accepted (producers that do not
    key are common); the worker then relies on the event's own customer id.
    """
    fast = _decode_all_or_none(values, max_bytes)
    rejections: list[Rejection] = []
    if fast is None:
        events: list[CustomerEvent] = []
        good: list[int] = []
        for i, value in enumerate(values):
            try:
                events.append(decode_one(value, max_bytes))
                good.append(i)
            except InvalidEvent as error:
                rejections.append(Rejection(i, error.reason, error.message))
        batch = EventBatch.from_events(events, np.asarray(good, dtype=np.int64))
    else:
        batch = fast
    if len(batch):
        batch = _reject_repeated_fields(batch, values, rejections)
    if keys is not None and len(batch):
        batch = _reject_mis_keyed(batch, keys, rejections)
    rejections.sort(key=lambda r: r.index)
    return batch, rejections


def _reject_repeated_fields(
    batch: EventBatch, values: Sequence[bytes | None], rejections: list[Rejection]
) -> EventBatch:
    """Drop (and add to ``rejections``) events that name a known property twice."""
    rows = batch.index.tolist()
    n = len(batch)
    # How many events carry each property (counts only: ``list.count`` of None is C).
    present = dict.fromkeys(_REQUIRED, n)
    present.update({f: n - int(np.isnan(getattr(batch, f)).sum()) for f in NUMERIC_FIELDS})
    present.update({f: n - getattr(batch, f).tolist().count(None) for f in CATEGORICAL_FIELDS})
    raw = values if n == len(values) else [values[i] for i in rows]
    repeated = rows_with_repeats(raw, present)  # type: ignore[arg-type]
    if not repeated:
        return batch
    for row, name in repeated.items():
        rejections.append(
            Rejection(rows[row], REASON_SCHEMA, f"property {name!r} appears more than once")
        )
    keep = np.ones(len(batch), dtype=bool)
    keep[list(repeated)] = False
    return batch.take(np.flatnonzero(keep))


def _reject_mis_keyed(
    batch: EventBatch, keys: Sequence[bytes | None], rejections: list[Rejection]
) -> EventBatch:
    """Drop (and add to ``rejections``) the rows whose record key is not their customer id.

    The common batch has every key right, so the check is one C-level list comparison of
    the keys against the encoded ids; only when that fails is the row-by-row test run.
    """
    row_keys = list(map(keys.__getitem__, batch.index.tolist()))
    encoded = batch.customer_key.tolist()
    if row_keys == encoded:
        return batch
    mismatch = np.fromiter(
        (k is not None and k != c for k, c in zip(row_keys, encoded, strict=True)),
        dtype=bool,
        count=len(batch),
    )
    if not mismatch.any():
        return batch
    for row in np.flatnonzero(mismatch).tolist():
        key, customer = row_keys[row], batch.customer_id[row]
        rejections.append(
            Rejection(
                int(batch.index[row]),
                REASON_KEY_MISMATCH,
                f"record key {(key or b'')[:64]!r} != customer_id {customer[:64]!r}",
            )
        )
    return batch.take(np.flatnonzero(~mismatch))


def _decode_all_or_none(values: Sequence[bytes | None], max_bytes: int) -> EventBatch | None:
    """All values as one batch, or None when any of them is not a valid event.

    Each value goes through the very decoder ``decode_one`` uses, mapped in C over the
    batch, so a value is accepted here exactly when ``decode_one`` would accept it: the
    checks ``decode_one`` makes beyond the decoder (empty, oversized, strict UTF-8,
    ``event_time`` out of range) are made here too, the last one vectorised on the
    epoch-millis column.  The values are joined only for the UTF-8 check (with a byte
    that keeps them apart), never parsed joined, so no record boundary to lose: a value
    holding a newline, several documents or half of one fails on its own and sends the
    batch to the per-value path, and no event can be attributed to a neighbouring
    record.  Decoding values one by one costs about as much as one ``decode_lines`` call
    over the joined buffer, and saves the newline scan and the second (``Raw``) parse
    that made the joined form sound.
    """
    if not values or not all(values) or max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
        return None
    if not _all_utf8(values):  # type: ignore[arg-type]
        return None
    try:
        events = list(map(_one_decoder.decode, values))  # type: ignore[arg-type]
    except (*_DECODE_ERRORS, RecursionError):
        return None
    batch = _batch_from_rows(
        map(msgspec.structs.astuple, events), np.arange(len(events), dtype=np.int64)
    )
    # Integer times were bounded by the decoder; RFC 3339 ones are only bounded here.
    times = batch.event_time_ms
    if times.min() < MIN_EPOCH_MS or times.max() > MAX_EPOCH_MS:
        return None
    return batch
