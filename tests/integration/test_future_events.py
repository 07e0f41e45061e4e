"""Future-dated events on a real broker (issue #13, item 2).

One event dated two days ahead and one dated 2090 arrive among live traffic.  Before the
fix they advanced their partitions' watermarks, so every later valid event of those
partitions was dead-lettered ``late`` (and the watermark was persisted, so a restart did
not heal it).  Now both go to the dead-letter topic as ``future`` and nothing valid is
lost, before and after a restart of the worker.
"""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from driftline.core.events import EVENT_TYPES
from driftline.core.predictions import DLQ_REASON, Prediction
from driftline.core.spec import FeatureSpec
from driftline.engine.kafka.worker import WorkerSettings
from driftline.event_producer import produce_records

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
YEAR_2090_MS = 3_786_000_000_000
decode_prediction = msgspec.json.Decoder(Prediction).decode


def live_traffic(n: int, seed: int, first_ms: int, last_ms: int) -> list[dict[str, Any]]:
    """``n`` events of 60 customers with increasing times in [first_ms, last_ms]."""
    rng = random.Random(seed)
    times = sorted(rng.randrange(first_ms, last_ms) for _ in range(n))
    return [
        {
            "event_id": f"live-{seed}-{i}",
            "customer_id": f"cust-{rng.randrange(60):03d}",
            "event_time": t,
            "event_type": rng.choice(EVENT_TYPES),
            "amount": round(rng.uniform(1, 200), 2),
        }
        for i, t in enumerate(times)
    ]


def records(events: list[dict[str, Any]]) -> list[tuple[bytes, bytes, None]]:
    return [(e["customer_id"].encode(), msgspec.json.encode(e), None) for e in events]


def test_future_dated_events_are_dead_lettered_and_lose_no_valid_event_across_a_restart(
    worker_settings: WorkerSettings,
    spec: FeatureSpec,
    consume_all: Callable[..., list[Any]],
    worker_in_thread: Callable[..., Any],
) -> None:
    s = worker_settings
    now = int(time.time() * 1000)
    before = live_traffic(1500, 1, now - 30 * 60_000, now - 20 * 60_000)
    after = live_traffic(1500, 2, now - 20 * 60_000, now - 10 * 60_000)
    # Two customers with traffic before and after them, on whatever partitions they hash to.
    future = [
        dict(before[10], event_id="future-2-days", event_time=now + 2 * DAY_MS),
        dict(before[20], event_id="future-2090", event_time=YEAR_2090_MS),
    ]
    with worker_in_thread(s, spec):
        produce_records(s.bootstrap_servers, s.input_topic, iter(records(before)))
        produce_records(s.bootstrap_servers, s.input_topic, iter(records(future)))
        produce_records(s.bootstrap_servers, s.input_topic, iter(records(after)))
        scored = consume_all(s.output_topic, expected=3000, timeout=90)
        dead = consume_all(s.dead_letter_topic, expected=2, timeout=30)
    reasons = collections.Counter(dict(m.headers())[DLQ_REASON].decode() for m in dead)
    assert reasons == {"future": 2}, f"valid events dead-lettered: {dict(reasons)}"
    assert {msgspec.json.decode(m.value())["event_id"] for m in dead} == {
        "future-2-days",
        "future-2090",
    }
    ids = {decode_prediction(m.value()).event_id for m in scored}
    assert ids == {e["event_id"] for e in before + after}
    assert len(scored) == 3000

    # A restart restores the persisted watermarks: later valid events are still scored.
    later = live_traffic(1000, 3, now - 10 * 60_000, now)
    with worker_in_thread(s, spec):
        produce_records(s.bootstrap_servers, s.input_topic, iter(records(later)))
        scored = consume_all(s.output_topic, expected=4000, timeout=90)
        dead = consume_all(s.dead_letter_topic, expected=2, timeout=20)
    assert len(dead) == 2, "valid events dead-lettered after the restart"
    ids = collections.Counter(decode_prediction(m.value()).event_id for m in scored)
    assert set(ids) == {e["event_id"] for e in before + after + later}
