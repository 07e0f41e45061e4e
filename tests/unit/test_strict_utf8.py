"""Strict UTF-8: a value that is not UTF-8 anywhere is refused whole (issue #13, item 3).

msgspec checks the encoding only of the strings it decodes; a bad byte in an unknown
property's key or value was skipped unread, and the record scored.  The contract says
UTF-8 JSON, so the worker refuses the record as ``invalid_encoding`` wherever the bad
bytes sit, in the batch path and the one-by-one path alike.
"""

from __future__ import annotations

import msgspec
import pytest

from driftline.core.events import REASON_ENCODING, decode_batch, decode_one, is_utf8

_encode = msgspec.json.Encoder().encode

#: Not UTF-8 (RFC 3629): a stray byte, a cut sequence, an encoded surrogate, overlong
#: forms of "/" and NUL, a code point past U+10FFFF, a lone continuation byte.
NOT_UTF8 = (
    b"\xff",
    b"\xc3\x28",
    b"\xed\xa0\x80",
    b"\xc0\xaf",
    b"\xc0\x80",
    b"\xe0\x80\xaf",
    b"\xf4\x90\x80\x80",
    b"\x80",
    b"caf\xe9",
)


def _event(i: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"e-{i}",
        "customer_id": f"c-{i % 7}",
        "event_time": 1_764_000_000_000 + i,
        "event_type": "login",
        **extra,
    }


def _spoiled(i: int, bad: bytes, where: str) -> bytes:
    body = _encode(_event(i, extra="PLACEHOLDER"))
    if where == "unknown_key":
        return body.replace(b'"extra"', b'"ex' + bad + b'tra"')
    if where == "unknown_value":
        return body.replace(b'"PLACEHOLDER"', b'"x' + bad + b'"')
    return body.replace(b'"login"', b'"log' + bad + b'"')  # a string the decoder reads


@pytest.mark.parametrize("where", ["unknown_key", "unknown_value", "known_value"])
@pytest.mark.parametrize("bad", NOT_UTF8, ids=lambda b: b.hex())
def test_bad_utf8_anywhere_is_refused_by_the_batch_decoder(bad: bytes, where: str) -> None:
    values = [_encode(_event(i)) for i in range(20)]
    values[7] = _spoiled(7, bad, where)
    batch, rejections = decode_batch(values, [None] * len(values))
    assert [(r.index, r.reason) for r in rejections] == [(7, REASON_ENCODING)]
    assert sorted(batch.index.tolist()) == [i for i in range(20) if i != 7]


@pytest.mark.parametrize("where", ["unknown_key", "unknown_value", "known_value"])
@pytest.mark.parametrize("bad", NOT_UTF8, ids=lambda b: b.hex())
def test_bad_utf8_anywhere_is_refused_one_by_one(bad: bytes, where: str) -> None:
    with pytest.raises(Exception) as raised:
        decode_one(_spoiled(1, bad, where))
    assert getattr(raised.value, "reason", None) == REASON_ENCODING
    assert "not UTF-8" in str(raised.value)


def test_valid_non_ascii_text_is_accepted_in_every_place() -> None:
    values = [
        _encode(_event(0, region="São Paulo", plan_type="プレミアム")),
        _encode(_event(1, **{"note 🎉": "naïve café ☕"})),
        _encode(_event(2)).replace(b'"e-2"', '"é-2"'.encode()),
    ]
    batch, rejections = decode_batch(values, [None] * len(values))
    assert rejections == []
    assert batch.region[0] == "São Paulo"
    assert batch.event_id[2] == "é-2"


def test_bad_bytes_split_over_two_values_do_not_make_valid_utf8() -> None:
    """The batch check joins values: a value ending in a lead byte and one starting with
    its continuation must not pass as one valid character between them."""
    head = _encode(_event(0, extra="x"))[:-1] + b',"y":"a\xc3'
    tail = b'\xa9"}'
    assert not is_utf8(head) and not is_utf8(tail) and is_utf8(head + tail)
    good = _encode(_event(1))
    _batch, rejections = decode_batch([good, head, tail, good], [None] * 4)
    assert {r.index for r in rejections} == {1, 2}
    assert {r.reason for r in rejections} == {REASON_ENCODING}
