"""``decode_batch`` against a value-by-value reference, on random mixtures of records.

``decode_batch`` takes a one-shot fast path when every value is a valid event and falls
back to ``decode_one`` per value otherwise.  Whichever path runs, the result must be what
deciding each record on its own gives: the same valid rows (same index, same column
values, NaN for absent numbers) and the same rejections (index and reason).  The
reference here is deliberately naive (``decode_one`` per value, a plain key comparison,
columns built in Python) so that it shares no columnarizing code with the decoder.

The mixtures draw on ``driftline.corpus`` (valid events in every shape the
contract allows, and every kind of poison), plus what matters to a batch decoder that
works on many values at once: values holding a newline, several documents, half a
document, whitespace only, surrounding whitespace, event times at the edges of the
accepted range, size limits that cut through the batch, and records keyed by another
customer.
"""

from __future__ import annotations

import contextlib
import math
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from driftline.core.events import (
    CATEGORICAL_FIELDS,
    DEFAULT_MAX_EVENT_BYTES,
    EVENT_TYPE_CODE,
    EVENT_TYPES,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    NUMERIC_FIELDS,
    REASON_KEY_MISMATCH,
    CustomerEvent,
    EventBatch,
    InvalidEvent,
    _decode_all_or_none,
    decode_batch,
    decode_one,
)
from driftline.corpus import KINDS, bad_cases, valid_events

_encode = msgspec.json.Encoder().encode
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MS = timedelta(milliseconds=1)

CUSTOMERS = tuple(f"cust-{k:05d}" for k in range(8))
#: Corpus values: valid ones in every contract shape, and a few of each kind of poison.
VALID = valid_events(400, seed=101, customers=CUSTOMERS)
BAD = [case.payload for case in bad_cases(6 * len(KINDS), seed=102)]

# ----------------------------------------------------------------------------- reference

Expected = tuple[list[int], list[CustomerEvent], list[tuple[int, str]]]


def reference(
    values: list[bytes | None], keys: list[bytes | None] | None, max_bytes: int
) -> Expected:
    """Each record decided on its own: (kept indexes, their events, rejections)."""
    kept: list[int] = []
    events: list[CustomerEvent] = []
    rejected: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        try:
            event = decode_one(value, max_bytes)
        except InvalidEvent as error:
            rejected.append((i, error.reason))
            continue
        key = None if keys is None else keys[i]
        if key is not None and key != event.customer_id.encode():
            rejected.append((i, REASON_KEY_MISMATCH))
            continue
        kept.append(i)
        events.append(event)
    return kept, events, rejected


def epoch_ms(value: datetime | int) -> int:
    return value if isinstance(value, int) else (value - _EPOCH) // _ONE_MS


def assert_batch_is(batch: EventBatch, kept: list[int], events: list[CustomerEvent]) -> None:
    """Every column of ``batch`` equals the events', NaN-aware, with the contract dtypes."""
    assert batch.index.dtype == np.int64
    assert batch.index.tolist() == kept
    assert batch.event_id.dtype == object
    assert batch.event_id.tolist() == [e.event_id for e in events]
    assert batch.customer_id.dtype == object
    assert batch.customer_id.tolist() == [e.customer_id for e in events]
    assert batch.event_time_ms.dtype == np.int64
    assert batch.event_time_ms.tolist() == [epoch_ms(e.event_time) for e in events]
    assert batch.event_type.dtype == np.int8
    assert batch.event_type.tolist() == [EVENT_TYPE_CODE[e.event_type] for e in events]
    for name in NUMERIC_FIELDS:
        column = getattr(batch, name)
        assert column.dtype == np.float64 and column.shape == (len(events),)
        expected = [math.nan if getattr(e, name) is None else getattr(e, name) for e in events]
        assert np.array_equal(column, np.array(expected, dtype=np.float64), equal_nan=True)
    for name in CATEGORICAL_FIELDS:
        column = getattr(batch, name)
        assert column.dtype == object
        assert column.tolist() == [getattr(e, name) for e in events]


# ----------------------------------------------------------------------------- strategies


def _rfc3339(us: int, offset_minutes: int) -> str:
    """Epoch microseconds as RFC 3339 text at an offset (exercises flooring to the ms)."""
    zone = timezone(timedelta(minutes=offset_minutes))
    return (_EPOCH + timedelta(microseconds=us)).astimezone(zone).isoformat()


