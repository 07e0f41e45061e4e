"""Hostile variants of valid event values, for the fuzz tests.

Each mutation takes a random source, a valid event (a dict) and its encoded bytes, and
returns bytes that may or may not still be a valid event: the fuzz test does not trust
the mutation to know, it asks an independent judge (``contract_oracle``).  Mutations
cover what a broken or hostile producer sends: flipped bits, truncation, wrong types,
huge numbers, NaN/Infinity, deep nesting, repeated names, a byte order mark, overlong
UTF-8, surrogates, NUL bytes, and strings just under and over the limits.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from support.contract_oracle import KNOWN

Mutation = Callable[[random.Random, dict[str, Any], bytes], bytes]

NUMERIC = ("amount", "quantity", "age", "income", "tenure_months", "event_time")
STRINGS = ("event_id", "customer_id", "event_type", "plan_type", "region")
LIMIT = 64 * 1024


def _dump(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _raw(event: dict[str, Any], field: str, raw: bytes) -> bytes:
    """``event`` encoded with ``field``'s value replaced by ``raw`` bytes verbatim."""
    marker = "\u2063MARK\u2063"
    return _dump(dict(event, **{field: marker})).replace(_dump(marker), raw, 1)


def bit_flip(rng: random.Random, _e: dict[str, Any], body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
    return bytes(data)


def truncate(rng: random.Random, _e: dict[str, Any], body: bytes) -> bytes:
    return body[: rng.randrange(len(body))]


_WRONG = (42, -1, 1.5, True, False, None, "", "x", [], [1], {}, {"a": 1}, "1700000000000")


def wrong_type(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    return _dump(dict(event, **{rng.choice(KNOWN): rng.choice(_WRONG)}))


_HUGE = (
    b"1e308",
    b"1e999",
    b"-1e999",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"123456789012345678901234567890",
    b"1e-400",
    b"-0",
    b"0.0",
    b"4102444800000",
    b"4102444800001",
    b"946684799999",
    b"1.7e12",
    b"1700000000000.0",
    b"17000000000000000000000",
    b"2e9",
)


def huge_number(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    return _raw(event, rng.choice(NUMERIC), rng.choice(_HUGE))


def nan_infinity(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    literal = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"nan", b"inf", b"-NaN"))
    field = rng.choice((*NUMERIC, "extension"))
    return _raw(event, field, literal)


def deep_nesting(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    depth = rng.choice((2, 10, 100, 1000, 10_000, 30_000))
    opening, closing = rng.choice(((b"[", b"]"), (b'{"a":', b"}")))
    field = rng.choice(("extension", "extension", "amount", "event_id"))
    return _raw(event, field, opening * depth + b"1" + closing * depth)


def duplicate_key(rng: random.Random, event: dict[str, Any], body: bytes) -> bytes:
    field = rng.choice((*KNOWN, "extension"))
    value = rng.choice((event.get(field, "dup"), "other", 7, None))
    extra = b'"' + field.encode() + b'":' + _dump(value)  # type: ignore[arg-type]
    if rng.random() < 0.5:
        return b"{" + extra + b"," + body[1:]
    return body[:-1] + b"," + extra + b"}"


def bom(rng: random.Random, _e: dict[str, Any], body: bytes) -> bytes:
    return rng.choice((b"\xef\xbb\xbf", b"\xfe\xff", b"\xff\xfe")) + body


_OVERLONG = (b"\xc0\xaf", b"\xc0\x80", b"\xe0\x80\xaf", b"\xf0\x80\x80\xaf", b"\xc1\xbf")


def overlong_utf8(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    return _in_string(rng, event, rng.choice(_OVERLONG))


_SURROGATES = (
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\\ud800",
    b"\\udfff",
    b"\\ud83d\\ude00",
    b"\\ud83d",
    b"\\udc00\\ud800",
)


def surrogate(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    return _in_string(rng, event, rng.choice(_SURROGATES))


def null_bytes(rng: random.Random, event: dict[str, Any], body: bytes) -> bytes:
    choice = rng.randrange(3)
    if choice == 0:
        return _in_string(rng, event, b"\x00")
    if choice == 1:
        return _in_string(rng, event, b"\\u0000")
    i = rng.randrange(len(body) + 1)
    return body[:i] + b"\x00" + body[i:]


def _in_string(rng: random.Random, event: dict[str, Any], raw: bytes) -> bytes:
    """``raw`` inside a known string value, an unknown value, or an unknown key."""
    where = rng.randrange(3)
    if where == 0:
        field = rng.choice(STRINGS)
        return _raw(event, field, b'"a' + raw + b'b"')
    if where == 1:
        return _raw(event, "extension", b'"a' + raw + b'b"')
    body = _dump(dict(event, extension=1))
    return body.replace(b'"extension"', b'"ext' + raw + b'"', 1)


def enormous_string(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return _dump(
            dict(
                event,
                **{
                    rng.choice(("event_id", "customer_id")): "i" * rng.choice((127, 128, 129, 5000))
                },
            )
        )
    if choice == 1:
        return _dump(
            dict(
                event, **{rng.choice(("plan_type", "region")): "c" * rng.choice((63, 64, 65, 1000))}
            )
        )
    if choice == 2:
        return _dump(dict(event, **{rng.choice(STRINGS): "ü" * rng.choice((32, 64, 65, 128))}))
    size = LIMIT + rng.choice((-1, 0, 1, 100_000))
    padded = dict(event, padding="")
    padded["padding"] = "p" * max(0, size - len(_dump(padded)))
    return _dump(padded)


def structural(rng: random.Random, event: dict[str, Any], body: bytes) -> bytes:
    choice = rng.randrange(9)
    if choice == 0:
        return _dump({k: v for k, v in event.items() if k != rng.choice(KNOWN[:4])})
    if choice == 1:
        return _dump(dict(event, event_type=rng.choice(("Purchase", "buy", "", "login "))))
    if choice == 2:
        return b"[" + body + b"]"
    if choice == 3:
        return body + rng.choice((b"\n", b" ", b"\r\n", b"\n" + body, b"}", b"x"))
    if choice == 4:
        return rng.choice((b" ", b"\t", b"\n")) + body.replace(b":", b" : ")  # valid
    if choice == 5:
        return body.replace(b'"event_id"', b'"Event_ID"', 1)
    if choice == 6:
        return rng.choice((b"", b"null", b"{}", b"true", b'"event"', b"0", b"[]"))
    if choice == 7:
        return body.replace(b'"', b"'")
    return rng.randbytes(rng.randrange(1, 300))


def time_shift(rng: random.Random, event: dict[str, Any], _b: bytes) -> bytes:
    day = 86_400_000
    when = event["event_time"] if isinstance(event["event_time"], int) else 1_767_225_600_000
    new = rng.choice(
        (
            when + 2 * day,
            3_786_000_000_000,
            when - 30 * day,
            when - 3_600_000 * 2,
            when // 1000,
            when * 1000,
            "2026-01-01T00:00:00",
            "2026-01-01",
            "01/01/2026",
            "2026-13-01T00:00:00Z",
            "2101-01-01T00:00:00Z",
            "1999-12-31T23:59:59Z",
            "2026-01-01T00:00:00.123456789+14:00",
            float(when),
        )
    )
    return _dump(dict(event, event_time=new))


def splice(rng: random.Random, _e: dict[str, Any], body: bytes) -> bytes:
    i, j = sorted(rng.sample(range(len(body) + 1), 2))
    return body[:i] + body[j:] + body[i:j]


MUTATIONS: dict[str, Mutation] = {
    "bit_flip": bit_flip,
    "truncate": truncate,
    "wrong_type": wrong_type,
    "huge_number": huge_number,
    "nan_infinity": nan_infinity,
    "deep_nesting": deep_nesting,
    "duplicate_key": duplicate_key,
    "bom": bom,
    "overlong_utf8": overlong_utf8,
    "surrogate": surrogate,
    "null_bytes": null_bytes,
    "enormous_string": enormous_string,
    "structural": structural,
    "time_shift": time_shift,
    "splice": splice,
}
