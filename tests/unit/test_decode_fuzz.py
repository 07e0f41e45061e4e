"""Fuzz: >= 100,000 generated and mutated records through the worker's decode -> DLQ path.

Issue #13, item 5.  The valid side comes from a second, independent generator
(``tests/support/independent_events.py``, nothing shared with ``driftline.simulate``),
the hostile side from mutations of its events (``tests/support/mutations.py``) and from
the product's bad-input corpus.  Every record goes through ``ScoringProcessor.process``,
the worker's own batch path (decode, key check, future and late split, state, scoring,
dead-letter routing), and an independent judge (``tests/support/contract_oracle.py``:
the standard library's JSON and ``jsonschema`` on ``schemas/customer-event.schema.json``)
checks the outcome:

- no batch raises (crashes = 0);
- every record is either scored or dead-lettered, never both, never neither;
- every scored record is valid by the judge (0 records scored that break the schema);
- every dead letter has a reason from the closed set, and the reason the judge expects
  where it is unambiguous (encoding, size, empty);
- every unmutated generated event is scored (nothing valid lost).

The Kafka counterpart, smaller, is tests/integration/test_decode_fuzz_kafka.py.
"""

from __future__ import annotations

import collections
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftline.core.events import DLQ_REASONS
from driftline.core.spec import FeatureSpec
from driftline.model.registry import LoadedModel
from driftline.model.runtimes.sklearn import Scorer
from driftline.processor import RawBatch, ScoringProcessor
from support.contract_oracle import ContractOracle
from support.fuzz_records import Record, event_time_ms, fuzz_records
from support.independent_events import IndependentEvents
from support.mutations import MUTATIONS

PARTITIONS = 4
BATCH = 1000
#: The judge's verdict -> the one dead-letter reason it allows.
EXACT_REASON = {"encoding": "invalid_encoding", "oversized": "oversized", "empty": "empty_value"}
#: Reasons a record valid by the contract may still get: they depend on the stream.
STREAM_REASONS = {"future", "late", "key_mismatch"}


@dataclass
class Tally:
    records: int = 0
    scored: int = 0
    crashes: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    violations: list[str] = field(default_factory=list)


def run(records: list[Record], processor: ScoringProcessor, now: list[int]) -> Tally:
    """Feed ``records`` through the processor in batches; judge every outcome."""
    oracle = ContractOracle()
    tally = Tally()
    offsets = [0] * PARTITIONS
    for lo in range(0, len(records), BATCH):
        chunk = records[lo : lo + BATCH]
        parts = np.array(
            [zlib.crc32(r.key) % PARTITIONS if r.key else 0 for r in chunk], dtype=np.int32
        )
        offs = np.empty(len(chunk), dtype=np.int64)
        for i, p in enumerate(parts.tolist()):
            offs[i] = offsets[p]
            offsets[p] += 1
        raw = RawBatch("events", [r.value for r in chunk], [r.key for r in chunk], parts, offs)
        now[0] = max(r.arrival_ms for r in chunk) + 60_000
        tally.records += len(chunk)
        tally.kinds.update(r.kind.split(":")[0] for r in chunk)
        try:
            result = processor.process(raw)
        except Exception as error:
            tally.crashes += 1
            tally.violations.append(f"crash: {type(error).__name__}: {error}")
            continue
        scored = result.prediction_index.tolist()
        rejected = {r.index: r for r in result.rejected}
        tally.scored += len(scored)
        if set(scored) & set(rejected) or len(scored) + len(rejected) != len(chunk):
            tally.violations.append(f"batch at {lo}: a record scored and rejected, or neither")
        for i in scored:
            verdict = oracle.judge(chunk[i].value)
            if verdict:
                tally.violations.append(
                    f"scored but {verdict}: {chunk[i].kind} {chunk[i].value!r:.300}"
                )
        for i, r in rejected.items():
            tally.reasons[r.reason] += 1
            if r.reason not in DLQ_REASONS or not r.message:
                tally.violations.append(f"bad dead letter {r}")
            verdict = oracle.judge(chunk[i].value)
            if verdict in EXACT_REASON and r.reason != EXACT_REASON[verdict]:
                tally.violations.append(f"{verdict} dead-lettered as {r.reason}")
            if chunk[i].kind == "valid":
                tally.violations.append(
                    f"generated event lost ({r.reason}): {chunk[i].value!r:.200}"
                )
            elif not verdict and r.reason not in STREAM_REASONS:
                tally.violations.append(
                    f"valid by the contract but {r.reason}: {chunk[i].kind} {chunk[i].value!r:.300}"
                )
    return tally


