"""The fuzz tests' record stream: independent events, some mutated, some corpus poison."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from driftline.corpus import bad_cases

from .independent_events import IndependentEvents
from .mutations import MUTATIONS


def event_time_ms(event: dict[str, Any]) -> int:
    """A generated event's time in epoch ms, whichever way it is written."""
    when = event["event_time"]
    if isinstance(when, int):
        return when
    return int(datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Record:
    key: bytes | None
    value: bytes | None
    kind: str  # "valid", a mutation name, or "corpus:<kind>"
    #: Arrival time the live clock is set to when this record's batch is processed.
    arrival_ms: int = 0


def fuzz_records(
    n: int,
    seed: int,
    hostile_share: float = 0.45,
    start_ms: int | None = None,
    clean_prefix: int = 0,
    spacing_ms: float = 600.0,
) -> list[Record]:
    """``n`` records in arrival order: generated events, some mutated, some corpus poison.

    The first ``clean_prefix`` records are unmutated events: a replaying partition's
    first events are judged with little history (see ``driftline.core.clock_skew``).
    """
    rng = random.Random(seed)
    n_corpus = n // 10
    generator = IndependentEvents(
        seed, start_ms=1_767_225_600_000 if start_ms is None else start_ms, spacing_ms=spacing_ms
    )
    events = generator.events(n - n_corpus)
    names = list(MUTATIONS)
    out = []
    for event in events:
        body = msgspec.json.encode(event)
        key = None if rng.random() < 0.05 else event["customer_id"].encode()
        arrival = event_time_ms(event)
        if len(out) >= clean_prefix and rng.random() < hostile_share:
            name = names[len(out) % len(names)] if rng.random() < 0.5 else rng.choice(names)
            out.append(Record(key, MUTATIONS[name](rng, dict(event), body), name, arrival))
        else:
            out.append(Record(key, body, "valid", arrival))
    corpus = bad_cases(n_corpus, seed=seed)
    for case in corpus:
        at = rng.randrange(clean_prefix, len(out) + 1)
        out.insert(at, Record(b"corpus", case.payload, f"corpus:{case.kind}"))
    # The live clock follows the stream: each record arrives at the latest time before it.
    last = 0
    for record in out:
        last = max(last, record.arrival_ms)
        record.arrival_ms = last
    return out
