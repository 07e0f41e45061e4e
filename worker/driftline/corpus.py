"""A reproducible corpus of input-topic values: valid events, and poison with its verdict.

Shipped because ``driftline demo`` sends its bad traffic from it (the dead-letter panel
of the demo dashboard shows every reason the decoder gives).

The same corpus drives the unit tests of the decoder, the schema agreement test, the Kafka
integration tests (poison records must be dead-lettered, the valid ones around them
scored) and the demo's bad traffic.  Keeping one generator means every layer is tested
against the same idea of "bad input", and each bad payload carries the dead-letter reason
the decoder must give, so a change in classification shows up as a test failure rather
than as a silent relabelling of dead-letter metrics.

Everything is a pure function of ``seed`` (``random.Random``, never the global state), and
cheap: payloads are built from dicts with msgspec and patched as bytes.  The few large
payloads (oversized, very deep nesting) are built once per call and shared, so 100 000
bad payloads stay fast and small in memory.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

import msgspec

from driftline.core.events import (
    DEFAULT_MAX_EVENT_BYTES,
    EVENT_TYPES,
    MAX_EPOCH_MS,
    MIN_EPOCH_MS,
    REASON_EMPTY,
    REASON_ENCODING,
    REASON_INVALID_VALUE,
    REASON_MALFORMED,
    REASON_MISSING_FIELD,
    REASON_OVERSIZED,
    REASON_SCHEMA,
    REASON_UNKNOWN_TYPE,
    is_utf8,
)

#: Default first event time: 2023-11-14T22:13:20Z.
DEFAULT_START_MS = 1_700_000_000_000

REQUIRED_FIELDS = ("event_id", "customer_id", "event_time", "event_type")
PLANS = ("basic", "standard", "premium")
REGIONS = ("north", "south", "east", "west")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encode = msgspec.json.Encoder().encode
#: A string value replaced, after encoding, by raw bytes JSON encoders refuse to write.
_RAW = "\x00raw\x00"
_RAW_JSON = _encode(_RAW)


class BadCase(NamedTuple):
    """A value the decoder must reject, the reason it must give, and which kind it is."""

    payload: bytes | None
    reason: str
    kind: str


# ----------------------------------------------------------------------------- valid


def valid_events(
    n: int,
    seed: int,
    customers: int | Sequence[str] = 50,
    start_ms: int = DEFAULT_START_MS,
) -> list[bytes]:
    """``n`` valid, JSON-encoded events, in non-decreasing event time from ``start_ms``.

    ``customers`` is a number of customers (ids ``cust-00000``..., the same for every
    seed, so runs can be combined) or the ids themselves.  The events exercise what the
    contract allows, not only the common shape: ``event_time`` as epoch millis or as RFC
    3339 text (``Z`` or an offset), explicit nulls, unknown extra fields.
    """
    rng = random.Random(seed)
    ids = _customer_ids(customers)
    profiles = {c: _profile(random.Random(f"{seed}:{c}")) for c in ids}
    out = []
    t = start_ms
    for i in range(n):
        t = min(t + rng.randrange(0, 120_000), MAX_EPOCH_MS)
        customer = rng.choice(ids)
        event = _event(rng, f"ev-{seed}-{i:07d}", customer, t, profiles[customer])
        out.append(_encode(event))
    return out


def _customer_ids(customers: int | Sequence[str]) -> list[str]:
    if isinstance(customers, int):
        if customers < 1:
            raise ValueError("customers must be >= 1")
        return [f"cust-{k:05d}" for k in range(customers)]
    ids = list(customers)
    if not ids:
        raise ValueError("customers must not be empty")
    return ids


def _profile(rng: random.Random) -> dict[str, Any]:
    return {
        "age": rng.randrange(18, 90),
        "income": round(rng.uniform(12_000, 250_000), 2),
        "tenure_months": round(rng.uniform(0, 240), 1),
        "plan_type": rng.choice(PLANS),
        "region": rng.choice(REGIONS),
    }


def _event(
    rng: random.Random, event_id: str, customer: str, t: int, profile: dict[str, Any]
) -> dict[str, Any]:
    """One valid event as a dict (the template every bad payload starts from, too)."""
    kind = rng.choice(EVENT_TYPES)
    form = rng.random()
    if form < 0.7:
        when: int | str = t
    elif form < 0.9:
        when = rfc3339(t)
    else:
        when = rfc3339(t, offset_minutes=rng.choice((-480, -300, 60, 120, 330, 600)))
    event: dict[str, Any] = {
        "event_id": event_id,
        "customer_id": customer,
        "event_time": when,
        "event_type": kind,
    }
    if kind in ("purchase", "refund", "payment_failed", "plan_change"):
        event["amount"] = round(rng.uniform(0.99, 500), 2)
    if kind == "purchase":
        event["quantity"] = rng.randrange(1, 6)
    if kind == "plan_change" or rng.random() < 0.3:
        event.update(profile)
        if kind == "plan_change":
            event["plan_type"] = rng.choice(PLANS)
    roll = rng.random()
    if roll < 0.05:
        event["region"] = None  # explicit null: "not known here", valid
    elif roll < 0.10:
        event["channel"] = rng.choice(("web", "app", "store"))  # unknown: ignored
    return event


def rfc3339(ms: int, offset_minutes: int = 0) -> str:
    """``ms`` as RFC 3339 text with millisecond digits, in UTC (``Z``) or at an offset."""
    zone = timezone(timedelta(minutes=offset_minutes))
    text = (_EPOCH + timedelta(milliseconds=ms)).astimezone(zone).isoformat("T", "milliseconds")
    return text.removesuffix("+00:00") + "Z" if offset_minutes == 0 else text


def epoch_ms(value: int | str) -> int:
    """The epoch millis an ``event_time`` value denotes (exact integer arithmetic)."""
    if isinstance(value, int):
        return value
    return (datetime.fromisoformat(value) - _EPOCH) // timedelta(milliseconds=1)


# ----------------------------------------------------------------------------- bad

#: Large payloads built once per ``bad_cases`` call and shared: (kind, variant) -> bytes.
_Cache = dict[tuple[str, int], bytes]
Maker = Callable[[random.Random, dict[str, Any], _Cache], tuple[bytes | None, str]]


def _with_raw(event: dict[str, Any], field: str, raw: bytes) -> bytes:
    """Encode ``event`` with ``field``'s value replaced by raw bytes (any JSON, or not)."""
    event[field] = _RAW
    return _encode(event).replace(_RAW_JSON, raw, 1)


