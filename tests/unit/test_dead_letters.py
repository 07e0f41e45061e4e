"""Dead letters cut to fit their topic, and a health check that sees an abort loop."""

from __future__ import annotations

import hashlib

import pytest

from driftline.core.predictions import (
    DLQ_HEADERS_DROPPED,
    DLQ_KEY_BYTES,
    DLQ_REASON,
    DLQ_VALUE_BYTES,
    DLQ_VALUE_SHA256,
)
from driftline.engine.kafka.dead_letters import (
    FRAMING_BYTES,
    HEADER_FRAMING,
    batch_size_for,
    fit_dead_letter,
)
from driftline.observability.http import HealthState

OWN = [(DLQ_REASON, b"oversized"), ("driftline.error.message", b"m" * 1024)]


def record_bytes(key: bytes | None, value: bytes | None, headers: list) -> int:
    """What the record costs against a limit, as ``fit_dead_letter`` counts it."""
    heads = sum(len(k) + len(v or b"") + HEADER_FRAMING for k, v in headers)
    return FRAMING_BYTES + len(key or b"") + len(value or b"") + heads


def test_a_record_that_fits_is_left_alone() -> None:
    original = [("traceparent", b"00-ab")]
    key, value, headers, cut = fit_dead_letter(b"c-1", b"{}", OWN, original, 1_000_000)
    assert (key, value, cut) == (b"c-1", b"{}", False)
    assert headers == [*OWN, *original]


@pytest.mark.parametrize("limit", [16 * 1024, 1_000_000])
@pytest.mark.parametrize("size", [2 * 1024 * 1024, 20 * 1024 * 1024])
def test_a_large_value_keeps_its_first_bytes_its_length_and_its_sha256(
    limit: int, size: int
) -> None:
    original = bytes(range(256)) * (size // 256)
    key, value, headers, cut = fit_dead_letter(b"c-1", original, OWN, None, limit)
    assert cut and key == b"c-1"
    assert value is not None and original.startswith(value) and len(value) > limit // 2
    named = dict(headers)
    assert named[DLQ_VALUE_BYTES] == str(size).encode()
    assert named[DLQ_VALUE_SHA256] == hashlib.sha256(original).hexdigest().encode()
    assert record_bytes(key, value, headers) <= limit


def test_a_huge_key_and_huge_headers_are_cut_too() -> None:
    original_headers = [(f"h{i}", b"v" * 1000) for i in range(40)]
    key, value, headers, cut = fit_dead_letter(
        b"k" * 50_000, b"x" * 50_000, OWN, original_headers, 16 * 1024
    )
    named = dict(headers)
    assert cut and named[DLQ_KEY_BYTES] == b"50000" and named[DLQ_HEADERS_DROPPED] == b"40"
    assert record_bytes(key, value, headers) <= 16 * 1024


def test_batches_stay_under_a_small_topic_limit_and_default_otherwise() -> None:
    assert batch_size_for(16 * 1024) == 16 * 1024 - FRAMING_BYTES
    assert batch_size_for(1_048_588) == 1_000_000


def test_healthz_fails_while_transactions_abort_in_a_row_and_recovers_on_a_commit() -> None:
    health = HealthState()
    for _ in range(health.max_aborts_in_a_row - 1):
        health.note_abort()
    assert health.liveness(30.0)[0]
    health.note_abort()
    ok, body = health.liveness(30.0)
    assert not ok and body["status"] == "abort_loop"
    assert body["aborts_in_a_row"] == health.max_aborts_in_a_row
    health.note_commit()
    assert health.liveness(30.0) == (True, health.liveness(30.0)[1])
    assert health.liveness(30.0)[1]["status"] == "ok"
