"""The test corpus against the decoder: every bad payload is rejected for its stated reason.

The corpus is also the poison input of the Kafka integration tests and of the demo, so
these tests pin two things at once: that the corpus means what it says (a payload labelled
``schema_violation`` is one), and that the decoder survives and classifies each kind, alone
and inside batches of valid records (where ``decode_batch`` takes its one-call fast path).
"""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from driftline.core.events import (
    DECODE_REASONS,
    REASON_MALFORMED,
    InvalidEvent,
    decode_batch,
    decode_one,
)
from driftline.corpus import (
    KINDS,
    bad_cases,
    bad_payloads,
    epoch_ms,
    interleave,
    valid_events,
)


def _event_ids(values: list[bytes]) -> list[str]:
    return [msgspec.json.decode(v)["event_id"] for v in values]


def test_the_corpus_is_a_pure_function_of_the_seed() -> None:
    assert bad_cases(300, seed=7) == bad_cases(300, seed=7)
    assert valid_events(300, seed=7) == valid_events(300, seed=7)
    assert bad_cases(300, seed=7) != bad_cases(300, seed=8)
    assert valid_events(300, seed=7) != valid_events(300, seed=8)


def test_even_a_small_corpus_covers_every_kind_with_a_known_reason() -> None:
    cases = bad_cases(len(KINDS), seed=1)
    assert {case.kind for case in cases} == set(KINDS)
    assert {reason for _, reason in bad_payloads(500, seed=1)} <= set(DECODE_REASONS)
    with pytest.raises(ValueError, match="unknown"):
        bad_cases(1, seed=1, kinds=["no_such_kind"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_bad_payload_is_rejected_for_its_stated_reason(kind: str) -> None:
    cases = bad_cases(150, seed=11, kinds=[kind])
    wrong = []
    for case in cases:
        try:
            decode_one(case.payload)
            one = "accepted"
        except InvalidEvent as error:
            one = error.reason
        batch, rejections = decode_batch([case.payload])
        batched = [r.reason for r in rejections] if not len(batch) else ["accepted"]
        if one != case.reason or batched != [case.reason]:
            shown = case.payload if case.payload is None else case.payload[:100]
            wrong.append((shown, case.reason, one, batched))
    assert not wrong, f"{len(wrong)} of {len(cases)} {kind} payloads: {wrong[:3]}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_bad_payload_among_valid_records_is_rejected_alone(kind: str) -> None:
    """All but one value valid: the batch fast path must still find and isolate it."""
    valid = valid_events(10, seed=13)
    for case in bad_cases(20, seed=14, kinds=[kind]):
        values = [*valid[:5], case.payload, *valid[5:]]
        batch, rejections = decode_batch(values)
        assert [(r.index, r.reason) for r in rejections] == [(5, case.reason)]
        assert batch.index.tolist() == [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]


def test_valid_events_are_accepted_in_one_batch_with_their_times_to_the_millisecond() -> None:
    values = valid_events(3000, seed=5, customers=40)
    batch, rejections = decode_batch(values)
    assert rejections == []
    documents = [msgspec.json.decode(v) for v in values]
    assert list(batch.event_id) == [d["event_id"] for d in documents]
    assert len(set(batch.event_id)) == len(values)
    assert set(batch.customer_id) <= {f"cust-{k:05d}" for k in range(40)}
    assert batch.event_time_ms.tolist() == [epoch_ms(d["event_time"]) for d in documents]
    assert (np.diff(batch.event_time_ms) >= 0).all()
    # The contract's variety is really there.
    assert any(isinstance(d["event_time"], str) for d in documents)
    assert any("channel" in d for d in documents)
    assert any(d.get("region", "") is None for d in documents)


# 2039: float seconds * 1000 truncates to 1 ms early for a good share of these times.
@pytest.mark.parametrize("start_ms", [1_700_000_000_000, 2_150_000_000_000])
def test_rfc3339_event_times_decode_to_the_exact_millisecond(start_ms: int) -> None:
    values = valid_events(3000, seed=9, start_ms=start_ms)
    batch, _ = decode_batch(values)
    expected = [epoch_ms(msgspec.json.decode(v)["event_time"]) for v in values]
    assert batch.event_time_ms.tolist() == expected
    assert [decode_one(v).event_time for v in values[:1]]  # and decode_one agrees on type


def test_a_batch_with_every_kind_of_poison_returns_exactly_the_valid_events_in_order() -> None:
    valid = valid_events(2000, seed=21)
    bad = bad_payloads(600, seed=22)
    mixed = interleave(valid, bad, seed=23)
    batch, rejections = decode_batch([payload for payload, _ in mixed])

    assert batch.index.tolist() == [i for i, (_, reason) in enumerate(mixed) if reason is None]
    assert list(batch.event_id) == _event_ids(valid)
    assert [(r.index, r.reason) for r in rejections] == [
        (i, reason) for i, (_, reason) in enumerate(mixed) if reason is not None
    ]


_A = b'{"event_id":"a","customer_id":"c1","event_type":"login","event_time":1700000000000}'
_B = b'{"event_id":"b","customer_id":"c1","event_type":"login","event_time":1700000000000}'


@pytest.mark.parametrize(
    "smuggled",
    [
        pytest.param([_A + b"," + _B], id="comma"),
        pytest.param([_A + b" " + _B, b" "], id="space-then-blank"),
        pytest.param([_A + _B, b"\t"], id="adjacent-then-blank"),
        pytest.param([_A + b"\n" + _B, b" "], id="newline-then-blank"),
        pytest.param([b" ", _A + b"\r" + _B], id="blank-then-cr"),
        pytest.param([_A[:-1] + b',"x":"', b'"}'], id="split-across-records"),
    ],
)
@pytest.mark.parametrize("with_keys", [False, True], ids=["no-keys", "keys"])
def test_no_record_smuggles_an_event_into_its_neighbours(
    smuggled: list[bytes], with_keys: bool
) -> None:
    """``decode_batch`` decodes a joined buffer: record boundaries must survive the join.

    Every smuggled value is malformed on its own, so every one must be dead-lettered, and
    the valid records around them keep their own index (their offsets, keys, partitions).
    """
    valid = valid_events(6, seed=41)
    values = [*valid[:3], *smuggled, *valid[3:]]
    keys = None
    if with_keys:
        keys = [msgspec.json.decode(v)["customer_id"].encode() for v in valid]
        keys = [*keys[:3], *([b"c1"] * len(smuggled)), *keys[3:]]
    for value in smuggled:
        with pytest.raises(InvalidEvent):
            decode_one(value)
    batch, rejections = decode_batch(values, keys)
    bad_at = list(range(3, 3 + len(smuggled)))
    assert [(r.index, r.reason) for r in rejections] == [(i, REASON_MALFORMED) for i in bad_at]
    assert batch.index.tolist() == [i for i in range(len(values)) if i not in bad_at]
    assert list(batch.event_id) == _event_ids(valid)


def test_interleave_keeps_each_side_in_order_and_accepts_pairs_or_bare_payloads() -> None:
    valid = [b"v%d" % i for i in range(50)]
    bad: list[tuple[bytes | None, str]] = [(b"b%d" % i, "reason") for i in range(30)]
    mixed = interleave(valid, bad, seed=1)
    assert mixed == interleave([(v, None) for v in valid], bad, seed=1)
    assert [p for p, r in mixed if r is None] == valid
    assert [(p, r) for p, r in mixed if r is not None] == bad
    assert mixed != [(v, None) for v in valid] + bad  # actually mixed


def test_a_record_keyed_by_another_customer_is_rejected_and_a_null_key_accepted() -> None:
    from driftline.core.events import REASON_KEY_MISMATCH, decode_batch

    values = valid_events(3, seed=9)
    batch, _ = decode_batch(values)
    ids = [c.encode() for c in batch.customer_id]
    kept, rejected = decode_batch(values, keys=[ids[0], b"someone-else", None])
    assert [r.index for r in rejected] == [1]
    assert rejected[0].reason == REASON_KEY_MISMATCH
    assert kept.index.tolist() == [0, 2]
    assert kept.customer_id.tolist() == [batch.customer_id[0], batch.customer_id[2]]
