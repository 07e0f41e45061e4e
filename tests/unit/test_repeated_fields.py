"""A known property named twice is refused (found by the fuzz test, issue #13 item 5).

msgspec keeps the last of two equal names; another reader may keep the first, so such a
record means different things to different consumers.  The contract says names are not
repeated: the worker refuses the record (``schema_violation``).  Unknown properties may
repeat (they are ignored), and a known name inside a nested object is not a repeat.
"""

from __future__ import annotations

import pytest

from driftline.core.events import REASON_SCHEMA, decode_batch

BASE = (
    b'"event_id":"e{i}","customer_id":"c{i}","event_time":1764000000000,'
    b'"event_type":"login","amount":2.5,"region":"emea"'
)


def value(i: int, extra: bytes = b"", first: bytes = b"") -> bytes:
    body = BASE.replace(b"{i}", str(i).encode())
    return b"{" + first + body + extra + b"}"


@pytest.mark.parametrize(
    ("extra", "first"),
    [
        (b',"event_id":"other"', b""),
        (b"", b'"customer_id":"c-first",'),
        (b',"amount":null', b""),
        (b"", b'"region":null,'),
        (b',"event_time":"2025-11-24T16:00:00Z"', b""),
        (b',"\\u0065vent_type":"purchase"', b""),  # the same name, escaped
        (b',"quantity":1,"quantity":2', b""),
        (b' , "region" : "apac"', b""),  # with whitespace
    ],
)
def test_a_repeated_known_property_is_refused(extra: bytes, first: bytes) -> None:
    values = [value(i) for i in range(50)]
    values[20] = value(20, extra, first)
    batch, rejections = decode_batch(values, [None] * 50)
    assert [(r.index, r.reason) for r in rejections] == [(20, REASON_SCHEMA)]
    assert "more than once" in rejections[0].message
    assert len(batch) == 49


@pytest.mark.parametrize(
    "extra",
    [
        b',"x":1,"x":2',  # unknown, repeated: ignored
        b',"meta":{"event_id":"inner","amount":1}',  # known names, nested
        b',"note":"\\"event_id\\":\\"e\\""',  # known name inside a string
        b',"quantity":null',  # null once is absent, not a repeat
        b',"caf\\u00e9":1',  # an escaped unknown key
    ],
)
def test_what_is_not_a_repeat_is_accepted(extra: bytes) -> None:
    values = [value(i, extra if i % 3 == 0 else b"") for i in range(30)]
    batch, rejections = decode_batch(values, [None] * 30)
    assert rejections == []
    assert len(batch) == 30