_EDGE_US = st.sampled_from([MIN_EPOCH_MS * 1000, MAX_EPOCH_MS * 1000]).flatmap(
    lambda edge: st.integers(edge - 2_000, edge + 2_000)
)
_event_times = st.one_of(
    st.integers(MIN_EPOCH_MS - 3, MIN_EPOCH_MS + 3),
    st.integers(MAX_EPOCH_MS - 3, MAX_EPOCH_MS + 3),
    st.integers(MIN_EPOCH_MS, MAX_EPOCH_MS),
    st.builds(
        _rfc3339,
        st.one_of(
            _EDGE_US,
            st.integers(MIN_EPOCH_MS * 1000, MAX_EPOCH_MS * 1000),
            st.integers(MIN_EPOCH_MS, MAX_EPOCH_MS).map(lambda ms: ms * 1000),  # whole ms
            st.integers(-62_000_000_000_000_000, 253_000_000_000_000_000),  # years 1..9999
        ),
        st.integers(-1439, 1439),
    ),
)
_numbers = st.one_of(st.none(), st.floats(-1.0, 2e12, allow_nan=False), st.integers(0, 1500))
_categories = st.one_of(st.none(), st.sampled_from(["basic", "premium", "north", ""]))

#: Events built field by field: some valid, some not (bounds, types, unknown type).
generated_events = st.fixed_dictionaries(
    {
        "event_id": st.text(min_size=0, max_size=3).map(lambda s: f"g-{s}"),
        "customer_id": st.sampled_from(CUSTOMERS),
        "event_time": _event_times,
        "event_type": st.sampled_from([*EVENT_TYPES, "churn"]),
    },
    optional={
        "amount": _numbers,
        "quantity": _numbers,
        "age": _numbers,
        "income": _numbers,
        "tenure_months": _numbers,
        "plan_type": _categories,
        "region": _categories,
        "channel": st.just("web"),
    },
).map(_encode)

_valid = st.sampled_from(VALID)
_whitespace = st.sampled_from([b"", b" ", b"\t", b"\r", b"\n", b"\r\n", b" \n\t"])


@st.composite
def records(draw: st.DrawFn) -> list[bytes | None]:
    """One record, or a few adjacent ones whose boundaries a joined decode could blur."""
    shape = draw(st.integers(0, 9))
    if shape <= 2:
        return [draw(_valid)]
    if shape == 3:
        return [draw(generated_events)]
    if shape == 4:
        return [draw(st.sampled_from(BAD))]
    if shape == 5:  # several documents in one record, and maybe a blank one beside it
        a, b = draw(_valid), draw(_valid)
        sep = draw(st.sampled_from([b"", b" ", b"\n", b"\r", b"\r\n", b"\t", b","]))
        blank = draw(st.sampled_from([[], [b" "], [b"\n"], [b"\t"], [b""], [None]]))
        return [a + sep + b, *blank] if draw(st.booleans()) else [*blank, a + sep + b]
    if shape == 6:  # one document split across two records
        a = draw(_valid)
        cut = draw(st.integers(1, len(a) - 1))
        return [a[:cut], a[cut:]]
    if shape == 7:  # a valid document with whitespace around it (newlines too)
        return [draw(_whitespace) + draw(_valid) + draw(_whitespace)]
    if shape == 8:
        return [draw(st.sampled_from([None, b"", b" ", b"\n", b"\r\n", b"\t "]))]
    return [draw(st.sampled_from(VALID[:5])) for _ in range(draw(st.integers(2, 4)))]


def _customer_of(value: bytes | None) -> str | None:
    try:
        document = msgspec.json.decode(value or b"")
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    customer = document.get("customer_id") if isinstance(document, dict) else None
    return customer if isinstance(customer, str) else None


@st.composite
def batches(draw: st.DrawFn) -> tuple[list[bytes | None], list[bytes | None] | None, int]:
    """(values, keys or None, max_bytes): a mixture, mostly valid so both paths run."""
    values: list[bytes | None] = []
    for group in draw(st.lists(records(), min_size=0, max_size=12)):
        values.extend(group)
    max_bytes = draw(st.sampled_from([DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_EVENT_BYTES, 160]))
    if not draw(st.booleans()):
        return values, None, max_bytes
    keys: list[bytes | None] = []
    for value in values:
        customer = _customer_of(value)
        choice = draw(st.integers(0, 5))
        if choice == 0:
            keys.append(None)
        elif choice == 1:
            keys.append(draw(st.sampled_from([b"someone-else", b"", b"cust-0000", b"\xff"])))
        else:
            keys.append(customer.encode() if customer is not None else b"cust-00000")
    return values, keys, max_bytes


# ----------------------------------------------------------------------------- tests

_SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(batches())
@example(([VALID[0] + b" " + VALID[1], b" ", VALID[2]], None, DEFAULT_MAX_EVENT_BYTES))
@example(([VALID[0] + VALID[1], b"\t"], None, DEFAULT_MAX_EVENT_BYTES))
@example(([VALID[0][:-1] + b',"x":"', b'"}', VALID[1]], None, DEFAULT_MAX_EVENT_BYTES))
@example(([b" ", VALID[0] + b"\r" + VALID[1]], None, DEFAULT_MAX_EVENT_BYTES))
@example(([b"\n" + VALID[0] + b"\r\n", VALID[1]], None, DEFAULT_MAX_EVENT_BYTES))
def test_decode_batch_equals_deciding_each_record_alone(
    batch_input: tuple[list[bytes | None], list[bytes | None] | None, int],
) -> None:
    values, keys, max_bytes = batch_input
    kept, events, rejected = reference(values, keys, max_bytes)
    batch, rejections = decode_batch(values, keys, max_bytes)
    assert [(r.index, r.reason) for r in rejections] == rejected
    assert_batch_is(batch, kept, events)


@_SETTINGS
@given(st.lists(st.one_of(_valid, generated_events), min_size=1, max_size=40))
def test_the_fast_path_accepts_exactly_the_batches_every_value_of_which_is_valid(
    values: list[bytes],
) -> None:
    """Mostly-valid batches: the fast path either declines or gives the per-value batch."""
    kept, events, rejected = reference(list(values), None, DEFAULT_MAX_EVENT_BYTES)
    fast = _decode_all_or_none(values, DEFAULT_MAX_EVENT_BYTES)
    assert (fast is not None) == (not rejected)
    if fast is not None:
        assert_batch_is(fast, kept, events)


@_SETTINGS
@given(st.lists(st.one_of(_valid, generated_events), min_size=0, max_size=40))
def test_from_events_reads_structs_and_duck_typed_rows_alike(values: list[bytes]) -> None:
    events: list[CustomerEvent] = []
    for value in values:
        with contextlib.suppress(InvalidEvent):
            events.append(decode_one(value))
    index = np.arange(len(events), dtype=np.int64)
    assert_batch_is(EventBatch.from_events(events, index), index.tolist(), events)
    rows = [SimpleNamespace(**msgspec.structs.asdict(e)) for e in events]
    assert_batch_is(EventBatch.from_events(rows, index), index.tolist(), events)  # type: ignore[arg-type]


def test_an_out_of_range_rfc3339_time_sends_the_batch_to_the_per_value_path() -> None:
    """The decoder bounds integer times; RFC 3339 ones only the batch check bounds."""
    late: dict[str, Any] = msgspec.json.decode(VALID[0])
    late["event_time"] = "2100-01-01T00:00:00.001Z"
    values = [VALID[1], _encode(late), VALID[2]]
    assert _decode_all_or_none(values, DEFAULT_MAX_EVENT_BYTES) is None
    batch, rejections = decode_batch(values)
    assert [(r.index, r.reason) for r in rejections] == [(1, "invalid_value")]
    assert batch.index.tolist() == [0, 2]


@pytest.mark.parametrize("bad", [None, b"", b" ", VALID[0] + b"\n" + VALID[1]])
def test_the_fast_path_declines_what_decode_one_rejects(bad: bytes | None) -> None:
    assert _decode_all_or_none([VALID[0], bad, VALID[1]], DEFAULT_MAX_EVENT_BYTES) is None


def test_an_empty_batch_has_the_columns_of_an_empty_batch() -> None:
    batch, rejections = decode_batch([], [])
    assert rejections == []
    assert_batch_is(batch, [], [])
    assert_batch_is(EventBatch.empty(), [], [])


#: Times at which float seconds * 1000, truncated, is one millisecond early.
_FLOAT_TRAPS_MS = (2_193_528_273_693, 2_182_585_634_436, 2_167_724_569_752, 1_079_919_129_416)


@pytest.mark.parametrize("offset_minutes", [0, -300, 330])
def test_rfc3339_times_convert_to_the_exact_millisecond_in_both_paths(
    offset_minutes: int,
) -> None:
    values = []
    for ms in _FLOAT_TRAPS_MS:
        event: dict[str, Any] = msgspec.json.decode(VALID[0])
        event["event_time"] = _rfc3339(ms * 1000, offset_minutes)
        values.append(_encode(event))
    fast, _ = decode_batch(values)
    slow, rejections = decode_batch([*values, None])  # a bad value forces the slow path
    assert [r.index for r in rejections] == [len(values)]
    assert fast.event_time_ms.tolist() == list(_FLOAT_TRAPS_MS)
    assert slow.event_time_ms.tolist() == list(_FLOAT_TRAPS_MS)