def _malformed(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    body = _encode(event)
    variants: tuple[Callable[[], bytes], ...] = (
        lambda: body[:-1] + b",}",  # trailing comma
        lambda: body.replace(b'"', b"'"),  # single quotes
        lambda: body.replace(b'"event_id"', b"event_id", 1),  # unquoted key
        lambda: body.replace(b'"event_type":', b'"event_type" ', 1),  # missing colon
        lambda: body.replace(b',"', b' "', 1),  # missing comma
        lambda: body + b"}",  # trailing characters
        lambda: body + b"\n" + body,  # two events, newline-delimited, in one record
        lambda: b"\xef\xbb\xbf" + body,  # UTF-8 byte order mark
        lambda: b"// event\n" + body,  # comment
        lambda: b"<event><id>1</id></event>",  # wrong format altogether
        lambda: b"event_id=" + event["event_id"].encode(),
    )
    return rng.choice(variants)(), REASON_MALFORMED


def _concatenated(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    """Two valid events in one record: a producer batching by hand.  Not one JSON value."""
    other = dict(event, event_id=event["event_id"] + "-b")
    separator = rng.choice((b",", b", ", b" ", b"", b"\n", b"\r\n"))
    return _encode(event) + separator + _encode(other), REASON_MALFORMED


def _whitespace_only(rng: random.Random, _event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    """Not empty (so not ``empty_value``), yet no JSON value at all."""
    return rng.choice((b" ", b"\t", b"\r", b"\n", b" \r\n\t ", b"  ")), REASON_MALFORMED


#: A cut right after one of these may leave a complete, but wrong, number ("event_time":17)
#: that the decoder rejects as a value before it reaches the end of the input.
_NUMBER_BYTES = frozenset(b"0123456789+-.eE")


def _truncated(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    """A valid event cut short (a producer or proxy that lost the tail)."""
    body = _encode(event)
    cuts = [i for i in range(1, len(body)) if body[i - 1] not in _NUMBER_BYTES]
    return body[: rng.choice(cuts)], REASON_MALFORMED


#: Bytes that cannot start a JSON text (or be skipped as whitespace before one), so a
#: random value starting with one fails at its first byte, deterministically.
_NOT_JSON_START = bytes(sorted(set(range(256)) - set(b' \t\r\n{["-0123456789tfn')))


def _random_bytes(rng: random.Random, _event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    payload = rng.choice(_NOT_JSON_START).to_bytes() + rng.randbytes(rng.randrange(0, 256))
    # The encoding is checked before the syntax: most random bytes are not UTF-8.
    return payload, REASON_MALFORMED if is_utf8(payload) else REASON_ENCODING


def _empty(rng: random.Random, _event: dict[str, Any], _: _Cache) -> tuple[bytes | None, str]:
    return rng.choice((None, b"")), REASON_EMPTY


def _deep_nesting(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    """Deep arrays where an object or a number is due: rejected at the first bracket."""
    depth = rng.randrange(100, 5000)
    nested = b"[" * depth + b"1" + b"]" * depth
    if rng.random() < 0.5:
        return nested, REASON_SCHEMA
    return _with_raw(event, rng.choice(("amount", "event_id", "event_time")), nested), (
        REASON_SCHEMA
    )


#: Deeper than any recursion limit a process is likely to run with, yet under the size
#: limit, so only the depth can be the reason.
_DEEP = 30_000


def _deep_nesting_ignored(
    rng: random.Random, event: dict[str, Any], cache: _Cache
) -> tuple[bytes, str]:
    """Very deep nesting in an *unknown* field, which the decoder skips rather than reads.

    Shallow nesting there is valid (unknown fields are ignored); too deep to parse is
    malformed input.
    """
    variant = rng.randrange(2)
    key = ("deep", variant)
    if key not in cache:
        opening, closing = (b"[", b"]") if variant == 0 else (b'{"a":', b"}")
        depth = _DEEP if variant == 0 else _DEEP // 3
        cache[key] = _with_raw(dict(event), "extension", opening * depth + b"0" + closing * depth)
    return cache[key], REASON_MALFORMED


def _huge_string(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    field = rng.choice(("event_id", "customer_id", "plan_type", "region"))
    limit = 128 if field in ("event_id", "customer_id") else 64
    event[field] = rng.choice("abcxyz") * rng.randrange(limit + 1, 8 * 1024)
    return _encode(event), REASON_SCHEMA


_WRONG_TYPES: tuple[tuple[str, Any], ...] = (
    ("event_id", 42),
    ("event_id", None),
    ("event_id", True),
    ("event_id", ["ev-1"]),
    ("customer_id", 1234),
    ("customer_id", {"id": "cust-1"}),
    ("event_time", True),
    ("event_time", None),
    ("event_time", [1700000000000]),
    ("event_time", 1700000000000.5),
    ("event_time", 1700000000000.0),  # integral float: see the contract tests
    ("event_type", 3),
    ("event_type", None),
    ("event_type", ["login"]),
    ("amount", "12.50"),
    ("amount", True),
    ("amount", [1.0]),
    ("quantity", "2"),
    ("age", "37"),
    ("age", False),
    ("income", {"value": 1}),
    ("tenure_months", "12"),
    ("plan_type", 1),
    ("plan_type", True),
    ("region", 5),
    ("region", ["north"]),
)


def _wrong_type(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    field, value = rng.choice(_WRONG_TYPES)
    event[field] = value
    return _encode(event), REASON_SCHEMA


def _nan_infinity(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    field = rng.choice(("amount", "quantity", "age", "income", "tenure_months", "event_time"))
    literal = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf"))
    return _with_raw(event, field, literal), REASON_MALFORMED


def _number_overflow(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    """Numbers beyond a double (1e999): msgspec refuses them rather than read infinity."""
    field = rng.choice(("amount", "quantity", "age", "income", "tenure_months", "event_time"))
    literal = rng.choice((b"1e999", b"-1e999", b"1E400", b"2.5e308"))
    return _with_raw(event, field, literal), REASON_INVALID_VALUE


def _negative(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    field = rng.choice(("amount", "amount", "quantity", "age", "income", "tenure_months"))
    event[field] = rng.choice((-1, -0.01, -1e-9, -round(rng.uniform(1, 1e6), 2)))
    return _encode(event), REASON_SCHEMA


_UPPER_BOUNDS = {"amount": 1e12, "quantity": 1e9, "age": 150, "income": 1e12, "tenure_months": 1200}


def _too_large(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    field, bound = rng.choice(tuple(_UPPER_BOUNDS.items()))
    event[field] = rng.choice((bound * 1.0001, bound * 10, int(bound) + 1))
    return _encode(event), REASON_SCHEMA


_UNKNOWN_TYPES = (
    "signup",
    "LOGIN",
    "Purchase",
    "purchase ",
    " login",
    "",
    "churn",
    "page-view",
    "pageview",
    "unknown",
    "login\u0000",
    "achat",
)


def _unknown_type(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    event["event_type"] = rng.choice(_UNKNOWN_TYPES)
    return _encode(event), REASON_UNKNOWN_TYPE


def _missing(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    for field in rng.sample(REQUIRED_FIELDS, rng.randrange(1, len(REQUIRED_FIELDS) + 1)):
        del event[field]
    return _encode(event), REASON_MISSING_FIELD


def _naive_time(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    text = rfc3339(rng.randrange(MIN_EPOCH_MS, MAX_EPOCH_MS)).removesuffix("Z")
    event["event_time"] = text if rng.random() < 0.5 else text.partition(".")[0]
    return _encode(event), REASON_SCHEMA


def _time_out_of_range(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    """Epoch values in the wrong unit or era; as integers the type bounds reject them."""
    t = rng.randrange(MIN_EPOCH_MS, MAX_EPOCH_MS)
    choices: tuple[tuple[int | str, str], ...] = (
        (t // 1000, REASON_SCHEMA),  # seconds
        (t * 1000, REASON_SCHEMA),  # microseconds
        (0, REASON_SCHEMA),
        (-t, REASON_SCHEMA),
        (MIN_EPOCH_MS - 1, REASON_SCHEMA),
        (MAX_EPOCH_MS + 1, REASON_SCHEMA),
        ("1970-01-01T00:00:00Z", REASON_INVALID_VALUE),
        ("1999-12-31T23:59:59.999Z", REASON_INVALID_VALUE),
        ("2000-01-01T00:30:00+01:00", REASON_INVALID_VALUE),  # 1999-12-31T23:30Z
        ("2100-01-01T00:00:00.001Z", REASON_INVALID_VALUE),
        ("9999-12-31T23:59:59Z", REASON_INVALID_VALUE),
        ("0001-01-01T00:00:00Z", REASON_INVALID_VALUE),
    )
    event["event_time"], reason = rng.choice(choices)
    return _encode(event), reason


_BAD_DATETIMES = (
    "garbage",
    "2024-02-30T00:00:00Z",
    "2024-13-01T00:00:00Z",
    "2024-05-01T25:00:00Z",
    "2024-05-01",
    "12:30:00Z",
    "2024-05-01T12:30Z",
    "2024-05-01T12:30:00+25:00",
    "1714566600000",
    "",
)


def _invalid_datetime(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    event["event_time"] = rng.choice(_BAD_DATETIMES)
    return _encode(event), REASON_INVALID_VALUE


def _oversized(rng: random.Random, event: dict[str, Any], cache: _Cache) -> tuple[bytes, str]:
    variant = rng.randrange(3)
    key = ("oversized", variant)
    if key not in cache:
        if variant == 2:  # over the limit before anyone could tell it is not JSON
            cache[key] = b"x" * (DEFAULT_MAX_EVENT_BYTES + 1)
        else:
            size = DEFAULT_MAX_EVENT_BYTES + (1 if variant == 0 else 100_000)
            padded = dict(event, padding="")
            padded["padding"] = "p" * (size - len(_encode(padded)))
            cache[key] = _encode(padded)
    return cache[key], REASON_OVERSIZED


_NOT_UTF8 = (b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xc0\xaf", b"caf\xe9", b"\xf8\x88\x80\x80")


def _non_utf8(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    """Invalid UTF-8 in a string the decoder reads, or in an unknown field's key or value
    (which the decoder skips unread): the whole record is refused either way."""
    bad = rng.choice(_NOT_UTF8)
    where = rng.randrange(3)
    if where == 0:
        field = rng.choice(("event_id", "customer_id", "event_type", "plan_type", "region"))
        return _with_raw(event, field, b'"x' + bad + b'"'), REASON_ENCODING
    event["extra"] = _RAW
    body = _encode(event)
    if where == 1:  # in an unknown key name
        return body.replace(b'"extra"', b'"ex' + bad + b'tra"', 1), REASON_ENCODING
    return body.replace(_RAW_JSON, b'"x' + bad + b'"', 1), REASON_ENCODING


_NOT_OBJECTS = (b"[]", b"[1,2,3]", b"42", b"-1.5", b'"event"', b"true", b"false", b"null")


def _not_an_object(rng: random.Random, event: dict[str, Any], _: _Cache) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        return b"[" + _encode(event) + b"]", REASON_SCHEMA  # a batch instead of an event
    return rng.choice(_NOT_OBJECTS), REASON_SCHEMA


#: kind -> maker.  Every maker gets a fresh valid event dict to spoil.
_MAKERS: dict[str, Maker] = {
    "malformed_json": _malformed,
    "concatenated": _concatenated,
    "whitespace_only": _whitespace_only,
    "truncated": _truncated,
    "random_bytes": _random_bytes,
    "empty": _empty,
    "deep_nesting": _deep_nesting,
    "deep_nesting_ignored_field": _deep_nesting_ignored,
    "huge_string": _huge_string,
    "wrong_type": _wrong_type,
    "nan_infinity": _nan_infinity,
    "number_overflow": _number_overflow,
    "negative_value": _negative,
    "too_large_value": _too_large,
    "unknown_event_type": _unknown_type,
    "missing_field": _missing,
    "naive_timestamp": _naive_time,
    "time_out_of_range": _time_out_of_range,
    "invalid_datetime": _invalid_datetime,
    "oversized": _oversized,
    "non_utf8": _non_utf8,
    "not_an_object": _not_an_object,
}
KINDS: tuple[str, ...] = tuple(_MAKERS)


def bad_cases(n: int, seed: int, kinds: Iterable[str] | None = None) -> list[BadCase]:
    """``n`` bad payloads with the reason and kind of each.

    Kinds come round in shuffled cycles, so even a small ``n`` covers all of them.
    """
    chosen = list(KINDS if kinds is None else kinds)
    unknown = sorted(set(chosen) - set(KINDS))
    if unknown or not chosen:
        raise ValueError(f"unknown or no kinds {unknown}; known: {', '.join(KINDS)}")
    rng = random.Random(seed)
    ids = _customer_ids(50)
    cache: _Cache = {}
    out: list[BadCase] = []
    cycle: list[str] = []
    for i in range(n):
        if not cycle:
            cycle = chosen[:]
            rng.shuffle(cycle)
        kind = cycle.pop()
        customer = rng.choice(ids)
        t = rng.randrange(DEFAULT_START_MS, DEFAULT_START_MS + 86_400_000 * 30)
        event = _event(rng, f"bad-{seed}-{i:07d}", customer, t, _profile(rng))
        payload, reason = _MAKERS[kind](rng, event, cache)
        out.append(BadCase(payload, reason, kind))
    return out


def bad_payloads(
    n: int, seed: int, kinds: Iterable[str] | None = None
) -> list[tuple[bytes | None, str]]:
    """``n`` (payload, expected dead-letter reason) pairs; see ``bad_cases``."""
    return [(case.payload, case.reason) for case in bad_cases(n, seed, kinds)]


def interleave(
    valid: Sequence[bytes | tuple[bytes | None, str | None]],
    bad: Sequence[tuple[bytes | None, str]],
    seed: int,
) -> list[tuple[bytes | None, str | None]]:
    """Mix ``bad`` into ``valid`` at random places, keeping each one's own order.

    Items come out as (payload, reason), reason None for a valid one; ``valid`` may be
    bare payloads or (payload, None) pairs.
    """
    rng = random.Random(seed)
    good = [item if isinstance(item, tuple) else (item, None) for item in valid]
    total = len(good) + len(bad)
    bad_at = set(rng.sample(range(total), len(bad)))
    good_items, bad_items = iter(good), iter(bad)
    return [next(bad_items) if i in bad_at else next(good_items) for i in range(total)]