def report(tally: Tally, seconds: float) -> str:
    return (
        f"{tally.records:,} records ({dict(tally.kinds)}) in {seconds:.1f} s: "
        f"{tally.scored:,} scored, {sum(tally.reasons.values()):,} dead-lettered "
        f"{dict(tally.reasons.most_common())}, crashes {tally.crashes}"
    )


def live_processor(spec: FeatureSpec, model: LoadedModel) -> tuple[ScoringProcessor, list[int]]:
    now = [0]
    processor = ScoringProcessor(spec, Scorer(model), clock=lambda: now[0] / 1000)
    return processor, now


def test_fuzz_100k_records_through_the_batch_decode_and_dead_letter_path(
    spec: FeatureSpec, model: LoadedModel
) -> None:
    records = fuzz_records(110_000, seed=2026)
    processor, now = live_processor(spec, model)
    started = time.perf_counter()
    tally = run(records, processor, now)
    print("\nfuzz:", report(tally, time.perf_counter() - started))
    assert tally.crashes == 0
    assert tally.violations == [], "\n".join(tally.violations[:20])
    assert tally.records >= 100_000
    assert tally.scored + sum(tally.reasons.values()) == tally.records
    # Every mutation and corpus kind took part, and most reasons were exercised.
    assert set(tally.kinds) == {"valid", "corpus", *MUTATIONS}
    assert len(tally.reasons) >= 9, tally.reasons


# Hostile JSON built by hypothesis: any JSON value spliced into an event, or raw bytes.
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**31),
    field=st.sampled_from(
        ["event_id", "customer_id", "event_time", "event_type", "amount", "age", "region", "x"]
    ),
    value=_json,
    raw=st.binary(max_size=120),
    replay=st.booleans(),
)
def test_hypothesis_hostile_values_are_never_scored_unless_valid(
    spec: FeatureSpec,
    model: LoadedModel,
    seed: int,
    field: str,
    value: Any,
    raw: bytes,
    replay: bool,
) -> None:
    """Shrinkable counterpart of the bulk run: one generated JSON value in one field,
    raw bytes, and mutated records, among valid ones, live or replayed."""
    # A clean start: a replaying partition's first events have no stream clock yet.
    records = fuzz_records(100, seed=seed, clean_prefix=40)
    event = IndependentEvents(seed).events(1)[0]
    spliced = msgspec.json.encode(dict(event, **{field: value}))
    records.insert(47, Record(event["customer_id"].encode(), spliced, "hypothesis"))
    records.insert(70, Record(None, raw, "hypothesis"))
    records[47].arrival_ms = records[48].arrival_ms
    processor, now = live_processor(spec, model)
    if replay:  # a replay: the wall clock is far past the stream
        processor._clock = lambda: 1_900_000_000.0
    tally = run(records, processor, now)
    assert tally.crashes == 0
    assert tally.violations == [], "\n".join(tally.violations[:5])


@pytest.mark.parametrize("kind", sorted(MUTATIONS))
def test_each_mutation_alone(spec: FeatureSpec, model: LoadedModel, kind: str) -> None:
    """Each mutation on 400 events of its own: a failure names the mutation."""
    rng = random.Random(kind)
    events = IndependentEvents(zlib.crc32(kind.encode())).events(800)
    records = []
    for event in events:
        body = msgspec.json.encode(event)
        key = event["customer_id"].encode()
        if rng.random() < 0.5:
            records.append(Record(key, MUTATIONS[kind](rng, dict(event), body), kind))
        else:
            records.append(Record(key, body, "valid"))
        records[-1].arrival_ms = event_time_ms(event)
    last = 0
    for record in records:
        last = record.arrival_ms = max(last, record.arrival_ms)
    processor, now = live_processor(spec, model)
    tally = run(records, processor, now)
    assert tally.crashes == 0
    assert tally.violations == [], "\n".join(tally.violations[:10])
