"""Fuzz through a real worker on a real broker (issue #13, item 5; the bulk run is
tests/unit/test_decode_fuzz.py).

Generated and mutated records (tests/support) are produced to the input topic of a
running worker.  Every record must come out exactly once, as a prediction or as a dead
letter; no prediction may be of a record the independent judge finds invalid; every
generated, unmutated event must be scored; every dead letter carries the original bytes
and key and headers that validate against schemas/dead-letter-headers.schema.json, with a
reason from the closed set.
"""

from __future__ import annotations

import collections
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest

from driftline.core.events import DLQ_REASONS
from driftline.core.predictions import (
    DLQ_REASON,
    DLQ_SOURCE_OFFSET,
    DLQ_SOURCE_PARTITION,
    Prediction,
)
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce_records
from support.contract_oracle import ContractOracle
from support.fuzz_records import fuzz_records

pytestmark = pytest.mark.integration

N_RECORDS = 4000
decode_prediction = msgspec.json.Decoder(Prediction).decode


def test_fuzzed_records_through_a_real_worker_are_each_scored_or_dead_lettered_once(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
    repo_root: Path,
) -> None:
    s = worker_settings
    # Live traffic of at most ~16 minutes (100 ms apart, weekday shifts of at most 10
    # minutes), ending a few minutes before now: an event accepted within the clock skew
    # (10 min ahead) moves the watermark (1 h lateness) to before the first one.
    start = int(time.time() * 1000) - 20 * 60_000
    records = fuzz_records(N_RECORDS, seed=404, start_ms=start, spacing_ms=100.0)
    with worker_in_thread(s, spec):
        produce_records(
            s.bootstrap_servers,
            s.input_topic,
            iter((r.key, r.value or b"", None) for r in records),
            producer_config={"message.max.bytes": 4_000_000},
        )
        deadline = time.monotonic() + 120
        while True:
            scored = consume_all(s.output_topic, expected=0, timeout=30)
            dead = consume_all(s.dead_letter_topic, expected=0, timeout=30)
            if len(scored) + len(dead) >= N_RECORDS or time.monotonic() > deadline:
                break
            time.sleep(1)
    sent = consume_all(s.input_topic, expected=N_RECORDS, timeout=60)
    by_place = {(m.partition(), m.offset()): m for m in sent}
    kind_of = {}
    for record, message in zip(records, sent_in_order(sent, records), strict=True):
        kind_of[(message.partition(), message.offset())] = record.kind

    places = [
        (p.source_partition, p.source_offset)
        for p in map(decode_prediction, (m.value() for m in scored))
    ]
    dead_places = [
        (int(dict(m.headers())[DLQ_SOURCE_PARTITION]), int(dict(m.headers())[DLQ_SOURCE_OFFSET]))
        for m in dead
    ]
    counts = collections.Counter(places + dead_places)
    assert set(counts) == set(by_place), "records neither scored nor dead-lettered"
    assert max(counts.values()) == 1, "a record scored or dead-lettered twice"

    oracle = ContractOracle()
    wrongly_scored = [by_place[p].value() for p in places if oracle.judge(by_place[p].value())]
    assert wrongly_scored == [], f"scored but invalid: {wrongly_scored[:3]}"
    lost = [p for p in dead_places if kind_of[p] == "valid"]
    why = collections.Counter(
        dict(m.headers())[DLQ_REASON].decode()
        for m in dead
        if kind_of[
            (
                int(dict(m.headers())[DLQ_SOURCE_PARTITION]),
                int(dict(m.headers())[DLQ_SOURCE_OFFSET]),
            )
        ]
        == "valid"
    )
    assert lost == [], f"{len(lost)} generated events dead-lettered: {dict(why)}"

    header_schema = json.loads(
        (repo_root / "schemas" / "dead-letter-headers.schema.json").read_text()
    )
    validator = jsonschema.Draft202012Validator(header_schema)
    reasons: collections.Counter[str] = collections.Counter()
    for m in dead:
        headers = {k: v.decode() for k, v in m.headers() if k.startswith("driftline.")}
        validator.validate(headers)
        reasons[headers[DLQ_REASON]] += 1
        assert headers[DLQ_REASON] in DLQ_REASONS
        original = by_place[(int(headers[DLQ_SOURCE_PARTITION]), int(headers[DLQ_SOURCE_OFFSET]))]
        assert (m.value() or b"") == (original.value() or b"")
        assert m.key() == original.key()
    print(
        f"\nKafka fuzz: {len(sent)} records, {len(scored)} scored, {len(dead)} dead-lettered "
        f"{dict(reasons.most_common())}, kinds {dict(collections.Counter(kind_of.values()))}"
    )
    assert len(reasons) >= 8


def sent_in_order(sent: list[Any], records: list[Any]) -> list[Any]:
    """The input messages in production order (each partition keeps its own order, and
    records are matched to them by key and value, in order)."""
    queues: dict[tuple[bytes | None, bytes], collections.deque[Any]] = collections.defaultdict(
        collections.deque
    )
    for m in sorted(sent, key=lambda m: (m.partition(), m.offset())):
        queues[(m.key(), m.value() or b"")].append(m)
    return [queues[(r.key, r.value or b"")].popleft() for r in records]
